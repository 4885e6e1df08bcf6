"""The read-only views under ``MOUNTPOINT/.s3fuse/`` (SPEC §9, docs/SEMANTICS.md §9).

``.s3fuse`` is the reserved name at the mount root (``timeline.RESERVED``). The mount
shows there a virtual directory, owned by this module::

    .s3fuse/
        at/<UTC time>/      the mounted prefix as it was at that time
        snapshots/<NAME>/   the tree a named snapshot pinned
        lost+found/         the mount's own conflict directory (journal inodes; shown
                            here once it exists, see reconcile.py)

Everything under ``at/`` and ``snapshots/`` is read-only (EROFS), pinned to exact
version ids, and built lazily, one directory at a time: an at-view directory is one
version listing with delimiter "/" (``ObjectStore.list_versions``), plus, for each of
its subdirectories, a version listing of that subdirectory that stops at the first key
that existed then (a prefix whose keys were all deleted by that time is not shown); a
snapshot directory is read from the record (``timeline.Snapshot``). A file's attributes
are those of its pinned version's headers (one HEAD of that version, on the first
lookup or getattr; an ``ls -l`` prefetches them ahead of its lookups as the live tree
does); its bytes are read by version id (``ObjectStore.get``), so nothing that happens
to the live tree changes what a view shows. Reads are cached in memory, bounded
(``BLOCK_CACHE_BYTES``). Every file (and directory marker) of a view has the xattrs
``user.s3fuse.version-id`` and ``user.s3fuse.etag``.

Names follow the live tree's rules (keys.py): a key segment that cannot be a file name
is skipped, a name that is both a file and a directory is the directory, the
``.s3fuse`` keys at the top of the prefix are never part of a view. Nothing a key says
becomes a path anywhere but inside the view.

Inode numbers: every inode of this module is at or above ``VIEW_BASE`` (2**62), and so
is every handle it opens; the journal numbers its inodes upwards from 2 and the
filesystem its handles from 1, so the ranges never meet. ``Views.intercept`` is the
one entry point ``fuse_ops`` calls: it answers every request that names one of these
inodes or handles, or the name ``.s3fuse`` in the root, and leaves the rest alone.

Choices a user sees:
* Like ZFS's hidden ``.zfs``, ``.s3fuse`` is not in the root's listing (so ``find``,
  ``rsync`` and ``du`` of the mount do not walk every snapshot) until the mount has a
  ``lost+found`` there; it can always be entered by name.
* ``ls .s3fuse/at/`` lists nothing: any time (``timeline.parse_when``) can be looked
  up. A time later than now is refused (ENOENT): the tree at a time not yet passed
  is not fixed.
* On a bucket whose versioning is off, a lookup under ``at/`` fails with EOPNOTSUPP
  and the daemon logs, once, how to turn versioning on.
* Creating, linking or renaming onto ``.s3fuse`` in the root fails with EEXIST (it
  exists); removing or renaming it away fails with EPERM; any change inside it (but
  in ``lost+found``) fails with EROFS.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from . import keys, metadata, timeline
from .errors import FsError, S3FuseError
from .store.base import VersionInfo
from .timeline import Pinned, Snapshot

if TYPE_CHECKING:
    from .filesystem import Filesystem
    from .fuse_ops import FuseOps

log = logging.getLogger(__name__)

RESERVED = timeline.RESERVED.encode()
VIEW_BASE = 1 << 62
VIEWS_ROOT = VIEW_BASE + 1  # .s3fuse
AT_DIR = VIEW_BASE + 2  # .s3fuse/at
SNAPSHOTS_DIR = VIEW_BASE + 3  # .s3fuse/snapshots
_FIRST_DYNAMIC = VIEW_BASE + 16
LOST_FOUND = b"lost+found"

VERSION_XATTR = "user.s3fuse.version-id"
ETAG_XATTR = "user.s3fuse.etag"

#: HEADs of pinned versions in flight at once (the live tree's HEAD_CONCURRENCY)
HEAD_CONCURRENCY = 16
#: how many entries after a looked-up one are loaded ahead, after a readdir
PREFETCH_AHEAD = 64
PREFETCH_AFTER_READDIR_S = 30.0
#: reads are cached in blocks of this size, at most BLOCK_CACHE_BYTES in all
BLOCK = 1 << 20
BLOCK_CACHE_BYTES = 64 << 20
#: the headers of this many versions are kept (one HEAD each, however often the
#: kernel forgets and looks up their entries again)
HEADERS_KEPT = 100_000
#: how long the answer to "is versioning on?" is trusted
VERSIONING_TTL_S = 10.0
#: attribute timeout of a loaded view entry: it never changes
PINNED_TIMEOUT_S = 300.0
#: a subdirectory of an at-view: at most this many version pages are read to find
#: whether it held a key then
EXISTS_MAX_PAGES = 1000
EXISTS_FIRST_PAGE = 16

# requests that change something: EROFS inside the views
_CHANGES = {"setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
            "create", "write", "setxattr", "removexattr"}


@dataclass
class Entry:
    """One name of a view directory as its listing found it."""

    is_dir: bool
    pinned: Pinned | None  # the file's version, or the directory's marker (if any)


@dataclass
class View:
    """One pinned tree: an at-view (``at_ns``) or a snapshot (``snapshot``)."""

    at_ns: int
    key_prefix: str  # the bucket prefix the view's relative keys are under
    snapshot: Snapshot | None = None
    keys: list[str] = field(default_factory=list)  # a snapshot's keys, sorted
    by_key: dict[str, Pinned] = field(default_factory=dict)


@dataclass
class Node:
    ino: int
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    view: View | None = None  # None: the fixed directories, and snapshot records
    rel: str = ""  # a directory's prefix in the view ("" or "a/b/"), a file's key
    pinned: Pinned | None = None
    loaded: bool = False
    rdev: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)
    target: bytes | None = None
    lookups: int = 0
    entries: dict[bytes, Entry] | None = None  # a directory's listing, once read
    names: list[bytes] = field(default_factory=list)  # its names, sorted
    children: dict[bytes, int] = field(default_factory=dict)  # name -> node made
    readdir_at: float = -float("inf")
    fixed: bool = False  # never forgotten

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass
class _DirHandle:
    ino: int
    names: list[bytes] = field(default_factory=list)


class Views:
    """The nodes of ``.s3fuse`` and below (see the module docstring). Runs on the
    daemon's event loop; the store is reached through ``fs.remote``."""

    def __init__(self, fs: Filesystem, timeout_s: float) -> None:
        self.fs = fs
        self.remote = fs.remote
        self.timeout_s = timeout_s
        now = time.time_ns()
        d = fs.defaults
        self.nodes: dict[int, Node] = {}
        for ino, parent, name in ((VIEWS_ROOT, pyfuse3.ROOT_INODE, RESERVED),
                                  (AT_DIR, VIEWS_ROOT, b"at"),
                                  (SNAPSHOTS_DIR, VIEWS_ROOT, b"snapshots")):
            self.nodes[ino] = Node(ino, parent, name, stat.S_IFDIR | 0o555, d.uid, d.gid,
                                   now, loaded=True, fixed=True, entries={})
        self._next_ino = _FIRST_DYNAMIC
        self._handles: dict[int, _DirHandle | Node] = {}
        self._next_fh = VIEW_BASE
        self._loading: dict[tuple[str, str], trio.Event] = {}
        # (key, version id) -> that version's user metadata (None: none), least
        # recently used first: a version's headers never change
        self._headers: OrderedDict[tuple[str, str], dict[str, str] | None] = OrderedDict()
        self._listing: dict[int, trio.Event] = {}
        self._prefetched: dict[int, set[bytes]] = {}
        self._head_limiter = trio.CapacityLimiter(HEAD_CONCURRENCY)
        # (key, version id, block number) -> bytes, least recently used first
        self._blocks: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._block_bytes = 0
        self._block_loads: dict[tuple[str, str, int], trio.Event] = {}
        self._versioning: tuple[float, str] | None = None  # (trio time, state)
        self._said_versioning_off = False

    # --- the one entry point from fuse_ops -----------------------------------------
    reserved = RESERVED

    def owns(self, number: int) -> bool:
        return number >= VIEW_BASE

    def claims(self, op: str, args: tuple) -> bool:
        """Whether the request ``op(*args)`` may be this module's (a cheap test made
        for every request; ``intercept`` decides)."""
        kind = _KIND_OF.get(op)
        if kind is None:
            return False
        owns, root = self.owns, pyfuse3.ROOT_INODE
        if kind in ("inode", "handle"):
            return owns(args[0])
        if kind == "parent":
            return owns(args[0]) or (args[0] == root and args[1] == RESERVED)
        if kind == "rename":
            return owns(args[0]) or owns(args[2]) or (args[0] == root and args[1] == RESERVED) \
                or (args[2] == root and args[3] == RESERVED)
        return owns(args[0]) or owns(args[1]) or (args[1] == root and args[2] == RESERVED)

    async def intercept(self, ops: FuseOps, op: str, args: tuple) -> tuple[bool, Any]:
        """``(True, answer)`` when the request ``op(*args)`` is this module's (it may
        raise FsError instead); ``(False, None)`` to let the live tree answer."""
        handler = _ROUTES.get(op)
        if handler is None:
            return False, None
        return await handler(self, ops, args)

    # --- the routes ------------------------------------------------------------------
    async def _by_inode(self, ops: FuseOps, op: str, args: tuple) -> tuple[bool, Any]:
        ino = args[0]
        if not self.owns(ino):
            return False, None
        if op in _CHANGES:
            raise FsError(errno.EROFS, "the views under .s3fuse are read-only")
        node = self.get(ino)
        if op == "getattr":
            return True, self.attr(await self.load(node))
        if op == "readlink":
            return True, await self.readlink(node)
        if op == "open":
            if args[1] & os.O_ACCMODE != os.O_RDONLY or args[1] & os.O_TRUNC:
                raise FsError(errno.EROFS, "the views under .s3fuse are read-only")
            if node.is_dir:
                raise FsError(errno.EISDIR)
            return True, pyfuse3.FileInfo(fh=self._new_fh(node), keep_cache=True)
        if op == "opendir":
            if not node.is_dir:
                raise FsError(errno.ENOTDIR)
            await self.list_dir(node)
            return True, self._new_fh(_DirHandle(ino))
        if op == "getxattr":
            return True, self.getxattr(await self.load(node), args[1])
        if op == "listxattr":
            return True, [n.encode() for n in self.listxattr(await self.load(node))]
        if op == "access":
            return True, True
        return False, None

    async def _by_parent(self, ops: FuseOps, op: str, args: tuple) -> tuple[bool, Any]:
        parent, name = args[0], args[1]
        if self.owns(parent):
            if op == "lookup":
                return True, await self.lookup(ops, parent, name)
            raise FsError(errno.EROFS, "the views under .s3fuse are read-only")
        if parent == pyfuse3.ROOT_INODE and name == RESERVED:
            if op == "lookup":
                return True, await self.lookup(ops, parent, name)
            raise FsError(errno.EPERM if op in ("unlink", "rmdir") else errno.EEXIST,
                          ".s3fuse is reserved at the root of the mount")
        return False, None

    async def _rename(self, ops: FuseOps, op: str, args: tuple) -> tuple[bool, Any]:
        p_old, n_old, p_new, n_new = args[:4]
        if self.owns(p_old) or self.owns(p_new):
            raise FsError(errno.EROFS, "the views under .s3fuse are read-only")
        root = pyfuse3.ROOT_INODE
        if (p_old == root and n_old == RESERVED) or (p_new == root and n_new == RESERVED):
            raise FsError(errno.EPERM, ".s3fuse is reserved at the root of the mount")
        return False, None

    async def _link(self, ops: FuseOps, op: str, args: tuple) -> tuple[bool, Any]:
        ino, parent, name = args[:3]
        if self.owns(ino) or self.owns(parent):
            raise FsError(errno.EROFS, "the views under .s3fuse are read-only")
        if parent == pyfuse3.ROOT_INODE and name == RESERVED:
            raise FsError(errno.EEXIST, ".s3fuse is reserved at the root of the mount")
        return False, None

    async def _by_handle(self, ops: FuseOps, op: str, args: tuple) -> tuple[bool, Any]:
        fh = args[0]
        if not self.owns(fh):
            return False, None
        if op == "write":
            raise FsError(errno.EROFS, "the views under .s3fuse are read-only")
        if op in ("release", "releasedir"):
            self._handles.pop(fh, None)
            return True, None
        if op in ("flush", "fsync", "fsyncdir"):
            return True, None
        h = self._handles.get(fh)
        if op == "read":
            if not isinstance(h, Node):
                raise FsError(errno.EBADF)
            return True, await self.read(h, args[1], args[2])
        if op == "readdir":
            if not isinstance(h, _DirHandle):
                raise FsError(errno.EBADF)
            self.readdir(ops, h, args[1], args[2])
            return True, None
        return False, None

    # --- nodes -----------------------------------------------------------------------
    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT, f"view inode {ino} was forgotten")
        return node

    def _new_fh(self, h: _DirHandle | Node) -> int:
        self._next_fh += 1
        self._handles[self._next_fh] = h
        return self._next_fh

    def _child(self, parent: Node, name: bytes, make: Callable[[int], Node]) -> Node:
        """The node of ``parent``'s entry ``name``, made by ``make(ino)`` the first
        time (and again after the kernel forgot it)."""
        ino = parent.children.get(name)
        if ino is not None and ino in self.nodes:
            return self.nodes[ino]
        self._next_ino += 1
        node = make(self._next_ino)
        self.nodes[node.ino] = node
        parent.children[name] = node.ino
        return node

    def _entry_node(self, parent: Node, name: bytes, entry: Entry) -> Node:
        view = parent.view
        assert view is not None
        d = self.fs.defaults

        def make(ino: int) -> Node:
            p = entry.pinned
            if entry.is_dir:
                rel = parent.rel + name.decode("utf-8", "surrogateescape") + "/"
                return Node(ino, parent.ino, name, stat.S_IFDIR | d.dir_mode, d.uid, d.gid,
                            p.mtime_ns if p else view.at_ns, view=view, rel=rel, pinned=p,
                            loaded=p is None)
            assert p is not None
            return Node(ino, parent.ino, name, stat.S_IFREG | d.file_mode, d.uid, d.gid,
                        p.mtime_ns, size=p.size, view=view, rel=p.key, pinned=p)
        node = self._child(parent, name, make)
        self._apply_headers(node)  # (read before, for an earlier node of this name)
        return node

    def forget(self, items: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Take the view inodes out of ``items`` (the kernel forgot them); returns the
        others, for the live tree."""
        rest = []
        for ino, n in items:
            if not self.owns(ino):
                rest.append((ino, n))
                continue
            node = self.nodes.get(ino)
            if node is None:
                continue
            node.lookups = max(0, node.lookups - n)
            self._drop(node)
        return rest

    def _drop(self, node: Node) -> None:
        """Forget ``node`` once the kernel holds no reference to it nor to anything
        below it (its listing goes with it: read again if it is looked up again);
        then its parent, if that leaves it unreferenced too."""
        while not node.fixed and self._unreferenced(node):
            self._forget_subtree(node)
            parent = self.nodes.get(node.parent)
            if parent is None:
                return
            if parent.children.get(node.name) == node.ino:
                del parent.children[node.name]
            node = parent

    def _unreferenced(self, node: Node) -> bool:
        """No lookup count on ``node`` or below it (nodes a prefetch made count as
        nothing until the kernel looks them up)."""
        if node.fixed or node.lookups > 0:
            return False
        return all(self._unreferenced(self.nodes[i]) for i in node.children.values()
                   if i in self.nodes)

    def _forget_subtree(self, node: Node) -> None:
        for i in list(node.children.values()):
            child = self.nodes.get(i)
            if child is not None:
                self._forget_subtree(child)
        self.nodes.pop(node.ino, None)
        self._prefetched.pop(node.ino, None)

    def attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        if not node.loaded:
            timeout = 0.0  # as in the live tree: the kernel comes back for them
        elif node.view is not None and node.parent not in (AT_DIR, SNAPSHOTS_DIR):
            timeout = PINNED_TIMEOUT_S  # pinned: it never changes
        else:
            timeout = self.timeout_s
        a.entry_timeout = a.attr_timeout = timeout
        a.st_mode = node.mode
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid, a.st_gid, a.st_rdev = node.uid, node.gid, node.rdev
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a

    # --- lookups ---------------------------------------------------------------------
    async def lookup(self, ops: FuseOps, parent_ino: int, name: bytes
                     ) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            raise FsError(errno.ENOENT)  # the kernel answers these itself
        if parent_ino == pyfuse3.ROOT_INODE:
            node = self.nodes[VIEWS_ROOT]
        else:
            parent = self.get(parent_ino)
            if not parent.is_dir:
                raise FsError(errno.ENOTDIR)
            if parent_ino == VIEWS_ROOT and name == LOST_FOUND:
                return await self._lost_found(ops)
            if parent_ino == VIEWS_ROOT:
                fixed = {b"at": AT_DIR, b"snapshots": SNAPSHOTS_DIR}.get(name)
                if fixed is None:
                    raise FsError(errno.ENOENT)
                node = self.nodes[fixed]
            elif parent_ino == AT_DIR:
                node = await self._at_root(parent, name)
            elif parent_ino == SNAPSHOTS_DIR:
                node = await self._snapshot_root(parent, name)
            else:
                entries = await self.list_dir(parent)
                entry = entries.get(name)
                if entry is None:
                    raise FsError(errno.ENOENT)
                node = self._entry_node(parent, name, entry)
                if not node.loaded:
                    self._prefetch_after(parent, name)
                    node = await self.load(node)
        node.lookups += 1
        return self.attr(node)

    async def _lost_found(self, ops: FuseOps) -> pyfuse3.EntryAttributes:
        """The journal's ``.s3fuse/lost+found`` (reconcile.py makes it), shown here."""
        ino = self._journal_lost_found()
        if ino is None:
            raise FsError(errno.ENOENT)
        return ops._attr(await self.fs.lookup(ino, LOST_FOUND))

    def _journal_lost_found(self) -> int | None:
        """The journal's ``.s3fuse`` directory if it holds ``lost+found``."""
        with self.fs.journal.read() as txn:
            top = txn.lookup(pyfuse3.ROOT_INODE, RESERVED)
            if top is None or txn.lookup(top, LOST_FOUND) is None:
                return None
            return top

    async def _at_root(self, parent: Node, name: bytes) -> Node:
        try:
            at_ns = timeline.parse_when(name.decode("utf-8", "replace"))
        except S3FuseError:
            raise FsError(errno.ENOENT, "not a UTC time like 2026-12-01T14:30:00Z") from None
        if at_ns > time.time_ns():
            raise FsError(errno.ENOENT, "a time not yet passed")
        await self._require_versioning()
        d = self.fs.defaults
        view = View(at_ns, self.fs.prefix)
        return self._child(parent, name, lambda ino: Node(
            ino, parent.ino, name, stat.S_IFDIR | 0o555, d.uid, d.gid, at_ns, view=view,
            loaded=True))

    async def _require_versioning(self) -> None:
        now = trio.current_time()
        if self._versioning is None or now - self._versioning[0] > VERSIONING_TTL_S:
            state = await self.remote.read_call(self.remote.store.versioning)
            self._versioning = (now, state)
        if self._versioning[1] == "off":
            if not self._said_versioning_off:
                self._said_versioning_off = True
                try:  # (its one line says how to turn versioning on; asks once more)
                    await trio.to_thread.run_sync(timeline.require_versioning,
                                                  self.remote.store, ".s3fuse/at")
                except timeline.VersioningOff as exc:
                    log.warning("%s", exc)
                except S3FuseError as exc:
                    log.warning(".s3fuse/at: the bucket does not keep old versions (%s)",
                                exc)
            raise FsError(errno.EOPNOTSUPP, "the bucket does not keep old versions")

    def _snapshot_key(self, name: bytes) -> str:
        try:
            return timeline.snapshot_key(self.fs.prefix, name.decode("utf-8"))
        except (S3FuseError, UnicodeDecodeError):
            raise FsError(errno.ENOENT, "not a snapshot name") from None

    async def _snapshot_root(self, parent: Node, name: bytes) -> Node:
        """A snapshot's record, read (again: a record can be deleted and made anew under
        its name) at each lookup; a new record is a new tree."""
        key = self._snapshot_key(name)
        info = await self.remote.head_or_none(key)
        if info is None:
            raise FsError(errno.ENOENT)
        ino = parent.children.get(name)
        old = self.nodes.get(ino) if ino is not None else None
        if old is not None and old.view is not None and old.pinned is not None \
                and old.pinned.etag == info.etag:
            return old
        body = await self.remote.read_call(self.remote.store.get, key, if_match=info.etag)
        try:
            snap = Snapshot.decode(body)
        except S3FuseError as exc:
            log.warning("snapshot %s: %s", key, exc)
            raise FsError(errno.EIO, str(exc)) from None
        view = View(snap.created_ns, snap.prefix, snap,
                    sorted(o.key for o in snap.objects), {o.key: o for o in snap.objects})
        record = Pinned(key, "", info.etag, info.size, info.mtime_ns)
        if old is not None and old.view is None:  # listed, not read yet: read now
            old.view, old.pinned, old.mtime_ns = view, record, snap.created_ns
            old.loaded = True
            return old
        parent.children.pop(name, None)  # a changed record: a new node, a new inode
        d = self.fs.defaults
        return self._child(parent, name, lambda i: Node(
            i, parent.ino, name, stat.S_IFDIR | 0o555, d.uid, d.gid, snap.created_ns,
            view=view, pinned=record, loaded=True))

    # --- listings ----------------------------------------------------------------------
    async def list_dir(self, node: Node) -> dict[bytes, Entry]:
        """The directory's entries, read once per node (concurrent callers share it)."""
        if node.ino == SNAPSHOTS_DIR:
            node.entries = await self._list_snapshots()  # read each time: records come and go
        elif node.ino == VIEWS_ROOT:
            node.entries = {b"at": Entry(True, None), b"snapshots": Entry(True, None)}
            if self._journal_lost_found() is not None:
                node.entries[LOST_FOUND] = Entry(True, None)
        async def read() -> None:
            assert node.view is not None
            if node.view.snapshot is not None:
                node.entries = self._snapshot_dir(node.view, node.rel)
            else:
                node.entries = await self._at_dir(node.view, node.rel)
        await _single_flight(self._listing, node.ino, lambda: node.entries is not None, read)
        if node.entries is None:
            raise FsError(errno.EIO, "listing the directory failed")
        if len(node.names) != len(node.entries) or node.view is None:
            node.names = sorted(node.entries)  # (a pinned listing never changes)
        return node.entries

    async def _list_snapshots(self) -> dict[bytes, Entry]:
        where = self.fs.prefix + timeline.SNAPSHOTS_DIR
        page = await self.remote.list_all(where, "/")
        out: dict[bytes, Entry] = {}
        for obj in page.objects:
            name = obj.key[len(where):]
            if not name.endswith(".json"):
                continue
            try:
                timeline.check_snapshot_name(name[:-5])
            except S3FuseError:
                continue
            out[name[:-5].encode()] = Entry(True, None)
        return out

    def _usable(self, rel_dir: str, segment: str) -> bytes | None:
        """The name for a key segment of the view directory ``rel_dir``, or None."""
        name = keys.name_from_segment(segment)
        if name is None or (rel_dir == "" and name == RESERVED):
            return None
        return name

    @staticmethod
    def _in_bucket(view: View, p: Pinned) -> Pinned:
        """A snapshot's pinned object with its key in the bucket (the record's keys
        are relative to its prefix)."""
        return Pinned(view.key_prefix + p.key, p.version_id, p.etag, p.size, p.mtime_ns)

    def _snapshot_dir(self, view: View, rel: str) -> dict[bytes, Entry]:
        out: dict[bytes, Entry] = {}
        files: dict[bytes, Pinned] = {}
        ks = view.keys
        i = bisect.bisect_left(ks, rel)
        while i < len(ks) and ks[i].startswith(rel):
            rest = ks[i][len(rel):]
            seg, slash, _ = rest.partition("/")
            if not slash:
                name = self._usable(rel, seg)
                if name is not None and rest:
                    files[name] = self._in_bucket(view, view.by_key[ks[i]])
                i += 1
                continue
            name = self._usable(rel, seg)
            marker = view.by_key.get(rel + seg + "/")
            if name is not None:
                out[name] = Entry(True, marker and self._in_bucket(view, marker))
            # past every key below rel + seg + "/" ("0" sorts right after "/")
            i = bisect.bisect_left(ks, rel + seg + "0", i + 1)
        for name, p in files.items():
            out.setdefault(name, Entry(False, p))  # a directory wins over a file
        return out

    async def _at_dir(self, view: View, rel: str) -> dict[bytes, Entry]:
        where = view.key_prefix + rel
        versions: list[VersionInfo] = []
        prefixes: list[str] = []
        token = None
        store = self.remote.store
        while True:
            page = await self.remote.read_call(store.list_versions, where, token,
                                               delimiter="/")
            versions += page.versions
            prefixes += page.prefixes
            token = page.next_token
            if token is None:
                break
        out: dict[bytes, Entry] = {}
        found: dict[bytes, Pinned | None] = {}

        async def probe(name: bytes, sub: str) -> None:
            async with self._head_limiter:
                there, marker = await self._existed(view, sub)
            if there:
                found[name] = marker
        async with trio.open_nursery() as nursery:
            for p in prefixes:
                name = self._usable(rel, p[len(where):-1])
                if name is not None:
                    nursery.start_soon(probe, name, p)
        for name in sorted(found):
            out[name] = Entry(True, found[name])
        for key, v in timeline.current_at(versions, view.at_ns).items():
            name = self._usable(rel, key[len(where):]) if key != where else None
            if name is not None and name not in out:
                out[name] = Entry(False, Pinned(key, v.version_id, v.etag, v.size, v.mtime_ns))
        return out

    async def _existed(self, view: View, sub: str) -> tuple[bool, Pinned | None]:
        """Whether some key under ``sub`` existed at the view's time, and the version
        of its marker ``sub`` then (if it had one). Reads pages only until the first
        key that existed."""
        token = None
        settled: set[str] = set()
        store = self.remote.store
        for n in range(EXISTS_MAX_PAGES):
            # a small first page: the first key is most often the answer
            page = await self.remote.read_call(store.list_versions, sub, token,
                                               EXISTS_FIRST_PAGE if n == 0 else 1000)
            for v in page.versions:
                if v.key in settled or v.mtime_ns > view.at_ns:
                    continue
                settled.add(v.key)
                if not v.is_delete_marker:
                    marker = Pinned(v.key, v.version_id, v.etag, v.size, v.mtime_ns) \
                        if v.key == sub else None
                    return True, marker
            token = page.next_token
            if token is None:
                return False, None
        log.warning("%s: more than %d pages of versions; shown as it is now", sub,
                    EXISTS_MAX_PAGES)
        return True, None

    def readdir(self, ops: FuseOps, h: _DirHandle, start: int, token: Any) -> None:
        node = self.get(h.ino)
        if start == 0:
            h.names = list(node.names)
            node.readdir_at = trio.current_time()
            self._prefetched.pop(node.ino, None)
        if start < 2:
            parent = self.nodes.get(node.parent)
            dots = [(b".", self.attr(node)),
                    (b"..", self.attr(parent) if parent is not None
                     else ops._attr(self.fs.get(pyfuse3.ROOT_INODE)))]
            for pos in range(start, 2):
                if not pyfuse3.readdir_reply(token, dots[pos][0], dots[pos][1], pos + 1):
                    return
        entries = node.entries or {}
        uid, gid = self.fs.defaults.uid, self.fs.defaults.gid
        for pos in range(max(0, start - 2), len(h.names)):
            name = h.names[pos]
            entry = entries.get(name)
            if entry is None:
                continue
            if node.ino == VIEWS_ROOT and name == LOST_FOUND:
                top = self._journal_lost_found()
                if top is None:
                    continue
                with self.fs.journal.read() as txn:
                    inode = self.fs.get_in(txn, txn.lookup(top, LOST_FOUND))
                if not pyfuse3.readdir_reply(token, name, ops._attr(inode), pos + 3):
                    return
                self.fs.add_lookup(inode.ino)
                continue
            if node.ino == VIEWS_ROOT:
                child = self.nodes[AT_DIR if name == b"at" else SNAPSHOTS_DIR]
            elif node.ino == SNAPSHOTS_DIR:
                # the record is read at the lookup (not loaded: the kernel asks)
                child = self._child(node, name, lambda i, n=name: Node(
                    i, SNAPSHOTS_DIR, n, stat.S_IFDIR | 0o555, uid, gid, node.mtime_ns))
            else:
                child = self._entry_node(node, name, entry)
            attr = self.attr(child)
            if not child.loaded and not child.is_dir and child.size <= 4095:
                attr.st_mode = stat.S_IMODE(child.mode)  # maybe a symlink (fuse_ops)
            if not pyfuse3.readdir_reply(token, name, attr, pos + 3):
                return
            child.lookups += 1

    # --- attributes ------------------------------------------------------------------
    async def load(self, node: Node) -> Node:
        """Make the node's attributes those of its pinned version's headers."""
        if node.loaded:
            return node
        if node.parent == SNAPSHOTS_DIR and node.view is None:
            # a snapshot listed but not looked up yet: read its record now
            if await self._snapshot_root(self.nodes[SNAPSHOTS_DIR], node.name) is not node:
                raise FsError(errno.ESTALE, "the snapshot's record was replaced")
            return node
        assert node.pinned is not None
        await self._read_headers(node.pinned)
        self._apply_headers(node)
        if not node.loaded:
            raise FsError(errno.EIO, "reading the version's headers failed")
        return node

    async def _read_headers(self, p: Pinned) -> None:
        """HEAD the version ``p`` once (concurrent callers share the request, and
        ``_headers`` keeps the answer: a version's headers never change)."""
        version = (p.key, p.version_id)

        async def head() -> None:
            async with self._head_limiter:
                info = await self.remote.read_call(self.remote.store.head, p.key,
                                                   version_id=p.version_id)
            self._headers[version] = info.metadata
            while len(self._headers) > HEADERS_KEPT:
                self._headers.popitem(last=False)
        await _single_flight(self._loading, version, lambda: version in self._headers, head)

    def _apply_headers(self, node: Node) -> None:
        """Take the attributes from the pinned version's headers, if they were read."""
        p = node.pinned
        version = (p.key, p.version_id) if p is not None else None
        if node.loaded or version not in self._headers:
            return
        self._headers.move_to_end(version)
        d = self.fs.defaults
        fields = metadata.decode(self._headers[version], is_dir=node.is_dir,
                                 default_mode=d.dir_mode if node.is_dir else d.file_mode,
                                 default_uid=d.uid, default_gid=d.gid,
                                 fallback_mtime_ns=p.mtime_ns)
        node.mode, node.uid, node.gid = fields["mode"], fields["uid"], fields["gid"]
        node.mtime_ns, node.rdev, node.xattrs = (fields["mtime_ns"], fields["rdev"],
                                                 fields["xattrs"])
        node.loaded = True

    def _prefetch_after(self, parent: Node, name: bytes) -> None:
        """An ``ls -l`` looks the entries up one by one after its readdir: load the
        next ones ahead of it (in the daemon's nursery, without waiting)."""
        nursery = self.fs.meta_loads.nursery
        if nursery is None or trio.current_time() - parent.readdir_at \
                > PREFETCH_AFTER_READDIR_S or parent.entries is None:
            return
        queued = self._prefetched.setdefault(parent.ino, set())
        names = parent.names
        start = bisect.bisect_right(names, name)
        for other in names[start:start + PREFETCH_AHEAD]:
            entry = parent.entries[other]
            p = entry.pinned
            if other in queued or entry.is_dir or p is None \
                    or (p.key, p.version_id) in self._headers:
                continue
            queued.add(other)
            nursery.start_soon(self._quietly, self._read_headers(p))

    async def _quietly(self, work: Awaitable[Any]) -> None:
        try:
            await work
        except Exception:  # noqa: BLE001 - a prefetch must never fail anything
            log.debug("prefetching a view entry failed", exc_info=True)

    def getxattr(self, node: Node, name: bytes) -> bytes:
        key = name.decode("utf-8", "surrogateescape")
        if node.pinned is not None and node.pinned.version_id:
            if key == VERSION_XATTR:
                return node.pinned.version_id.encode()
            if key == ETAG_XATTR:
                return node.pinned.etag.encode()
        if key in node.xattrs:
            return metadata.xattr_value(node.xattrs[key])
        raise FsError(errno.ENODATA)

    def listxattr(self, node: Node) -> list[str]:
        names = sorted(node.xattrs)
        if node.pinned is not None and node.pinned.version_id:
            names = [ETAG_XATTR, VERSION_XATTR] + names
        return names

    # --- bytes -------------------------------------------------------------------------
    async def readlink(self, node: Node) -> bytes:
        await self.load(node)
        if not stat.S_ISLNK(node.mode):
            raise FsError(errno.EINVAL)
        if node.target is None:
            p = node.pinned
            assert p is not None
            node.target = await self.remote.read_call(self.remote.store.get, p.key,
                                                      version_id=p.version_id)
        return node.target

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        p = node.pinned
        if p is None or offset >= p.size or size <= 0:
            return b""
        end = min(p.size, offset + size)
        parts = []
        for block in range(offset // BLOCK, (end - 1) // BLOCK + 1):
            data = await self._block(p, block)
            lo = max(offset, block * BLOCK) - block * BLOCK
            hi = min(end, (block + 1) * BLOCK) - block * BLOCK
            parts.append(data[lo:hi])
        return b"".join(parts)

    async def _block(self, p: Pinned, block: int) -> bytes:
        """One block of a pinned version, from the cache or the bucket."""
        key = (p.key, p.version_id, block)

        async def get() -> None:
            data = await self.remote.read_call(
                self.remote.store.get, p.key, block * BLOCK, min(p.size, (block + 1) * BLOCK),
                version_id=p.version_id)
            self._blocks[key] = data
            self._block_bytes += len(data)
            while self._block_bytes > BLOCK_CACHE_BYTES and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self._block_bytes -= len(old)
        await _single_flight(self._block_loads, key, lambda: key in self._blocks, get)
        data = self._blocks.get(key)
        if data is None:
            raise FsError(errno.EIO, "reading the version failed")
        self._blocks.move_to_end(key)
        return data

    # --- the live tree's root listing --------------------------------------------------
    def root_attr(self) -> pyfuse3.EntryAttributes:
        """``.s3fuse`` as the root's listing shows it (a fixed node: no count kept).
        Like ZFS's hidden ``.zfs``, the root lists it only once the mount has a
        lost+found there; it is always there to look up by name."""
        return self.attr(self.nodes[VIEWS_ROOT])


async def _single_flight(busy: dict[Any, trio.Event], key: Any, ready: Callable[[], bool],
                         work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` unless ``ready()``; callers that come while it runs for ``key``
    wait for it instead of asking the bucket again (if it failed, they find the
    result still not ready: the one that ran it had the error)."""
    if ready():
        return
    running = busy.get(key)
    if running is not None:
        await running.wait()
        return
    done = busy[key] = trio.Event()
    try:
        await work()
    finally:
        del busy[key]
        done.set()


_KINDS = {
    "inode": ("getattr", "setattr", "readlink", "open", "opendir", "getxattr",
              "listxattr", "setxattr", "removexattr", "access"),
    "parent": ("lookup", "mknod", "mkdir", "unlink", "rmdir", "symlink", "create"),
    "handle": ("read", "write", "flush", "release", "fsync", "readdir", "releasedir",
               "fsyncdir"),
    "rename": ("rename",),
    "link": ("link",),
}


def _bind(kind: str, op: str) -> Callable[..., Awaitable[tuple[bool, Any]]]:
    method = {"inode": Views._by_inode, "parent": Views._by_parent,
              "handle": Views._by_handle, "rename": Views._rename,
              "link": Views._link}[kind]

    async def route(views: Views, ops: FuseOps, args: tuple) -> tuple[bool, Any]:
        return await method(views, ops, op, args)
    return route


_ROUTES = {op: _bind(kind, op) for kind, ops_ in _KINDS.items() for op in ops_}
_KIND_OF = {op: kind for kind, ops_ in _KINDS.items() for op in ops_}
