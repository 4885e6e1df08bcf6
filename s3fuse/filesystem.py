"""The filesystem, without FUSE: inodes, directory entries, data, and their journal.

``Filesystem`` is what ``fuse_ops`` adapts and what unit tests drive directly. Every
namespace change is one synchronous journal transaction (no ``await`` inside), so
other tasks and, through FUSE, other processes see the tree before or after a change,
never in between. Store calls (listing a directory the first time, fetching data
that is not cached) happen *before* such a transaction, and whatever they learned is
re-validated inside it.

Bucket side effects are never done here. A change marks the inode dirty (the flusher
uploads it when the aggregation window has passed) or, for objects already in the
bucket that are renamed or unlinked, appends server-side ``copy``/``delete`` ops to the
journal's op log. See ``journal`` for the invariant that keeps these consistent.

Errors are raised as ``FsError(errno)``; lookup counts and open handles follow the
pyfuse3 contract (an unlinked inode lives until its last lookup and handle are gone).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
import xxhash

from . import faults, keys, metadata
from .reconcile import Decision, decide
from .cache import Cache
from .errors import FsError, StoreError, TransientStoreError
from .fetch import Fetcher
from .journal import DIRTY_DATA, DIRTY_META, ROOT_INO, Inode, Journal, Txn
from .remote import Remote
from .store.base import ObjectInfo

if TYPE_CHECKING:
    from .flusher import Flusher

log = logging.getLogger(__name__)

HEAD_CONCURRENCY = 16
# entries whose attributes are HEADed ahead of the kernel's lookups after a readdir
# (``ls -l``, ``find -ls``: one lookup per entry, in listing order)
PREFETCH_AHEAD = 32
PREFETCH_AFTER_READDIR_S = 30.0
#: after a directory could not be listed (bucket unreachable), the mount works from
#: what it knows of it and asks the bucket again only after this many seconds
UNLISTED_RETRY_S = 10.0
STATE_XATTR = "user.s3fuse.state"


@dataclass
class Defaults:
    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


@dataclass
class Handle:
    ino: int
    writable: bool


@dataclass
class DirHandle:
    ino: int
    entries: list[tuple[bytes, int]]


@dataclass
class MetaLoads:
    """Bookkeeping of attributes loaded lazily (one HEAD) for entries known from a
    listing. ``nursery``: where prefetches run (set by the daemon; without one they
    run inside the lookup that asked for them)."""

    nursery: trio.Nursery | None = None
    loading: dict[int, trio.Event] = field(default_factory=dict)  # ino -> done
    readdir_at: dict[int, float] = field(default_factory=dict)  # dir ino -> monotonic
    cursor: dict[int, bytes] = field(default_factory=dict)  # dir ino -> last name queued
    last: dict[int, bytes] = field(default_factory=dict)  # dir ino -> last name looked up
    depth: dict[int, int] = field(default_factory=dict)  # dir ino -> entries to keep queued
    queued: dict[int, int] = field(default_factory=dict)  # dir ino -> prefetches not done


@dataclass
class SetAttrs:
    """Requested attribute changes; None means leave as is."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


def _now_ns() -> int:
    return time.time_ns()


def _name(inode: Inode) -> bytes:
    """The entry name a record holds (as ``keys.name_from_segment`` made it)."""
    return inode.name.encode("utf-8", "surrogatepass")


class Filesystem:
    def __init__(self, journal: Journal, cache: Cache, remote: Remote, prefix: str,
                 defaults: Defaults) -> None:
        self.journal = journal
        self.cache = cache
        self.remote = remote
        self.prefix = prefix
        self.defaults = defaults
        self.flusher: Flusher | None = None
        self.lookups: dict[int, int] = {}
        self.open_count: dict[int, int] = {}
        self.handles: dict[int, Handle | DirHandle] = {}
        self._next_fh = 1
        self.skipped_keys: dict[str, str] = {}
        self._list_locks: dict[int, trio.Lock] = {}
        # directories whose listing failed (bucket unreachable): ino -> monotonic time
        # of that failure; they are used from what the mount knows until a listing works
        self._unlisted: dict[int, float] = {}
        # entries whose HEAD failed the same way: ino -> monotonic time; they show the
        # defaults, and are asked about again after UNLISTED_RETRY_S
        self._unheaded: dict[int, float] = {}
        self.fetcher = Fetcher(self)
        self.meta_loads = MetaLoads()
        self.metadata_ttl_s = 1.0
        self._validated: dict[int, float] = {}  # ino -> monotonic time checked
        self._dir_used: dict[int, float] = {}  # directory ino -> monotonic time used
        # trio time of the last FUSE request (the flusher holds back while they come)
        self.last_request_at = -float("inf")
        # close-to-open by directory: dir ino -> (monotonic time listed, {key: ETag})
        self._dir_etags: dict[int, tuple[float, dict[str, str]]] = {}
        self._dir_listing: dict[int, trio.Event] = {}
        self.conflicts: list[dict] = []
        # open inodes the bucket replaced or deleted: ino -> (path, cache generation
        # then, what happened); kept in lost+found if written before their last close
        self._replaced: dict[int, tuple[str, int, str]] = {}
        # paths kept only locally because their key would pass S3's 1,024 bytes
        self.not_exported: dict[int, str] = {}
        # set by the daemon: tells the kernel to drop cached names and pages
        self.notify_kernel: Callable[[list[tuple[int, bytes]], list[int]], None] | None = None

    # --- start-up ----------------------------------------------------------------------
    def init(self) -> None:
        """Create the root inode on first use; drop inodes that only lived because a
        process had them open when the previous daemon stopped."""
        now = _now_ns()
        with self.journal.write() as txn:
            if txn.get(ROOT_INO) is None:
                txn.put(Inode(ino=ROOT_INO, mode=stat.S_IFDIR | self.defaults.dir_mode,
                              uid=self.defaults.uid, gid=self.defaults.gid, parent=ROOT_INO,
                              name="", nlink=2, atime_ns=now, mtime_ns=now, ctime_ns=now))
            raw = txn.get_meta(b"conflicts")
            self.conflicts = json.loads(raw) if raw else []
            for ino in [i.ino for i in txn.all_inodes() if i.nlink == 0]:
                self.cache.remove(ino)  # (first: see _maybe_purge)
                txn.delete_inode(ino)
            self._reconcile_dirty_sizes(txn)

    def _reconcile_dirty_sizes(self, txn: Txn) -> None:
        """After a crash, a dirty file's cache may hold a write whose size change never
        reached the journal: the cache file is the data, so its length wins."""
        for ino in txn.dirty_inos():
            inode = txn.get(ino)
            if inode is None or not stat.S_ISREG(inode.mode) or not inode.cached:
                continue
            try:
                size = os.path.getsize(self.cache.path(ino))
            except FileNotFoundError:
                if inode.size == 0:
                    # killed between a create's commit and its cache file: nothing
                    # was written to it, so an empty cache file is all its data
                    self.cache.create(ino, 0)
                    continue
                log.error("cache file of dirty inode %d (%s) is missing: its unsynced "
                          "data is lost", ino, inode.name)
                inode.cached = False
                inode.dirty &= ~DIRTY_DATA
                txn.put(inode)
                continue
            if size != inode.size:
                inode.size = size
                txn.put(inode)

    # --- small helpers -------------------------------------------------------------
    def get(self, ino: int) -> Inode:
        with self.journal.read() as txn:
            inode = txn.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT, f"inode {ino}")
        return inode

    def _get(self, txn: Txn, ino: int) -> Inode:
        inode = txn.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT, f"inode {ino}")
        return inode

    # --- hard links: one inode, a name record per name (see ``journal.Inode``) --------
    def data_of(self, txn: Txn, rec: Inode) -> Inode:
        """The inode whose bytes and attributes a name record's object carries."""
        return self._get(txn, rec.link_of) if rec.link_of else rec

    def _records(self, txn: Txn, inode: Inode) -> list[Inode]:
        """Every name record of ``inode``: itself, then its link records."""
        return [inode] + [self._get(txn, ino) for ino in inode.links]

    def record_at(self, txn: Txn, parent: int, name: bytes, inode: Inode) -> Inode:
        """The name record of ``inode`` for its entry ``name`` in ``parent``."""
        if not inode.links or (inode.parent == parent and _name(inode) == name):
            return inode
        for ino in inode.links:
            rec = self._get(txn, ino)
            if rec.parent == parent and _name(rec) == name:
                return rec
        raise FsError(errno.EIO, f"inode {inode.ino} has no record of its name {name!r}")

    def _remove_name(self, txn: Txn, inode: Inode, parent: int, name: bytes, now: int,
                     pending: list[int], dropped: list[int]) -> tuple[str, str | None] | None:
        """The entry ``name`` of ``parent`` (already unlinked by the caller) no longer
        names the non-directory ``inode``. Returns that name's object (key, ETag), for
        the caller to delete or, renaming over it, to inherit; None if it has none.
        Records dropped from the journal are added to ``dropped`` (for the flusher)."""
        rec = self.record_at(txn, parent, name, inode)
        remote = (rec.remote_key, rec.remote_etag)
        inode.nlink -= 1
        inode.ctime_ns = now
        if rec is not inode:
            inode.links.remove(rec.ino)
            txn.delete_inode(rec.ino)
            dropped.append(rec.ino)
        elif inode.links:
            # its first name goes: the next name's record becomes the inode's own
            nxt = self._get(txn, inode.links.pop(0))
            inode.parent, inode.name = nxt.parent, nxt.name
            inode.remote_key, inode.remote_etag = nxt.remote_key, nxt.remote_etag
            inode.dirty = nxt.dirty
            inode.change_seq = max(inode.change_seq, nxt.change_seq) + 1
            txn.clear_dirty(inode.ino)
            if inode.dirty:
                txn.mark_dirty(inode.ino)
                pending.append(inode.ino)
            txn.retarget_ops(nxt.ino, inode.ino)
            txn.delete_inode(nxt.ino)
            dropped.append(nxt.ino)
        else:
            inode.remote_key = inode.remote_etag = None
            inode.dirty = 0
            txn.clear_dirty(inode.ino)
        if inode.nlink > 0:
            self._mark(txn, inode, DIRTY_META, pending)  # the names left carry the ctime
        return remote if remote[0] is not None else None

    def _forget_records(self, dropped: list[int]) -> None:
        if self.flusher is not None:
            for ino in dropped:
                self.flusher.forget(ino)

    def path_names(self, txn: Txn, inode: Inode) -> list[str]:
        names: list[str] = []
        depth = 0
        while inode.ino != ROOT_INO:
            names.append(inode.name)
            parent = txn.peek(inode.parent)  # read-only: no copy per ancestor
            if parent is None:
                raise FsError(errno.ENOENT, f"inode {inode.parent}")
            inode = parent
            depth += 1
            if depth > 4096:
                raise FsError(errno.ELOOP, "directory chain too deep")
        names.reverse()
        return names

    def object_key(self, txn: Txn, inode: Inode) -> str | None:
        """The bucket key for this inode's current path (``dir/`` for a directory),
        or None if it is not exported (the root, ``.s3fuse/``, too long a key)."""
        if inode.ino == ROOT_INO:
            return None
        names = self.path_names(txn, inode)
        if names[0] == keys.RESERVED_ROOT_NAME.decode():
            return None
        key = self.prefix + "/".join(names)
        if stat.S_ISDIR(inode.mode):
            key += "/"
        if len(key.encode()) > keys.KEY_MAX:
            self.not_exported[inode.ino] = "/".join(names)
            return None
        return key

    def inode_at_key(self, txn: Txn, key: str) -> Inode | None:
        """The live inode whose path is ``key`` (a ``dir/`` key names a directory)."""
        if not key.startswith(self.prefix):
            return None
        rel = key[len(self.prefix):]
        want_dir = rel.endswith("/")
        ino = parent = ROOT_INO
        name = b""
        for part in rel.rstrip("/").split("/"):
            name = part.encode()
            found = txn.lookup(ino, name)
            if found is None:
                return None
            parent, ino = ino, found
        inode = txn.get(ino)
        if inode is None or stat.S_ISDIR(inode.mode) != want_dir:
            return None
        return self.record_at(txn, parent, name, inode)

    def _dir_prefix(self, txn: Txn, inode: Inode) -> str:
        if inode.ino == ROOT_INO:
            return self.prefix
        return self.prefix + "/".join(self.path_names(txn, inode)) + "/"

    def _touch_dir(self, txn: Txn, ino: int, now: int, nlink_delta: int = 0) -> None:
        d = self._get(txn, ino)
        d.mtime_ns = d.ctime_ns = now
        d.nlink += nlink_delta
        txn.put(d)

    def _mark(self, txn: Txn, inode: Inode, flags: int, pending: list[int]) -> None:
        """Record a change to upload; the caller has ``txn.put`` the inode after. The
        other names of a hard-linked file are marked too: each name's object holds the
        same bytes and attributes."""
        if self.object_key(txn, inode) is not None:
            inode.dirty |= flags
            inode.change_seq += 1
            txn.mark_dirty(inode.ino)
            pending.append(inode.ino)
        for ino in inode.links:
            rec = self._get(txn, ino)
            self._mark(txn, rec, flags, pending)
            txn.put(rec)

    def _notify(self, pending: list[int]) -> None:
        if self.flusher is not None:
            for ino in pending:
                self.flusher.note_change(ino)

    def _new_fh(self, h: Handle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        return fh

    def note_bucket_state(self, ino: int) -> None:
        """The mount just learnt what the bucket holds for ``ino`` (an upload or copy
        committed): a listing taken before now must not judge it."""
        self._validated[ino] = time.monotonic()

    def in_use(self, ino: int) -> bool:
        return self.lookups.get(ino, 0) > 0 or self.open_count.get(ino, 0) > 0

    def _maybe_purge(self, ino: int) -> None:
        """Drop an unlinked inode once nothing refers to it any more."""
        if self.in_use(ino):
            return
        with self.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink > 0:
                return
            # the cache file goes first: a crash between the two leaves an unlinked
            # inode, which the next start drops, never a cache file of no inode
            self.cache.remove(ino)
            txn.delete_inode(ino)
        self.fetcher.forget(ino)
        if self.flusher is not None:
            self.flusher.forget(ino)

    # --- listing the bucket into the journal ---------------------------------------
    def _skip(self, key: str, reason: str) -> None:
        if key not in self.skipped_keys:
            self.skipped_keys[key] = reason
            log.warning("skipping key %r: %s", key, reason)

    async def ensure_listed(self, ino: int, complete: bool = False) -> None:
        """Make sure the directory's entries from the bucket are in the journal.

        If the bucket cannot be reached, the directory is used from what the mount
        knows of it (its local entries: creating, writing and renaming there work), said
        once in the log, and listed again at the first use after ``UNLISTED_RETRY_S``;
        that listing merges like any other (local entries stay, and the uploads'
        conditions settle names both sides made). ``complete``: the caller must know
        every entry (an rmdir's emptiness check, moving a whole directory), so the
        error is raised instead.

        Lists the prefix once (all pages) and adds the entries in one transaction,
        from the listing alone: size, and LastModified as the times, with the mount's
        default attributes, marked ``meta_loaded=False``. Their real attributes (the
        object's headers) are read by ``load_meta`` when something needs them, so
        ``ls`` and ``find`` cost one LIST per directory and no HEAD per entry. The
        directory's own attributes are loaded first (it may be renamed, which
        rewrites its marker). Later local changes are authoritative; re-listing for
        outside changes is the poller's job.
        """
        inode = self.get(ino)
        if inode.listed or not stat.S_ISDIR(inode.mode):
            return
        failed_at = self._unlisted.get(ino)
        if not complete and failed_at is not None \
                and time.monotonic() - failed_at < UNLISTED_RETRY_S:
            return
        lock = self._list_locks.setdefault(ino, trio.Lock())
        async with lock:
            inode = self.get(ino)
            if inode.listed:
                return
            if not inode.meta_loaded:
                inode = await self.load_meta(ino)
            with self.journal.read() as txn:
                prefix = self._dir_prefix(txn, inode)
                exported = inode.ino == ROOT_INO or self.object_key(txn, inode) is not None
            if not exported:
                with self.journal.write() as txn:
                    d = self._get(txn, ino)
                    d.listed = True
                    txn.put(d)
                return
            try:
                dirs, files = await self._list_dir(ino, prefix)
            except TransientStoreError as exc:
                if complete:
                    raise
                if ino not in self._unlisted:
                    log.warning("cannot list directory %s (%s); using what the mount knows "
                                "of it until the bucket answers", prefix or "/", exc)
                self._unlisted[ino] = time.monotonic()
                return
            # entries were made here while it was unlisted: say that they are merged
            merging = self._unlisted.pop(ino, None) is not None
            if merging:
                log.info("listed directory %s: merged with what the mount made meanwhile",
                         prefix or "/")
            now = _now_ns()
            added: list[int] = []
            with self.journal.write() as txn:
                d = self._get(txn, ino)
                if d.listed:
                    return
                for name in dirs:
                    found = txn.lookup(ino, name)
                    if found is not None:
                        local = txn.get(found) if merging else None
                        if local is not None and stat.S_ISDIR(local.mode) and local.listed:
                            # made here while the bucket was away, and the bucket has it
                            # too: its own listing merges what the bucket holds under it
                            local.listed = False
                            txn.put(local)
                        continue
                    child = self._inode_from_object(txn, ino, name, None, is_dir=True,
                                                    fallback_ns=now)
                    txn.put(child)
                    txn.link(ino, name, child.ino)
                    d.nlink += 1
                for name, obj in files.items():
                    if txn.lookup(ino, name) is None:
                        added.append(self._add_from_object(txn, ino, name, obj).ino)
                d.listed = True
                txn.put(d)
            checked = time.monotonic()
            for child_ino in added:
                self._validated[child_ino] = checked

    async def _list_dir(self, ino: int, prefix: str
                        ) -> tuple[dict[bytes, str], dict[bytes, ObjectInfo]]:
        """The bucket's view of one directory: {name: prefix} of subdirectories and
        {name: object} of files, without keys that cannot be paths (logged once)."""
        page = await self.remote.list_all(prefix, "/")
        dirs: dict[bytes, str] = {}
        for p in page.prefixes:
            name = keys.name_from_segment(p[len(prefix):-1])
            if name is None or (ino == ROOT_INO and name == keys.RESERVED_ROOT_NAME):
                self._skip(p, "not a usable directory name")
                continue
            dirs[name] = p
        files: dict[bytes, ObjectInfo] = {}
        for obj in page.objects:
            if obj.key == prefix:
                continue  # this directory's own marker
            name = keys.name_from_segment(obj.key[len(prefix):])
            if name is None or (ino == ROOT_INO and name == keys.RESERVED_ROOT_NAME):
                self._skip(obj.key, "not a usable file name")
                continue
            if name in dirs:
                self._skip(obj.key, "both a file and a directory; the directory wins")
                continue
            files[name] = obj
        return dirs, files

    async def _head_many(self, keys_: list[str]) -> dict[str, ObjectInfo]:
        found: dict[str, ObjectInfo] = {}
        limiter = trio.CapacityLimiter(HEAD_CONCURRENCY)

        async def one(key: str) -> None:
            async with limiter:
                info = await self.remote.head_or_none(key)
                if info is not None:
                    found[key] = info

        async with trio.open_nursery() as nursery:
            for key in keys_:
                nursery.start_soon(one, key)
        return found

    def _add_from_object(self, txn: Txn, parent: int, name: bytes, info: ObjectInfo) -> Inode:
        """A new entry for a file object seen in the bucket (clean, not cached); from
        a listing (no metadata) its attributes are loaded later (``load_meta``)."""
        child = self._inode_from_object(txn, parent, name, info, is_dir=False,
                                        fallback_ns=info.mtime_ns)
        child.size = info.size
        child.remote_key, child.remote_etag = info.key, info.etag
        txn.put(child)
        txn.link(parent, name, child.ino)
        return child

    def _inode_from_object(self, txn: Txn, parent: int, name: bytes,
                           info: ObjectInfo | None, *, is_dir: bool,
                           fallback_ns: int) -> Inode:
        """An inode from what the bucket said: a HEAD (``info.metadata`` set) gives its
        attributes; a listing, or a common prefix (``info`` None), gives defaults and
        ``meta_loaded=False``."""
        fields = metadata.decode(
            info.metadata if info is not None else None, is_dir=is_dir,
            default_mode=self.defaults.dir_mode if is_dir else self.defaults.file_mode,
            default_uid=self.defaults.uid, default_gid=self.defaults.gid,
            fallback_mtime_ns=fallback_ns)
        inode = Inode(ino=txn.new_ino(), parent=parent, name=name.decode(), **fields)
        inode.meta_loaded = info is not None and info.metadata is not None
        if is_dir:
            inode.nlink = 2
        return inode

    # --- attributes loaded lazily ---------------------------------------------------
    async def load_meta(self, ino: int) -> Inode:
        """Make ``ino``'s attributes trustworthy before they are used: an entry known
        only from a listing is HEADed once (concurrent callers share that request).
        Idempotent. Returns the inode as it is afterwards, which may be unlinked if the
        bucket no longer has it; raises ENOENT if it is gone altogether. On a store
        error the defaults stay (and stay marked not loaded)."""
        inode = self.get(ino)
        if inode.meta_loaded:
            return inode
        failed_at = self._unheaded.get(ino)
        if failed_at is not None and time.monotonic() - failed_at < UNLISTED_RETRY_S:
            return inode
        loads = self.meta_loads
        done = loads.loading.get(ino)
        if done is None:
            done = loads.loading[ino] = trio.Event()
            try:
                await self._load_meta(inode)
            finally:
                del loads.loading[ino]
                done.set()
        else:
            await done.wait()
        return self.get(ino)

    async def _load_meta(self, inode: Inode) -> None:
        ino = inode.ino
        is_dir = stat.S_ISDIR(inode.mode)
        with self.journal.read() as txn:
            path_key = self.object_key(txn, inode)
        # a file's bytes (and headers) are at its object, or at a pending copy's source
        key, etag = (path_key, None) if is_dir else self.read_source(inode)
        if key is None:
            # nothing in the bucket describes it: the defaults are the attributes
            self._set_meta(ino, inode, None, is_dir, None)
            return
        try:
            info = await self.remote.head_or_none(key)
        except StoreError as exc:
            if ino not in self._unheaded:
                log.info("cannot read the attributes of %s (%s); showing defaults", key, exc)
            if isinstance(exc, TransientStoreError):
                self._unheaded[ino] = time.monotonic()
            return
        self._unheaded.pop(ino, None)
        checked = time.monotonic()
        if is_dir or (info is not None and info.etag == etag):
            self._set_meta(ino, inode, info, is_dir, key)
            if not is_dir and key == inode.remote_key:
                self._validated[ino] = checked
            return
        if key != inode.remote_key:
            return  # the source of a pending copy changed: the copy will tell
        # the bucket holds another version than the listing showed, or none
        self._validated[ino] = checked
        decision = self.apply_outside(ino, key, info)
        if decision is Decision.REFRESH and info is not None:
            with self.journal.write() as txn:
                fresh = txn.get(ino)
                if fresh is not None and fresh.remote_etag == info.etag:
                    fresh.meta_loaded = True  # _refresh took the HEAD's attributes
                    txn.put(fresh)

    def _set_meta(self, ino: int, before: Inode, info: ObjectInfo | None, is_dir: bool,
                  key: str | None) -> None:
        """Adopt the attributes a HEAD of ``key`` returned (``info``; None: no object,
        the defaults stand), unless the inode changed since ``before`` was read."""
        with self.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.meta_loaded:
                return
            if (inode.parent, inode.name, inode.remote_key, inode.remote_etag) != (
                    before.parent, before.name, before.remote_key, before.remote_etag):
                return  # moved or refreshed meanwhile: the next caller asks again
            if info is not None:
                fields = metadata.decode(
                    info.metadata, is_dir=is_dir,
                    default_mode=self.defaults.dir_mode if is_dir else self.defaults.file_mode,
                    default_uid=self.defaults.uid, default_gid=self.defaults.gid,
                    fallback_mtime_ns=info.mtime_ns)
                if inode.dirty:  # local times are newer than the object's
                    for name in ("mtime_ns", "atime_ns", "ctime_ns"):
                        del fields[name]
                for name, value in fields.items():
                    setattr(inode, name, value)
                if is_dir and inode.remote_key in (None, key):
                    inode.remote_key, inode.remote_etag = key, info.etag
            inode.meta_loaded = True
            txn.put(inode)

    async def stat(self, ino: int) -> Inode:
        """The inode with trustworthy attributes (``getattr``)."""
        return await self.load_meta(ino)

    def _prefetch_after(self, parent: int, name: bytes) -> list[int]:
        """After a readdir of ``parent``, the kernel looks its entries up one by one
        in listing order (``ls -l``): queue HEADs for the next unloaded entries so
        they are loaded by the time their lookup comes. Returns the inodes to load
        (the caller starts them)."""
        loads = self.meta_loads
        listed = loads.readdir_at.get(parent)
        if listed is None or time.monotonic() - listed > PREFETCH_AFTER_READDIR_S:
            for d in (loads.readdir_at, loads.cursor, loads.last, loads.depth):
                d.pop(parent, None)
            return []
        if name <= loads.last.get(parent, b""):
            return []  # not walking forward (the same name again, say): no scan
        loads.last[parent] = name
        # start with a few and double while the lookups keep walking the listing
        depth = loads.depth[parent] = min(loads.depth.get(parent, 2) * 2, PREFETCH_AHEAD)
        queued = loads.queued.get(parent, 0)
        if queued > depth // 2:
            return []  # enough in flight; top up later
        after = max(name, loads.cursor.get(parent, b""))
        want = depth - queued
        picked: list[int] = []
        last = after
        with self.journal.read() as txn:
            for scanned, (child_name, child) in enumerate(txn.children(parent, after)):
                if len(picked) >= want or scanned >= 4 * PREFETCH_AHEAD:
                    break
                last = child_name
                c = txn.get(child)
                if c is not None and not c.meta_loaded and child not in loads.loading:
                    picked.append(child)
        loads.cursor[parent] = last
        loads.queued[parent] = queued + len(picked)
        return picked

    async def _prefetch(self, parent: int, inos: list[int]) -> None:
        loads = self.meta_loads

        async def one(ino: int) -> None:
            try:
                await self.load_meta(ino)
            except FsError:
                pass  # gone meanwhile
            except Exception:  # noqa: BLE001 - a prefetch must never fail anything
                log.debug("prefetching attributes of inode %d failed", ino, exc_info=True)
            finally:
                left = loads.queued.get(parent, 1) - 1
                if left > 0:
                    loads.queued[parent] = left
                else:
                    loads.queued.pop(parent, None)

        async with trio.open_nursery() as nursery:
            for ino in inos:
                nursery.start_soon(one, ino)

    def _lookup_entry(self, parent: int, name: bytes) -> Inode:
        with self.journal.read() as txn:
            p = self._get(txn, parent)
            if not stat.S_ISDIR(p.mode):
                raise FsError(errno.ENOTDIR)
            if name == b".":
                ino = parent
            elif name == b"..":
                ino = p.parent
            else:
                if len(name) > keys.NAME_MAX:
                    raise FsError(errno.ENAMETOOLONG)
                found = txn.lookup(parent, name)
                if found is None:
                    raise FsError(errno.ENOENT)
                ino = found
            return self._get(txn, ino)

    # --- lookups --------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Inode:
        """Find ``name`` in ``parent``, with its attributes loaded (``load_meta``);
        bumps the inode's lookup count."""
        await self.ensure_listed(parent)
        self._dir_used[parent] = time.monotonic()
        inode = self._lookup_entry(parent, name)
        loads = self.meta_loads
        if not inode.meta_loaded or parent in loads.cursor:
            ahead = self._prefetch_after(parent, name) if name not in (b".", b"..") else []
            if ahead and loads.nursery is not None:
                loads.nursery.start_soon(self._prefetch, parent, ahead)
                ahead = []
            if not inode.meta_loaded or ahead:
                async with trio.open_nursery() as nursery:
                    if ahead:
                        nursery.start_soon(self._prefetch, parent, ahead)
                    if not inode.meta_loaded:
                        try:
                            await self.load_meta(inode.ino)
                        except FsError as exc:
                            if exc.errno != errno.ENOENT:
                                raise
                # the bucket may have removed or replaced it
                inode = self._lookup_entry(parent, name)
        self.lookups[inode.ino] = self.lookups.get(inode.ino, 0) + 1
        return inode

    def add_lookup(self, ino: int) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            self._maybe_purge(ino)

    # --- attributes ---------------------------------------------------------------------
    async def setattr(self, ino: int, changes: SetAttrs) -> Inode:
        inode = self.get(ino)
        if changes.size is not None:
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            if not stat.S_ISREG(inode.mode):
                raise FsError(errno.EINVAL)
            if changes.size > 0 or not inode.cached:
                if changes.size == 0:
                    await self._start_empty(ino)
                else:
                    await self.ensure_cached(ino)
        if changes.size is not None:
            self._dirty_before_data_change(ino)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._get(txn, ino)
            flags = 0
            if changes.size is not None:
                self.cache.truncate(ino, changes.size)
                inode.mtime_ns = now  # also for the same size, as ext4 does
                inode.size = changes.size
                flags |= DIRTY_DATA
            if changes.mode is not None:
                inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(changes.mode)
                flags |= DIRTY_META
            for name in ("uid", "gid", "atime_ns", "mtime_ns"):
                value = getattr(changes, name)
                if value is not None:
                    setattr(inode, name, value)
                    flags |= DIRTY_META
            inode.ctime_ns = now
            if flags and inode.nlink > 0:
                self._mark(txn, inode, flags, pending)
            txn.put(inode)
        self._notify(pending)
        return inode

    async def readlink(self, ino: int) -> bytes:
        inode = self.get(ino)
        if not stat.S_ISLNK(inode.mode):
            raise FsError(errno.EINVAL)
        if inode.target is None:
            src_key, etag = self.read_source(inode)
            if src_key is None:
                raise FsError(errno.EIO, "symlink target unknown")
            target = (await self.remote.get(src_key, if_match=etag)).decode("utf-8",
                                                                           "surrogateescape")
            with self.journal.write() as txn:
                inode = self._get(txn, ino)
                inode.target = target
                txn.put(inode)
        return inode.target.encode("utf-8", "surrogateescape")

    # --- creating entries ---------------------------------------------------------------
    async def _prepare_new(self, parent: int, name: bytes) -> str:
        seg = keys.check_new_name(name)
        await self.ensure_listed(parent)
        return seg

    def _new_entry_dir(self, txn: Txn, parent: int, name: bytes) -> Inode:
        """The directory a new entry ``name`` goes into, checked: a live directory
        without that name."""
        p = self._get(txn, parent)
        if not stat.S_ISDIR(p.mode):
            raise FsError(errno.ENOTDIR)
        if p.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        if txn.lookup(parent, name) is not None:
            raise FsError(errno.EEXIST)
        return p

    def _add_entry(self, txn: Txn, parent: int, name: bytes, seg: str, mode: int,
                   uid: int, gid: int, now: int, **fields: Any) -> Inode:
        p = self._new_entry_dir(txn, parent, name)
        if p.mode & stat.S_ISGID:
            # a setgid directory passes its group on (and the bit, to directories)
            gid = p.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inode = Inode(ino=txn.new_ino(), mode=mode, uid=uid, gid=gid, parent=parent,
                      name=seg, atime_ns=now, mtime_ns=now, ctime_ns=now, **fields)
        txn.link(parent, name, inode.ino)
        self._touch_dir(txn, parent, now, 1 if stat.S_ISDIR(mode) else 0)
        return inode

    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                     writable: bool = True) -> tuple[int, Inode]:
        """Create and open a regular file. Returns (fh, inode); bumps the lookup count."""
        seg = await self._prepare_new(parent, name)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._add_entry(txn, parent, name, seg, stat.S_IFREG | stat.S_IMODE(mode),
                                    uid, gid, now, cached=True)
            self._mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self.cache.create(inode.ino)
        self._notify(pending)
        self.add_lookup(inode.ino)
        self.open_count[inode.ino] = self.open_count.get(inode.ino, 0) + 1
        return self._new_fh(Handle(inode.ino, writable)), inode

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int,
                    gid: int) -> Inode:
        seg = await self._prepare_new(parent, name)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._add_entry(txn, parent, name, seg, kind | stat.S_IMODE(mode), uid,
                                    gid, now, rdev=rdev, cached=True)
            self._mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        if kind == stat.S_IFREG:
            self.cache.create(inode.ino)
        self._notify(pending)
        self.add_lookup(inode.ino)
        return inode

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        seg = await self._prepare_new(parent, name)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._add_entry(txn, parent, name, seg, stat.S_IFDIR | stat.S_IMODE(mode),
                                    uid, gid, now, nlink=2, listed=True)
            self._mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self._notify(pending)
        self.add_lookup(inode.ino)
        return inode

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int,
                      gid: int) -> Inode:
        seg = await self._prepare_new(parent, name)
        now = _now_ns()
        pending: list[int] = []
        text = target.decode("utf-8", "surrogateescape")
        with self.journal.write() as txn:
            inode = self._add_entry(txn, parent, name, seg, stat.S_IFLNK | 0o777, uid, gid,
                                    now, target=text, size=len(target), cached=True)
            self._mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self._notify(pending)
        self.add_lookup(inode.ino)
        return inode

    async def link(self, ino: int, parent: int, name: bytes) -> Inode:
        """A further name for a file. It gets a link record (see ``journal.Inode``) and,
        in the bucket, an object of its own with the same bytes and attributes. Bumps
        the lookup count."""
        seg = await self._prepare_new(parent, name)
        inode = self.get(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EPERM, "hard links to directories are not allowed")
        # every name's upload reads the file from here: have it whole first (a linked
        # file is never evicted from the cache)
        if stat.S_ISLNK(inode.mode):
            await self.readlink(ino)
        await self.ensure_cached(ino)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._get(txn, ino)
            if inode.nlink == 0:
                raise FsError(errno.ENOENT, "the file was removed")
            self._new_entry_dir(txn, parent, name)
            rec = Inode(ino=txn.new_ino(), mode=inode.mode, uid=inode.uid, gid=inode.gid,
                        parent=parent, name=seg, link_of=ino)
            txn.put(rec)
            txn.link(parent, name, ino)
            self._touch_dir(txn, parent, now)
            inode.links.append(rec.ino)
            inode.nlink += 1
            inode.ctime_ns = now
            # every name's object gets the new ctime; the new name's is written whole
            self._mark(txn, inode, DIRTY_META, pending)
            rec = self._get(txn, rec.ino)
            self._mark(txn, rec, DIRTY_DATA, pending)
            txn.put(rec)
            txn.put(inode)
        self._notify(pending)
        self.add_lookup(ino)
        return inode

    # --- removing entries ---------------------------------------------------------------
    def _drop_remote(self, txn: Txn, inode: Inode) -> None:
        """The inode leaves the namespace: its object (if any) is deleted in order."""
        if inode.remote_key is not None:
            txn.append_op({"op": "delete", "key": inode.remote_key, "etag": inode.remote_etag,
                           "ino": inode.ino})
        inode.remote_key = inode.remote_etag = None
        inode.dirty = 0
        txn.clear_dirty(inode.ino)

    def _keep_parent_dir(self, txn: Txn, parent: int, pending: list[int]) -> None:
        """A directory that loses its last entry keeps existing in the bucket: make
        sure a marker gets written for it."""
        if parent == ROOT_INO or txn.has_children(parent):
            return
        d = self._get(txn, parent)
        if d.remote_key is None and d.nlink > 0:
            self._mark(txn, d, DIRTY_META, pending)
            txn.put(d)

    async def unlink(self, parent: int, name: bytes) -> None:
        await self.ensure_listed(parent)
        now = _now_ns()
        pending: list[int] = []
        dropped: list[int] = []
        with self.journal.write() as txn:
            ino = txn.lookup(parent, name)
            if ino is None:
                raise FsError(errno.ENOENT)
            inode = self._get(txn, ino)
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            txn.unlink(parent, name)
            self._touch_dir(txn, parent, now)
            remote = self._remove_name(txn, inode, parent, name, now, pending, dropped)
            if remote is not None:
                txn.append_op({"op": "delete", "key": remote[0], "etag": remote[1],
                               "ino": ino})
            txn.put(inode)
            self._keep_parent_dir(txn, parent, pending)
        self._notify(pending)
        self._forget_records(dropped)
        self._maybe_purge(ino)

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.ensure_listed(parent)
        with self.journal.read() as txn:
            ino = txn.lookup(parent, name)
        if ino is None:
            raise FsError(errno.ENOENT)
        await self.ensure_listed(ino, complete=True)  # empty in the bucket too?
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            if txn.lookup(parent, name) != ino:
                raise FsError(errno.ENOENT)
            inode = self._get(txn, ino)
            if not stat.S_ISDIR(inode.mode):
                raise FsError(errno.ENOTDIR)
            if txn.has_children(ino):
                raise FsError(errno.ENOTEMPTY)
            txn.unlink(parent, name)
            self._touch_dir(txn, parent, now, -1)
            inode.nlink = 0
            inode.ctime_ns = now
            self._drop_remote(txn, inode)
            txn.put(inode)
            self._keep_parent_dir(txn, parent, pending)
        self._notify(pending)
        self._maybe_purge(ino)

    # --- rename -------------------------------------------------------------------------
    async def _ensure_subtree_listed(self, ino: int) -> None:
        stack = [ino]
        while stack:
            d = stack.pop()
            await self.ensure_listed(d, complete=True)
            with self.journal.read() as txn:
                for _, child in txn.children(d):
                    c = txn.get(child)
                    if c is not None and stat.S_ISDIR(c.mode):
                        stack.append(child)

    def _subtree(self, txn: Txn, top: Inode) -> Iterator[Inode]:
        """``top`` (a name record) and, for a directory, every name record below it:
        a hard-linked file once per name it has there."""
        stack = [top]
        while stack:
            rec = stack.pop()
            yield rec
            if stat.S_ISDIR(rec.mode):
                for name, child in txn.children(rec.ino):
                    c = self._get(txn, child)
                    stack.append(c if stat.S_ISDIR(c.mode)
                                 else self.record_at(txn, rec.ino, name, c))

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        """Atomic rename, replacing an existing target (``os.replace``).

        flags: 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE (EINVAL).
        """
        if flags & 2:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        new_seg = keys.check_new_name(new_name)
        await self.ensure_listed(old_parent)
        await self.ensure_listed(new_parent)
        with self.journal.read() as txn:
            ino = txn.lookup(old_parent, old_name)
            if ino is None:
                raise FsError(errno.ENOENT)
            moving = self._get(txn, ino)
            target_ino = txn.lookup(new_parent, new_name)
        if stat.S_ISDIR(moving.mode):
            await self._ensure_subtree_listed(ino)
        if target_ino is not None:
            await self.ensure_listed(target_ino, complete=True)

        now = _now_ns()
        pending: list[int] = []
        dropped: list[int] = []
        with self.journal.write() as txn:
            if txn.lookup(old_parent, old_name) != ino:
                raise FsError(errno.ENOENT)
            moving = self._get(txn, ino)
            is_dir = stat.S_ISDIR(moving.mode)
            np = self._get(txn, new_parent)
            if not stat.S_ISDIR(np.mode):
                raise FsError(errno.ENOTDIR)
            if np.nlink == 0:
                raise FsError(errno.ENOENT)
            if is_dir:
                # no moving a directory into itself or below itself
                walk = np
                while True:
                    if walk.ino == ino:
                        raise FsError(errno.EINVAL, "cannot move a directory into itself")
                    if walk.ino == ROOT_INO:
                        break
                    walk = self._get(txn, walk.parent)
            target_ino = txn.lookup(new_parent, new_name)
            if target_ino == ino:
                return
            displaced: Inode | None = None
            if target_ino is not None:
                if flags & 1:
                    raise FsError(errno.EEXIST)
                displaced = self._get(txn, target_ino)
                if stat.S_ISDIR(displaced.mode):
                    if not is_dir:
                        raise FsError(errno.EISDIR)
                    if txn.has_children(target_ino):
                        raise FsError(errno.ENOTEMPTY)
                elif is_dir:
                    raise FsError(errno.ENOTDIR)

            # the name record that moves (a hard-linked file has one per name), and
            # the keys before the move of every object that has to follow it
            rec = moving if is_dir else self.record_at(txn, old_parent, old_name, moving)
            old_keys = {i.ino: self.object_key(txn, i) for i in self._subtree(txn, rec)}

            # the namespace change itself
            # (the moved inode overwrites the displaced name's object: no delete needed)
            inherited: tuple[str, str | None] | None = None
            if displaced is not None:
                txn.unlink(new_parent, new_name)
                if stat.S_ISDIR(displaced.mode):
                    displaced.nlink = 0
                    displaced.ctime_ns = now
                    if displaced.remote_key is not None:
                        inherited = (displaced.remote_key, displaced.remote_etag)
                    displaced.remote_key = displaced.remote_etag = None
                    displaced.dirty = 0
                    txn.clear_dirty(displaced.ino)
                    self._touch_dir(txn, new_parent, now, -1)
                else:
                    inherited = self._remove_name(txn, displaced, new_parent, new_name, now,
                                                  pending, dropped)
                txn.put(displaced)
            txn.unlink(old_parent, old_name)
            txn.link(new_parent, new_name, ino)
            moving = self._get(txn, ino)
            moving.ctime_ns = now
            if rec.ino == ino:
                moving.parent, moving.name = new_parent, new_seg
                txn.put(moving)
            else:
                txn.put(moving)
                rec = self._get(txn, rec.ino)
                rec.parent, rec.name = new_parent, new_seg
                txn.put(rec)
            dir_delta = 1 if is_dir else 0
            self._touch_dir(txn, old_parent, now, -dir_delta)
            self._touch_dir(txn, new_parent, now, dir_delta)

            faults.crash_point("mid-rename")  # the transaction is not committed yet
            # bucket side: every object below the moved entry follows it
            for node in self._subtree(txn, self._get(txn, rec.ino)):
                self._move_remote(txn, node, old_keys[node.ino],
                                  inherited if node.ino == rec.ino else None, pending)
            self._keep_parent_dir(txn, old_parent, pending)
        self._notify(pending)
        self._forget_records(dropped)
        if displaced is not None:
            self._maybe_purge(displaced.ino)

    def _move_remote(self, txn: Txn, node: Inode, old_key: str | None,
                     inherited: tuple[str, str | None] | None, pending: list[int]) -> None:
        """Queue the bucket work that makes ``node``'s object follow its new path.

        ``inherited``: the object already at the new key that this node replaces; our
        next upload there is conditioned on its ETag instead of deleting it first.
        """
        node = self._get(txn, node.ino)
        new_key = self.object_key(txn, node)
        is_dir = stat.S_ISDIR(node.mode)
        had_remote = node.remote_key is not None
        if had_remote and node.remote_key != new_key:
            old = {"key": node.remote_key, "etag": node.remote_etag, "ino": node.ino}
            if is_dir or node.dirty & DIRTY_DATA or new_key is None:
                # rewritten from local state at the new key (or not at all)
                txn.append_op({"op": "delete", **old})
                node.remote_key = node.remote_etag = None
            else:
                # clean data stays server-side: copy, then delete the old key
                txn.append_op({"op": "copy", "src": old["key"], "dst": new_key,
                               "etag": old["etag"], "ino": node.ino})
                txn.append_op({"op": "delete", **old})
                node.remote_key, node.remote_etag = new_key, None
                inherited = None  # the copy overwrites it
        if new_key is None:
            node.dirty = 0
            txn.clear_dirty(node.ino)
        else:
            if inherited is not None and node.remote_key is None:
                node.remote_key, node.remote_etag = inherited
            if old_key is None:
                # it was not exported before (e.g. under .s3fuse/): upload it now
                self._mark(txn, node, DIRTY_META if is_dir else DIRTY_DATA | DIRTY_META,
                           pending)
            elif is_dir and (had_remote or inherited is not None):
                # the directory's marker and attributes move with it
                self._mark(txn, node, DIRTY_META, pending)
        txn.put(node)

    # --- file data ----------------------------------------------------------------------
    def read_source(self, inode: Inode) -> tuple[str | None, str | None]:
        """Where this inode's uncached bytes can be read right now: its object, or,
        while a pending copy has not run yet, that copy's source."""
        if self.flusher is not None:
            src = self.flusher.pending_copy_source(inode.ino)
            if src is not None:
                return src
        return inode.remote_key, inode.remote_etag

    def _dirty_before_data_change(self, ino: int) -> None:
        """Commit DIRTY_DATA before the cache file changes. A crash in between then
        leaves a dirty file to upload again, never a "clean" file whose cache differs
        from its object. (No-op when already dirty: one extra commit per change run.)"""
        pending: list[int] = []
        with self.journal.read() as txn:
            inode = txn.peek(ino)
            if inode is None:
                raise FsError(errno.ENOENT, f"inode {ino}")
            records = [inode] + [txn.peek(r) for r in inode.links]
            if inode.nlink == 0 or all(r is not None and r.dirty & DIRTY_DATA
                                       for r in records):
                return
        with self.journal.write() as txn:
            inode = self._get(txn, ino)
            self._mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self._notify(pending)

    async def _start_empty(self, ino: int) -> None:
        with self.journal.write() as txn:
            inode = self._get(txn, ino)
            self.cache.create(ino, 0)
            inode.cached = True
            txn.put(inode)

    async def ensure_cached(self, ino: int) -> None:
        """Fetch whatever part of the file is not in the cache yet (before a write:
        a dirty file is always whole in the cache)."""
        inode = self.get(ino)
        if inode.cached or not stat.S_ISREG(inode.mode):
            return
        await self.fetcher.whole(ino)

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns (fh, changed): ``changed`` means the bucket had a newer
        version (close-to-open), so the kernel must drop its cached pages."""
        changed = await self.revalidate(ino)
        inode = self.get(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if flags & os.O_TRUNC and stat.S_ISREG(inode.mode):
            # libfuse negotiates atomic O_TRUNC: the truncation comes with the open,
            # even read-only (the kernel checked write permission) and even when empty
            # (the times still move)
            await self.setattr(ino, SetAttrs(size=0))
        self.open_count[ino] = self.open_count.get(ino, 0) + 1
        return self._new_fh(Handle(ino, writable)), changed

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            raise FsError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        inode = self.get(h.ino)
        if offset >= inode.size:
            return b""
        if not inode.cached:
            await self.fetcher.for_read(h.ino, offset, size)
        return self.cache.read(h.ino, offset, min(size, inode.size - offset))

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        inode = self.get(h.ino)
        if not inode.cached:
            await self.ensure_cached(h.ino)
        if self.flusher is not None:
            await self.flusher.wait_for_room(h.ino, max(inode.size, offset + len(data)))
        now = _now_ns()
        end = offset + len(data)
        if self._write_deferred(h.ino, end, now):
            self.cache.write(h.ino, offset, data)
            return len(data)
        self._dirty_before_data_change(h.ino)  # (no await from here to the cache write)
        pending: list[int] = []
        self.cache.write(h.ino, offset, data)
        with self.journal.write() as txn:
            inode = self._get(txn, h.ino)
            inode.size = max(inode.size, offset + len(data))
            inode.mtime_ns = inode.ctime_ns = now
            if inode.nlink > 0:
                self._mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self._notify(pending)
        return len(data)

    def _write_deferred(self, ino: int, end: int, now: int) -> bool:
        """The common case of a write: to a file already DIRTY_DATA in the journal, with
        one name. Its new size and times go into a deferred record (no transaction,
        see ``Journal.defer``). False when the write needs the full path."""
        with self.journal.read() as txn:
            inode = txn.get(ino)
        if inode is None or inode.nlink == 0 or not inode.dirty & DIRTY_DATA \
                or inode.links or inode.link_of:
            return False
        inode.size = max(inode.size, end)
        inode.mtime_ns = inode.ctime_ns = now
        inode.change_seq += 1
        self.journal.defer(inode)
        self._notify([ino])
        return True

    async def fsync(self, fh: int) -> None:
        h = self._handle(fh)
        self.cache.fsync(h.ino)
        self.journal.sync()
        if self.flusher is not None and self.flusher.fsync_upload:
            await self.flusher.upload_now([h.ino])

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if not isinstance(h, Handle):
            return
        left = self.open_count.get(h.ino, 0) - 1
        if left > 0:
            self.open_count[h.ino] = left
            return
        self.open_count.pop(h.ino, None)
        replaced = self._replaced.pop(h.ino, None)
        if replaced is not None and self.cache.exists(h.ino) \
                and self.cache.generation(h.ino) != replaced[1]:
            path, _, what = replaced
            self._keep_replaced(h.ino, path, what)
        # (its cache file's descriptor stays open in the cache's bounded set: the
        # upload reads it next, and a new file is often opened again soon)
        self._maybe_purge(h.ino)

    # --- directories ----------------------------------------------------------------------
    async def opendir(self, ino: int) -> int:
        inode = self.get(ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        await self.ensure_listed(ino)
        self._dir_used[ino] = time.monotonic()
        with self.journal.read() as txn:
            entries = list(txn.children(ino))
        return self._new_fh(DirHandle(ino, entries))

    def dir_handle(self, fh: int) -> Inode:
        """The directory an opendir handle lists."""
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise FsError(errno.EBADF)
        return self.get(h.ino)

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Inode, int]]:
        """Entries from position ``start`` of the listing taken at opendir: a stable
        snapshot, so changes while listing skip or repeat nothing."""
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise FsError(errno.EBADF)
        if start == 0:
            # lookups of these entries may follow (ls -l): a new prefetch scan
            loads = self.meta_loads
            loads.readdir_at[h.ino] = time.monotonic()
            for d in (loads.cursor, loads.last, loads.depth):
                d.pop(h.ino, None)
        with self.journal.read() as txn:
            for pos in range(start, len(h.entries)):
                name, ino = h.entries[pos]
                inode = txn.get(ino)
                if inode is None or inode.nlink == 0:
                    continue
                yield name, inode, pos + 1

    def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # --- outside changes: S3 wins, nothing is lost --------------------------------------
    async def revalidate(self, ino: int) -> bool:
        """Close-to-open: a clean file whose attributes are older than the TTL is
        checked against the bucket. True if its content changed there (refreshed).
        A dirty file is not judged here: its upload's condition will find a conflict."""
        inode = self.get(ino)
        if not inode.meta_loaded:
            # first use of an entry known from a listing: its HEAD is the check
            etag = inode.remote_etag
            inode = await self.load_meta(ino)
            if inode.nlink == 0:
                raise FsError(errno.ESTALE, "removed in the bucket")
            return inode.remote_etag != etag and stat.S_ISREG(inode.mode)
        if not stat.S_ISREG(inode.mode) or inode.dirty or inode.remote_key is None \
                or inode.remote_etag is None or inode.links:
            return False  # (a hard-linked file's names are judged by the poller)
        if time.monotonic() - self._validated.get(ino, 0.0) < self.metadata_ttl_s:
            return False
        key = inode.remote_key
        # one LIST of the directory checks every file in it that is opened within
        # the TTL (git, a build: many opens in few directories); a HEAD only when
        # the listing shows another ETag
        listed = await self._listed_etags(inode.parent)
        if listed is not None and listed[1].get(key) == inode.remote_etag \
                and listed[0] >= self._validated.get(ino, 0.0):
            self._validated[ino] = listed[0]
            return False
        try:
            info = await self.remote.head_or_none(key)
        except StoreError as exc:
            log.info("cannot revalidate %s (%s); serving the cached version", key, exc)
            return False
        self._validated[ino] = time.monotonic()
        decision = self.apply_outside(ino, key, info)
        if decision is Decision.REMOVE:
            # this inode left the path (deleted, or replaced by a newer version while
            # others hold it open): ESTALE makes the kernel look the path up again
            raise FsError(errno.ESTALE, f"{key} changed in the bucket")
        return decision is Decision.REFRESH

    async def _listed_etags(self, parent: int) -> tuple[float, dict[str, str]] | None:
        """(when, {key: ETag}) of the objects directly in directory ``parent``, from
        a LIST taken less than the TTL ago (one LIST is shared by every open that
        needs it); None if it cannot be listed."""
        snap = self._dir_etags.get(parent)
        if snap is not None and time.monotonic() - snap[0] < self.metadata_ttl_s:
            return snap
        busy = self._dir_listing.get(parent)
        if busy is not None:
            await busy.wait()
            return self._dir_etags.get(parent)
        busy = self._dir_listing[parent] = trio.Event()
        try:
            with self.journal.read() as txn:
                d = txn.get(parent)
                if d is None or d.nlink == 0 or not stat.S_ISDIR(d.mode) or (
                        parent != ROOT_INO and self.object_key(txn, d) is None):
                    return None
                prefix = self._dir_prefix(txn, d)
            started = time.monotonic()  # what the listing shows is at least this new
            try:
                page = await self.remote.list_all(prefix, "/")
            except StoreError as exc:
                log.info("cannot list %s to revalidate (%s)", prefix, exc)
                return None
            snap = (started, {o.key: o.etag for o in page.objects})
            if len(self._dir_etags) >= 64:
                self._dir_etags.pop(next(iter(self._dir_etags)))
            self._dir_etags[parent] = snap
            return snap
        finally:
            del self._dir_listing[parent]
            busy.set()

    def apply_outside(self, ino: int, key: str, info: ObjectInfo | None,
                      reason: str = "changed in the bucket") -> Decision:
        """Bring ``ino`` (at ``key``) in line with what the bucket holds (``info``,
        None if nothing), by the S3-wins rules of ``reconcile``. Re-checks the inode
        in its own transaction, so it is safe after any await. ``ino`` may be a link
        record: one name of a hard-linked file."""
        entries: list[tuple[int, bytes]] = []
        inodes: list[int] = []
        now = _now_ns()
        with self.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink == 0 or self.object_key(txn, inode) != key:
                return Decision.KEEP
            decision = decide(dirty=bool(inode.dirty), known_etag=inode.remote_etag,
                              uploaded=inode.remote_key == key,
                              bucket_etag=info.etag if info is not None else None)
            if decision is Decision.KEEP:
                return decision
            if inode.link_of or inode.links:
                return self._split_name(txn, inode, info, now)
            if stat.S_ISDIR(inode.mode):
                self._adopt_marker(txn, inode, info)
                return Decision.REFRESH
            if decision is not Decision.CONFLICT and self.open_count.get(ino):
                # Like an atomic replace (or an unlink) on a local disk: open handles
                # keep the version they opened, the path shows the bucket's. What is
                # written through them from now on is kept in lost+found at their
                # last close (``release``): it was acknowledged, so it is not lost.
                self._replaced[ino] = ("/".join(self.path_names(txn, inode)),
                                       self.cache.generation(ino),
                                       "changed in the bucket" if info is not None
                                       else "deleted in the bucket")
                self._remove_gone(txn, inode, now, entries)
                if info is not None:
                    self._add_from_object(txn, inode.parent, inode.name.encode(), info)
                decision = Decision.REMOVE
            elif decision is Decision.REFRESH:
                assert info is not None
                self._refresh(txn, inode, info)
                inodes.append(ino)
            elif decision is Decision.REMOVE:
                self._remove_gone(txn, inode, now, entries)
            else:
                self._keep_ours(txn, inode, info, reason, now, entries)
        if decision is Decision.REFRESH:
            self.cache.remove(ino)
        if decision is not Decision.REFRESH and self.flusher is not None:
            self.flusher.forget(ino)
        self._invalidate(entries, inodes)
        if decision is Decision.REMOVE:
            self._maybe_purge(ino)
        return decision

    def _split_name(self, txn: Txn, rec: Inode, info: ObjectInfo | None,
                    now: int) -> Decision:
        """S3 wins at one name of a hard-linked file: that name leaves the file (whose
        other names keep its data, and upload it as before), and the bucket's object,
        if there is one, takes the path as a file of its own. Returns REMOVE: this
        record left its path. Finishes what ``apply_outside`` does after its
        transaction itself (the caller's transaction commits after this returns, and
        the kernel notices are queued for a background task)."""
        data = self.data_of(txn, rec)
        parent, name = rec.parent, _name(rec)
        pending: list[int] = []
        dropped: list[int] = []
        txn.unlink(parent, name)
        self._touch_dir(txn, parent, now)
        # the object at this key is the bucket's now: not deleted
        self._remove_name(txn, data, parent, name, now, pending, dropped)
        txn.put(data)
        if info is not None:
            self._add_from_object(txn, parent, name, info)
        log.warning("%s of a hard-linked file %s in the bucket: that name now holds the "
                    "bucket's version, the file keeps its other names", rec.name,
                    "changed" if info is not None else "was deleted")
        self._notify(pending)
        self._forget_records(dropped)
        self._invalidate([(parent, name)], [data.ino])
        return Decision.REMOVE

    def _invalidate(self, entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
        if self.notify_kernel is not None and (entries or inodes):
            self.notify_kernel(entries, inodes)

    def _refresh(self, txn: Txn, inode: Inode, info: ObjectInfo) -> None:
        """REFRESH: the bucket's newer version replaces our clean copy."""
        fields = metadata.decode(info.metadata, is_dir=False,
                                 default_mode=self.defaults.file_mode,
                                 default_uid=self.defaults.uid, default_gid=self.defaults.gid,
                                 fallback_mtime_ns=info.mtime_ns)
        for name, value in fields.items():
            setattr(inode, name, value)
        inode.size = info.size
        inode.remote_key, inode.remote_etag = info.key, info.etag
        inode.cached = False
        inode.target = None
        txn.put(inode)

    def _adopt_marker(self, txn: Txn, inode: Inode, info: ObjectInfo | None) -> None:
        """A directory marker changed outside: the bucket's attributes win; a marker
        deleted outside is written again if the directory still needs one."""
        if info is None:
            inode.remote_key = inode.remote_etag = None
        else:
            fields = metadata.decode(info.metadata, is_dir=True,
                                     default_mode=self.defaults.dir_mode,
                                     default_uid=self.defaults.uid,
                                     default_gid=self.defaults.gid,
                                     fallback_mtime_ns=info.mtime_ns)
            for name in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "xattrs",
                         "extra"):
                setattr(inode, name, fields[name])
            inode.remote_key, inode.remote_etag = info.key, info.etag
            inode.dirty = 0
            txn.clear_dirty(inode.ino)
        txn.put(inode)

    def _remove_gone(self, txn: Txn, inode: Inode, now: int,
                     entries: list[tuple[int, bytes]]) -> None:
        """REMOVE: deleted in the bucket, and nothing local to keep."""
        name = inode.name.encode()
        txn.unlink(inode.parent, name)
        self._touch_dir(txn, inode.parent, now)
        inode.nlink = 0
        inode.remote_key = inode.remote_etag = None
        txn.put(inode)
        entries.append((inode.parent, name))
        log.info("%s was deleted in the bucket; removed from the mount", inode.name)

    def _lost_found(self, txn: Txn, now: int) -> int:
        """The local directory ``.s3fuse/lost+found`` (made on first use). Nothing
        under ``.s3fuse`` is ever uploaded."""
        ino = ROOT_INO
        for name in (keys.RESERVED_ROOT_NAME, b"lost+found"):
            child = txn.lookup(ino, name)
            if child is None:
                d = Inode(ino=txn.new_ino(), mode=stat.S_IFDIR | 0o755, uid=self.defaults.uid,
                          gid=self.defaults.gid, parent=ino, name=name.decode(), nlink=2,
                          listed=True, atime_ns=now, mtime_ns=now, ctime_ns=now)
                txn.put(d)
                txn.link(ino, name, d.ino)
                self._touch_dir(txn, ino, now, 1)
                child = d.ino
            ino = child
        return ino

    @staticmethod
    def _conflict_name(txn: Txn, lost_found: int, path: str, now: int) -> bytes:
        """``a%2Fb.txt.conflict-20261121T045000Z``: the path and the time in one name."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now // 1_000_000_000))
        base = path.replace("%", "%25").replace("/", "%2F")
        suffix = f".conflict-{stamp}"
        if len((base + suffix).encode()) > 200:
            digest = xxhash.xxh64(path.encode()).hexdigest()[:12]
            base = base.encode()[:150].decode("utf-8", "ignore") + "~" + digest
        name = (base + suffix).encode()
        n = 1
        while txn.lookup(lost_found, name) is not None:
            n += 1
            name = f"{base}{suffix}-{n}".encode()
        return name

    def _keep_ours(self, txn: Txn, inode: Inode, info: ObjectInfo | None, reason: str,
                   now: int, entries: list[tuple[int, bytes]]) -> None:
        """CONFLICT: our version moves, whole, to lost+found (same inode, so open
        handles keep working); the bucket's version, if any, takes the path."""
        path = "/".join(self.path_names(txn, inode))
        parent, name = inode.parent, inode.name.encode()
        txn.unlink(parent, name)
        self._file_conflict(txn, inode, path,
                            reason if info is not None else "deleted in the bucket", now)
        inode.ctime_ns = now
        txn.put(inode)
        self._touch_dir(txn, parent, now)
        if info is not None:
            self._add_from_object(txn, parent, name, info)
        entries.append((parent, name))

    def _keep_replaced(self, ino: int, path: str, what: str) -> None:
        """An open file that the bucket replaced or deleted was written after that,
        through its open handles: at their last close it goes to lost+found, whole,
        as a conflict (the bucket's version keeps the path)."""
        now = _now_ns()
        with self.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink != 0 or not inode.cached:
                return
            self._file_conflict(txn, inode, path, f"written here after it was {what}", now)
            inode.nlink = 1
            inode.ctime_ns = now
            txn.put(inode)

    def _file_conflict(self, txn: Txn, inode: Inode, path: str, reason: str,
                       now: int) -> str:
        """Link ``inode`` into lost+found under a conflict name for ``path`` and record
        the conflict; returns where it is (relative to the mount)."""
        lost_found = self._lost_found(txn, now)
        new_name = self._conflict_name(txn, lost_found, path, now)
        txn.link(lost_found, new_name, inode.ino)
        inode.parent, inode.name = lost_found, new_name.decode()
        inode.remote_key = inode.remote_etag = None
        inode.dirty = 0
        txn.clear_dirty(inode.ino)
        self._touch_dir(txn, lost_found, now)
        where = f"{keys.RESERVED_ROOT_NAME.decode()}/lost+found/{new_name.decode()}"
        record = {"path": path, "lost_found": where, "time": now / 1e9, "reason": reason}
        self.conflicts = (self.conflicts + [record])[-1000:]
        txn.put_meta(b"conflicts", json.dumps(self.conflicts).encode())
        log.warning("conflict on %s (%s): the bucket's version stays at the path, the "
                    "mount's is kept at %s", path, reason, where)
        return where

    def not_exported_paths(self) -> list[dict]:
        """Live files and directories whose key would be too long for S3."""
        out = []
        with self.journal.read() as txn:
            for ino in list(self.not_exported):
                inode = txn.get(ino)
                if inode is None or inode.nlink == 0 or self.object_key(txn, inode) is not None:
                    self.not_exported.pop(ino, None)
                    continue
                out.append({"path": self.not_exported[ino],
                            "reason": f"key longer than {keys.KEY_MAX} bytes"})
        return out

    def inodes_under(self, paths: list[bytes]) -> list[int]:
        """Every inode at or below these mount-relative paths (as far as the journal
        knows them; an unlisted directory holds nothing pending)."""
        found: list[int] = []
        with self.journal.read() as txn:
            for path in paths:
                ino: int | None = ROOT_INO
                parent, name = ROOT_INO, b""
                for part in filter(None, path.split(b"/")):
                    parent, name = ino or 0, part
                    ino = txn.lookup(ino, part) if ino is not None else None
                inode = txn.get(ino) if ino is not None else None
                if inode is not None:
                    rec = inode if ino == ROOT_INO else self.record_at(txn, parent, name, inode)
                    found.extend(i.ino for i in self._subtree(txn, rec))
        return found

    def in_lost_found(self, inode: Inode) -> bool:
        with self.journal.read() as txn:
            names = self.path_names(txn, inode)
        return len(names) > 2 and names[0] == keys.RESERVED_ROOT_NAME.decode() \
            and names[1] == "lost+found"

    def dirs_to_poll(self, used_within_s: float) -> list[int]:
        """Directories in use: looked into or opened within ``used_within_s``, and the
        directories of open files."""
        cutoff = time.monotonic() - used_within_s
        for ino in [i for i, t in self._dir_used.items() if t < cutoff]:
            del self._dir_used[ino]
        dirs = dict.fromkeys(self._dir_used)
        with self.journal.read() as txn:
            for ino in self.open_count:
                inode = txn.peek(ino)
                if inode is not None and inode.nlink > 0:
                    dirs[inode.parent] = None
        return list(dirs)

    async def poll_dir(self, ino: int) -> None:
        """Re-list one directory and apply what changed in the bucket: new objects
        appear, clean files changed outside are refreshed, clean files deleted outside
        go away. Dirty files are left to their upload's condition."""
        with self.journal.read() as txn:
            d = txn.get(ino)
            if d is None or d.nlink == 0 or not d.listed or not stat.S_ISDIR(d.mode):
                return
            if ino != ROOT_INO and self.object_key(txn, d) is None:
                return
            prefix = self._dir_prefix(txn, d)
        before = self.flusher.op_generation() if self.flusher is not None else None
        listed_at = time.monotonic()
        dirs, files = await self._list_dir(ino, prefix)
        if self.flusher is not None:
            if self.flusher.op_generation() != before:
                return  # the op log moved while we listed: this listing may be stale
            # keys our own pending copies and deletes are about to move or remove
            in_flight = self.flusher.pending_op_keys()
            files = {n: o for n, o in files.items() if o.key not in in_flight}
            dirs = {n: p for n, p in dirs.items() if p not in in_flight}
        with self.journal.read() as txn:
            local: dict[bytes, Inode | None] = {}
            for name, child in txn.children(ino):
                c = txn.get(child)
                # a hard-linked file: the record of this name, with its own object
                local[name] = self.record_at(txn, ino, name, c) if c is not None else None
        new_files = {n: o for n, o in files.items() if n not in local}
        new_dirs = {n: p for n, p in dirs.items() if n not in local}
        changed: dict[int, ObjectInfo] = {}
        gone: dict[int, str] = {}
        for name, inode in local.items():
            if inode is None or stat.S_ISDIR(inode.mode) or inode.dirty \
                    or inode.remote_key is None or inode.remote_etag is None:
                continue
            if self._validated.get(inode.ino, 0.0) >= listed_at:
                continue  # its upload committed after the listing was taken: newer
            obj = files.get(name)
            if obj is None:
                if name not in dirs:
                    gone[inode.ino] = inode.remote_key
            elif obj.key == inode.remote_key and obj.etag != inode.remote_etag:
                changed[inode.ino] = obj
        if not (new_files or new_dirs or changed or gone):
            return
        # new entries are added from the listing; their attributes load lazily
        heads = await self._head_many([o.key for o in changed.values()])
        for child, obj in changed.items():
            self.apply_outside(child, obj.key, heads.get(obj.key))
        for child, key in gone.items():
            self.apply_outside(child, key, None)
        entries: list[tuple[int, bytes]] = []
        now = _now_ns()
        with self.journal.write() as txn:
            d = txn.get(ino)
            if d is None or d.nlink == 0:
                return
            for name, obj in new_files.items():
                if txn.lookup(ino, name) is None:
                    self._add_from_object(txn, ino, name, heads.get(obj.key) or obj)
                    entries.append((ino, name))
            for name, p in new_dirs.items():
                if txn.lookup(ino, name) is None:
                    child = self._inode_from_object(txn, ino, name, heads.get(p), is_dir=True,
                                                    fallback_ns=now)
                    if p in heads:
                        child.remote_key, child.remote_etag = p, heads[p].etag
                    txn.put(child)
                    txn.link(ino, name, child.ino)
                    self._touch_dir(txn, ino, now, 1)
                    entries.append((ino, name))
        self._invalidate(entries, [])

    # --- extended attributes ------------------------------------------------------------
    def sync_state(self, inode: Inode) -> str:
        with self.journal.read() as txn:
            records = self._records(txn, inode)
            exported = inode.ino == ROOT_INO or any(self.object_key(txn, r) is not None
                                                     for r in records)
        if self.flusher is not None and any(self.flusher.is_uploading(r.ino)
                                            for r in records):
            return "uploading"
        if self.in_lost_found(inode):
            return "conflict"
        if not exported:
            return "local-only"
        return "dirty" if any(r.dirty for r in records) else "synced"

    def getxattr(self, ino: int, name: str) -> bytes:
        inode = self.get(ino)
        if name == STATE_XATTR:
            return self.sync_state(inode).encode()
        if name not in inode.xattrs:
            raise FsError(errno.ENODATA)
        return metadata.xattr_value(inode.xattrs[name])

    def listxattr(self, ino: int) -> list[str]:
        return sorted(self.get(ino).xattrs)

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        if not name.startswith("user.") or name == STATE_XATTR:
            raise FsError(errno.EOPNOTSUPP if not name.startswith("user.") else errno.EPERM)
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._get(txn, ino)
            xattrs = dict(inode.xattrs)
            xattrs[name] = metadata.xattr_encode(value)
            md = self._metadata(inode, xattrs=xattrs)
            if metadata.metadata_size(md) > metadata.METADATA_LIMIT_BYTES:
                raise FsError(errno.E2BIG, "object metadata is limited to 2 KiB")
            inode.xattrs = xattrs
            inode.ctime_ns = _now_ns()
            self._mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self._notify(pending)

    def removexattr(self, ino: int, name: str) -> None:
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._get(txn, ino)
            if name not in inode.xattrs:
                raise FsError(errno.ENODATA)
            del inode.xattrs[name]
            inode.ctime_ns = _now_ns()
            self._mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self._notify(pending)

    def _metadata(self, inode: Inode, xattrs: dict[str, str] | None = None) -> dict[str, str]:
        return metadata.encode(mode=inode.mode, uid=inode.uid, gid=inode.gid,
                               mtime_ns=inode.mtime_ns, atime_ns=inode.atime_ns,
                               ctime_ns=inode.ctime_ns, rdev=inode.rdev,
                               xattrs=inode.xattrs if xattrs is None else xattrs,
                               extra=inode.extra)

    def object_metadata(self, inode: Inode) -> dict[str, str]:
        """The user metadata the object for ``inode`` carries in the bucket."""
        return self._metadata(inode)
