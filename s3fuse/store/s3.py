"""The S3 backend (AWS or any S3-compatible endpoint). The only module using boto3.

One boto3 client per store (boto3 clients are thread-safe), credentials from the
standard AWS chain. Every botocore error is turned into an ``s3fuse.errors`` class with
a one-line message naming the operation, bucket and key; messages never contain
credentials (server messages are scrubbed of the secret key and session token too).

Conditional requests: ETags go into ``If-Match`` quoted, as S3 and moto expect. Ceph
RGW compares a PUT's ``If-Match`` with the bare ETag and refuses the quoted form: a put
refused with 412 while a HEAD shows the object at exactly the expected ETag is sent
once more with the other form, which the store then keeps using (``probe()`` learns it
at mount time). A conditional put that S3 answers with 404 (``If-Match`` on a missing
key) is reported as ``PreconditionFailed``, like every backend does. Large puts go up
as multipart uploads; their conditions are checked with a HEAD before the upload starts
(so a doomed upload fails before sending gigabytes) and sent again on
CompleteMultipartUpload, where servers that support it check them atomically (Ceph
RGW 16 ignores them there; it also completes with an empty ETag, which is then
computed from the parts' ETags as S3 does).

Versions: ListObjectVersions, VersionId on GET/HEAD and in CopySource, and
GetBucketVersioning. On a versioned bucket Ceph RGW 16 refuses every If-Match PUT and
ignores If-None-Match, which ``probe()`` finds (and reports as no conditional puts).

The error mapping is in ``_s3errors.py`` and the multipart transfers in
``_s3multipart.py``: helper modules of this one, whose classes are ``S3Store``'s bases.
"""

from __future__ import annotations

import calendar
import contextlib
import email.utils
import json
import logging
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ProxyConnectionError,
    ReadTimeoutError,
)
from botocore.utils import parse_timestamp as _botocore_timestamp

from s3fuse import retry
from s3fuse.errors import (
    AccessDenied,
    InvalidKey,
    NoSuchBucket,
    NoSuchKey,
    NotSupported,
    PreconditionFailed,
    StoreError,
    TransientStoreError,
)
from s3fuse.store._body import CHUNK, body_size, check_range, is_bytes
from s3fuse.store._s3errors import _ACCESS_CODES, S3Errors
from s3fuse.store._s3multipart import S3Multipart, _check_unchanged, _quote, _unquote
from s3fuse.store.base import (
    Body,
    Capabilities,
    Copied,
    ListPage,
    ObjectInfo,
    VersionInfo,
    VersionPage,
)

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
#: S3 refuses parts smaller than this (except the last one)
MIN_PART_SIZE = 5 * MiB
#: CopyObject refuses sources larger than this; bigger copies go part by part
MAX_COPY_SIZE = 5 * GiB



_loader_lock = threading.Lock()
_shared_loader: Any = None


def _new_session() -> boto3.session.Session:
    """A fresh boto3 session (own credential resolution) sharing one botocore data
    loader: parsing the S3 service model once per process instead of per client cuts
    client creation from ~0.2 s to ~0.03 s. The loader only caches read-only data."""
    global _shared_loader
    core = botocore.session.Session()
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_parse_timestamp)
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(botocore_session=core)


def _parse_timestamp(value: str) -> datetime:
    """The times in responses, as botocore's own parser gives them (timezone-aware),
    without going through dateutil for the two forms S3 servers send: ISO 8601 in
    XML bodies (a listing's LastModified) and RFC 1123 in headers (a HEAD's
    Last-Modified). dateutil took about 100 us a timestamp, 0.1 s of CPU for every
    page of 1,000 keys listed; these take under 6 us. Anything else goes to
    botocore's parser."""
    try:
        if len(value) >= 10 and value[4] == "-":
            when = datetime.fromisoformat(value)  # (Python 3.11 reads a final Z)
        else:
            when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return _botocore_timestamp(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _mtime_ns(when: datetime) -> int:
    return calendar.timegm(when.utctimetuple()) * 10**9 + when.microsecond * 1000


def safe_endpoint(endpoint_url: str | None) -> str:
    """The endpoint for messages: without any user:password part."""
    if not endpoint_url:
        return "AWS S3"
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class S3Store(S3Errors, S3Multipart):
    """An ``ObjectStore`` on one S3 bucket.

    ``multipart_threshold``: bodies larger than this go up as multipart uploads of
    ``part_size`` parts (raised as needed to stay within 10,000 parts), with up to
    ``multipart_concurrency`` parts in flight. The defaults are those of boto3's
    transfer manager (8 MiB, 8 MiB, 10 threads), whose ``upload_file`` is the speed to
    match: each upload holds at most ``multipart_concurrency * part_size`` bytes.
    ``copy_part_size`` and ``max_copy_size`` tune copies of objects beyond
    CopyObject's 5 GiB limit (UploadPartCopy).
    ``max_attempts`` is the number of tries per request, the first one included
    (botocore "standard" retry mode: 5xx, throttling and connection errors, with
    jittered exponential backoff).
    """

    def __init__(self, bucket: str, *, endpoint_url: str | None = None,
                 region: str | None = None, multipart_threshold: int = 8 * MiB,
                 part_size: int = 8 * MiB, multipart_concurrency: int = 10,
                 copy_part_size: int = 512 * MiB, max_copy_size: int = MAX_COPY_SIZE,
                 max_attempts: int = retry.HTTP_ATTEMPTS, connect_timeout: float = 5,
                 read_timeout: float = 60,
                 max_pool_connections: int = 32) -> None:
        if part_size < MIN_PART_SIZE or copy_part_size < MIN_PART_SIZE:
            raise ValueError(f"part sizes must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.endpoint = safe_endpoint(endpoint_url)
        self.description = f"s3://{bucket} at {self.endpoint}"
        self.multipart_threshold = max(multipart_threshold, 0)
        self.part_size = part_size
        self.multipart_concurrency = max(1, multipart_concurrency)
        self.copy_part_size = copy_part_size
        self.max_copy_size = max_copy_size
        self._endpoint_url = endpoint_url
        self._session = _new_session()
        self.region = region or self._session.region_name or "us-east-1"
        self._client = self._make_client(Config(
            # total_max_attempts counts the first try ("max_attempts" would not).
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_pool_connections=max_pool_connections))
        #: send a PUT's If-Match without quotes (Ceph RGW); learnt from a refused put
        self._bare_put_if_match = False
        #: send If-None-Match on CopyObject; cleared when the server refuses it
        self._copy_if_none_match = True
        self._closed = False

    def _make_client(self, config: Config) -> Any:
        base = Config(
            region_name=self.region,
            # S3-compatible servers (MinIO, Ceph, R2...) only understand path-style
            # addressing reliably, and a plain IP endpoint cannot do virtual hosts.
            s3={"addressing_style": "path"} if self._endpoint_url else {},
            # Newer botocore adds CRC checksums to every upload by default; many
            # S3-compatible servers reject them. Send them only where S3 requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = self._session.client("s3", endpoint_url=self._endpoint_url,
                                      config=base.merge(config))
        client.meta.events.register("before-parse.s3.ListObjectVersions", _version_order)
        return client

    # --- reading ------------------------------------------------------------------------

    def check(self) -> None:
        """HEAD the bucket with a quick-failing client (2 attempts, short timeouts)."""
        client = self._make_client(Config(
            retries={"mode": "standard", "total_max_attempts": 2},
            connect_timeout=2, read_timeout=10))
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in ("NoSuchBucket", "NotFound", "404"):
                raise NoSuchBucket(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}") from None
            if status in (401, 403) or code in _ACCESS_CODES:
                raise AccessDenied(
                    f"access to bucket {self.bucket!r} at {self.endpoint} denied "
                    f"({code or status}): check the credentials") from None
            raise self._map(exc, "HEAD bucket") from None
        except (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError,
                ReadTimeoutError, urllib3.exceptions.HTTPError, ConnectionError,
                TimeoutError) as exc:
            raise TransientStoreError(
                f"cannot reach {self.endpoint} for bucket {self.bucket!r} "
                f"({type(exc).__name__})") from None
        except BotoCoreError as exc:
            raise self._map(exc, "HEAD bucket") from None
        finally:
            client.close()

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        self._check_key(key)
        return self._info(key, self._head_pinned(key, None, op="HEAD",
                                                 version_id=version_id))

    @staticmethod
    def _info(key: str, r: dict) -> ObjectInfo:
        meta = {str(k).lower(): v for k, v in (r.get("Metadata") or {}).items()}
        return ObjectInfo(key, int(r.get("ContentLength", 0)), _unquote(r.get("ETag", "")),
                          _mtime_ns(r["LastModified"]), meta)

    def _head_pinned(self, key: str, if_match: str | None, op: str = "GET",
                     version_id: str | None = None) -> dict:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match is not None:
            kwargs["IfMatch"] = _quote(if_match)
        if version_id is not None:
            kwargs["VersionId"] = version_id
        with self._op(op, key, version_id=version_id):
            try:
                return self._client.head_object(**kwargs)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if version_id is None or status != 400:
                    raise
            # A HEAD's 400 has no body to say why (AWS: a malformed version id; moto
            # 5 answers any HEAD of version "null" so): ask with a GET, which says.
            r = self._client.get_object(**kwargs)
            r["Body"].close()  # (unread: only the headers were wanted)
            return r

    def _get_object(self, key: str, start: int, end: int | None,
                    if_match: str | None, version_id: str | None = None) -> dict | None:
        """GetObject for ``[start, end)``; None when the range holds no bytes."""
        self._check_key(key)
        check_range(start, end)
        if end is not None and end <= start:
            # still: NoSuchKey / PreconditionFailed
            self._head_pinned(key, if_match, version_id=version_id)
            return None
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match is not None:
            kwargs["IfMatch"] = _quote(if_match)
        if version_id is not None:
            kwargs["VersionId"] = version_id
        with self._op("GET", key, version_id=version_id):
            try:
                return self._client.get_object(**kwargs)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status != 416 and exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
        # 416: the range starts at or past the end. Confirm the pin, then: no bytes.
        self._head_pinned(key, if_match, version_id=version_id)
        return None

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None, version_id: str | None = None) -> bytes:
        r = self._get_object(key, start, end, if_match, version_id)
        if r is None:
            return b""
        with self._op("GET", key), contextlib.closing(r["Body"]) as body:
            return body.read()

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None, version_id: str | None = None) -> int:
        """See ``ObjectStore.get_into``. If the transfer breaks, part of the range may
        already be in ``fileobj`` (TransientStoreError is raised; redo the range)."""
        r = self._get_object(key, start, end, if_match, version_id)
        if r is None:
            return 0
        written = 0
        with self._op("GET", key), contextlib.closing(r["Body"]) as body:
            for block in body.iter_chunks(CHUNK):
                fileobj.write(block)
                written += len(block)
        return written

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys}")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                  "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        with self._op("LIST", prefix):
            r = self._client.list_objects_v2(**kwargs)
        objects = [ObjectInfo(o["Key"], int(o.get("Size", 0)), _unquote(o.get("ETag", "")),
                              _mtime_ns(o["LastModified"]))
                   for o in r.get("Contents", [])]
        prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        next_token = r.get("NextContinuationToken") if r.get("IsTruncated") else None
        return ListPage(objects, prefixes, next_token)

    def list_versions(self, prefix: str, token: str | None = None,
                      max_keys: int = 1000, delimiter: str | None = None) -> VersionPage:
        """ListObjectVersions. The token is the next page's (KeyMarker,
        VersionIdMarker) as JSON. boto3 returns versions and delete markers in two
        lists; they are merged back by time."""
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys}")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                  "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            try:
                key_marker, vid_marker = json.loads(token)
            except (ValueError, TypeError):
                raise StoreError(f"invalid continuation token {token[:40]!r}") from None
            kwargs["KeyMarker"] = key_marker
            if vid_marker:
                kwargs["VersionIdMarker"] = vid_marker
        with self._op("LIST versions", prefix):
            r = self._client.list_object_versions(**kwargs)
        versions = [VersionInfo(
            v["Key"], str(v.get("VersionId") or "null"), _unquote(v.get("ETag", "")),
            int(v.get("Size", 0)), _mtime_ns(v["LastModified"]), bool(v.get("IsLatest")))
            for v in r.get("Versions", [])]
        markers = [VersionInfo(
            m["Key"], str(m.get("VersionId") or "null"), "", 0, _mtime_ns(m["LastModified"]),
            bool(m.get("IsLatest")), True) for m in r.get("DeleteMarkers", [])]
        # Each key's latest first, then by LastModified; on a tie, the response's own
        # order (seen by _version_order), which interleaves versions and markers on S3
        # and RGW (moto lists all versions, then all markers, with LastModified in
        # whole seconds: a version and a marker of one second may come out swapped).
        position = {entry: i for i, entry in enumerate(r.get(_ORDER_FIELD) or [])}
        found = list(enumerate(versions)) + list(enumerate(markers))
        found.sort(key=lambda e: (e[1].key.encode("utf-8"), not e[1].is_latest,
                                  -e[1].mtime_ns,
                                  position.get((e[1].key, e[1].version_id), len(position)),
                                  e[0]))
        next_token = None
        if r.get("IsTruncated"):
            next_token = json.dumps([r.get("NextKeyMarker") or "",
                                     r.get("NextVersionIdMarker") or ""])
        prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        return VersionPage([info for _, info in found], prefixes, next_token)

    def versioning(self) -> str:
        """GetBucketVersioning: "enabled", "suspended", or "off" (no Status: never
        enabled)."""
        with self._op("GET versioning"):
            r = self._client.get_bucket_versioning(Bucket=self.bucket)
        status = str(r.get("Status") or "").lower()
        return status if status in ("enabled", "suspended") else "off"

    def enable_versioning(self) -> None:
        """PutBucketVersioning Status=Enabled: keep old versions from now on."""
        with self._op("PUT versioning"):
            self._client.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})

    def lifecycle_rules(self) -> list[dict]:
        """GetBucketLifecycleConfiguration's rules ([] when the bucket has none)."""
        try:
            with self._op("GET lifecycle"):
                r = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get(
                    "Code") in ("NoSuchLifecycleConfiguration", "NoSuchLifecycle"):
                return []
            raise
        return list(r.get("Rules") or [])

    def server_time_ns(self) -> int:
        """The Date of a HEAD of the bucket (whole seconds), to the end of its second."""
        with self._op("HEAD bucket"):
            r = self._client.head_bucket(Bucket=self.bucket)
        date = (r.get("ResponseMetadata", {}).get("HTTPHeaders") or {}).get("date")
        try:
            sec = calendar.timegm(email.utils.parsedate_to_datetime(date).utctimetuple())
        except (TypeError, ValueError):
            return time.time_ns()  # no usable Date: the host's clock
        return (sec + 1) * 1_000_000_000 - 1

    def copy_version(self, src_bucket: str, src_key: str, version_id: str, dst_key: str,
                     size: int, *, if_none_match: bool = False) -> Copied:
        """Server-side copy of one version of ``src_bucket``/``src_key`` (a bucket on
        the same server) to ``dst_key`` here, its metadata kept: one CopyObject, no
        HEAD, as the caller knows the size (over ``max_copy_size``: part by part).
        ``if_none_match``: only if ``dst_key`` does not exist (PreconditionFailed),
        where the server honours it (a server that refuses the header gets the copy
        without it). Returns the new object's ETag, version id (None when the server
        names none: an unversioned bucket, Ceph RGW 16, a copy made part by part) and
        time (``Copied``)."""
        self._check_key(src_key)
        self._check_key(dst_key)
        source = {"Bucket": src_bucket, "Key": src_key, "VersionId": version_id}
        if size > self.max_copy_size:
            with self._op("COPY", f"{src_key} -> {dst_key}", version_id=version_id):
                head = self._client.head_object(Bucket=src_bucket, Key=src_key,
                                                VersionId=version_id)
            keep = {name: head[name] for name in (
                "ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage",
                "CacheControl", "Expires") if head.get(name)}
            return Copied(self._copy_multipart(
                dst_key, source, size, _unquote(head["ETag"]),
                {"Metadata": dict(head.get("Metadata", {})), **keep}), None)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": dst_key,
                                  "CopySource": source, "MetadataDirective": "COPY"}
        if if_none_match and self._copy_if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            with self._op("COPY", f"{src_key} -> {dst_key}", version_id=version_id):
                r = self._client.copy_object(**kwargs)
        except NotSupported:
            if "IfNoneMatch" not in kwargs:
                raise
            self._copy_if_none_match = False  # (assigned: concurrent copies agree)
            log.info("%s refuses If-None-Match on CopyObject; copying without it",
                     self.endpoint)
            return self.copy_version(src_bucket, src_key, version_id, dst_key, size,
                                     if_none_match=if_none_match)
        result = r["CopyObjectResult"]
        when = result.get("LastModified")
        return Copied(_unquote(result["ETag"]), r.get("VersionId"),
                      None if when is None else _mtime_ns(when))

    # --- writing ------------------------------------------------------------------------

    @staticmethod
    def _check_key(key: str) -> None:
        if not key:
            raise InvalidKey("empty key")
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKey(f"key is not valid UTF-8: {key[:80]!r}") from None
        if size > 1024:
            raise InvalidKey(f"key longer than 1024 bytes: {key[:80]!r}...")

    @staticmethod
    def _conditions(if_match: str | None, if_none_match: bool,
                    bare: bool = False) -> dict[str, str]:
        cond = {}
        if if_match is not None:
            cond["IfMatch"] = if_match if bare else _quote(if_match)
        if if_none_match:
            cond["IfNoneMatch"] = "*"
        return cond

    def _conditional_write(self, key: str, if_match: str | None, if_none_match: bool,
                           send: Any) -> Any:
        """``send(conditions)`` for a PUT or a multipart completion. If the server
        refuses an ``If-Match`` (412) although the object is at exactly that ETag, it
        wants the ETag quoted the other way (Ceph RGW compares a PUT's If-Match with
        the bare ETag; S3 and moto with the quoted one): send once more that way and
        keep that form for later writes."""
        bare = self._bare_put_if_match
        try:
            return send(self._conditions(if_match, if_none_match, bare))
        except PreconditionFailed as exc:
            if if_match is None:
                raise
            refusal = exc
        try:
            current = _unquote(self._head_pinned(key, None, op="PUT")["ETag"])
        except TransientStoreError:
            raise  # cannot tell now: the write stays pending and is tried again
        except StoreError:
            current = None  # gone, or the HEAD refused too
        if current != if_match:
            raise refusal  # a real conflict: the object changed (or is gone)
        # (Assigned, not toggled: concurrent writes that learn it agree.)
        self._bare_put_if_match = not bare
        log.info("%s refuses %s If-Match ETags on PUT; sending them %s", self.endpoint,
                 "bare" if bare else "quoted", "quoted" if bare else "bare")
        return send(self._conditions(if_match, if_none_match, not bare))

    def put(self, key: str, body: Body, metadata: dict[str, str], *,
            if_match: str | None = None, if_none_match: bool = False,
            unchanged: Callable[[], bool] | None = None) -> str:
        self._check_key(key)
        size = body_size(body)
        if size > self.multipart_threshold:
            return self._put_multipart(key, body, size, metadata, if_match, if_none_match,
                                       unchanged)
        if unchanged is not None and not is_bytes(body):
            # one request cannot be checked before it lands: read the (small) body
            # first, and check that
            with open(body, "rb") as f:  # type: ignore[arg-type]
                body = f.read()
            _check_unchanged(unchanged, self._where(key))
        conditional = if_match is not None or if_none_match
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key,
                                  "Metadata": dict(metadata)}
        with contextlib.ExitStack() as stack:
            if is_bytes(body):
                kwargs["Body"] = bytes(body)  # type: ignore[arg-type]
            else:
                # A real file: botocore streams it and seeks back to retry.
                kwargs["Body"] = stack.enter_context(open(body, "rb"))  # type: ignore[arg-type]

            def send(cond: dict[str, str]) -> dict:
                if not isinstance(kwargs["Body"], bytes):
                    kwargs["Body"].seek(0)
                with self._op("PUT", key, conditional=conditional):
                    return self._client.put_object(**kwargs, **cond)

            r = self._conditional_write(key, if_match, if_none_match, send)
        return _unquote(r["ETag"])

    def _precheck(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        """Fail early (before uploading parts) when the put's conditions cannot hold."""
        if if_match is None and not if_none_match:
            return
        try:
            current = _unquote(self._head_pinned(key, None, op="PUT")["ETag"])
        except NoSuchKey:
            current = None
        if if_none_match and current is not None:
            raise PreconditionFailed(f"PUT {self._where(key)}: the object already exists")
        if if_match is not None and current != if_match:
            raise PreconditionFailed(
                f"PUT {self._where(key)}: the object is not at etag {if_match}")


    def copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None = None, *,
             src_if_match: str | None = None, src_version_id: str | None = None) -> str:
        """Server-side copy. Objects over ``max_copy_size`` are copied part by part
        (UploadPartCopy), every part pinned to the source's ETag."""
        self._check_key(src_key)
        self._check_key(dst_key)
        # One HEAD first: it pins/validates the source, gives its size (which copy API
        # to use) and the headers that a metadata REPLACE would otherwise reset.
        head = self._head_pinned(src_key, src_if_match, op="COPY",
                                 version_id=src_version_id)
        size = int(head.get("ContentLength", 0))
        keep = {name: head[name] for name in (
            "ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage",
            "CacheControl", "Expires") if head.get(name)}
        source = {"Bucket": self.bucket, "Key": src_key}
        if src_version_id is not None:
            source["VersionId"] = src_version_id
        if size > self.max_copy_size:
            pin = src_if_match or _unquote(head["ETag"])
            new_meta = head.get("Metadata", {}) if metadata is None else metadata
            return self._copy_multipart(dst_key, source, size, pin,
                                        {"Metadata": dict(new_meta), **keep})
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": dst_key,
                                  "CopySource": source}
        if metadata is None:
            kwargs["MetadataDirective"] = "COPY"
        else:
            kwargs.update(MetadataDirective="REPLACE", Metadata=dict(metadata), **keep)
        if src_if_match is not None:
            kwargs["CopySourceIfMatch"] = _quote(src_if_match)
        with self._op("COPY", f"{src_key} -> {dst_key}", version_id=src_version_id):
            r = self._client.copy_object(**kwargs)
        return _unquote(r["CopyObjectResult"]["ETag"])


    def delete(self, key: str, *, if_match: str | None = None,
               version_id: str | None = None) -> None:
        self._check_key(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match is not None:
            kwargs["IfMatch"] = _quote(if_match)
        if version_id is not None:
            kwargs["VersionId"] = version_id
        try:
            with self._op("DELETE", key, version_id=version_id):
                self._client.delete_object(**kwargs)
        except NoSuchKey:
            pass  # a conditional delete of a missing key: already gone, as wanted

    # --- the rest -----------------------------------------------------------------------

    def probe(self, scratch_key: str) -> Capabilities:
        """Ask the server which conditions it honours, using ``scratch_key``.

        Each check sends a condition that must fail: a refusal (412) proves support;
        success, or a 400/501 for the unknown header, means no support. A put with
        the right ``If-Match`` must succeed too (this is where the store learns how the
        server wants the ETag quoted). Network, credential and bucket errors propagate.

        The answer depends on the bucket's versioning: Ceph RGW 16 refuses every
        If-Match PUT on a versioned bucket and ignores If-None-Match there, so the
        probe reports ``conditional_put=False`` (the flusher then looks first). On a
        bucket that is or was versioned, the versions and delete markers the probe
        made are removed one by one (DeleteObject with VersionId).
        """

        def refused(request) -> bool:
            try:
                request()
            except PreconditionFailed:
                return True
            except (TransientStoreError, AccessDenied, NoSuchBucket):
                raise
            except StoreError as exc:
                log.info("probe: %s", exc)
                return False
            return False

        wrong = "0" * 32
        try:
            state = self.versioning()
        except (TransientStoreError, NoSuchBucket):
            raise
        except StoreError as exc:  # not allowed to ask (GetBucketVersioning): tidy anyway
            log.info("probe: %s", exc)
            state = "unknown"
        self.delete(scratch_key)
        try:
            etag = self.put(scratch_key, b"s3fuse probe\n", {}, if_none_match=True)
            none_match = refused(lambda: self.put(scratch_key, b"again\n", {},
                                                  if_none_match=True))
            match = refused(lambda: self.put(scratch_key, b"again\n", {}, if_match=wrong))
            if match and refused(lambda: self.put(scratch_key, b"again\n", {},
                                                  if_match=etag)):
                log.warning("%s refuses PUTs with the object's own ETag in If-Match",
                            self.endpoint)
                match = False

            def raw_copy() -> None:  # CopyObject itself, without copy()'s HEAD pin
                with self._op("COPY", scratch_key):
                    self._client.copy_object(
                        Bucket=self.bucket, Key=scratch_key,
                        CopySource={"Bucket": self.bucket, "Key": scratch_key},
                        MetadataDirective="REPLACE", Metadata={"probe": "1"},
                        CopySourceIfMatch=_quote(wrong))

            copy_ok = refused(raw_copy)
            delete_ok = refused(lambda: self.delete(scratch_key, if_match=wrong))
        finally:
            self.delete(scratch_key)
            if state != "off":
                self._purge_versions(scratch_key)
        if state in ("enabled", "suspended") and not (none_match and match):
            log.warning("%s does not honour conditional PUTs on the %s bucket %r "
                        "(If-None-Match: %s, If-Match: %s)", self.endpoint,
                        f"versioning-{state}", self.bucket,
                        "yes" if none_match else "no", "yes" if match else "no")
        return Capabilities(conditional_put=none_match and match,
                            conditional_copy=copy_ok, conditional_delete=delete_ok,
                            versioning=state if state != "unknown" else None)

    def _purge_versions(self, key: str) -> None:
        """Delete every version and delete marker of exactly ``key`` (the probe's
        scratch object). Failures are logged, not raised: they only leave history."""
        try:
            token = None
            while True:
                page = self.list_versions(key, token)
                for v in page.versions:
                    if v.key == key:
                        with self._op("DELETE", key, version_id=v.version_id):
                            self._client.delete_object(Bucket=self.bucket, Key=key,
                                                       VersionId=v.version_id)
                token = page.next_token
                if token is None:
                    return
        except StoreError as exc:
            log.warning("probe: could not remove the versions of %s: %s",
                        self._where(key), exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


#: the response field where ``_version_order`` leaves the order it saw
_ORDER_FIELD = "S3FuseVersionOrder"


def _version_order(response_dict: dict, customized_response_dict: dict, **_kw: Any) -> None:
    """botocore hook (before-parse, ListObjectVersions): record the order of the
    <Version> and <DeleteMarker> elements as (key, version id), which boto3's two
    separate lists lose. Best effort: on any surprise, records nothing."""
    try:
        if response_dict.get("status_code", 500) >= 300:
            return
        root = ElementTree.fromstring(response_dict.get("body") or b"")
        order = []
        for child in root:
            tag = child.tag.rsplit("}", 1)[-1]
            if tag in ("Version", "DeleteMarker"):
                fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in child}
                order.append((fields.get("Key", ""), fields.get("VersionId") or "null"))
        customized_response_dict[_ORDER_FIELD] = order
    except Exception:  # (ParseError, a streamed body...): fall back to LastModified
        return
