"""open_store: parsing mount sources."""

from __future__ import annotations

import pytest

from s3fuse.errors import UsageError
from s3fuse.store import open_store
from s3fuse.store.file import FileStore
from s3fuse.store.memory import MemoryStore
from s3fuse.store.s3 import S3Store


@pytest.mark.parametrize("source, prefix", [
    ("s3://bucket", ""),
    ("s3://bucket/", ""),
    ("s3://my.bucket-1/a", "a/"),
    ("s3://bucket/a/b/", "a/b/"),
    ("S3://bucket/data set/é", "data set/é/"),
])
def test_s3_sources(source, prefix, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credential lookups
    store, got = open_store(source, endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    try:
        assert isinstance(store, S3Store)
        assert got == prefix
        assert store.bucket == source.split("/")[2]
        assert store.region == "eu-west-1"
        assert store.description == f"s3://{store.bucket} at http://127.0.0.1:9"
    finally:
        store.close()


def test_file_and_memory_sources(tmp_path):
    store, prefix = open_store(f"file://{tmp_path}/bucket/")
    assert isinstance(store, FileStore) and prefix == ""
    assert store.root == f"{tmp_path}/bucket"
    store, _ = open_store(f"file://localhost{tmp_path}")
    assert isinstance(store, FileStore) and store.root == str(tmp_path)
    store, prefix = open_store("memory://t-open/x/y")
    assert isinstance(store, MemoryStore) and prefix == "x/y/"


@pytest.mark.parametrize("source", [
    "bucket", "/local/path", "s3:/bucket", "s3://", "s3:///x", "s3://bad bucket",
    "s3://-dash", "s3://b//x", "s3://b/a/../c", "s3://b/./c", "s3://b/a//", "ftp://host/x",
    "file://relative/path", "file:///", "file://", "memory://", "memory:///x",
])
def test_bad_sources(source):
    with pytest.raises(UsageError) as e:
        open_store(source)
    assert "\n" not in str(e.value) and str(e.value)


def test_endpoint_only_for_s3(tmp_path):
    with pytest.raises(UsageError, match="endpoint"):
        open_store(f"file://{tmp_path}", endpoint_url="http://127.0.0.1:9")
