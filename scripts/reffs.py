#!/usr/bin/env python3
"""The reference filesystem for scripts/bench: a minimal in-memory pyfuse3 filesystem.

It marks the limit of what a pyfuse3 + trio filesystem can do on this machine: the same
FUSE options as s3fuse (pyfuse3's ``default_permissions``, ``fsname``/``subtype``, no
writeback cache, ``keep_cache`` on open, entry and attribute timeouts equal to s3fuse's
default ``--metadata-ttl`` of 1 s, attributes returned with readdir), and the same
answers where s3fuse makes a choice (hard links ``EPERM``, ``RENAME_EXCHANGE``
``EINVAL``, user xattrs kept), but no persistence, no journal, no S3.

``--discard`` accepts writes and drops the bytes (sizes still grow; reads return
zeros): the "write to a file that discards data" limit for sequential writes.

    python scripts/reffs.py MOUNTPOINT [--discard] [--timeout 1.0]

Runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import time

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


class Node:
    __slots__ = ("ino", "mode", "uid", "gid", "rdev", "size", "data", "atime_ns",
                 "mtime_ns", "ctime_ns", "nlink", "entries", "target", "xattrs",
                 "lookups", "opens", "parent")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, parent: int) -> None:
        now = time.time_ns()
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.rdev = 0
        self.size = 0
        self.data = bytearray()
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.entries: dict[bytes, int] | None = {} if stat.S_ISDIR(mode) else None
        self.target = b""
        self.xattrs: dict[bytes, bytes] = {}
        self.lookups = 0
        self.opens = 0
        self.parent = parent


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class RefFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, timeout_s: float, discard: bool) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.discard = discard
        self.nodes: dict[int, Node] = {}
        self.next_ino = ROOT + 1
        self.handles: dict[int, int] = {}
        self.dir_handles: dict[int, list[tuple[bytes, int]]] = {}
        self.next_fh = 1
        root = Node(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), ROOT)
        self.nodes[ROOT] = root

    # --- helpers ---------------------------------------------------------------------
    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if node.entries is None:
            raise _err(errno.ENOTDIR)
        return node

    def _attr(self, n: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.ino
        a.generation = 0
        a.entry_timeout = self.timeout_s
        a.attr_timeout = self.timeout_s
        a.st_mode = n.mode
        a.st_nlink = n.nlink
        a.st_uid = n.uid
        a.st_gid = n.gid
        a.st_rdev = n.rdev
        a.st_size = n.size
        a.st_blksize = 4096
        a.st_blocks = (n.size + 511) // 512
        a.st_atime_ns = n.atime_ns
        a.st_mtime_ns = n.mtime_ns
        a.st_ctime_ns = n.ctime_ns
        return a

    def _touch(self, n: Node) -> None:
        n.mtime_ns = n.ctime_ns = time.time_ns()

    def _maybe_free(self, n: Node) -> None:
        if n.nlink == 0 and n.lookups <= 0 and n.opens <= 0 and n.ino != ROOT:
            self.nodes.pop(n.ino, None)

    def _new(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        if len(name) > 255:
            raise _err(errno.ENAMETOOLONG)
        d = self._dir(parent)
        if name in d.entries:
            raise _err(errno.EEXIST)
        n = Node(self.next_ino, mode, ctx.uid, ctx.gid, parent)
        self.next_ino += 1
        self.nodes[n.ino] = n
        d.entries[name] = n.ino
        if stat.S_ISDIR(mode):
            d.nlink += 1
        self._touch(d)
        n.lookups += 1
        return n

    def _drop_entry(self, d: Node, name: bytes) -> None:
        ino = d.entries.pop(name)
        n = self.nodes[ino]
        if stat.S_ISDIR(n.mode):
            n.nlink = 0
            d.nlink -= 1
        else:
            n.nlink -= 1
        n.ctime_ns = time.time_ns()
        self._touch(d)
        self._maybe_free(n)

    # --- names and attributes ------------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        if name == b".":
            n = d
        elif name == b"..":
            n = self._node(d.parent)
        else:
            ino = d.entries.get(name)
            if ino is None:
                raise _err(errno.ENOENT)
            n = self.nodes[ino]
        n.lookups += 1
        return self._attr(n)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            n = self.nodes.get(ino)
            if n is not None:
                n.lookups -= count
                self._maybe_free(n)

    async def getattr(self, inode, ctx):
        return self._attr(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self._node(inode)
        now = time.time_ns()
        if fields.update_size:
            if n.entries is not None:
                raise _err(errno.EISDIR)
            size = attr.st_size
            if not self.discard:
                if size < len(n.data):
                    del n.data[size:]
                else:
                    n.data.extend(bytes(size - len(n.data)))
            n.size = size
            n.mtime_ns = now
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            n.uid = attr.st_uid
        if fields.update_gid:
            n.gid = attr.st_gid
        if fields.update_atime:
            n.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            n.mtime_ns = attr.st_mtime_ns
        n.ctime_ns = now
        return self._attr(n)

    async def readlink(self, inode, ctx):
        n = self._node(inode)
        if not stat.S_ISLNK(n.mode):
            raise _err(errno.EINVAL)
        return n.target

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        n = self._new(parent_inode, name, mode, ctx)
        n.rdev = rdev
        return self._attr(n)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    async def symlink(self, parent_inode, name, target, ctx):
        n = self._new(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        n.target = bytes(target)
        n.size = len(n.target)
        return self._attr(n)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise _err(errno.EPERM)  # as s3fuse

    async def unlink(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        ino = d.entries.get(name)
        if ino is None:
            raise _err(errno.ENOENT)
        if self.nodes[ino].entries is not None:
            raise _err(errno.EISDIR)
        self._drop_entry(d, name)

    async def rmdir(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        ino = d.entries.get(name)
        if ino is None:
            raise _err(errno.ENOENT)
        n = self.nodes[ino]
        if n.entries is None:
            raise _err(errno.ENOTDIR)
        if n.entries:
            raise _err(errno.ENOTEMPTY)
        self._drop_entry(d, name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _err(errno.EINVAL)  # as s3fuse
        src_dir = self._dir(parent_inode_old)
        dst_dir = self._dir(parent_inode_new)
        ino = src_dir.entries.get(name_old)
        if ino is None:
            raise _err(errno.ENOENT)
        n = self.nodes[ino]
        if n.entries is not None:  # no moving a directory below itself
            p = dst_dir
            while True:
                if p.ino == ino:
                    raise _err(errno.EINVAL)
                if p.ino == ROOT:
                    break
                p = self.nodes[p.parent]
        old = dst_dir.entries.get(name_new)
        if old is not None:
            if old == ino:
                return
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise _err(errno.EEXIST)
            o = self.nodes[old]
            if o.entries is not None:
                if n.entries is None:
                    raise _err(errno.EISDIR)
                if o.entries:
                    raise _err(errno.ENOTEMPTY)
            elif n.entries is not None:
                raise _err(errno.ENOTDIR)
            self._drop_entry(dst_dir, name_new)
        del src_dir.entries[name_old]
        dst_dir.entries[name_new] = ino
        if n.entries is not None and src_dir is not dst_dir:
            src_dir.nlink -= 1
            dst_dir.nlink += 1
        n.parent = dst_dir.ino
        n.ctime_ns = time.time_ns()
        self._touch(src_dir)
        self._touch(dst_dir)

    # --- files -----------------------------------------------------------------------
    def _open_fh(self, n: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = n.ino
        n.opens += 1
        return fh

    async def open(self, inode, flags, ctx):
        n = self._node(inode)
        if flags & os.O_TRUNC and n.entries is None:
            n.data = bytearray()
            n.size = 0
            self._touch(n)
        return pyfuse3.FileInfo(fh=self._open_fh(n), keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        n = self._new(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=self._open_fh(n), keep_cache=True), self._attr(n)

    async def read(self, fh, off, size):
        n = self._node(self.handles[fh])
        if off >= n.size:
            return b""
        end = min(n.size, off + size)
        if self.discard:
            return bytes(end - off)
        return bytes(n.data[off:end])

    async def write(self, fh, off, buf):
        n = self._node(self.handles[fh])
        end = off + len(buf)
        if not self.discard:
            if off > len(n.data):
                n.data.extend(bytes(off - len(n.data)))
            n.data[off:end] = buf
        if end > n.size:
            n.size = end
        n.mtime_ns = n.ctime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh):
        return None

    async def fsync(self, fh, datasync):
        return None

    async def release(self, fh):
        ino = self.handles.pop(fh)
        n = self.nodes.get(ino)
        if n is not None:
            n.opens -= 1
            self._maybe_free(n)

    # --- directories -----------------------------------------------------------------
    async def opendir(self, inode, ctx):
        d = self._dir(inode)
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = [(b".", d.ino), (b"..", d.parent)] + list(d.entries.items())
        return fh

    async def readdir(self, fh, start_id, token):
        entries = self.dir_handles[fh]
        for pos in range(start_id, len(entries)):
            name, ino = entries[pos]
            n = self.nodes.get(ino)
            if n is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(n), pos + 1):
                return
            if pos >= 2:
                n.lookups += 1

    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        return None

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 38
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    async def access(self, inode, mode, ctx):
        self._node(inode)
        return True

    # --- xattrs (user.* kept in memory, as s3fuse keeps them on the object) -------------
    async def setxattr(self, inode, name, value, ctx):
        if not name.startswith(b"user."):
            raise _err(errno.ENOTSUP)
        self._node(inode).xattrs[bytes(name)] = bytes(value)

    async def getxattr(self, inode, name, ctx):
        try:
            return self._node(inode).xattrs[bytes(name)]
        except KeyError:
            raise _err(errno.ENODATA) from None

    async def listxattr(self, inode, ctx):
        return list(self._node(inode).xattrs)

    async def removexattr(self, inode, name, ctx):
        if self._node(inode).xattrs.pop(bytes(name), None) is None:
            raise _err(errno.ENODATA)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mountpoint")
    p.add_argument("--discard", action="store_true",
                   help="accept writes and drop the bytes (reads return zeros)")
    p.add_argument("--timeout", type=float, default=1.0,
                   help="entry/attribute timeout in seconds (s3fuse's default "
                        "--metadata-ttl: 1)")
    p.add_argument("--fsname", default="reffs")
    args = p.parse_args()
    ops = RefFS(args.timeout, args.discard)
    opts = set(pyfuse3.default_options)  # as s3fuse's Daemon.fuse_options()
    opts.add(f"fsname={args.fsname}")
    opts.add("subtype=reffs")
    pyfuse3.init(ops, os.path.abspath(args.mountpoint), opts)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return
            nursery.start_soon(on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
