"""S3 backend specifics: multipart uploads and copies, check(), probe(), the If-Match
quoting of Ceph RGW (on moto, and on Ceph RGW where installed: ``s3_target``);
credentials kept out of error messages (on moto)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time

import pytest
from botocore.exceptions import ClientError
from conftest import new_bucket, s3_client
from servers import MotoServer, closed_port

from s3fuse.errors import (
    AccessDenied,
    BodyChanged,
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
def raw(s3_target):
    client = s3_client(s3_target.endpoint)
    yield client
    client.close()


@pytest.fixture
def bucket(s3_target):
    return s3_target.bucket


@pytest.fixture
def store(s3_target):
    s = S3Store(s3_target.bucket, endpoint_url=s3_target.endpoint)
    yield s
    s.close()


@pytest.fixture
def small(s3_target):
    """Multipart above 5 MiB in 5 MiB parts; part-wise copies above 6 MiB."""
    s = S3Store(s3_target.bucket, endpoint_url=s3_target.endpoint,
                multipart_threshold=5 * MiB, part_size=5 * MiB, max_copy_size=6 * MiB,
                copy_part_size=5 * MiB)
    yield s
    s.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def pending_uploads(raw, bucket):
    return raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# --- multipart ---------------------------------------------------------------------------------


def test_multipart_put_from_path(small, raw, bucket, tmp_path, monkeypatch):
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
    assert pending_uploads(raw, bucket) == []


def test_multipart_put_conditions(small, raw, bucket, monkeypatch, s3_target):
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
    if s3_target.server == "rgw":
        # Ceph RGW 16 ignores conditions on CompleteMultipartUpload: there only the
        # HEAD check guards a multipart put (not atomically).
        e3 = small.put("mp", os.urandom(6 * MiB), {}, if_none_match=True)
        assert small.head("mp").etag == e3 != e2
    else:
        with pytest.raises(PreconditionFailed):
            small.put("mp", os.urandom(6 * MiB), {}, if_none_match=True)
        assert small.head("mp").etag == e2
    assert pending_uploads(raw, bucket) == []  # the refused upload was aborted


def test_multipart_put_of_a_changing_body_stops_sending_parts_and_is_aborted(
        small, raw, bucket, tmp_path, monkeypatch):
    path = tmp_path / "live.bin"
    path.write_bytes(os.urandom(11 * MiB))
    parts: list[int] = []
    upload_part = small._client.upload_part

    def spy(**kwargs):
        parts.append(kwargs["PartNumber"])
        return upload_part(**kwargs)

    monkeypatch.setattr(small._client, "upload_part", spy)
    # unchanged before the first part, written before any other: the parts not yet
    # sent are not sent at all (the old code sent them all, then found the change)
    answers = iter([True])
    with pytest.raises(BodyChanged):
        small.put("live", str(path), {}, unchanged=lambda: next(answers, False))
    assert len(parts) == 1  # (the parts start together: any one of them)
    assert pending_uploads(raw, bucket) == []
    with pytest.raises(NoSuchKey):
        small.head("live")
    # unchanged all along: checked before every part and once more before completing
    asked: list[int] = []
    small.put("live", str(path), {}, unchanged=lambda: asked.append(1) or True)
    assert len(asked) == 4 and small.get("live") == path.read_bytes()


def test_multipart_failure_aborts_the_upload(small, raw, bucket, monkeypatch):
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
    assert pending_uploads(raw, bucket) == []
    with pytest.raises(NoSuchKey):
        small.head("broken")


def test_multipart_defaults_upload_parts_in_parallel(s3_target, raw, bucket, tmp_path,
                                                    monkeypatch):
    """boto3's transfer manager settings (8 MiB parts, up to 10 in flight); the object
    holds exactly the bytes of the file, part boundaries included."""
    store = S3Store(bucket, endpoint_url=s3_target.endpoint)
    assert (store.multipart_threshold, store.part_size, store.multipart_concurrency) == \
        (8 * MiB, 8 * MiB, 10)
    data = b"".join(bytes([n]) * MiB for n in range(40)) + b"tail!"
    path = tmp_path / "ckpt.bin"
    path.write_bytes(data)
    lock = threading.Lock()
    now = [0]
    seen: list[tuple[int, int]] = []  # (part number, size)
    most = [0]
    upload_part = store._client.upload_part

    def spy(**kwargs):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
            seen.append((kwargs["PartNumber"], len(kwargs["Body"])))
        try:
            time.sleep(0.2)  # long enough for the others to start meanwhile
            return upload_part(**kwargs)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(store._client, "upload_part", spy)
    try:
        etag = store.put("ckpt/model.bin", str(path), {"mode": "33188"})
        assert sorted(seen) == [(n, 8 * MiB) for n in range(1, 6)] + [(6, 5)]
        assert most[0] >= 3  # not one part after the other
        assert etag.endswith("-6")
        got = store.get("ckpt/model.bin")
        assert len(got) == len(data) and got == data
        assert store.get("ckpt/model.bin", 8 * MiB - 2, 8 * MiB + 2) == bytes([7, 7, 8, 8])
        assert pending_uploads(raw, bucket) == []
    finally:
        store.close()


def test_a_failed_part_stops_the_parts_not_started(s3_target, raw, bucket, monkeypatch):
    store = S3Store(bucket, endpoint_url=s3_target.endpoint, multipart_threshold=5 * MiB,
                    part_size=5 * MiB, multipart_concurrency=2)
    calls: list[int] = []
    upload_part = store._client.upload_part

    def failing(**kwargs):
        calls.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 1:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "UploadPart")
        time.sleep(0.3)
        return upload_part(**kwargs)

    monkeypatch.setattr(store._client, "upload_part", failing)
    try:
        with pytest.raises(AccessDenied):
            store.put("doomed", os.urandom(40 * MiB), {})  # 8 parts
        assert 1 in calls and len(calls) <= 4  # the rest never started
        assert pending_uploads(raw, bucket) == []
        with pytest.raises(NoSuchKey):
            store.head("doomed")
    finally:
        store.close()


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


def test_metadata_replace_keeps_content_headers(store, raw, bucket):
    raw.put_object(Bucket=bucket, Key="page.html", Body=b"<p>hi</p>",
                   ContentType="text/html", CacheControl="max-age=60",
                   Metadata={"owner": "web"})
    store.copy("page.html", "page.html", {"mode": "33188"})
    head = raw.head_object(Bucket=bucket, Key="page.html")
    assert head["ContentType"] == "text/html"
    assert head["CacheControl"] == "max-age=60"
    assert head["Metadata"] == {"mode": "33188"}


def test_metadata_names_come_back_lower_case(store, raw, bucket):
    raw.put_object(Bucket=bucket, Key="k", Body=b"x", Metadata={"Mode": "33188"})
    assert store.head("k").metadata == {"mode": "33188"}


# --- check and probe ---------------------------------------------------------------------------


def test_check(s3_target):
    S3Store(s3_target.bucket, endpoint_url=s3_target.endpoint).check()
    with pytest.raises(NoSuchBucket) as e:
        S3Store("no-such-bucket-here", endpoint_url=s3_target.endpoint).check()
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


#: what each server honours: moto 5.x: If-None-Match and If-Match on PutObject,
#: If-Match on DeleteObject, not x-amz-copy-source-if-match on CopyObject. Ceph RGW 16:
#: If-None-Match and If-Match (bare ETags only) on PutObject, neither the copy source
#: condition nor If-Match on DeleteObject.
HONOURS = {
    "moto": Capabilities(conditional_put=True, conditional_copy=False,
                         conditional_delete=True),
    "rgw": Capabilities(conditional_put=True, conditional_copy=False,
                        conditional_delete=False),
}


def test_probe_reports_what_the_server_honours(store, s3_target):
    assert store.probe("probe/.s3fuse-probe") == HONOURS[s3_target.server]
    with pytest.raises(NoSuchKey):
        store.head("probe/.s3fuse-probe")
    assert store.list("", None).objects == []


#: what the probe finds once the bucket is versioned. Ceph RGW 16 refuses every If-Match
#: PUT there (the right ETag too, quoted or bare) and ignores If-None-Match; moto 5
#: honours both as on an unversioned bucket.
HONOURS_VERSIONED = {
    "moto": HONOURS["moto"],
    "rgw": Capabilities(conditional_put=False, conditional_copy=False,
                        conditional_delete=False),
}


def set_versioning(raw, bucket, status):
    raw.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})


def test_versioning_states(store, raw, bucket):
    assert store.versioning() == "off"
    set_versioning(raw, bucket, "Enabled")
    assert store.versioning() == "enabled"
    set_versioning(raw, bucket, "Suspended")
    assert store.versioning() == "suspended"


def test_probe_sees_versioning_per_bucket(store, raw, bucket, s3_target):
    """The same store probed before and after its bucket turns versioning on; a bucket
    of its own beside it keeps the unversioned answer. Conditional puts then behave as
    the capabilities say, and the probe leaves no versions behind."""
    assert store.probe("probe/.s3fuse-probe") == HONOURS[s3_target.server]
    set_versioning(raw, bucket, "Enabled")
    caps = store.probe("probe/.s3fuse-probe")
    assert caps == HONOURS_VERSIONED[s3_target.server]
    listing = raw.list_object_versions(Bucket=bucket)
    assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == []

    other = new_bucket(s3_target.endpoint)
    with contextlib.closing(S3Store(other, endpoint_url=s3_target.endpoint)) as beside:
        assert beside.probe("probe/.s3fuse-probe") == HONOURS[s3_target.server]

    e1 = store.put("k", b"one", {})
    if caps.conditional_put:
        e2 = store.put("k", b"two", {}, if_match=e1)
        with pytest.raises(PreconditionFailed):
            store.put("k", b"stale", {}, if_match=e1)
        with pytest.raises(PreconditionFailed):
            store.put("k", b"exists", {}, if_none_match=True)
        assert store.head("k").etag == e2
    else:
        # Conditions are useless here: the right ETag is refused, and If-None-Match
        # does not stop an overwrite. Hence the fallback: look (HEAD), then write
        # without conditions.
        with pytest.raises(PreconditionFailed):
            store.put("k", b"two", {}, if_match=e1)
        store.put("k", b"overwritten", {}, if_none_match=True)
        assert store.get("k") == b"overwritten"
        assert store.head("k").etag == md5(b"overwritten")
        e2 = store.put("k", b"two", {})
        assert store.head("k").etag == e2 == md5(b"two")
    versions = [v.etag for v in store.list_versions("k").versions]
    assert versions[0] == e2 and versions[-1] == e1


# --- If-Match quoting --------------------------------------------------------------------------


def test_probe_learns_how_to_quote_if_match(store, s3_target):
    store.probe("probe/.s3fuse-probe")
    # RGW refuses a quoted ETag in a PUT's If-Match; S3 and moto want it quoted.
    assert store._bare_put_if_match == (s3_target.server == "rgw")
    e1 = store.put("k", b"one", {})
    requests = count_requests(store)
    store.put("k", b"two", {}, if_match=e1)
    assert requests == ["PutObject"]  # no refused first try once probed


def count_requests(store) -> list[str]:
    """The names of the S3 operations ``store`` sends from now on."""
    seen: list[str] = []
    store._client.meta.events.register("before-call.s3",
                                       lambda model, **kw: seen.append(model.name))
    return seen


def test_the_memory_store_counts_a_copy_as_this_store_makes_it(store):
    """The unit tests count requests on the memory store; a copy there counts what the
    S3 store sends for it: a HEAD of the source, then the COPY (no COPY when the HEAD
    finds no source or a failed pin)."""
    from s3fuse.store.memory import MemoryStore

    kind = {"HeadObject": "head", "CopyObject": "copy"}
    memory = MemoryStore()
    etag = store.put("src", b"body", {})
    assert memory.put("src", b"body", {}) == etag

    def copies(s) -> None:
        s.copy("src", "dst")
        s.copy("src", "pinned", {"m": "1"}, src_if_match=etag)
        with pytest.raises(PreconditionFailed):
            s.copy("src", "stale", src_if_match=md5(b"other"))
        with pytest.raises(NoSuchKey):
            s.copy("absent", "dst2")

    sent = count_requests(store)
    copies(store)
    before = dict(memory.counts)
    copies(memory)
    counted = {k: n - before.get(k, 0) for k, n in memory.counts.items()
               if n != before.get(k, 0)}
    assert sent == ["HeadObject", "CopyObject", "HeadObject", "CopyObject", "HeadObject",
                    "HeadObject"]
    assert counted == {"head": 4, "copy": 2}
    assert counted == {k: sum(1 for n in sent if kind[n] == k) for k in ("head", "copy")}


@pytest.mark.parametrize("multipart", [False, True], ids=["put", "multipart"])
def test_put_if_match_either_quoting(small, s3_target, multipart):
    """Whatever quoting the store starts with, a put with the object's current ETag
    goes through (the refused form is retried once with the other form and kept), and
    a stale ETag is still refused."""
    size = 6 * MiB if multipart else 100
    e1 = small.put("k", os.urandom(size), {"v": "1"})
    for start_bare in (False, True, False):
        small._bare_put_if_match = start_bare
        body = os.urandom(size)
        e2 = small.put("k", body, {"v": "2"}, if_match=e1)
        assert small.get("k") == body and small.head("k").etag == e2
        with pytest.raises(PreconditionFailed):
            small.put("k", os.urandom(size), {}, if_match=e1)
        assert small.head("k").etag == e2
        e1 = e2
    with pytest.raises(PreconditionFailed):
        small.put("absent", os.urandom(size), {}, if_match=e1)
    with pytest.raises(NoSuchKey):
        small.head("absent")


def refuse_quoted_if_match(store) -> list[str]:
    """Make ``store``'s server behave like Ceph RGW: a PUT (or multipart completion)
    with a quoted If-Match is refused with 412 before it is sent. Returns the If-Match
    values seen."""
    seen: list[str] = []

    class Refusal:
        status_code = 412
        headers: dict = {}
        content = b""

    def hook(model, params, **kwargs):
        value = params["headers"].get("If-Match")
        if value is None:
            return None
        seen.append(value)
        if value.startswith('"'):
            return Refusal(), {"Error": {"Code": "PreconditionFailed", "Message": "quoted"},
                               "ResponseMetadata": {"HTTPStatusCode": 412}}
        return None

    for op in ("PutObject", "CompleteMultipartUpload"):
        store._client.meta.events.register(f"before-call.s3.{op}", hook)
    return seen


@pytest.mark.parametrize("multipart", [False, True], ids=["put", "multipart"])
def test_a_server_that_wants_bare_etags(moto_endpoint, s3_bucket, multipart, tmp_path):
    """Where Ceph RGW is not installed too: its quirk, staged on moto."""
    store = S3Store(s3_bucket, endpoint_url=moto_endpoint, multipart_threshold=5 * MiB,
                    part_size=5 * MiB)
    size = 6 * MiB if multipart else 10
    e1 = store.put("k", os.urandom(size), {})
    seen = refuse_quoted_if_match(store)
    body = os.urandom(size)
    path = tmp_path / "body"
    path.write_bytes(body)  # a file body: sent again from its start
    e2 = store.put("k", path, {}, if_match=e1)  # refused quoted, then sent bare
    assert seen == [f'"{e1}"', e1] and store._bare_put_if_match
    assert store.get("k") == body and store.head("k").etag == e2
    e3 = store.put("k", os.urandom(size), {}, if_match=e2)  # bare from the start
    assert seen[2:] == [e2] and store.head("k").etag == e3
    with pytest.raises(PreconditionFailed):
        store.put("k", os.urandom(size), {}, if_match=e1)  # stale: refused either way
    assert store.head("k").etag == e3
    store.close()


def test_probe_learns_the_quirk(moto_endpoint, s3_bucket):
    store = S3Store(s3_bucket, endpoint_url=moto_endpoint)
    refuse_quoted_if_match(store)
    assert store.probe("probe/.s3fuse-probe").conditional_put
    assert store._bare_put_if_match
    store.close()


def test_a_real_conflict_is_not_retried(store, raw, bucket, monkeypatch):
    """412 with the object at another ETag: a conflict, no second try, no learning."""
    e1 = store.put("k", b"one", {})
    raw.put_object(Bucket=bucket, Key="k", Body=b"changed outside")
    before = store._bare_put_if_match
    requests = count_requests(store)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"mine", {}, if_match=e1)
    assert requests == ["PutObject", "HeadObject"]
    assert store._bare_put_if_match == before
    assert store.get("k") == b"changed outside"


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

