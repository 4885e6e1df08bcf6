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

Versions: ``enable_versioning()``/``suspend_versioning()`` switch the bucket's
versioning as S3's PutBucketVersioning does (it starts "off"). Old versions and delete
markers are kept per key; a write while versioning is suspended (or off) replaces the
key's "null" version. ``refuse_if_match_when_versioned`` stages Ceph RGW 16, which
refuses every If-Match PUT on a versioned bucket (``probe()`` then reports
``conditional_put=False``).
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
from s3fuse.store._listing import (
    NULL,
    Resume,
    decode_token,
    decode_version_token,
    new_version_id,
    null_sort_name,
    paginate,
    paginate_versions,
    roll_up,
    roll_up_keys,
    version_after,
    version_id_of,
)
from s3fuse.store.base import (
    Body,
    Capabilities,
    Copied,
    ListPage,
    ObjectInfo,
    VersionInfo,
    VersionPage,
)

#: request kinds counted in ``MemoryStore.counts`` (``check`` is counted too);
#: reads of a given version count as "head"/"get"/"copy" like the others. A copy
#: counts a "head" and a "copy", the two requests the S3 store makes for it.
KINDS = frozenset({"head", "get", "put", "copy", "delete", "list", "check",
                   "list_versions", "versioning"})

#: S3's limit on key length, in UTF-8 bytes
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class _Object:
    body: bytes
    metadata: dict[str, str]
    etag: str
    mtime_ns: int
    #: sort name of this version (see _listing.py): its id, or "<ns>-null"
    sort: str = ""

    def info(self, key: str, with_metadata: bool = True) -> ObjectInfo:
        return ObjectInfo(key, len(self.body), self.etag, self.mtime_ns,
                          dict(self.metadata) if with_metadata else None)


@dataclass(frozen=True)
class _Version:
    """An old version of a key, or a delete marker (``obj`` None)."""

    sort: str  # sort name: the version id, or "<ns>-null"
    obj: _Object | None
    mtime_ns: int

    def info(self, key: str, is_latest: bool) -> VersionInfo:
        if self.obj is None:
            return VersionInfo(key, version_id_of(self.sort), "", 0, self.mtime_ns,
                               is_latest, True)
        return VersionInfo(key, version_id_of(self.sort), self.obj.etag, len(self.obj.body),
                           self.obj.mtime_ns, is_latest, False)


@dataclass
class _Bucket:
    """The state behind one bucket name. ``lock`` guards every field."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the current version of every existing key
    objects: dict[str, _Object] = field(default_factory=dict)
    #: per key, its older versions and delete markers, newest first (a key absent
    #: from ``objects`` with history has a delete marker as its newest entry)
    history: dict[str, list[_Version]] = field(default_factory=dict)
    #: "off" (never enabled), "enabled" or "suspended", as S3 names them
    versioning: str = "off"
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
                 honour: Capabilities = Capabilities(True, True, True),
                 refuse_if_match_when_versioned: bool = False) -> None:
        if name is None:
            self._bucket = _Bucket()
        else:
            with _registry_lock:
                self._bucket = _registry.setdefault(name, _Bucket())
        self.name = name
        self.description = f"memory://{name}" if name is not None else "memory (private)"
        self.honour = honour
        #: refuse every If-Match PUT while versioning is enabled (as Ceph RGW 16 does)
        self.refuse_if_match_when_versioned = refuse_if_match_when_versioned
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

    def enable_versioning(self) -> None:
        """Keep old versions and delete markers from now on (S3: Status=Enabled)."""
        with self._bucket.lock:
            self._bucket.versioning = "enabled"

    def suspend_versioning(self) -> None:
        """Stop making new versions; those kept stay (S3: Status=Suspended)."""
        with self._bucket.lock:
            if self._bucket.versioning != "off":
                self._bucket.versioning = "suspended"

    def _request(self, kind: str) -> None:
        """Count one request and raise an injected fault if one is pending.

        Called with the bucket lock held.
        """
        self._bucket.counts[kind] += 1
        pending = self._bucket.faults.get(kind)
        if pending:
            raise pending.popleft()

    def _current(self, key: str, version_id: str | None = None) -> _Object:
        """The current object of ``key``, or its version ``version_id``. Under the lock."""
        obj = self._bucket.objects.get(key)
        if version_id is None:
            if obj is None:
                raise NoSuchKey(f"memory: no such key {key!r}")
            return obj
        if obj is not None and version_id_of(obj.sort) == version_id:
            return obj
        for old in self._bucket.history.get(key, ()):
            if version_id_of(old.sort) == version_id and old.obj is not None:
                return old.obj
        raise NoSuchKey(f"memory: {key!r} has no version {version_id!r}")

    def _newest_sort(self, key: str) -> str | None:
        current = self._bucket.objects.get(key)
        if current is not None:
            return current.sort
        older = self._bucket.history.get(key)
        return older[0].sort if older else None

    def _replace(self, key: str, new: _Object | None) -> str:
        """Make ``new`` (None: a delete marker, or nothing) the key's current version,
        keeping the one it replaces as versioning says. Under the lock.

        Returns the new version's sort name."""
        b = self._bucket
        now = time.time_ns()
        if b.versioning == "enabled":
            sort = new_version_id(self._newest_sort(key))
        else:
            sort = null_sort_name(max(now, (new.mtime_ns if new else 0)))
        current = b.objects.pop(key, None)
        older = b.history.get(key, [])
        if b.versioning != "off":
            if current is not None:
                older.insert(0, _Version(current.sort, current, current.mtime_ns))
            if b.versioning == "suspended":  # the new write is the "null" version
                older = [v for v in older if version_id_of(v.sort) != NULL]
            if new is None:
                older.insert(0, _Version(sort, None, now))
        if older:
            b.history[key] = older
        else:
            b.history.pop(key, None)
        if new is not None:
            b.objects[key] = _Object(new.body, new.metadata, new.etag, new.mtime_ns, sort)
        return sort

    # --- ObjectStore -----------------------------------------------------------------

    def check(self) -> None:
        with self._bucket.lock:
            self._request("check")

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        _validate(key)
        with self._bucket.lock:
            self._request("head")
            return self._current(key, version_id).info(key)

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None, version_id: str | None = None) -> bytes:
        _validate(key)
        check_range(start, end)
        with self._bucket.lock:
            self._request("get")
            obj = self._current(key, version_id)
            if if_match is not None and obj.etag != if_match:
                raise PreconditionFailed(f"memory: {key!r} changed (etag {obj.etag})")
            body = obj.body
        return body[start:end] if end is None or end > start else b""

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None, version_id: str | None = None) -> int:
        data = self.get(key, start, end, if_match=if_match, version_id=version_id)
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
            if (if_match is not None and self.refuse_if_match_when_versioned
                    and self._bucket.versioning == "enabled"):
                raise PreconditionFailed(f"memory: If-Match PUTs are refused on a "
                                         f"versioned bucket ({key!r})")
            if self.honour.conditional_put:
                self._check_conditions(key, if_match, if_none_match)
            self._replace(key, new)
        return new.etag

    def _check_conditions(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        existing = self._bucket.objects.get(key)
        if if_none_match and existing is not None:
            raise PreconditionFailed(f"memory: {key!r} already exists")
        if if_match is not None and (existing is None or existing.etag != if_match):
            seen = existing.etag if existing else "no object"
            raise PreconditionFailed(f"memory: {key!r} is not at etag {if_match} ({seen})")

    def copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None = None, *,
             src_if_match: str | None = None, src_version_id: str | None = None) -> str:
        _validate(src_key)
        _validate(dst_key)
        with self._bucket.lock:
            # As the S3 store makes a copy: a HEAD of the source first (a missing
            # source, or a failed pin, ends there), then the COPY.
            self._request("head")
            src = self._current(src_key, src_version_id)
            if (src_if_match is not None and self.honour.conditional_copy
                    and src.etag != src_if_match):
                raise PreconditionFailed(f"memory: copy source {src_key!r} changed")
            self._request("copy")
            meta = dict(src.metadata) if metadata is None else dict(metadata)
            # Like S3's CopyObject, the copy of a single-part object keeps its ETag.
            self._replace(dst_key, _Object(src.body, meta, src.etag, time.time_ns()))
            return src.etag

    def copy_version(self, src_bucket: str, src_key: str, version_id: str, dst_key: str,
                     size: int, *, if_none_match: bool = False) -> Copied:
        """See ``ObjectStore.copy_version``: within this bucket (``src_bucket`` is not
        looked at); one "copy" request."""
        _validate(src_key)
        _validate(dst_key)
        with self._bucket.lock:
            self._request("copy")
            src = self._current(src_key, version_id)
            if if_none_match and self.honour.conditional_put:
                self._check_conditions(dst_key, None, True)
            sort = self._replace(dst_key, _Object(src.body, dict(src.metadata), src.etag,
                                                  time.time_ns()))
            return Copied(src.etag, version_id_of(sort))

    def delete(self, key: str, *, if_match: str | None = None,
               version_id: str | None = None) -> None:
        _validate(key)
        if version_id is not None:
            with self._bucket.lock:
                self._request("delete")
                self._delete_version(key, version_id)
            return
        with self._bucket.lock:
            self._request("delete")
            existing = self._bucket.objects.get(key)
            if existing is None:
                if self._bucket.versioning != "off" and if_match is None:
                    self._replace(key, None)  # S3 adds a marker even then
                return
            if (if_match is not None and self.honour.conditional_delete
                    and existing.etag != if_match):
                raise PreconditionFailed(f"memory: {key!r} is not at etag {if_match}")
            self._replace(key, None)

    def _delete_version(self, key: str, version_id: str) -> None:
        """Remove one version or delete marker for good; the next newest entry becomes
        the latest (an object: current again). Under the lock."""
        b = self._bucket
        current = b.objects.get(key)
        older = b.history.get(key, [])
        if current is not None and version_id_of(current.sort) == version_id:
            del b.objects[key]
        else:
            kept = [v for v in older if version_id_of(v.sort) != version_id]
            if len(kept) == len(older):
                return  # no such version: nothing to do (as S3)
            older = kept
        if key not in b.objects and older and older[0].obj is not None:
            top = older.pop(0)
            b.objects[key] = top.obj if top.obj.sort else _Object(
                top.obj.body, top.obj.metadata, top.obj.etag, top.obj.mtime_ns, top.sort)
        if older:
            b.history[key] = older
        else:
            b.history.pop(key, None)

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        resume: Resume = decode_token(token)
        with self._bucket.lock:
            self._request("list")
            keys = sorted(k for k in self._bucket.objects
                          if k.startswith(prefix) and resume.admits(k))
            infos = [self._bucket.objects[k].info(k, with_metadata=False) for k in keys]
        return paginate(roll_up(infos, prefix, delimiter), max_keys)

    def list_versions(self, prefix: str, token: str | None = None,
                      max_keys: int = 1000, delimiter: str | None = None) -> VersionPage:
        resume = decode_version_token(token)
        with self._bucket.lock:
            self._request("list_versions")
            b = self._bucket
            keys = sorted(k for k in set(b.objects) | set(b.history) if k.startswith(prefix))
            entries: list[tuple[str, VersionInfo] | str] = []
            for key, is_prefix in roll_up_keys(keys, prefix, delimiter, resume):
                if is_prefix:
                    entries.append(key)
                    continue
                chain: list[tuple[str, _Object | _Version]] = []
                current = b.objects.get(key)
                if current is not None:
                    chain.append((current.sort, current))
                chain.extend((v.sort, v) for v in b.history.get(key, ()))
                for i, (sort, item) in enumerate(chain):
                    if not version_after(resume, key, sort):
                        continue
                    if isinstance(item, _Version):
                        entries.append((sort, item.info(key, i == 0)))
                    else:
                        entries.append((sort, VersionInfo(
                            key, version_id_of(sort), item.etag, len(item.body),
                            item.mtime_ns, i == 0, False)))
                if len(entries) > max_keys:
                    break
        return paginate_versions(entries, max_keys)

    def versioning(self) -> str:
        with self._bucket.lock:
            self._request("versioning")
            return self._bucket.versioning

    def server_time_ns(self) -> int:
        return time.time_ns()

    def lifecycle_rules(self) -> list[dict]:
        """Nothing here ever expires."""
        return []

    def probe(self, scratch_key: str) -> Capabilities:
        with self._bucket.lock:
            refuses = (self.refuse_if_match_when_versioned
                       and self._bucket.versioning == "enabled")
        if refuses:
            return Capabilities(False, self.honour.conditional_copy,
                                self.honour.conditional_delete)
        return self.honour

    def close(self) -> None:
        pass
