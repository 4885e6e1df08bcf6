"""A fork's DEST while the fork still copies: an ``ObjectStore`` that shows DEST as it
will be when the fork has finished (docs/SEMANTICS.md, "Time travel").

``s3fuse fork`` writes its record at ``DEST_PREFIX.s3fuse/fork.json`` (the format is
defined here, ``encode_record``/``ForkRecord``): the source bucket and prefix, every
pinned version, ``copied_through`` (every pinned key up to it is in DEST, or DEST had
it already) and ``finished``. A mount of DEST that finds an unfinished record wraps its
store in ``ForkedStore`` (``wrap_if_forking``), which serves the keys not copied yet
from their source versions:

* a *pending* key is a pinned key after ``copied_through`` that DEST does not show,
  and that this store has not handed over to DEST itself (``_settled``);
* listings are DEST's pages with the pending keys of each page's key range merged in
  (with the pinned size and ETag, and the source version's time); HEADs and GETs of a
  key DEST lacks answer from the pinned source version (exact version id): no byte of
  a pending file passes through the host unless someone reads it;
* a change to a pending key (a PUT with ``if_match``, a copy from it, a delete) first
  *materialises* it: a server-side copy of the source version to DEST with
  If-None-Match (a refusal means the fork copied it meanwhile: fine), and leaves a
  note of it (``CHANGED_DIR``, ``changed_key``) that a later mount reads when it
  starts (a key deleted here must not show as not copied yet after a remount). So
  the mount's conditional writes and S3-wins rules work unchanged above this store.

The record is read again at most every ``REFRESH_S`` (one GET, inside whichever call
comes next); once it says ``finished``, every call goes straight to DEST.

What a fork does about a pending key the mount deleted after materialising it (its
later copy would succeed over the delete marker) is in ``fork.py``: it removes such
copies by version id before it marks the record finished.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import timeline
from .errors import NoSuchKey, PreconditionFailed, S3FuseError, StoreError
from .store import ListPage, ObjectInfo, ObjectStore, open_store
from .store.base import Body

log = logging.getLogger(__name__)

FORK_FORMAT = "s3fuse-fork/1"
#: below DEST's prefix: the record of the fork that made it
FORK_RECORD = timeline.RESERVED + "/fork.json"
#: how often a ForkedStore reads the record again, at most
REFRESH_S = 2.0
#: below DEST's prefix: one note per pinned key a mount of DEST changed before the fork
#: copied it (a later mount must not show such a key as not copied yet: it may have
#: been deleted); named and read as ``changed_key`` says; the fork removes them
CHANGED_DIR = timeline.RESERVED + "/fork-changed/"


@dataclass(frozen=True)
class ForkRecord:
    """A fork record as stored at ``DEST_PREFIX + FORK_RECORD``: JSON with ``format``,
    ``source`` (``bucket``, ``prefix``), the point (``snapshot`` or ``at``),
    ``created``, ``finished`` (a time, or null while copying), ``copied_through`` (a
    relative key, or null before the first is copied) and ``objects`` (one per pinned
    version, keys ascending: ``key``, ``version_id``, ``etag``, ``size`` and, since
    this field came in, ``mtime_ns``)."""

    source_bucket: str
    source_prefix: str
    pins: tuple[timeline.Pinned, ...]  # keys relative to the prefix, ascending
    copied_through: str | None
    finished: bool

    @classmethod
    def decode(cls, body: bytes) -> ForkRecord:
        """Raises S3FuseError (one line) for a record this version cannot read."""
        try:
            doc = json.loads(body)
            if doc.get("format") != FORK_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            created = timeline.parse_when(doc["created"])
            pins = tuple(sorted((timeline.Pinned(
                str(o["key"]), str(o["version_id"]), str(o["etag"]), int(o["size"]),
                int(o.get("mtime_ns", created))) for o in doc["objects"]),
                key=lambda p: p.key))
            through = doc.get("copied_through")
            return cls(str(doc["source"]["bucket"]), str(doc["source"]["prefix"]), pins,
                       None if through is None else str(through), bool(doc.get("finished")))
        except (ValueError, KeyError, TypeError, AttributeError, S3FuseError) as exc:
            raise S3FuseError(f"not a fork record s3fuse can read: {exc}") from None


def encode_record(source_bucket: str, source_prefix: str, point: dict,
                  pins: list[timeline.Pinned], *, created_ns: int, finished_ns: int | None,
                  copied_through: str | None) -> bytes:
    """The record's bytes (see ``ForkRecord``); ``pins`` in any order."""
    return json.dumps({
        "format": FORK_FORMAT, "source": {"bucket": source_bucket, "prefix": source_prefix},
        **point, "created": timeline.format_when(created_ns),
        "finished": None if finished_ns is None else timeline.format_when(finished_ns),
        "copied_through": copied_through,
        "objects": [{"key": p.key, "version_id": p.version_id, "etag": p.etag,
                     "size": p.size, "mtime_ns": p.mtime_ns}
                    for p in sorted(pins, key=lambda p: p.key)],
    }, separators=(",", ":")).encode()


def changed_key(prefix: str, rel: str) -> str:
    """The key of the note that a mount changed the pinned key ``rel``: named by the
    SHA-256 of the key's UTF-8 (64 hex digits, so that every key up to S3's 1,024
    bytes has a note), with the key's UTF-8 as its body (``ForkedStore.load_changed``
    reads it back, and takes the note only where the name matches the body)."""
    return prefix + CHANGED_DIR + hashlib.sha256(rel.encode()).hexdigest()


def changed_keys(store: ObjectStore, prefix: str) -> list[str]:
    """The notes under ``prefix`` (their own keys), every page."""
    out, token = [], None
    while True:
        page = store.list(prefix + CHANGED_DIR, None, token)
        out += [o.key for o in page.objects]
        token = page.next_token
        if token is None:
            return out


def read_record(store: ObjectStore, prefix: str) -> ForkRecord | None:
    """The fork record under ``prefix``, or None if there is none."""
    try:
        return ForkRecord.decode(store.get(prefix + FORK_RECORD))
    except NoSuchKey:
        return None


def wrap_if_forking(store: ObjectStore, prefix: str, source_url: str, *,
                    endpoint_url: str | None = None, region: str | None = None
                    ) -> ObjectStore:
    """``store`` (the mount's, of ``source_url``), wrapped in a ForkedStore when the
    prefix holds an unfinished fork record. The fork's source is reached as the fork
    reached it: another bucket of the same S3 server with the same credentials, or,
    for the file and memory stores, the same store. A record it cannot read is logged
    and ignored (the mount then shows DEST as it is)."""
    try:
        record = read_record(store, prefix)
    except S3FuseError as exc:
        log.warning("ignoring the fork record at %s: %s", prefix + FORK_RECORD, exc)
        return store
    if record is None or record.finished:
        return store
    if source_url.startswith("s3://"):
        source, _ = open_store(f"s3://{record.source_bucket}", endpoint_url=endpoint_url,
                               region=region)
    else:
        source = store
    log.info("DEST of an unfinished fork: %d pinned objects not copied yet are read from "
             "%s%s", len(record.pins), record.source_bucket and f"{record.source_bucket}/",
             record.source_prefix)
    forked = ForkedStore(store, source, record.source_prefix, prefix, record)
    forked.load_changed()
    return forked


class ForkedStore:
    """DEST of a fork in progress (see the module docstring). Thread-safe, like every
    store: ``_lock`` guards the record's state and the caches."""

    def __init__(self, dest: ObjectStore, source: ObjectStore, source_prefix: str,
                 dest_prefix: str, record: ForkRecord, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dest = dest
        self.source = source
        self.source_prefix = source_prefix
        self.dest_prefix = dest_prefix
        self.source_bucket = record.source_bucket
        self.description = dest.description
        self._clock = clock
        self._lock = threading.Lock()
        #: DEST keys (full) of the pins, ascending, and each key's pin
        self._keys = [dest_prefix + p.key for p in record.pins]
        self._pins = dict(zip(self._keys, record.pins, strict=True))
        # the record's progress, owned by ``_refresh`` (``_apply``)
        self._through: str | None = None  # full DEST key
        self._finished = False
        self._apply(record)
        self._checked_at = clock()
        self._refreshing = False
        #: pinned keys this store materialised (or saw changed through it): never
        #: pending again, whatever DEST shows (a key deleted here stays deleted)
        self._settled: set[str] = set()
        #: HEADs of source versions, by DEST key (versions never change)
        self._heads: dict[str, ObjectInfo] = {}

    # --- the record, and the notes of changed keys ------------------------------------

    def load_changed(self) -> None:
        """Take the keys earlier mounts changed as settled (one listing and one GET per
        note; a failure is logged, and those keys may show as not copied yet)."""
        try:
            notes = changed_keys(self.dest, self.dest_prefix)
        except StoreError as exc:
            log.warning("could not list the keys changed in DEST during the fork: %s", exc)
            return
        for note in notes:
            try:
                rel = self.dest.get(note).decode()
            except NoSuchKey:
                continue  # the fork has finished and removed it
            except StoreError as exc:
                log.warning("could not read the note %s of a key changed in DEST during "
                            "the fork: %s", note, exc)
                continue
            except UnicodeDecodeError:
                continue  # not a note of ours
            if changed_key(self.dest_prefix, rel) == note:
                self._settle(self.dest_prefix + rel)

    def _apply(self, record: ForkRecord) -> None:
        """Adopt a record read from DEST. Under the lock (or in __init__)."""
        through = record.copied_through
        self._through = None if through is None else self.dest_prefix + through
        self._finished = record.finished

    def _refresh(self) -> None:
        """Read the record again if it is older than REFRESH_S (one thread does; the
        others go on with what they know)."""
        with self._lock:
            if self._finished or self._refreshing \
                    or self._clock() - self._checked_at < REFRESH_S:
                return
            self._refreshing = True
        record, gone = None, False
        try:
            record = read_record(self.dest, self.dest_prefix)
            gone = record is None  # (a refused fork removes its record: DEST as it is)
        except (StoreError, S3FuseError) as exc:
            log.debug("could not read the fork record again: %s", exc)
        finally:
            with self._lock:
                self._refreshing = False
                self._checked_at = self._clock()
                if record is not None:
                    self._apply(record)
                self._finished = self._finished or gone
                if self._finished:
                    log.info("the fork into %s has %s: reading DEST only",
                             self.dest_prefix or "the bucket",
                             "no record any more" if gone else "finished")

    @property
    def finished(self) -> bool:
        self._refresh()
        return self._finished

    def progress(self) -> tuple[int, int]:
        """(pinned keys up to copied_through, all pinned keys), as last read."""
        with self._lock:
            if self._finished:
                return len(self._keys), len(self._keys)
            done = 0 if self._through is None else bisect.bisect_right(self._keys,
                                                                       self._through)
            return done, len(self._keys)

    def _pending_pin(self, key: str) -> timeline.Pinned | None:
        """The pin of ``key`` if it may still be pending (DEST's answer decides)."""
        self._refresh()
        with self._lock:
            if self._finished or key in self._settled:
                return None
            pin = self._pins.get(key)
            if pin is None or (self._through is not None and key <= self._through):
                return None
            return pin

    def _pending_between(self, prefix: str, delimiter: str | None, after: str | None,
                         upto: str | None) -> list[str]:
        """Pinned keys under ``prefix`` that may still be pending and whose listed
        name (the key, or its common prefix with ``delimiter``) is in (after, upto]
        (None: unbounded), ascending. Listed names grow with the keys."""
        self._refresh()
        with self._lock:
            if self._finished:
                return []
            i = bisect.bisect_left(self._keys, prefix)
            for bound in (after, self._through):
                if bound is not None:
                    i = max(i, bisect.bisect_right(self._keys, bound))
            out = []
            for key in self._keys[i:]:
                if not key.startswith(prefix):
                    break
                name = _listed_name(key, prefix, delimiter)[0]
                if upto is not None and name > upto:
                    break
                if (after is None or name > after) and key not in self._settled:
                    out.append(key)
            return out

    # --- reads ------------------------------------------------------------------------

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        try:
            return self.dest.head(key, version_id=version_id)
        except NoSuchKey:
            pin = self._pending_pin(key) if version_id is None else None
            if pin is None:
                raise
        with self._lock:
            cached = self._heads.get(key)
        if cached is None:
            info = self.source.head(self.source_prefix + pin.key, version_id=pin.version_id)
            cached = ObjectInfo(key, info.size, info.etag, info.mtime_ns, info.metadata)
            with self._lock:
                self._heads[key] = cached
        return ObjectInfo(cached.key, cached.size, cached.etag, cached.mtime_ns,
                          None if cached.metadata is None else dict(cached.metadata))

    def _read(self, key: str, if_match: str | None, version_id: str | None,
              read: Callable[[ObjectStore, str, str | None, str | None], Any]) -> Any:
        """``read(store, key, version_id, if_match)`` on DEST, or for a pending key DEST
        lacks, on the pinned source version (the pin's ETag checked here)."""
        try:
            return read(self.dest, key, version_id, if_match)
        except NoSuchKey:
            pin = self._pending_pin(key) if version_id is None else None
            if pin is None:
                raise
        if if_match is not None and if_match != pin.etag:
            raise PreconditionFailed(f"{key!r} is not at etag {if_match} (the fork pinned "
                                     f"{pin.etag})")
        return read(self.source, self.source_prefix + pin.key, pin.version_id, None)

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None, version_id: str | None = None) -> bytes:
        return self._read(key, if_match, version_id, lambda store, k, vid, pin: store.get(
            k, start, end, if_match=pin, version_id=vid))

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None, version_id: str | None = None) -> int:
        return self._read(key, if_match, version_id, lambda store, k, vid, pin: store.get_into(
            k, fileobj, start, end, if_match=pin, version_id=vid))

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        """DEST's page, with the pending keys of its key range merged in. The token
        carries DEST's and where the page before ended (entries are compared as
        listed: a common prefix sorts where its keys start)."""
        dest_token, after = _decode_token(token)
        page = self.dest.list(prefix, delimiter, dest_token, max_keys)
        shown = [o.key for o in page.objects] + page.prefixes
        upto = max(shown) if shown else after
        if page.next_token is None:
            upto = None  # the last page: everything after
        elif not shown:
            upto = after  # (an empty page that is not the last: nothing to merge)
        pending = [] if (upto is not None and after is not None and upto <= after) else \
            self._pending_between(prefix, delimiter, after, upto)
        next_token = None if page.next_token is None else _encode_token(page.next_token,
                                                                        upto)
        if not pending:
            return ListPage(page.objects, page.prefixes, next_token)
        objects = {o.key: o for o in page.objects}
        prefixes = set(page.prefixes)
        for key in pending:
            name, rolled = _listed_name(key, prefix, delimiter)
            if rolled:
                prefixes.add(name)
            elif key not in objects:
                pin = self._pins[key]
                objects[key] = ObjectInfo(key, pin.size, pin.etag, pin.mtime_ns)
        return ListPage([objects[k] for k in sorted(objects)], sorted(prefixes), next_token)

    # --- changes ----------------------------------------------------------------------

    def materialise(self, key: str, etag: str | None = None) -> str | None:
        """Make a pending ``key`` a real object of DEST: a server-side copy of its
        pinned version with If-None-Match (already there: fine). After this the key is
        never pending again for this store.

        Returns ``etag`` (a condition the caller holds), or the copy's own ETag where
        the copy made here got another one than the pinned version (an object copied
        part by part) and ``etag`` named the pinned one."""
        pin = self._pending_pin(key)
        if pin is None:
            return etag
        try:
            self.dest.head(key)
        except NoSuchKey:
            try:
                made = self.dest.copy_version(
                    self.source_bucket, self.source_prefix + pin.key, pin.version_id, key,
                    pin.size, if_none_match=True)
                log.debug("materialised %s from the fork's source", key)
                if etag == pin.etag:
                    etag = made.etag
            except PreconditionFailed:
                pass  # the fork copied it meanwhile
        try:
            self.dest.put(changed_key(self.dest_prefix, pin.key), pin.key.encode(), {})
        except StoreError as exc:  # (a remount may show the key as not copied yet)
            log.warning("could not note that %s changed during the fork: %s", key, exc)
        with self._lock:
            self._settled.add(key)
        return etag

    def _settle(self, key: str) -> None:
        with self._lock:
            if key in self._pins:
                self._settled.add(key)

    def put(self, key: str, body: Body, metadata: dict[str, str], *,
            if_match: str | None = None, if_none_match: bool = False,
            unchanged: Callable[[], bool] | None = None) -> str:
        if if_match is not None:
            if_match = self.materialise(key, if_match)
        etag = self.dest.put(key, body, metadata, if_match=if_match,
                             if_none_match=if_none_match, unchanged=unchanged)
        self._settle(key)
        return etag

    def copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None = None, *,
             src_if_match: str | None = None, src_version_id: str | None = None) -> str:
        if src_version_id is None:
            src_if_match = self.materialise(src_key, src_if_match)
        etag = self.dest.copy(src_key, dst_key, metadata, src_if_match=src_if_match,
                              src_version_id=src_version_id)
        self._settle(dst_key)
        return etag

    def delete(self, key: str, *, if_match: str | None = None,
               version_id: str | None = None) -> None:
        if version_id is None:
            if_match = self.materialise(key, if_match)
        self.dest.delete(key, if_match=if_match, version_id=version_id)

    # --- everything else is DEST's ----------------------------------------------------

    def close(self) -> None:
        if self.source is not self.dest:
            self.source.close()
        self.dest.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dest, name)


def fork_status(store: ObjectStore) -> dict | None:
    """For a mount's status: how far the fork into it has come (None: not a fork's
    DEST in progress when mounted). Uses what the store last read: no request."""
    if not isinstance(store, ForkedStore):
        return None
    copied, total = store.progress()
    return {"copied": copied, "total": total, "finished": copied == total}


def _listed_name(key: str, prefix: str, delimiter: str | None) -> tuple[str, bool]:
    """How ``key`` shows in a listing of ``prefix``: itself (False), or its common
    prefix (True)."""
    cut = key.find(delimiter, len(prefix)) if delimiter else -1
    if cut < 0:
        return key, False
    return key[:cut + len(delimiter)], True  # type: ignore[arg-type]


def _encode_token(dest_token: str, after: str | None) -> str:
    return json.dumps([dest_token, after])


def _decode_token(token: str | None) -> tuple[str | None, str | None]:
    if token is None:
        return None, None
    try:
        dest_token, after = json.loads(token)
        return str(dest_token), None if after is None else str(after)
    except (ValueError, TypeError):
        raise StoreError(f"invalid continuation token {token[:40]!r}") from None
