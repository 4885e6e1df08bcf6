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
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from . import faults, keys, metadata
from .reconcile import Decision, Reconciler
from .cache import Cache
from .errors import FsError, StoreError, VersionGone
from .discovery import Discovery
from .fetch import Fetcher
from .flusher import FlusherLinks
from .journal import DIRTY_DATA, DIRTY_META, ROOT_INO, Inode, Journal, Txn
from .oplog import CopyOp, DeleteOp
from .namespace import (Defaults, Namespace, leave_bucket, object_metadata, set_remote,
                        unmark)
from .remote import Remote

if TYPE_CHECKING:
    from .flusher import Flusher

log = logging.getLogger(__name__)

#: how often a read or write fetches again after the bucket replaced the version it
#: was fetching (each time the bucket's current version is adopted first)
FETCH_ATTEMPTS = 8
STATE_XATTR = "user.s3fuse.state"
# a symlink's object holds its target: at most PATH_MAX - 1 bytes
MAX_SYMLINK_BYTES = 4095
# renameat2(2) flags (linux/fs.h; pyfuse3 has the same values): the two ``rename``
# implements. Any other bit (RENAME_WHITEOUT, bits Linux may add) answers EINVAL.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# an exchange fetches a side it must upload whole, then tries again: this many times
EXCHANGE_TRIES = 4


@dataclass
class Handle:
    ino: int
    writable: bool
    #: opened with O_APPEND: every write goes to the end of the file as the mount
    #: knows it, whatever offset the kernel computed from the size it had cached
    append: bool = False
    # opened with O_DIRECT: its writes must leave no stale page of the file in the
    # kernel's page cache (see ``FuseOps.write``)
    direct: bool = False


@dataclass
class DirHandle:
    """An open directory. ``entries``: the (name, ino) snapshot the current pass of
    readdir hands out by position; taken anew by every readdir from position 0 (the
    first one, and each after a ``rewinddir``)."""

    ino: int
    entries: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass
class SetAttrs:
    """Requested attribute changes; None means leave as is."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class _NeedLocal(Exception):
    """Raised inside an exchange's transaction, which it aborts: name record ``ino``
    must have its bytes on local disk first (``Filesystem._make_local``)."""

    def __init__(self, ino: int) -> None:
        super().__init__(ino)
        self.ino = ino


def _now_ns() -> int:
    return time.time_ns()


class Filesystem:
    def __init__(self, journal: Journal, cache: Cache, remote: Remote, prefix: str,
                 defaults: Defaults) -> None:
        self.journal = journal
        self.cache = cache
        self.remote = remote
        self.prefix = prefix
        self.defaults = defaults
        # records, paths and keys, and the setters of their invariants
        self.ns = Namespace(journal, prefix, defaults)
        self._flusher: Flusher | None = None
        self.lookups: dict[int, int] = {}
        self.open_count: dict[int, int] = {}
        self.handles: dict[int, Handle | DirHandle] = {}
        self._next_fh = 1
        self.fetcher = Fetcher(self.ns, cache, remote, self.read_source)
        # trio time of the last FUSE request (the flusher holds back while they come)
        self.last_request_at = -float("inf")
        # the S3-wins policy: what the mount does with what it learns of the bucket
        self.reconciler = Reconciler(self)
        # listings, lazy attributes, prefetch, close-to-open checks, polling
        self.discovery = Discovery(self.ns, remote, self.reconciler, self.read_source,
                                   self.invalidate, lambda: self.open_count)
        #: keys that cannot be paths, and the lazy-attribute bookkeeping (the daemon
        #: reports the one and gives the other its nursery): the discovery's own
        self.skipped_keys = self.discovery.skipped_keys
        self.meta_loads = self.discovery.meta_loads
        # set by the daemon: tells the kernel to drop cached names and pages
        self.notify_kernel: Callable[[list[tuple[int, bytes]], list[int]], None] | None = None

    @property
    def flusher(self) -> Flusher | None:
        """The flusher the daemon attached (None in fsck and some tests)."""
        return self._flusher

    @flusher.setter
    def flusher(self, flusher: Flusher | None) -> None:
        # the namespace tells it what became dirty, and what has nothing to upload
        self._flusher = flusher
        self.ns.on_change = flusher.note_change if flusher is not None else None
        self.ns.on_forget = flusher.forget if flusher is not None else None
        self.discovery.op_log = flusher

    @property
    def metadata_ttl_s(self) -> float:
        """How long what the bucket said is trusted (``--metadata-ttl``)."""
        return self.discovery.metadata_ttl_s

    @metadata_ttl_s.setter
    def metadata_ttl_s(self, value: float) -> None:
        self.discovery.metadata_ttl_s = value

    def flusher_links(self) -> FlusherLinks:
        """The narrow references a ``Flusher`` of this filesystem is built with."""
        return FlusherLinks(remote=self.remote, cache=self.cache, reconciler=self.reconciler,
                            ensure_cached=self.ensure_cached, invalidate=self.invalidate,
                            maybe_purge=self.maybe_purge,
                            last_request_at=lambda: self.last_request_at)

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
            self.reconciler.load(txn)
            for ino in [i.ino for i in txn.all_inodes() if i.nlink == 0]:
                self.cache.remove(ino)  # (first: see maybe_purge)
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
        """The inode ``ino`` as of now; ENOENT if there is none (``Namespace.get``)."""
        return self.ns.get(ino)

    def _new_fh(self, h: Handle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        return fh

    def open_for_writing(self, ino: int) -> bool:
        """Some open handle of ``ino`` may write."""
        return any(isinstance(h, Handle) and h.ino == ino and h.writable
                   for h in self.handles.values())

    def in_use(self, ino: int) -> bool:
        return self.lookups.get(ino, 0) > 0 or self.open_count.get(ino, 0) > 0

    def maybe_purge(self, ino: int) -> None:
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
        self.reconciler.forget(ino)
        self.ns.forget_schedule(ino)

    # --- what the bucket holds (``discovery``; these entry points stay here) -----------
    async def ensure_listed(self, ino: int, complete: bool = False) -> None:
        """The directory's entries from the bucket are in the journal (``Discovery``)."""
        await self.discovery.ensure_listed(ino, complete)

    async def load_meta(self, ino: int) -> Inode:
        """``ino`` with trustworthy attributes: one HEAD for an entry known from a
        listing (``Discovery.load_meta``). Idempotent."""
        return await self.discovery.load_meta(ino)

    async def stat(self, ino: int) -> Inode:
        """The inode with trustworthy attributes (``getattr``)."""
        return await self.load_meta(ino)

    async def poll_dir(self, ino: int) -> None:
        """Re-list one directory and apply what changed (``Discovery.poll_dir``)."""
        await self.discovery.poll_dir(ino)

    def dirs_to_poll(self, used_within_s: float) -> list[int]:
        """Directories in use within ``used_within_s`` (``Discovery.dirs_to_poll``)."""
        return self.discovery.dirs_to_poll(used_within_s)

    # --- lookups --------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Inode:
        """Find ``name`` in ``parent``, attributes loaded and checked as the mount
        shows them (``Discovery.resolve``); bumps the inode's lookup count (the
        kernel's reference, given back by ``forget``)."""
        inode = await self.discovery.resolve(parent, name)
        self.add_lookup(inode.ino)
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
            self.maybe_purge(ino)

    # --- attributes ---------------------------------------------------------------------
    async def setattr(self, ino: int, changes: SetAttrs) -> Inode:
        """Change attributes (chmod, chown, utimes, truncate; see ``SetAttrs``). Loads
        them first (``load_meta``); a size change fetches what is not cached. Marks
        the inode dirty; returns it as it is after."""
        inode = await self.load_meta(ino)
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
            inode = self.ns.get_in(txn, ino)
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
                self.ns.mark(txn, inode, flags, pending)
            txn.put(inode)
        self.ns.notify(pending)
        return inode

    async def readlink(self, ino: int) -> bytes:
        """A symlink's target: read from its object the first time (then kept).
        EINVAL for anything else."""
        inode = await self.load_meta(ino)
        if not stat.S_ISLNK(inode.mode):
            raise FsError(errno.EINVAL)
        if inode.target is None:
            src_key, etag = self.read_source(inode)
            if src_key is None:
                raise FsError(errno.EIO, "symlink target unknown")
            target = (await self.remote.get(src_key, if_match=etag)).decode("utf-8",
                                                                           "surrogateescape")
            with self.journal.write() as txn:
                inode = self.ns.get_in(txn, ino)
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
        p = self.ns.get_in(txn, parent)
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
        self.ns.touch_dir(txn, parent, now, 1 if stat.S_ISDIR(mode) else 0)
        return inode

    async def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                     writable: bool = True, append: bool = False,
                     direct: bool = False) -> tuple[int, Inode]:
        """Create and open a regular file. Returns (fh, inode); bumps the lookup count."""
        seg = await self._prepare_new(parent, name)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._add_entry(txn, parent, name, seg, stat.S_IFREG | stat.S_IMODE(mode),
                                    uid, gid, now, cached=True)
            self.ns.mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self.cache.create(inode.ino)
        self.ns.notify(pending)
        self.add_lookup(inode.ino)
        self.open_count[inode.ino] = self.open_count.get(inode.ino, 0) + 1
        return self._new_fh(Handle(inode.ino, writable, append, direct)), inode

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
            self.ns.mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        if kind == stat.S_IFREG:
            self.cache.create(inode.ino)
        self.ns.notify(pending)
        self.add_lookup(inode.ino)
        return inode

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        seg = await self._prepare_new(parent, name)
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self._add_entry(txn, parent, name, seg, stat.S_IFDIR | stat.S_IMODE(mode),
                                    uid, gid, now, nlink=2, listed=True)
            self.ns.mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self.discovery.note_names_listed(inode.ino, trio.current_time())  # (made here: empty)
        self.ns.notify(pending)
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
            self.ns.mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self.ns.notify(pending)
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
            inode = self.ns.get_in(txn, ino)
            if inode.nlink == 0:
                raise FsError(errno.ENOENT, "the file was removed")
            self._new_entry_dir(txn, parent, name)
            rec = Inode(ino=txn.new_ino(), mode=inode.mode, uid=inode.uid, gid=inode.gid,
                        parent=parent, name=seg, link_of=ino)
            txn.put(rec)
            txn.link(parent, name, ino)
            self.ns.touch_dir(txn, parent, now)
            inode.links.append(rec.ino)
            inode.nlink += 1
            inode.ctime_ns = now
            # every name's object gets the new ctime; the new name's is written whole
            self.ns.mark(txn, inode, DIRTY_META, pending)
            rec = self.ns.get_in(txn, rec.ino)
            self.ns.mark(txn, rec, DIRTY_DATA, pending)
            txn.put(rec)
            txn.put(inode)
        self.ns.notify(pending)
        self.add_lookup(ino)
        return inode

    # --- removing entries ---------------------------------------------------------------
    def _drop_remote(self, txn: Txn, inode: Inode) -> None:
        """The inode leaves the namespace: its object (if any) is deleted in order."""
        if inode.remote_key is not None:
            txn.append_op(DeleteOp(inode.remote_key, inode.remote_etag, inode.ino))
        leave_bucket(txn, inode)

    def _keep_parent_dir(self, txn: Txn, parent: int, pending: list[int]) -> None:
        """A directory that loses its last entry keeps existing in the bucket: make
        sure a marker gets written for it."""
        if parent == ROOT_INO or txn.has_children(parent):
            return
        d = self.ns.get_in(txn, parent)
        if d.remote_key is None and d.nlink > 0:
            self.ns.mark(txn, d, DIRTY_META, pending)
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
            inode = self.ns.get_in(txn, ino)
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            txn.unlink(parent, name)
            self.ns.touch_dir(txn, parent, now)
            remote = self.ns.remove_name(txn, inode, parent, name, now, pending, dropped)
            if remote is not None:
                txn.append_op(DeleteOp(remote[0], remote[1], ino))
            txn.put(inode)
            self._keep_parent_dir(txn, parent, pending)
        self.ns.notify(pending)
        self.ns.forget_records(dropped)
        self.maybe_purge(ino)

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
            inode = self.ns.get_in(txn, ino)
            if not stat.S_ISDIR(inode.mode):
                raise FsError(errno.ENOTDIR)
            if txn.has_children(ino):
                raise FsError(errno.ENOTEMPTY)
            txn.unlink(parent, name)
            self.ns.touch_dir(txn, parent, now, -1)
            inode.nlink = 0
            inode.ctime_ns = now
            self._drop_remote(txn, inode)
            txn.put(inode)
            self._keep_parent_dir(txn, parent, pending)
        self.ns.notify(pending)
        self.maybe_purge(ino)

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

    def _check_not_below(self, txn: Txn, dest: Inode, ino: int) -> None:
        """EINVAL if directory ``dest`` is directory ``ino`` or below it: no moving a
        directory into itself."""
        walk = dest
        while True:
            if walk.ino == ino:
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if walk.ino == ROOT_INO:
                return
            walk = self.ns.get_in(txn, walk.parent)

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        """Atomic rename, replacing an existing target (``os.replace``).

        ``flags``: renameat2's. ``RENAME_NOREPLACE``: EEXIST if the target exists;
        ``RENAME_EXCHANGE``: swap the two entries (``exchange``); both at once, or any
        other bit (``RENAME_WHITEOUT``...): EINVAL, nothing changes.
        """
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, f"rename flags {flags:#x} are not supported")
        if flags & RENAME_EXCHANGE:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EINVAL, "RENAME_EXCHANGE with RENAME_NOREPLACE")
            await self.exchange(old_parent, old_name, new_parent, new_name)
            return
        new_seg = keys.check_new_name(new_name)
        await self.ensure_listed(old_parent)
        await self.ensure_listed(new_parent)
        with self.journal.read() as txn:
            ino = txn.lookup(old_parent, old_name)
            if ino is None:
                raise FsError(errno.ENOENT)
            moving = self.ns.get_in(txn, ino)
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
            moving = self.ns.get_in(txn, ino)
            is_dir = stat.S_ISDIR(moving.mode)
            np = self.ns.get_in(txn, new_parent)
            if not stat.S_ISDIR(np.mode):
                raise FsError(errno.ENOTDIR)
            if np.nlink == 0:
                raise FsError(errno.ENOENT)
            if is_dir:
                self._check_not_below(txn, np, ino)
            target_ino = txn.lookup(new_parent, new_name)
            if target_ino == ino:
                return
            displaced: Inode | None = None
            if target_ino is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST)
                displaced = self.ns.get_in(txn, target_ino)
                if stat.S_ISDIR(displaced.mode):
                    if not is_dir:
                        raise FsError(errno.EISDIR)
                    if txn.has_children(target_ino):
                        raise FsError(errno.ENOTEMPTY)
                elif is_dir:
                    raise FsError(errno.ENOTDIR)

            # the name record that moves (a hard-linked file has one per name), and
            # the keys before the move of every object that has to follow it
            rec = moving if is_dir else self.ns.record_at(txn, old_parent, old_name, moving)
            old_keys = {i.ino: self.ns.object_key(txn, i) for i in self.ns.subtree(txn, rec)}

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
                    leave_bucket(txn, displaced)
                    self.ns.touch_dir(txn, new_parent, now, -1)
                else:
                    inherited = self.ns.remove_name(txn, displaced, new_parent, new_name, now,
                                                  pending, dropped)
                txn.put(displaced)
            txn.unlink(old_parent, old_name)
            txn.link(new_parent, new_name, ino)
            moving = self.ns.get_in(txn, ino)
            moving.ctime_ns = now
            if rec.ino == ino:
                moving.parent, moving.name = new_parent, new_seg
                txn.put(moving)
            else:
                txn.put(moving)
                rec = self.ns.get_in(txn, rec.ino)
                rec.parent, rec.name = new_parent, new_seg
                txn.put(rec)
            dir_delta = 1 if is_dir else 0
            self.ns.touch_dir(txn, old_parent, now, -dir_delta)
            self.ns.touch_dir(txn, new_parent, now, dir_delta)

            faults.crash_point("mid-rename")  # the transaction is not committed yet
            # bucket side: every object below the moved entry follows it
            for node in self.ns.subtree(txn, self.ns.get_in(txn, rec.ino)):
                self._move_remote(txn, node, old_keys[node.ino],
                                  inherited if node.ino == rec.ino else None, pending)
            self._keep_parent_dir(txn, old_parent, pending)
        self.ns.notify(pending)
        self.ns.forget_records(dropped)
        if displaced is not None:
            self.maybe_purge(displaced.ino)

    def _move_remote(self, txn: Txn, node: Inode, old_key: str | None,
                     inherited: tuple[str, str | None] | None, pending: list[int]) -> None:
        """Queue the bucket work that makes ``node``'s object follow its new path.

        ``inherited``: the object already at the new key that this node replaces; our
        next upload there is conditioned on its ETag instead of deleting it first.
        """
        node = self.ns.get_in(txn, node.ino)
        new_key = self.ns.object_key(txn, node)
        is_dir = stat.S_ISDIR(node.mode)
        had_remote = node.remote_key is not None
        if had_remote and node.remote_key != new_key:
            old = DeleteOp(node.remote_key, node.remote_etag, node.ino)
            if is_dir or node.dirty & DIRTY_DATA or new_key is None:
                # rewritten from local state at the new key (or not at all)
                txn.append_op(old)
                set_remote(node, None, None)
            else:
                # clean data stays server-side: copy, then delete the old key
                txn.append_op(CopyOp(old.key, new_key, old.etag, node.ino))
                txn.append_op(old)
                set_remote(node, new_key, None)
                inherited = None  # the copy overwrites it
        if new_key is None:
            unmark(txn, node)
        else:
            if inherited is not None and node.remote_key is None:
                set_remote(node, *inherited)
            if old_key is None:
                # it was not exported before (e.g. under .s3fuse/): upload it now
                self.ns.mark(txn, node, DIRTY_META if is_dir else DIRTY_DATA | DIRTY_META,
                           pending)
            elif is_dir and (had_remote or inherited is not None):
                # the directory's marker and attributes move with it
                self.ns.mark(txn, node, DIRTY_META, pending)
        txn.put(node)

    # --- RENAME_EXCHANGE --------------------------------------------------------------
    #
    # The two entries trade places on the mount in one journal transaction, like a
    # rename. In the bucket every object at or below each entry moves to the same place
    # at or below the other. Where both trees have an object at one place (the two
    # entries themselves when both are files or both directories, then each name two
    # directories have in common, at any depth), the two keys trade their contents: a
    # cycle. Server-side copies alone cannot turn a cycle without a third key, and
    # s3fuse puts no object of its own in the bucket. So one side of each such *pair*
    # is written from local state:
    #
    # * directory markers always are (they hold attributes the journal has): each
    #   directory takes over the other's marker (key and ETag) and rewrites it;
    # * a file that is to be uploaded anyway (DIRTY_DATA) is uploaded to its new key,
    #   conditioned on the ETag of the object it replaces there (the other side's);
    # * of two clean files, one is made DIRTY_DATA and goes the same way (the smaller
    #   one whose bytes are on local disk; if neither is, the smaller one is fetched
    #   first, before the transaction); the other one is copied server-side, pinned
    #   to its ETag, to its new key, which is the local side's old key.
    #
    # Why that order never loses a version: the copy op names both keys, and an upload
    # to a key waits while a pending op names it (``Flusher._start_uploads``; an upload
    # already in flight holds the copy back instead, ``_startable_ops``). So the copy
    # reads the copied side's version before the local side's upload replaces it; and
    # the copy overwrites only the local side's old object, whose bytes are then in
    # its cache file, which is never evicted while dirty; the DIRTY_DATA mark is in
    # the very transaction that makes the swap. A crash before the commit leaves the
    # old tree; after it, replay finds the same op log and dirty set (copies and
    # uploads are repeated safely, as for a rename). No delete is queued for a pair:
    # each of its keys is overwritten by its new holder. If the copy's source was
    # changed outside meanwhile, the copy is dropped (S3 wins) as for a rename.
    #
    # Objects with no partner at their new place simply move, as in a rename
    # (``_move_remote``): their new keys are no one's old key, so no cycle. Except
    # a file whose place in the other tree is a directory (a file exchanged with a
    # directory, or a name that is a file in one tree and a directory in the other):
    # its new key ``K`` still has the directory's objects below ``K/`` until they have
    # moved, and they move to below the file's old key, which the file holds until it
    # has moved; a store that keeps keys as paths (``file://``) can hold no file ``K``
    # beside keys under ``K/``. So such a file goes from local state: its old object
    # is deleted first (the first ops of the exchange), and it is uploaded to its new
    # key once the directory's objects are gone from there (a failed attempt is
    # retried, as any upload).

    async def exchange(self, parent_a: int, name_a: bytes, parent_b: int,
                       name_b: bytes) -> None:
        """``renameat2(RENAME_EXCHANGE)``: entry ``name_a`` of ``parent_a`` and entry
        ``name_b`` of ``parent_b`` trade places, atomically (one journal transaction):
        two files, two directories, or a file and a directory. Both must exist
        (ENOENT); neither directory may end up inside itself (EINVAL); two names of
        one file: nothing happens, as on Linux. The bucket follows through the op log
        and the dirty set (see above); of two clean files, one may be fetched first."""
        await self.ensure_listed(parent_a)
        await self.ensure_listed(parent_b)
        for _ in range(EXCHANGE_TRIES):
            with self.journal.read() as txn:
                found = (txn.lookup(parent_a, name_a), txn.lookup(parent_b, name_b))
                if found[0] is None or found[1] is None:
                    raise FsError(errno.ENOENT)
                dirs = [ino for ino in found if stat.S_ISDIR(self.ns.get_in(txn, ino).mode)]
            for ino in dirs:
                await self._ensure_subtree_listed(ino)
            try:
                self._exchange(parent_a, name_a, parent_b, name_b)
                return
            except _NeedLocal as need:
                await self._make_local(need.ino)
        raise FsError(errno.EBUSY, "the entries kept changing while being exchanged")

    async def _make_local(self, ino: int) -> None:
        """Have the attributes and the whole bytes of name record ``ino`` on local disk."""
        rec = self.get(ino)
        data = await self.load_meta(rec.link_of or ino)
        if stat.S_ISLNK(data.mode):
            await self.readlink(data.ino)
        elif stat.S_ISREG(data.mode):
            await self.ensure_cached(data.ino)

    def _exchange(self, parent_a: int, name_a: bytes, parent_b: int, name_b: bytes) -> None:
        """The transaction of ``exchange``. Raises ``_NeedLocal`` (nothing changed) when
        a clean file must be fetched first."""
        now = _now_ns()
        pending: list[int] = []
        with self.journal.write() as txn:
            ino_a, ino_b = txn.lookup(parent_a, name_a), txn.lookup(parent_b, name_b)
            if ino_a is None or ino_b is None:
                raise FsError(errno.ENOENT)
            for parent in (parent_a, parent_b):
                d = self.ns.get_in(txn, parent)
                if not stat.S_ISDIR(d.mode):
                    raise FsError(errno.ENOTDIR)
                if d.nlink == 0:
                    raise FsError(errno.ENOENT)
            if ino_a == ino_b:
                return  # two names of one file: Linux does nothing either
            a, b = self.ns.get_in(txn, ino_a), self.ns.get_in(txn, ino_b)
            a_dir, b_dir = stat.S_ISDIR(a.mode), stat.S_ISDIR(b.mode)
            if a_dir:
                self._check_not_below(txn, self.ns.get_in(txn, parent_b), ino_a)
            if b_dir:
                self._check_not_below(txn, self.ns.get_in(txn, parent_a), ino_b)
            rec_a = a if a_dir else self.ns.record_at(txn, parent_a, name_a, a)
            rec_b = b if b_dir else self.ns.record_at(txn, parent_b, name_b, b)

            # before the swap: every object below each entry by its place, and the pairs
            places_a, places_b = self._places(txn, rec_a), self._places(txn, rec_b)
            pairs: list[tuple[Inode, str | None, Inode, str | None, int | None]] = []
            for place, (x, key_x) in places_a.items():
                if place in places_b:
                    y, key_y = places_b[place]
                    pairs.append((x, key_x, y, key_y,
                                  self._copy_side(txn, x, key_x, y, key_y)))
            # files that meet a directory (see above): written from local state
            clashes = [(node, key) for places, other in ((places_a, places_b),
                                                         (places_b, places_a))
                       for (rel, is_dir), (node, key) in places.items()
                       if not is_dir and (rel, True) in other]
            for node, _ in clashes:
                if not self._is_local(txn, node):
                    raise _NeedLocal(node.ino)

            # the namespace change itself
            txn.unlink(parent_a, name_a)
            txn.unlink(parent_b, name_b)
            txn.link(parent_a, name_a, ino_b)
            txn.link(parent_b, name_b, ino_a)
            for rec_ino, data_ino, parent, seg in ((rec_a.ino, ino_a, parent_b, rec_b.name),
                                                   (rec_b.ino, ino_b, parent_a, rec_a.name)):
                data = self.ns.get_in(txn, data_ino)
                data.ctime_ns = now
                txn.put(data)
                rec = self.ns.get_in(txn, rec_ino)
                rec.parent, rec.name = parent, seg
                txn.put(rec)
            # a directory that trades places with a file moves a subdirectory link
            delta = int(b_dir) - int(a_dir)
            self.ns.touch_dir(txn, parent_a, now, delta if parent_a != parent_b else 0)
            if parent_b != parent_a:
                self.ns.touch_dir(txn, parent_b, now, -delta)

            faults.crash_point("mid-exchange")  # the transaction is not committed yet
            # bucket side
            done: set[int] = set()
            # local sides whose only other copy an op will overwrite or delete
            durable: set[int] = set()
            for x, key_x, y, key_y, copied in pairs:
                self._swap_remote(txn, x.ino, key_x, y.ino, key_y, copied, pending)
                done.update((x.ino, y.ino))
                if copied is not None:
                    durable.add(self.ns.data_of(txn, y if copied == x.ino else x).ino)
            for node, old_key in clashes:  # (their deletes first: nothing waits on them)
                durable.add(self.ns.data_of(txn, node).ino)
                node = self.ns.get_in(txn, node.ino)
                self.ns.mark(txn, node, DIRTY_DATA, pending)
                txn.put(node)
                self._move_remote(txn, node, old_key, None, pending)
                done.add(node.ino)
            for places in (places_a, places_b):
                for node, old_key in places.values():
                    if node.ino not in done:
                        self._move_remote(txn, node, old_key, None, pending)
        if durable:
            # Before any op runs (none can before this returns to the event loop): a
            # host crash must not find the copy or delete done in the bucket and the
            # exchange, or the bytes it relies on, missing here. (A kill -9 loses
            # neither: both are in the page cache.)
            for ino in durable:
                self.cache.fsync(ino)
            self.journal.sync()
        self.ns.notify(pending)

    def _places(self, txn: Txn, top: Inode) -> dict[tuple[tuple[str, ...], bool],
                                                   tuple[Inode, str | None]]:
        """Every name record at or below ``top``, by its place relative to ``top``
        (the names below it, and whether it is a directory: a file's key and a
        directory's never meet), with its object key now."""
        depth = len(self.ns.path_names(txn, top))
        out: dict[tuple[tuple[str, ...], bool], tuple[Inode, str | None]] = {}
        for node in self.ns.subtree(txn, top):
            place = (tuple(self.ns.path_names(txn, node)[depth:]), stat.S_ISDIR(node.mode))
            out[place] = (node, self.ns.object_key(txn, node))
        return out

    def _is_local(self, txn: Txn, rec: Inode) -> bool:
        """Can name record ``rec``'s object be written whole from local state now?"""
        if rec.dirty & DIRTY_DATA:
            return True  # (dirty data is always whole in the cache)
        data = self.ns.data_of(txn, rec)
        if not data.meta_loaded:
            return False
        if stat.S_ISREG(data.mode):
            return data.cached
        if stat.S_ISLNK(data.mode):
            return data.target is not None
        return True  # a FIFO, socket or device: an empty object with attributes

    def _copy_side(self, txn: Txn, x: Inode, key_x: str | None, y: Inode,
                   key_y: str | None) -> int | None:
        """Of a pair (``x`` at ``key_x`` goes to ``key_y``, ``y`` the other way), the
        record whose object moves by a server-side copy, or None: each side is written
        from local state. Raises ``_NeedLocal`` for a side to fetch first."""
        if stat.S_ISDIR(x.mode):
            return None  # markers are rewritten from the journal
        sides = ((x, key_y), (y, key_x))
        copyable = [r for r, new_key in sides
                    if new_key is not None and r.remote_key is not None
                    and not r.dirty & DIRTY_DATA]
        copied: Inode | None = copyable[0] if len(copyable) == 1 else None
        if len(copyable) == 2:
            # two clean objects: the smaller one we hold goes up from local bytes
            by_size = sorted(copyable, key=lambda r: self.ns.data_of(txn, r).size)
            local = next((r for r in by_size if self._is_local(txn, r)), None)
            if local is None:
                raise _NeedLocal(by_size[0].ino)
            copied = y if local is x else x
        for r, new_key in sides:
            if r is not copied and new_key is not None and not self._is_local(txn, r):
                raise _NeedLocal(r.ino)
        return copied.ino if copied is not None else None

    def _swap_remote(self, txn: Txn, x_ino: int, key_x: str | None, y_ino: int,
                     key_y: str | None, copied: int | None, pending: list[int]) -> None:
        """The bucket side of a pair, after the swap in the namespace: ``x`` now has
        ``y``'s old path and key (``key_y``), ``y`` ``x``'s (``key_x``; None: not in
        the bucket, under ``.s3fuse/``). Each takes over the other's object
        (key and ETag), so its next write there is conditioned on the version it
        replaces. ``copied`` (a record, or None) has its own object copied to its new
        key instead; every other side is (re)written from local state."""
        x, y = self.ns.get_in(txn, x_ino), self.ns.get_in(txn, y_ino)
        is_dir = stat.S_ISDIR(x.mode)
        had = {x.ino: x.remote_key is not None, y.ino: y.remote_key is not None}
        old_x = (x.remote_key, x.remote_etag)
        set_remote(x, y.remote_key, y.remote_etag)
        set_remote(y, *old_x)
        if copied is not None:
            c, other = (x, y) if copied == x.ino else (y, x)
            # (after the swap, ``other`` holds the copied side's own object)
            new_key = self.ns.object_key(txn, c)
            txn.append_op(CopyOp(other.remote_key, new_key, other.remote_etag, c.ino))
            set_remote(c, new_key, None)  # the copy gives the ETag
        txn.put(x)
        txn.put(y)
        for ino, old_key in ((x_ino, key_x), (y_ino, key_y)):
            node = self.ns.get_in(txn, ino)
            if self.ns.object_key(txn, node) is None:
                # left the bucket (now under .s3fuse/): its place's object, if any, is
                # the other side's now
                leave_bucket(txn, node)
            elif ino == copied:
                pass
            elif not is_dir:
                self.ns.mark(txn, node, DIRTY_DATA | DIRTY_META, pending)
            elif had[x_ino] or had[y_ino] or old_key is None:
                # its marker, rewritten (or written: it just entered the bucket)
                self.ns.mark(txn, node, DIRTY_META, pending)
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
        from its object. (No-op when already dirty: one extra commit per change run.)
        The file must be whole in the cache (``ensure_cached``, with no await
        since): dirty bytes are always all local."""
        pending: list[int] = []
        with self.journal.read() as txn:
            inode = txn.peek(ino)
            if inode is None:
                raise FsError(errno.ENOENT, f"inode {ino}")
            if stat.S_ISREG(inode.mode) and not inode.cached:
                raise FsError(errno.EIO, f"inode {ino} would change while not whole in "
                                         "the cache")
            records = [inode] + [txn.peek(r) for r in inode.links]
            if inode.nlink == 0 or all(r is not None and r.dirty & DIRTY_DATA
                                       for r in records):
                return
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            self.ns.mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self.ns.notify(pending)

    async def _start_empty(self, ino: int) -> None:
        """The file's content becomes empty, whole in the cache (a truncate to 0, or
        a version that is gone)."""
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            self.cache.create(ino, 0)
            inode.cached = True
            inode.size = 0
            txn.put(inode)

    async def ensure_cached(self, ino: int) -> None:
        """Fetch whatever part of the regular file ``ino`` is not in the cache yet, so
        that it is whole there (before a write: a dirty file is always whole in the
        cache). If the bucket replaced or deleted the version being fetched (a clean
        file), its current version is adopted (S3 wins: nothing local is at stake)
        and fetched instead. Returns with the file whole in the cache, as of now:
        the caller must not await before relying on it. EIO only when the bytes
        cannot be had: the bucket unreachable, or changing faster than it is read.

        An open file whose object was deleted in the bucket before its bytes were
        cached has nothing to fetch: it starts again from empty (a write to it is
        kept in lost+found at its last close, as every write after such a delete)."""
        for _ in range(FETCH_ATTEMPTS):
            inode = self.get(ino)
            if inode.cached or not stat.S_ISREG(inode.mode):
                return
            if inode.nlink == 0 and self.read_source(inode)[0] is None:
                await self._start_empty(ino)
                return
            try:
                await self.fetcher.whole(ino)
            except VersionGone as exc:
                await self._adopt_current(ino, exc)
        if not self.get(ino).cached:
            raise FsError(errno.EIO, "the file kept changing in the bucket while it was read")

    async def _adopt_current(self, ino: int, gone: VersionGone) -> None:
        """After ``gone``: take the bucket's current version of ``ino``, or fail."""
        try:
            changed = await self.reconciler.adopt_current(ino, gone.etag)
        except StoreError as exc:
            raise FsError(errno.EIO, f"{gone}; asking the bucket failed: {exc}") from None
        if not changed:
            raise FsError(errno.ESTALE, str(gone))

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns (fh, changed): ``changed`` means the bucket had a newer
        version (close-to-open), so the kernel must drop its cached pages."""
        changed = await self.revalidate(ino) | self.reconciler.take_refreshed(ino)
        inode = self.get(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        if inode.nlink == 0 and self.reconciler.left_for_the_bucket(ino):
            # the kernel looked the path up before the bucket's change was applied:
            # ESTALE makes it look again, and open what is there now
            raise FsError(errno.ESTALE, "replaced in the bucket")
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if flags & os.O_TRUNC and stat.S_ISREG(inode.mode):
            # libfuse negotiates atomic O_TRUNC: the truncation comes with the open,
            # even read-only (the kernel checked write permission) and even when empty
            # (the times still move)
            await self.setattr(ino, SetAttrs(size=0))
        self.open_count[ino] = self.open_count.get(ino, 0) + 1
        return self._new_fh(Handle(ino, writable, bool(flags & os.O_APPEND),
                                   bool(flags & os.O_DIRECT))), changed

    def is_direct(self, fh: int) -> int | None:
        """The inode of ``fh`` if it was opened with O_DIRECT, else None."""
        h = self.handles.get(fh)
        return h.ino if isinstance(h, Handle) and h.direct else None

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            raise FsError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Bytes of the file as it is when they are returned: fetched first where not
        cached (a version replaced in the bucket meanwhile is adopted, then read)."""
        h = self._handle(fh)
        for _ in range(FETCH_ATTEMPTS):
            if not self.get(h.ino).cached:
                try:
                    await self.fetcher.for_read(h.ino, offset, size)
                except VersionGone as exc:
                    await self._adopt_current(h.ino, exc)
                    continue
            inode = self.get(h.ino)
            if offset >= inode.size:
                return b""
            length = min(size, inode.size - offset)
            # (no await between this check and the read of the cache file)
            if inode.cached or not self.cache.missing(h.ino, offset, length, inode.size):
                return self.cache.read(h.ino, offset, length)
        raise FsError(errno.EIO, "the file kept changing in the bucket while it was read")

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (at the end, for a handle opened with
        O_APPEND). A clean file not whole in the cache is fetched first; if the
        bucket replaced it meanwhile, the write lands on the bucket's current version
        (S3 wins, nothing local was at stake)."""
        h = self._handle(fh)
        inode = self.get(h.ino)
        if self.flusher is not None:
            await self.flusher.wait_for_room(h.ino, max(inode.size, offset + len(data)))
        await self.ensure_cached(h.ino)
        # From here on no await: the bytes the write lands on, and the ETag an upload
        # of them names, are the same version (see ``journal.Inode``).
        if h.append:
            size = self.get(h.ino).size
            if offset != size:
                # the kernel's idea of the end of the file was stale (the bucket's
                # newer version was adopted meanwhile): its cached pages and size
                # for this file are dropped
                offset = size
                self.invalidate([], [h.ino])
        now = _now_ns()
        end = offset + len(data)
        if self._write_deferred(h.ino, end, now):
            self.cache.write(h.ino, offset, data)
            return len(data)
        self._dirty_before_data_change(h.ino)
        pending: list[int] = []
        self.cache.write(h.ino, offset, data)
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, h.ino)
            inode.size = max(inode.size, offset + len(data))
            inode.mtime_ns = inode.ctime_ns = now
            if inode.nlink > 0:
                self.ns.mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self.ns.notify(pending)
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
        self.ns.notify([ino])
        return True

    def fsyncdir(self) -> None:
        """``fsyncdir``: every namespace change so far is on disk (the journal)."""
        self.journal.sync()

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
        self.reconciler.keep_replaced(h.ino)
        # (its cache file's descriptor stays open in the cache's bounded set: the
        # upload reads it next, and a new file is often opened again soon)
        self.maybe_purge(h.ino)

    # --- directories ----------------------------------------------------------------------
    async def opendir(self, ino: int) -> int:
        inode = self.get(ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        await self.ensure_listed(ino)
        self.discovery.note_used(ino)
        return self._new_fh(DirHandle(ino))  # (its first readdir takes the snapshot)

    def dir_handle(self, fh: int) -> Inode:
        """The directory an opendir handle lists."""
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise FsError(errno.EBADF)
        return self.get(h.ino)

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Inode, int]]:
        """Entries from position ``start`` of this pass over the directory, each with
        the position to resume after it. ``start`` 0 begins a pass (the first readdir
        of a handle, or one after ``rewinddir``): it takes a fresh snapshot of the
        entries, so names added and removed since are seen, as POSIX asks. Within
        one pass the positions stay those of that snapshot, so changes while
        listing skip or repeat nothing (entries removed meanwhile are left out)."""
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise FsError(errno.EBADF)
        if start == 0:
            with self.journal.read() as txn:
                h.entries = list(txn.children(h.ino))
            self.discovery.note_readdir(h.ino)
        with self.journal.read() as txn:
            for pos in range(start, len(h.entries)):
                name, ino = h.entries[pos]
                inode = txn.get(ino)
                if inode is None or inode.nlink == 0:
                    continue
                yield name, inode, pos + 1

    def reply_entries(self, fh: int, start: int,
                      reply: Callable[[bytes, Inode, bool, int], bool]) -> None:
        """A readdir as the kernel sees it: positions 0 and 1 are ``.`` and ``..``
        (no lookup count for those), the entries of ``readdir`` follow from position
        2 (a ``start`` below 2 begins a new pass). Calls ``reply(name, inode,
        type_known, next_position)`` for each until it returns False (the kernel's
        buffer is full); each entry it took counts as a lookup. ``type_known`` False:
        the entry's type is not known yet (see ``type_known``)."""
        if start < 2:
            d = self.dir_handle(fh)
            dots = [(b".", d), (b"..", self.get(d.parent))]
            for pos in range(start, 2):
                name, inode = dots[pos]
                if not reply(name, inode, True, pos + 1):
                    return
        for name, inode, next_pos in self.readdir(fh, max(0, start - 2)):
            if not reply(name, inode, self.type_known(inode), next_pos + 2):
                break
            self.add_lookup(inode.ino)

    @staticmethod
    def type_known(inode: Inode) -> bool:
        """Whether the entry's file type is known. From a listing, a small object may
        still be a symlink (its body is the target) or a FIFO/socket/device (empty)
        until its headers are read: readdir then reports DT_UNKNOWN, so a reader that
        needs the type stats it, which loads it."""
        return inode.meta_loaded or not stat.S_ISREG(inode.mode) \
            or inode.size > MAX_SYMLINK_BYTES

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
        decision = await self.discovery.recheck(inode)
        if decision is Decision.REMOVE:
            # this inode left the path (deleted, or replaced by a newer version while
            # others hold it open): ESTALE makes the kernel look the path up again
            raise FsError(errno.ESTALE, f"{inode.remote_key} changed in the bucket")
        return decision is Decision.REFRESH

    def invalidate(self, entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
        if self.notify_kernel is not None and (entries or inodes):
            self.notify_kernel(entries, inodes)

    def not_exported_paths(self) -> list[dict]:
        """Live files and directories whose key would be too long for S3."""
        out = []
        with self.journal.read() as txn:
            for ino in list(self.ns.not_exported):
                inode = txn.get(ino)
                if inode is None or inode.nlink == 0 or self.ns.object_key(txn, inode) is not None:
                    self.ns.not_exported.pop(ino, None)
                    continue
                out.append({"path": self.ns.not_exported[ino],
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
                    rec = inode if ino == ROOT_INO else self.ns.record_at(txn, parent, name, inode)
                    found.extend(i.ino for i in self.ns.subtree(txn, rec))
        return found

    # --- extended attributes ------------------------------------------------------------
    def sync_state(self, inode: Inode) -> str:
        with self.journal.read() as txn:
            records = self.ns.records(txn, inode)
            exported = inode.ino == ROOT_INO or any(self.ns.object_key(txn, r) is not None
                                                     for r in records)
        if self.flusher is not None and any(self.flusher.is_uploading(r.ino)
                                            for r in records):
            return "uploading"
        if self.ns.in_lost_found(inode):
            return "conflict"
        if not exported:
            return "local-only"
        return "dirty" if any(r.dirty for r in records) else "synced"

    async def getxattr(self, ino: int, name: str) -> bytes:
        """An extended attribute (only ``user.*`` exist: anything else is ENODATA at
        once, as ``ls -l`` asks every file for ``security.selinux``), or the sync
        state (``STATE_XATTR``). Loads the attributes first."""
        if not name.startswith("user."):
            raise FsError(errno.ENODATA)
        inode = await self.load_meta(ino)
        if name == STATE_XATTR:
            return self.sync_state(inode).encode()
        if name not in inode.xattrs:
            raise FsError(errno.ENODATA)
        return metadata.xattr_value(inode.xattrs[name])

    async def listxattr(self, ino: int) -> list[str]:
        """The names of the inode's extended attributes (loaded first)."""
        return sorted((await self.load_meta(ino)).xattrs)

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        """Set a ``user.*`` attribute (EOPNOTSUPP otherwise; EPERM for the state
        attribute; E2BIG past the object's 2 KiB of metadata). Marks DIRTY_META."""
        await self.load_meta(ino)
        if not name.startswith("user.") or name == STATE_XATTR:
            raise FsError(errno.EOPNOTSUPP if not name.startswith("user.") else errno.EPERM)
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            xattrs = dict(inode.xattrs)
            xattrs[name] = metadata.xattr_encode(value)
            md = object_metadata(inode, xattrs=xattrs)
            if metadata.metadata_size(md) > metadata.METADATA_LIMIT_BYTES:
                raise FsError(errno.E2BIG, "object metadata is limited to 2 KiB")
            inode.xattrs = xattrs
            inode.ctime_ns = _now_ns()
            self.ns.mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self.ns.notify(pending)

    async def removexattr(self, ino: int, name: str) -> None:
        """Remove an extended attribute (ENODATA if it has none). Marks DIRTY_META."""
        await self.load_meta(ino)
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            if name not in inode.xattrs:
                raise FsError(errno.ENODATA)
            del inode.xattrs[name]
            inode.ctime_ns = _now_ns()
            self.ns.mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self.ns.notify(pending)
