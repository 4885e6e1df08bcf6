"""An in-memory object store for tests, with request counting and fault injection.

``MemoryStore("name")`` instances with the same name share one bucket (objects,
request counts and pending faults) for the life of the process, so a test can open
``memory://name`` from two places and see one bucket. ``MemoryStore()`` without a
name gets a private bucket.

Conditional requests behave like S3 at the level of the ``ObjectStore`` contract:
``if_none_match`` fails on an existing key, ``if_match`` on another ETag *or a missing
key* (S3 answers 404 there; every backend reports ``PreconditionFailed``), a pinned
``get`` fails when the object changed, and ``delete(if_match=...)`` of a missing key
succeeds. ETags are the md5 of the body, as S3 gives for single-part uploads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from s3fuse.errors import BodyChanged, InvalidKey, NoSuchKey, PreconditionFailed
from s3fuse.store._body import check_range, md5_hex, read_body
from s3fuse.store._listing import Resume, decode_token, paginate, roll_up
from s3fuse.store.base import Body, Capabilities, ListPage, ObjectInfo

#: request kinds counted in ``MemoryStore.counts`` (``check`` is counted too)
KINDS = frozenset({"head", "get", "put", "copy", "delete", "list", "check"})

#: S3's limit on key length, in UTF-8 bytes
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class _Object:
    body: bytes
    metadata: dict[str, str]
    etag: str
    mtime_ns: int

    def info(self, key: str, with_metadata: bool = True) -> ObjectInfo:
        return ObjectInfo(key, len(self.body), self.etag, self.mtime_ns,
                          dict(self.metadata) if with_metadata else None)


@dataclass
class _Bucket:
    """The state behind one bucket name. ``lock`` guards every field."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    objects: dict[str, _Object] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    faults: dict[str, deque[Exception]] = field(default_factory=dict)


_registry: dict[str, _Bucket] = {}
_registry_lock = threading.Lock()


def drop(name: str) -> None:
    """Forget the shared bucket ``name`` (later opens start empty)."""
    with _registry_lock:
        _registry.pop(name, None)


def _validate(key: str) -> None:
    if not key:
        raise InvalidKey("empty key")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"key is not valid UTF-8: {key!r}") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}...")


class MemoryStore:
    """Thread-safe in-memory ``ObjectStore``.

    ``honour`` says which conditional requests this fake server obeys; the others are
    ignored (as a server without support would), and ``probe()`` reports the same.
    """

    def __init__(self, name: str | None = None, *,
                 honour: Capabilities = Capabilities(True, True, True)) -> None:
        if name is None:
            self._bucket = _Bucket()
        else:
            with _registry_lock:
                self._bucket = _registry.setdefault(name, _Bucket())
        self.name = name
        self.description = f"memory://{name}" if name is not None else "memory (private)"
        self.honour = honour
        #: requests made so far, by kind; shared by every store on this bucket
        self.counts: Counter = self._bucket.counts

    # --- test helpers --------------------------------------------------------------

    def inject(self, kind: str, exc: Exception, times: int = 1) -> None:
        """Make the next ``times`` requests of ``kind`` raise ``exc`` (they still count)."""
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r} (one of {sorted(KINDS)})")
        with self._bucket.lock:
            self._bucket.faults.setdefault(kind, deque()).extend([exc] * times)

    def snapshot(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        """Every object as ``{key: (body, metadata)}``, copied."""
        with self._bucket.lock:
            return {k: (o.body, dict(o.metadata)) for k, o in self._bucket.objects.items()}

    def _request(self, kind: str) -> None:
        """Count one request and raise an injected fault if one is pending.

        Called with the bucket lock held.
        """
        self._bucket.counts[kind] += 1
        pending = self._bucket.faults.get(kind)
        if pending:
            raise pending.popleft()

    def _current(self, key: str) -> _Object:
        obj = self._bucket.objects.get(key)
        if obj is None:
            raise NoSuchKey(f"memory: no such key {key!r}")
        return obj

    # --- ObjectStore -----------------------------------------------------------------

    def check(self) -> None:
        with self._bucket.lock:
            self._request("check")

    def head(self, key: str) -> ObjectInfo:
        _validate(key)
        with self._bucket.lock:
            self._request("head")
            return self._current(key).info(key)

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        _validate(key)
        check_range(start, end)
        with self._bucket.lock:
            self._request("get")
            obj = self._current(key)
            if if_match is not None and obj.etag != if_match:
                raise PreconditionFailed(f"memory: {key!r} changed (etag {obj.etag})")
            body = obj.body
        return body[start:end] if end is None or end > start else b""

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None) -> int:
        data = self.get(key, start, end, if_match=if_match)
        fileobj.write(data)
        return len(data)

    def put(self, key: str, body: Body, metadata: dict[str, str], *,
            if_match: str | None = None, if_none_match: bool = False,
            unchanged: Callable[[], bool] | None = None) -> str:
        _validate(key)
        data = read_body(body)  # outside the lock: may read a file
        if unchanged is not None and not unchanged():
            raise BodyChanged(f"memory: the body of {key!r} changed while it was read")
        new = _Object(data, dict(metadata), md5_hex(data), time.time_ns())
        with self._bucket.lock:
            self._request("put")
            if self.honour.conditional_put:
                self._check_conditions(key, if_match, if_none_match)
            self._bucket.objects[key] = new
        return new.etag

    def _check_conditions(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        existing = self._bucket.objects.get(key)
        if if_none_match and existing is not None:
            raise PreconditionFailed(f"memory: {key!r} already exists")
        if if_match is not None and (existing is None or existing.etag != if_match):
            seen = existing.etag if existing else "no object"
            raise PreconditionFailed(f"memory: {key!r} is not at etag {if_match} ({seen})")

    def copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None = None, *,
             src_if_match: str | None = None) -> str:
        _validate(src_key)
        _validate(dst_key)
        with self._bucket.lock:
            self._request("copy")
            src = self._current(src_key)
            if (src_if_match is not None and self.honour.conditional_copy
                    and src.etag != src_if_match):
                raise PreconditionFailed(f"memory: copy source {src_key!r} changed")
            meta = dict(src.metadata) if metadata is None else dict(metadata)
            # Like S3's CopyObject, the copy of a single-part object keeps its ETag.
            self._bucket.objects[dst_key] = _Object(src.body, meta, src.etag, time.time_ns())
            return src.etag

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        _validate(key)
        with self._bucket.lock:
            self._request("delete")
            existing = self._bucket.objects.get(key)
            if existing is None:
                return
            if (if_match is not None and self.honour.conditional_delete
                    and existing.etag != if_match):
                raise PreconditionFailed(f"memory: {key!r} is not at etag {if_match}")
            del self._bucket.objects[key]

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        resume: Resume = decode_token(token)
        with self._bucket.lock:
            self._request("list")
            keys = sorted(k for k in self._bucket.objects
                          if k.startswith(prefix) and resume.admits(k))
            infos = [self._bucket.objects[k].info(k, with_metadata=False) for k in keys]
        return paginate(roll_up(infos, prefix, delimiter), max_keys)

    def probe(self, scratch_key: str) -> Capabilities:
        return self.honour

    def close(self) -> None:
        pass
