"""The filesystem, without FUSE: the one object ``fuse_ops`` adapts and unit tests drive.

``Filesystem`` holds the mount's open handles and lookup counts and creates, links
and removes entries; the rest of the core is composed here, each part a module of
its own that it calls through these entry points:

* ``namespace``: records, path <-> key, and the setters of their invariants;
* ``discovery``: listings, lazy attributes, prefetch, close-to-open checks, polling;
* ``rename``: rename and RENAME_EXCHANGE, with the bucket work that follows them;
* ``contents``: file bytes (fetching, reading, writing);
* ``reconcile``: the S3-wins policy for what the bucket changed;
* ``xattrs``: extended attributes and the sync state (``Filesystem``'s base class).

Every namespace change is one synchronous journal transaction (no ``await``
inside), so other tasks and, through FUSE, other processes see the tree before or
after a change, never in between. Store calls happen *before* such a transaction,
and whatever they learned is re-validated inside it. Bucket side effects are never
done here: a change marks the inode dirty (the flusher uploads it) or appends
server-side ``copy``/``delete`` ops (``oplog``) to the journal.

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

from . import keys
from .reconcile import Decision, Reconciler
from .cache import Cache
from .errors import FsError
from .contents import Contents
from .discovery import Discovery
from .rename import Renamer
from .fetch import Fetcher
from .flusher import FlusherLinks
from .journal import DIRTY_DATA, DIRTY_META, ROOT_INO, Inode, Journal, Txn
from .oplog import DeleteOp
from .namespace import Defaults, Namespace, leave_bucket
from .remote import Remote
from .xattrs import ExtendedAttributes

if TYPE_CHECKING:
    from .flusher import Flusher

log = logging.getLogger(__name__)


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


class Filesystem(ExtendedAttributes):
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
        self.contents = Contents(self.ns, cache, self.fetcher, self.reconciler,
                                 self.invalidate)
        self.renamer = Renamer(self.ns, self.discovery, cache, self._make_local,
                               self.maybe_purge)
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
        self.contents.flusher = flusher

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
        now = time.time_ns()
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
        """The kernel still refers to ``ino`` (a lookup count) or a handle is open."""
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
        """The kernel took one more reference to ``ino`` (given back by ``forget``)."""
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        """The kernel drops references: (ino, count) pairs. An unlinked inode whose
        last reference goes is purged (``maybe_purge``). Never awaits."""
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
                    await self.contents.start_empty(ino)
                else:
                    await self.ensure_cached(ino)
        if changes.size is not None:
            self.contents.dirty_before_change(ino)
        now = time.time_ns()
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
        now = time.time_ns()
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
        """Create a special file (FIFO, socket, device) or an empty regular file; bumps
        the lookup count. Marks it dirty (an empty object with its attributes)."""
        seg = await self._prepare_new(parent, name)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        now = time.time_ns()
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
        """Create a directory (its marker is uploaded); bumps the lookup count."""
        seg = await self._prepare_new(parent, name)
        now = time.time_ns()
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
        """Create a symlink (its object holds the target); bumps the lookup count."""
        seg = await self._prepare_new(parent, name)
        now = time.time_ns()
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
        now = time.time_ns()
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

    async def unlink(self, parent: int, name: bytes) -> None:
        """Remove a non-directory entry. One transaction: the name goes, its object's
        delete is queued (``oplog``), the inode lives on while open or looked up."""
        await self.ensure_listed(parent)
        now = time.time_ns()
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
            self.ns.keep_parent_dir(txn, parent, pending)
        self.ns.notify(pending)
        self.ns.forget_records(dropped)
        self.maybe_purge(ino)

    async def rmdir(self, parent: int, name: bytes) -> None:
        """Remove an empty directory (empty in the bucket too: it is listed whole
        first). ENOTDIR, ENOTEMPTY, ENOENT."""
        await self.ensure_listed(parent)
        with self.journal.read() as txn:
            ino = txn.lookup(parent, name)
        if ino is None:
            raise FsError(errno.ENOENT)
        await self.ensure_listed(ino, complete=True)  # empty in the bucket too?
        now = time.time_ns()
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
            self.ns.keep_parent_dir(txn, parent, pending)
        self.ns.notify(pending)
        self.maybe_purge(ino)

    # --- rename (``rename``: these are the entry points) --------------------------------
    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        """Atomic rename (``os.replace``; ``flags``: renameat2's, see ``Renamer.rename``).
        One journal transaction; the bucket follows through ops and dirty marks."""
        await self.renamer.rename(old_parent, old_name, new_parent, new_name, flags)

    async def exchange(self, parent_a: int, name_a: bytes, parent_b: int,
                       name_b: bytes) -> None:
        """``renameat2(RENAME_EXCHANGE)``: two entries trade places atomically
        (``Renamer.exchange``)."""
        await self.renamer.exchange(parent_a, name_a, parent_b, name_b)

    async def _make_local(self, ino: int) -> None:
        """Have the attributes and the whole bytes of name record ``ino`` on local disk."""
        rec = self.get(ino)
        data = await self.load_meta(rec.link_of or ino)
        if data.nlink == 0:
            return  # left its path meanwhile (a new inode of its headers' type, say): the
            # caller looks the name up again
        if stat.S_ISLNK(data.mode):
            await self.readlink(data.ino)
        elif stat.S_ISREG(data.mode):
            await self.ensure_cached(data.ino)

    # --- file data (``contents``; the entry points and the open handles stay here) -------
    def read_source(self, inode: Inode) -> tuple[str | None, str | None]:
        """Where ``inode``'s uncached bytes are now (``Contents.read_source``)."""
        return self.contents.read_source(inode)

    async def ensure_cached(self, ino: int) -> None:
        """Have regular file ``ino`` whole in the cache (``Contents.ensure_cached``);
        the caller must not await before relying on it."""
        await self.contents.ensure_cached(ino)

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

    def fsyncdir(self) -> None:
        """``fsyncdir``: every namespace change so far is on disk (the journal)."""
        self.journal.sync()

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Bytes of the open file ``fh`` (``Contents.read``)."""
        return await self.contents.read(self._handle(fh).ino, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Write to the open file ``fh`` (``Contents.write``; at the end if it was
        opened with O_APPEND). Returns the bytes written."""
        h = self._handle(fh)
        return await self.contents.write(h.ino, offset, data, h.append)

    async def fsync(self, fh: int) -> None:
        """The file's bytes and the journal are on disk; with ``--fsync-upload`` the
        file is in the bucket too when this returns."""
        h = self._handle(fh)
        self.cache.fsync(h.ino)
        self.journal.sync()
        if self.flusher is not None and self.flusher.fsync_upload:
            await self.flusher.upload_now([h.ino])

    async def release(self, fh: int) -> None:
        """Close a file handle. The last close of a file the bucket replaced meanwhile
        keeps what was written through it in lost+found (``Reconciler``); an
        unlinked inode with no references left is purged. Idempotent per handle."""
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
        """Open a directory (listed from the bucket first); returns the handle whose
        first ``readdir`` takes the snapshot."""
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
        the entry's type is not known yet (``Discovery.type_known``)."""
        if start < 2:
            d = self.dir_handle(fh)
            dots = [(b".", d), (b"..", self.get(d.parent))]
            for pos in range(start, 2):
                name, inode = dots[pos]
                if not reply(name, inode, True, pos + 1):
                    return
        for name, inode, next_pos in self.readdir(fh, max(0, start - 2)):
            if not reply(name, inode, self.discovery.type_known(inode), next_pos + 2):
                break
            self.add_lookup(inode.ino)

    def releasedir(self, fh: int) -> None:
        """Close a directory handle. Idempotent."""
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
        """Ask the kernel (through the daemon's invalidator task, never from here) to
        drop these cached names and inodes' pages. Never awaits."""
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
