"""The read-only views under ``MOUNTPOINT/.s3fuse/`` (docs/SEMANTICS.md, "Point-in-time views").

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

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from . import metadata
from .errors import FsError
from .viewtree import (AT_DIR, LOST_FOUND, RESERVED, SNAPSHOTS_DIR, VIEW_BASE, VIEWS_ROOT,
                       Node, ViewTree)

if TYPE_CHECKING:
    from .filesystem import Filesystem
    from .fuse_ops import FuseOps

__all__ = ["VIEW_BASE", "Views"]

VERSION_XATTR = "user.s3fuse.version-id"
ETAG_XATTR = "user.s3fuse.etag"

#: attribute timeout of a loaded view entry: it never changes
PINNED_TIMEOUT_S = 300.0

# requests that change something: EROFS inside the views
_CHANGES = {"setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
            "create", "write", "setxattr", "removexattr"}


@dataclass
class _DirHandle:
    ino: int
    names: list[bytes] = field(default_factory=list)


class Views(ViewTree):
    """The views as the mount shows them (see the module docstring): the one entry
    point from fuse_ops, handles, the kernel's lookup counts, attributes, readdir
    and xattrs, on the tree of ``viewtree.ViewTree``."""

    def __init__(self, fs: Filesystem, timeout_s: float) -> None:
        super().__init__(fs)
        self.timeout_s = timeout_s
        self._handles: dict[int, _DirHandle | Node] = {}
        self._next_fh = VIEW_BASE

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

    # --- nodes the kernel holds ------------------------------------------------------
    def _new_fh(self, h: _DirHandle | Node) -> int:
        self._next_fh += 1
        self._handles[self._next_fh] = h
        return self._next_fh

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

    # --- listings ----------------------------------------------------------------------
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
    def getxattr(self, node: Node, name: bytes) -> bytes:
        key = name.decode("utf-8", "surrogateescape")
        if not key.startswith("user."):  # as the live tree answers (``xattrs``)
            raise FsError(errno.EOPNOTSUPP)
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

    # --- the live tree's root listing --------------------------------------------------
    def root_attr(self) -> pyfuse3.EntryAttributes:
        """``.s3fuse`` as the root's listing shows it (a fixed node: no count kept).
        Like ZFS's hidden ``.zfs``, the root lists it only once the mount has a
        lost+found there; it is always there to look up by name."""
        return self.attr(self.nodes[VIEWS_ROOT])


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
