"""S3 backend specifics on moto: multipart uploads and copies, check(), probe(),
credentials kept out of error messages."""

from __future__ import annotations

import hashlib
import io
import os
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from servers import MotoServer, closed_port

from s3fuse.errors import (
    AccessDenied,
    NoSuchBucket,
    NoSuchKey,
    PreconditionFailed,
    TransientStoreError,
)
from s3fuse.store.base import Capabilities
from s3fuse.store.s3 import S3Store

pytestmark = pytest.mark.s3

MiB = 1 << 20
SECRET = "SENTINEL-secret-key-4f3a2b1c0d9e"


@pytest.fixture
def raw(moto_endpoint):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture
def store(moto_endpoint, s3_bucket):
    s = S3Store(s3_bucket, endpoint_url=moto_endpoint)
    yield s
    s.close()


@pytest.fixture
def small(moto_endpoint, s3_bucket):
    """Multipart above 5 MiB in 5 MiB parts; part-wise copies above 6 MiB."""
    s = S3Store(s3_bucket, endpoint_url=moto_endpoint, multipart_threshold=5 * MiB,
                part_size=5 * MiB, max_copy_size=6 * MiB, copy_part_size=5 * MiB)
    yield s
    s.close()


def pending_uploads(raw, bucket):
    return raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# --- multipart ---------------------------------------------------------------------------------


def test_multipart_put_from_path(small, raw, s3_bucket, tmp_path, monkeypatch):
    data = os.urandom(12 * MiB + 123)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    sizes = []
    upload_part = small._client.upload_part

    def spy(**kwargs):
        sizes.append(len(kwargs["Body"]))
        return upload_part(**kwargs)

    monkeypatch.setattr(small._client, "upload_part", spy)
    etag = small.put("big/file.bin", path, {"mode": "33188"})
    assert sorted(sizes) == [2 * MiB + 123, 5 * MiB, 5 * MiB]  # read part by part
    assert etag.endswith("-3")
    info = small.head("big/file.bin")
    assert (info.etag, info.size, info.metadata) == (etag, len(data), {"mode": "33188"})
    assert hashlib.md5(small.get("big/file.bin")).digest() == hashlib.md5(data).digest()
    assert small.get("big/file.bin", 5 * MiB - 10, 5 * MiB + 10) == data[5 * MiB - 10:5 * MiB + 10]
    buf = io.BytesIO()
    assert small.get_into("big/file.bin", buf, 10 * MiB, if_match=etag) == 2 * MiB + 123
    assert buf.getvalue() == data[10 * MiB:]
    assert pending_uploads(raw, s3_bucket) == []


def test_multipart_put_conditions(small, raw, s3_bucket, monkeypatch):
    first = os.urandom(6 * MiB)
    e1 = small.put("mp", first, {}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        small.put("mp", os.urandom(6 * MiB), {}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        small.put("mp", os.urandom(6 * MiB), {}, if_match="0" * 32)
    assert small.head("mp").etag == e1
    second = os.urandom(6 * MiB)
    e2 = small.put("mp", second, {}, if_match=e1)
    assert e2 != e1 and small.get("mp") == second

    # Without the early HEAD check the condition is the server's, on completion.
    monkeypatch.setattr(small, "_precheck", lambda *args: None)
    with pytest.raises(PreconditionFailed):
        small.put("mp", os.urandom(6 * MiB), {}, if_none_match=True)
    assert small.head("mp").etag == e2
    assert pending_uploads(raw, s3_bucket) == []  # the refused upload was aborted


def test_multipart_failure_aborts_the_upload(small, raw, s3_bucket, monkeypatch):
    calls = []
    upload_part = small._client.upload_part

    def flaky(**kwargs):
        calls.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart")
        return upload_part(**kwargs)

    monkeypatch.setattr(small._client, "upload_part", flaky)
    with pytest.raises(TransientStoreError):
        small.put("broken", os.urandom(11 * MiB), {})
    assert 2 in calls
    assert pending_uploads(raw, s3_bucket) == []
    with pytest.raises(NoSuchKey):
        small.head("broken")


def test_part_wise_copy_of_large_objects(small):
    data = os.urandom(13 * MiB)
    src_etag = small.put("src", data, {"mode": "33188"})
    etag = small.copy("src", "dst")  # 13 MiB > max_copy_size: UploadPartCopy
    assert etag.endswith("-3")
    assert small.get("dst") == data
    assert small.head("dst").metadata == {"mode": "33188"}
    small.copy("src", "dst2", {"mode": "33261"}, src_if_match=src_etag)
    assert small.head("dst2").metadata == {"mode": "33261"}
    assert small.get("dst2", 6 * MiB, 7 * MiB) == data[6 * MiB:7 * MiB]
    small.put("src", b"changed", {})
    with pytest.raises(PreconditionFailed):
        small.copy("src", "dst3", src_if_match=src_etag)
    with pytest.raises(NoSuchKey):
        small.head("dst3")


def test_metadata_replace_keeps_content_headers(store, raw, s3_bucket):
    raw.put_object(Bucket=s3_bucket, Key="page.html", Body=b"<p>hi</p>",
                   ContentType="text/html", CacheControl="max-age=60",
                   Metadata={"owner": "web"})
    store.copy("page.html", "page.html", {"mode": "33188"})
    head = raw.head_object(Bucket=s3_bucket, Key="page.html")
    assert head["ContentType"] == "text/html"
    assert head["CacheControl"] == "max-age=60"
    assert head["Metadata"] == {"mode": "33188"}


def test_metadata_names_come_back_lower_case(store, raw, s3_bucket):
    raw.put_object(Bucket=s3_bucket, Key="k", Body=b"x", Metadata={"Mode": "33188"})
    assert store.head("k").metadata == {"mode": "33188"}


# --- check and probe ---------------------------------------------------------------------------


def test_check(moto_endpoint, s3_bucket):
    S3Store(s3_bucket, endpoint_url=moto_endpoint).check()
    with pytest.raises(NoSuchBucket) as e:
        S3Store("no-such-bucket-here", endpoint_url=moto_endpoint).check()
    assert "no-such-bucket-here" in str(e.value) and "\n" not in str(e.value)


def test_check_unreachable_endpoint_fails_fast(moto_endpoint):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = S3Store("bucket", endpoint_url=endpoint)
    started = time.monotonic()
    with pytest.raises(TransientStoreError) as e:
        store.check()
    assert time.monotonic() - started < 10
    assert f"cannot reach {endpoint}" in str(e.value) and "\n" not in str(e.value)


def test_requests_to_unreachable_endpoint_are_transient(moto_endpoint):
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{closed_port()}",
                    max_attempts=2)
    started = time.monotonic()
    for call in (lambda: store.head("k"), lambda: store.put("k", b"x", {}),
                 lambda: store.list("")):
        with pytest.raises(TransientStoreError):
            call()
    assert time.monotonic() - started < 30


def test_probe_reports_what_moto_honours(store):
    # moto 5.x: If-None-Match and If-Match on PutObject, If-Match on DeleteObject; it
    # ignores x-amz-copy-source-if-match on CopyObject.
    assert store.probe("probe/.s3fuse-probe") == Capabilities(
        conditional_put=True, conditional_copy=False, conditional_delete=True)
    with pytest.raises(NoSuchKey):
        store.head("probe/.s3fuse-probe")
    assert store.list("", None).objects == []


# --- credentials -------------------------------------------------------------------------------


def assert_clean(exc: BaseException, *also: str) -> None:
    text = str(exc)
    assert SECRET not in text and SECRET not in repr(exc)
    assert "\n" not in text
    for word in also:
        assert word in text


def test_errors_never_contain_the_secret_key(moto_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store = S3Store(s3_bucket, endpoint_url=moto_endpoint, max_attempts=1)
    assert SECRET not in store.description
    e1 = store.put("k", b"one", {})
    store.put("k", b"two", {})
    cases = [
        (lambda: store.head("missing"), NoSuchKey, "missing"),
        (lambda: store.get("k", if_match=e1), PreconditionFailed, "k"),
        (lambda: store.put("k", b"x", {}, if_none_match=True), PreconditionFailed, "k"),
        (lambda: store.copy("missing", "x"), NoSuchKey, "missing"),
        (lambda: S3Store("absent-bucket", endpoint_url=moto_endpoint).check(),
         NoSuchBucket, "absent-bucket"),
        (lambda: S3Store("absent-bucket", endpoint_url=moto_endpoint).list(""),
         NoSuchBucket, "absent-bucket"),
        (lambda: S3Store(s3_bucket, endpoint_url=f"http://127.0.0.1:{closed_port()}",
                         max_attempts=1).get("k"), TransientStoreError, "k"),
    ]
    for call, cls, word in cases:
        with pytest.raises(cls) as e:
            call()
        assert_clean(e.value, word)


def test_refused_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    # INITIAL_NO_AUTH_ACTION_COUNT=0: this moto checks every request's credentials.
    with MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        store = S3Store("bucket", endpoint_url=server.endpoint, max_attempts=1)
        with pytest.raises(AccessDenied) as e:
            store.check()
        assert_clean(e.value, "bucket", "denied")
        for call in (lambda: store.head("k"), lambda: store.put("k", b"x", {}),
                     lambda: store.list(""), lambda: store.get("k")):
            with pytest.raises(AccessDenied) as e:
                call()
            assert_clean(e.value, "s3://bucket")
        store.close()

