"""The S3 store's calls for the time-travel commands, on moto and Ceph RGW
(``s3_target``): PutBucketVersioning, GetBucketLifecycleConfiguration, and the
one-request copy of a version from another bucket that ``fork`` uses."""

from __future__ import annotations

import pytest
from conftest import new_bucket, s3_client

from s3fuse.errors import NoSuchKey
from s3fuse.store.s3 import S3Store

pytestmark = pytest.mark.s3


@pytest.fixture
def store(s3_target):
    s = S3Store(s3_target.bucket, endpoint_url=s3_target.endpoint)
    yield s
    s.close()


def test_enable_versioning_turns_it_on_and_is_idempotent(store) -> None:
    assert store.versioning() == "off"
    store.enable_versioning()
    store.enable_versioning()
    assert store.versioning() == "enabled"


def test_lifecycle_rules_none_then_the_bucket_s(store, s3_target) -> None:
    assert store.lifecycle_rules() == []
    client = s3_client(s3_target.endpoint)
    client.put_bucket_lifecycle_configuration(
        Bucket=s3_target.bucket, LifecycleConfiguration={"Rules": [{
            "ID": "nc", "Status": "Enabled", "Filter": {"Prefix": "ws/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 7}}]})
    client.close()
    rules = store.lifecycle_rules()
    assert [r["ID"] for r in rules] == ["nc"]
    assert rules[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 7


def test_copy_version_from_another_bucket_keeps_that_version_and_its_metadata(
        store, s3_target) -> None:
    store.enable_versioning()
    store.put("k", b"old bytes", {"mode": "33188", "mtime": "1.5"})
    old = [v for v in store.list_versions("k").versions][0]
    store.put("k", b"new bytes", {"mode": "33261"})
    other = S3Store(new_bucket(s3_target.endpoint), endpoint_url=s3_target.endpoint)
    try:
        etag = other.copy_version(store.bucket, "k", old.version_id, "copied/k",
                                  old.size, if_none_match=True).etag
        assert other.get("copied/k") == b"old bytes"
        info = other.head("copied/k")
        assert info.etag == etag == old.etag
        assert info.metadata == {"mode": "33188", "mtime": "1.5"}
        with pytest.raises(NoSuchKey):
            other.copy_version(store.bucket, "k", "not-a-version", "copied/x", 1)
    finally:
        other.close()


def test_server_time_is_never_before_a_version_just_written(store) -> None:
    import time

    store.put("t", b"x", {})
    written = store.head("t").mtime_ns
    now = store.server_time_ns()
    assert now >= written
    assert abs(now - time.time_ns()) < 5 * 10**9  # the test servers share our clock
