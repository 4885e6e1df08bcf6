"""Discovery: what the mount learns of the bucket by asking it.

Listing a directory into the journal the first time it is used (``ensure_listed``),
loading an entry's attributes lazily with one HEAD (``load_meta``), prefetching the
attributes ``ls -l`` is about to ask for (``prefetch_after``), close-to-open checks
(``recheck``: one LIST per directory and TTL, a HEAD where it shows a change), and
re-listing the directories in use (``poll_dir``, run by ``Poller``).

Store calls happen outside journal transactions; what they returned is checked again
inside the transaction that applies it. What the bucket changed is handed to the
S3-wins policy (``reconcile.Reconciler``); this module decides nothing about it.
It knows the flusher only through ``op_log`` (its pending ops, so that a listing
taken while they move keys is not believed) and the kernel through ``invalidate``.
The close-to-open checks are in ``discovery_checks.py`` (``Discovery``'s base class).
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from . import faults, keys
from .discovery_checks import CloseToOpenChecks, DirListing, listed_subtree
from .errors import FsError, StoreError, TransientStoreError
from .journal import ROOT_INO, Inode, Txn
from .namespace import Namespace, set_remote
from .reconcile import Decision, Reconciler, Stamp
from .remote import Remote
from .store._listing import roll_up
from .store.base import ObjectInfo

log = logging.getLogger(__name__)

HEAD_CONCURRENCY = 16
# entries whose attributes are HEADed ahead of the kernel's lookups after a readdir
# (``ls -l``, ``find -ls``: one lookup per entry, in listing order)
PREFETCH_AHEAD = 32
PREFETCH_AFTER_READDIR_S = 30.0
#: after a directory could not be listed (bucket unreachable), the mount works from
#: what it knows of it and asks the bucket again only after this many seconds
UNLISTED_RETRY_S = 10.0
#: a symlink's object holds its target: at most PATH_MAX - 1 bytes
MAX_SYMLINK_BYTES = 4095


@dataclass
class MetaLoads:
    """Bookkeeping of attributes loaded lazily (one HEAD) for entries known from a
    listing. ``nursery``: where prefetches run (set by the daemon; without one they
    run inside the lookup that asked for them)."""

    nursery: trio.Nursery | None = None
    loading: dict[int, trio.Event] = field(default_factory=dict)  # ino -> done
    readdir_at: dict[int, float] = field(default_factory=dict)  # dir ino -> trio clock time
    cursor: dict[int, bytes] = field(default_factory=dict)  # dir ino -> last name queued
    last: dict[int, bytes] = field(default_factory=dict)  # dir ino -> last name looked up
    depth: dict[int, int] = field(default_factory=dict)  # dir ino -> entries to keep queued
    queued: dict[int, int] = field(default_factory=dict)  # dir ino -> prefetches not done
    # dir ino -> trio clock time of the last lookup walking forward (the walk's pace)
    walked_at: dict[int, float] = field(default_factory=dict)


class OpLogView(Protocol):
    """What discovery asks of the flusher's op log (``Flusher`` implements it)."""

    def op_generation(self) -> int: ...

    def pending_op_keys(self) -> set[str]: ...


class Discovery(CloseToOpenChecks):
    """Listings, lazy attributes, prefetch and close-to-open checks of one mount."""

    def __init__(self, ns: Namespace, remote: Remote, reconciler: Reconciler,
                 read_source: Callable[[Inode], tuple[str | None, str | None]],
                 invalidate: Callable[[list[tuple[int, bytes]], list[int]], None],
                 open_inos: Callable[[], Iterable[int]]) -> None:
        self.ns = ns
        self.journal = ns.journal
        self.remote = remote
        self.reconciler = reconciler
        #: where an inode's uncached bytes (and headers) are now (``Filesystem.read_source``)
        self.read_source = read_source
        #: tells the kernel to drop cached entries and inodes
        self.invalidate = invalidate
        #: inodes some process has open (their directories are polled)
        self.open_inos = open_inos
        #: the flusher's pending ops (None: no flusher attached)
        self.op_log: OpLogView | None = None
        self.metadata_ttl_s = 1.0
        #: keys that cannot be paths: key -> why (logged once each)
        self.skipped_keys: dict[str, str] = {}
        self.meta_loads = MetaLoads()
        #: readdir reports an object known only from a listing as a regular file even
        #: where it may be a symlink or special file (``type_known``; set by the daemon)
        self.types_from_listing = False
        self._list_locks: dict[int, trio.Lock] = {}
        # directories whose listing failed (bucket unreachable): ino -> monotonic time
        # of that failure; they are used from what the mount knows until a listing works
        self._unlisted: dict[int, float] = {}
        # entries whose HEAD failed the same way: ino -> monotonic time; they show the
        # defaults, and are asked about again after UNLISTED_RETRY_S
        self._unheaded: dict[int, float] = {}
        self._dir_used: dict[int, float] = {}  # directory ino -> trio clock time used
        # close-to-open by directory: dir ino -> what its last listing showed
        # (``note_etags``; set by every listing of the directory)
        self._dir_etags: dict[int, DirListing] = {}
        # close-to-open for names: dir ino -> trio clock time its names were last
        # listed (a lookup of a missing name lists it again once that is older
        # than the TTL)
        self._names_at: dict[int, float] = {}
        # dir ino -> (set when its re-list for a check ends, trio time it started)
        # (``_relist``: names and ETags; ``_shared``)
        self._relisting: dict[int, tuple[trio.Event, float]] = {}
        # dir ino -> trio clock time its subtree was found too large to list whole
        # (``_tree_below``: its checks list it alone meanwhile)
        self._tree_too_big: dict[int, float] = {}

    def note_used(self, ino: int) -> None:
        """Directory ``ino`` was looked into or opened now (``dirs_to_poll``)."""
        self._dir_used[ino] = trio.current_time()

    def note_readdir(self, ino: int) -> None:
        """A readdir pass over ``ino`` began: lookups of its entries may follow (``ls
        -l``), so the prefetch scan starts again."""
        loads = self.meta_loads
        loads.readdir_at[ino] = trio.current_time()
        for d in (loads.cursor, loads.last, loads.depth, loads.walked_at):
            d.pop(ino, None)

    def type_known(self, inode: Inode) -> bool:
        """Whether readdir reports the entry's file type (the kernel then makes an inode
        of that type). From a listing, a small object may still be a symlink (its body
        is the target) or a FIFO/socket/device (empty) until its headers are read: by
        default readdir reports DT_UNKNOWN for it, so a reader that needs the type
        stats it, which loads it (one HEAD). With ``types_from_listing`` it is
        reported as a regular file (``find`` stats nothing); its lookup still loads
        its headers, and if they say otherwise the name gets a new inode of their
        type (``_load_meta``, ``Reconciler.retype``)."""
        return self.types_from_listing or inode.meta_loaded \
            or not stat.S_ISREG(inode.mode) or inode.size > MAX_SYMLINK_BYTES

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
        inode = self.ns.get(ino)
        if inode.listed or not stat.S_ISDIR(inode.mode):
            return
        failed_at = self._unlisted.get(ino)
        if not complete and failed_at is not None \
                and trio.current_time() - failed_at < UNLISTED_RETRY_S:
            return
        lock = self._list_locks.setdefault(ino, trio.Lock())
        async with lock:
            inode = self.ns.get(ino)
            if inode.listed:
                return
            if not inode.meta_loaded:
                inode = await self.load_meta(ino)
            with self.journal.read() as txn:
                prefix = self.ns.dir_prefix(txn, inode)
                exported = inode.ino == ROOT_INO or self.ns.object_key(txn, inode) is not None
            if not exported:
                with self.journal.write() as txn:
                    d = self.ns.get_in(txn, ino)
                    d.listed = True
                    txn.put(d)
                return
            listed_at = self.reconciler.stamp()
            try:
                dirs, files = await self._list_dir(ino, prefix)
            except TransientStoreError as exc:
                if complete:
                    raise
                if ino not in self._unlisted:
                    log.warning("cannot list directory %s (%s); using what the mount knows "
                                "of it until the bucket answers", prefix or "/", exc)
                self._unlisted[ino] = trio.current_time()
                return
            # entries were made here while it was unlisted: say that they are merged
            merging = self._unlisted.pop(ino, None) is not None
            if merging:
                log.info("listed directory %s: merged with what the mount made meanwhile",
                         prefix or "/")
            now = time.time_ns()
            added: list[int] = []
            with self.journal.write() as txn:
                d = self.ns.get_in(txn, ino)
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
                    self.ns.add_dir_from_bucket(txn, ino, name, dirs[name], None, now)
                    d.nlink += 1
                for name, obj in files.items():
                    if txn.lookup(ino, name) is None:
                        added.append(self.ns.add_from_object(txn, ino, name, obj).ino)
                d.listed = True
                txn.put(d)
            for child_ino in added:
                self.reconciler.note_bucket_state(child_ino, listed_at)
            self.note_names_listed(ino, listed_at[1])
            self.note_etags(ino, listed_at, files.values())

    async def _list_dir(self, ino: int, prefix: str
                        ) -> tuple[dict[bytes, str], dict[bytes, ObjectInfo]]:
        """The bucket's view of one directory: {name: prefix} of subdirectories and
        {name: object} of files, without keys that cannot be paths (logged once)."""
        await faults.await_point("listing")
        page = await self.remote.list_all(prefix, "/")
        return self._entries(ino, prefix, page.prefixes, page.objects)

    def _entries(self, ino: int, prefix: str, prefixes: Iterable[str],
                 objects: Iterable[ObjectInfo]
                 ) -> tuple[dict[bytes, str], dict[bytes, ObjectInfo]]:
        """``_list_dir``'s reading of one directory's listing: its common
        ``prefixes`` and its ``objects``."""
        dirs: dict[bytes, str] = {}
        for p in prefixes:
            name = keys.name_from_segment(p[len(prefix):-1])
            if name is None or (ino == ROOT_INO and name == keys.RESERVED_ROOT_NAME):
                self._skip(p, "not a usable directory name")
                continue
            dirs[name] = p
        files: dict[bytes, ObjectInfo] = {}
        for obj in objects:
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
        failed: list[StoreError] = []

        async def one(key: str) -> None:
            async with limiter:
                try:
                    info = await self.remote.head_or_none(key)
                except StoreError as exc:
                    failed.append(exc)
                    return
                if info is not None:
                    found[key] = info

        async with trio.open_nursery() as nursery:
            for key in keys_:
                nursery.start_soon(one, key)
        if failed:
            raise failed[0]  # (itself, not in an exception group: callers catch it)
        return found

    async def load_meta(self, ino: int) -> Inode:
        """Make ``ino``'s attributes trustworthy before they are used: an entry known
        only from a listing is HEADed once (concurrent callers share that request).
        Idempotent. Returns the inode as it is afterwards, which may be unlinked if the
        bucket no longer has it; raises ENOENT if it is gone altogether. On a store
        error the defaults stay (and stay marked not loaded)."""
        inode = self.ns.get(ino)
        if inode.meta_loaded:
            return inode
        failed_at = self._unheaded.get(ino)
        if failed_at is not None and trio.current_time() - failed_at < UNLISTED_RETRY_S:
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
        return self.ns.get(ino)

    async def _load_meta(self, inode: Inode) -> None:
        ino = inode.ino
        is_dir = stat.S_ISDIR(inode.mode)
        with self.journal.read() as txn:
            path_key = self.ns.object_key(txn, inode)
        # a file's bytes (and headers) are at its object, or at a pending copy's source
        key, etag = (path_key, None) if is_dir else self.read_source(inode)
        if key is None:
            # nothing in the bucket describes it: the defaults are the attributes
            self._set_meta(ino, inode, None, is_dir, None)
            return
        seen_at = self.reconciler.stamp()
        try:
            info = await self.remote.head_or_none(key)
        except StoreError as exc:
            if ino not in self._unheaded:
                log.info("cannot read the attributes of %s (%s); showing defaults", key, exc)
            if isinstance(exc, TransientStoreError):
                self._unheaded[ino] = trio.current_time()
            return
        self._unheaded.pop(ino, None)
        if is_dir or (info is not None and info.etag == etag):
            # readdir showed it as a regular file (the kernel may have an inode of
            # that type for it) and its headers say otherwise: a new inode
            if not is_dir and key == inode.remote_key and self.type_known(inode) \
                    and not stat.S_ISREG(
                    self.ns.decode(info.metadata, False, info.mtime_ns)["mode"]) \
                    and self.reconciler.retype(ino, info, seen_at) is not None:
                return  # a symlink or special file: its name has a new inode now
            self._set_meta(ino, inode, info, is_dir, key)
            if not is_dir and key == inode.remote_key:
                self.reconciler.note_bucket_state(ino, seen_at)
            return
        if key != inode.remote_key:
            return  # the source of a pending copy changed: the copy will tell
        # the bucket holds another version than the listing showed, or none
        decision = self.reconciler.apply(ino, key, info, seen_at)
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
                fields = self.ns.decode(info.metadata, is_dir, info.mtime_ns)
                if inode.dirty:  # local times are newer than the object's
                    for name in ("mtime_ns", "atime_ns", "ctime_ns"):
                        del fields[name]
                for name, value in fields.items():
                    setattr(inode, name, value)
                if is_dir and inode.remote_key in (None, key):
                    set_remote(inode, key, info.etag)
            inode.meta_loaded = True
            txn.put(inode)

    def prefetch_after(self, parent: int, name: bytes) -> list[int]:
        """After a readdir of ``parent``, the kernel looks its entries up one by one
        in listing order (``ls -l``): queue HEADs for the next unloaded entries so
        they are loaded by the time their lookup comes. Returns the inodes to load
        (the caller starts them)."""
        loads = self.meta_loads
        listed = loads.readdir_at.get(parent)
        if listed is None or trio.current_time() - listed > PREFETCH_AFTER_READDIR_S:
            for d in (loads.readdir_at, loads.cursor, loads.last, loads.depth,
                      loads.walked_at):
                d.pop(parent, None)
            return []
        if name <= loads.last.get(parent, b""):
            return []  # not walking forward (the same name again, say): no scan
        loads.last[parent] = name
        now = trio.current_time()
        gap = now - loads.walked_at.get(parent, now)
        loads.walked_at[parent] = now
        # start with a few and double while the lookups keep walking the listing...
        depth = loads.depth[parent] = min(loads.depth.get(parent, 2) * 2, PREFETCH_AHEAD)
        # ...but load no entry the walk reaches later than half the TTL from now: its
        # lookup would find it older than the TTL and check it again (``recheck``)
        if gap > 0:
            depth = max(2, min(depth, int(self.metadata_ttl_s / 2 / gap)))
        queued = loads.queued.get(parent, 0)
        if queued > depth // 2:
            return []  # enough in flight; top up later
        cursor = loads.cursor.get(parent, b"")
        picked: list[int] = []
        last = cursor
        with self.journal.read() as txn:
            # the ``depth`` entries after this one (those up to the cursor are queued)
            for ahead, (child_name, child) in enumerate(txn.children(parent, name)):
                if ahead >= depth or len(picked) >= depth - queued:
                    break
                if child_name <= cursor:
                    continue
                last = child_name
                c = txn.get(child)
                if c is not None and not c.meta_loaded and child not in loads.loading:
                    picked.append(child)
        loads.cursor[parent] = last
        loads.queued[parent] = queued + len(picked)
        return picked

    async def prefetch(self, parent: int, inos: list[int]) -> None:
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

    async def resolve(self, parent: int, name: bytes) -> Inode:
        """Find ``name`` in ``parent``, with its attributes loaded (``load_meta``)
        and, for a clean file older than the TTL, checked against the bucket
        (``recheck``, where a listing behind the TTL may answer); starts prefetches
        of the entries after it. Awaits the bucket; changes nothing but what the
        bucket said. A name the directory does not hold is looked for in the bucket
        when the directory's listing is older than the TTL
        (close-to-open for names: ``relist_for_names``)."""
        await self.ensure_listed(parent)
        self.note_used(parent)
        try:
            inode = self.ns.lookup_entry(parent, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT or name in (b".", b"..") \
                    or not await self.relist_for_names(parent):
                raise
            inode = self.ns.lookup_entry(parent, name)
        if inode.meta_loaded and name not in (b".", b"..") \
                and await self.recheck(inode, at_lookup=True) is not None:
            # changed or deleted in the bucket (or by the poller meanwhile): what
            # holds the name now, if anything (the lookup count below goes to it)
            inode = self.ns.lookup_entry(parent, name)
        loads = self.meta_loads
        if not inode.meta_loaded or parent in loads.cursor:
            ahead = self.prefetch_after(parent, name) if name not in (b".", b"..") else []
            if ahead and loads.nursery is not None:
                loads.nursery.start_soon(self.prefetch, parent, ahead)
                ahead = []
            if not inode.meta_loaded or ahead:
                async with trio.open_nursery() as nursery:
                    if ahead:
                        nursery.start_soon(self.prefetch, parent, ahead)
                    if not inode.meta_loaded:
                        try:
                            await self.load_meta(inode.ino)
                        except FsError as exc:
                            if exc.errno != errno.ENOENT:
                                raise
                # the bucket may have removed or replaced it
                inode = self.ns.lookup_entry(parent, name)
        return inode

    def dirs_to_poll(self, used_within_s: float) -> list[int]:
        """Directories in use: looked into or opened within ``used_within_s``, and the
        directories of open files."""
        cutoff = trio.current_time() - used_within_s
        for ino in [i for i, t in self._dir_used.items() if t < cutoff]:
            del self._dir_used[ino]
        dirs = dict.fromkeys(self._dir_used)
        with self.journal.read() as txn:
            for ino in self.open_inos():
                inode = txn.peek(ino)
                if inode is not None and inode.nlink > 0:
                    dirs[inode.parent] = None
        return list(dirs)

    def _poll_prefix(self, txn: Txn, ino: int) -> str | None:
        """The key prefix a re-listing of directory ``ino`` lists; None if it is not
        re-listed (gone, never listed, or no key can name it)."""
        d = txn.peek(ino)
        if d is None or d.nlink == 0 or not d.listed or not stat.S_ISDIR(d.mode):
            return None
        if ino != ROOT_INO and self.ns.object_key(txn, d) is None:
            return None
        return self.ns.dir_prefix(txn, d)

    async def poll_dir(self, ino: int) -> None:
        """Re-list one directory and apply what changed in the bucket: new objects
        appear, clean files changed outside are refreshed, clean files deleted outside
        go away. Dirty files are left to their upload's condition."""
        with self.journal.read() as txn:
            prefix = self._poll_prefix(txn, ino)
        if prefix is None:
            return
        before = self.op_log.op_generation() if self.op_log is not None else None
        listed_at = self.reconciler.stamp()
        dirs, files = await self._list_dir(ino, prefix)
        await self._apply_listing(ino, before, listed_at, dirs, files)

    async def poll_tree(self, ino: int, max_pages: int) -> bool:
        """``poll_dir`` for directory ``ino`` and every directory below it that the
        mount has listed, from one listing of the subtree (no delimiter), split into
        what a listing of each directory would have shown (``split_listing``). False,
        with nothing applied, if the subtree takes more than ``max_pages`` pages."""
        with self.journal.read() as txn:
            targets: dict[str, int] = {}
            for d in listed_subtree(txn, ino):
                prefix = self._poll_prefix(txn, d.ino)
                if prefix is not None:
                    targets[prefix] = d.ino
        if not targets:
            return True
        root = next(iter(targets))
        before = self.op_log.op_generation() if self.op_log is not None else None
        listed_at = self.reconciler.stamp()
        await faults.await_point("listing")
        page = await self.remote.list_upto(root, None, max_pages)
        if page is None:
            return False
        split = split_listing(root, page.objects, targets)
        for prefix, d in targets.items():
            prefixes, objects = split[prefix]
            dirs, files = self._entries(d, prefix, prefixes, objects)
            await self._apply_listing(d, before, listed_at, dirs, files)
        return True

    async def _apply_listing(self, ino: int, before: int | None, listed_at: Stamp,
                             dirs: dict[bytes, str], files: dict[bytes, ObjectInfo]
                             ) -> None:
        """Apply a listing of directory ``ino`` taken at ``listed_at`` (``dirs`` and
        ``files`` as ``_list_dir`` reads them), started when the op log was at
        generation ``before`` (``poll_dir``)."""
        # the ETags answer close-to-open checks even where the op log moved (a check
        # that meets another ETag asks the object itself)
        self.note_etags(ino, listed_at, files.values())
        if self.op_log is not None:
            if self.op_log.op_generation() != before:
                return  # the op log moved while we listed: this listing may be stale
            # keys our own pending copies and deletes are about to move or remove
            in_flight = self.op_log.pending_op_keys()
            files = {n: o for n, o in files.items() if o.key not in in_flight}
            dirs = {n: p for n, p in dirs.items() if p not in in_flight}
        self.note_names_listed(ino, listed_at[1])
        with self.journal.read() as txn:
            local: dict[bytes, Inode | None] = {}
            for name, child in txn.children(ino):
                c = txn.get(child)
                # a hard-linked file: the record of this name, with its own object
                local[name] = self.ns.record_at(txn, ino, name, c) if c is not None else None
        new_files = {n: o for n, o in files.items() if n not in local}
        new_dirs = {n: p for n, p in dirs.items() if n not in local}
        changed: dict[int, ObjectInfo] = {}
        gone: dict[int, str] = {}
        for name, inode in local.items():
            if inode is None or stat.S_ISDIR(inode.mode) or inode.dirty \
                    or inode.remote_key is None or inode.remote_etag is None:
                continue
            if self.reconciler.newer_than(inode.ino, listed_at):
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
        headed_at = self.reconciler.stamp()
        heads = await self._head_many([o.key for o in changed.values()])
        for child, obj in changed.items():
            self.reconciler.apply(child, obj.key, heads.get(obj.key), headed_at)
        for child, key in gone.items():
            self.reconciler.apply(child, key, None, listed_at)
        entries: list[tuple[int, bytes]] = []
        now = time.time_ns()
        with self.journal.write() as txn:
            d = txn.get(ino)
            if d is None or d.nlink == 0:
                return
            for name, obj in new_files.items():
                if txn.lookup(ino, name) is None:
                    self.ns.add_from_object(txn, ino, name, heads.get(obj.key) or obj)
                    entries.append((ino, name))
            for name, p in new_dirs.items():
                if txn.lookup(ino, name) is None:
                    self.ns.add_dir_from_bucket(txn, ino, name, p, heads.get(p), now)
                    self.ns.touch_dir(txn, ino, now, 1)
                    entries.append((ino, name))
        self.invalidate(entries, [])


def split_listing(root: str, objects: Iterable[ObjectInfo], prefixes: Iterable[str]
                  ) -> dict[str, tuple[list[str], list[ObjectInfo]]]:
    """A listing of every key under ``root`` (no delimiter) read as the listings
    with delimiter "/" of each of ``prefixes`` (each ``root`` or below it, ending
    in "/"): for each, (its common prefixes, its objects), exactly as the bucket
    would have answered them at that moment, in key order (the stores' own
    ``roll_up`` of the keys under it)."""
    under: dict[str, list[ObjectInfo]] = {p: [] for p in prefixes}
    for obj in objects:
        k = obj.key
        cut = len(root) - 1  # the key's ancestors: root, then one more segment each time
        while True:
            group = under.get(k[:cut + 1])
            if group is not None:
                group.append(obj)
            cut = k.find("/", cut + 1)
            if cut < 0:
                break
    out: dict[str, tuple[list[str], list[ObjectInfo]]] = {}
    for p, group in under.items():
        rolled = list(roll_up(group, p, "/"))
        out[p] = ([e for e in rolled if isinstance(e, str)],
                  [e for e in rolled if not isinstance(e, str)])
    return out


class Poller:
    """The background job that re-lists the directories in use every ``interval_s``,
    so outside changes (other tools, other mounts) show up. ``run`` until ``stop``
    (or until its nursery is cancelled); a failed listing is logged and skipped."""

    def __init__(self, discovery: Discovery, interval_s: float) -> None:
        self.discovery = discovery
        self.interval_s = interval_s
        self._cancel = trio.CancelScope()

    async def run(self) -> None:
        interval = self.interval_s
        swept = 0.0
        with self._cancel:
            while True:
                await trio.sleep(max(0.0, interval - swept))
                start = trio.current_time()
                # in use: touched within the last two sweeps (a directory that comes
                # back into use is re-listed at the next sweep)
                dirs = self.discovery.dirs_to_poll(used_within_s=2 * interval)
                # spread the LISTs over half an interval: a burst of hundreds of them
                # (after an untar, say) would slow down whatever runs on the mount
                gap = interval / 2 / max(1, len(dirs))
                for ino in dirs:
                    if self.discovery.listed_within(ino, interval / 2):
                        # a lookup's or an open's check listed it (and applied what
                        # changed) less than half an interval ago
                        continue
                    try:
                        await self.discovery.poll_dir(ino)
                    except (StoreError, OSError) as exc:
                        log.info("polling directory %d failed: %s", ino, exc)
                    except Exception:
                        log.exception("polling directory %d failed", ino)
                    await trio.sleep(gap)
                swept = trio.current_time() - start

    def stop(self) -> None:
        """End ``run`` at its next checkpoint. Idempotent."""
        self._cancel.cancel()
