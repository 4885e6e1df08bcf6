"""The pyfuse3 adapter: translate requests to ``Filesystem`` calls, and nothing else.

Every handler goes through ``_guard``: domain errors become ``FUSEError`` with the
errno from ``errors.to_errno`` (one log line when that is EIO); an unexpected
exception is logged with its traceback and answered with EIO, so a bug fails one call
and never takes the mount down.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import pyfuse3
import trio

from . import faults
from .control import (CONTROL_DRAIN, CONTROL_KEEP_PENDING, CONTROL_PID, CONTROL_STATUS,
                      DRAIN_RESULT_PREFIX)
from .errors import FsError, S3FuseError, to_errno
from .filesystem import Filesystem, SetAttrs
from .rename import RENAME_EXCHANGE, RENAME_NOREPLACE
from .journal import Inode
from .views import Views

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)



def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(self: FuseOps, *args: Any) -> Any:
        self.fs.last_request_at = trio.current_time()
        if self.metrics is None:
            return await _answer(self, args)
        start = time.perf_counter()
        err = 0
        try:
            return await _answer(self, args)
        except pyfuse3.FUSEError as exc:
            err = exc.errno
            raise
        finally:
            self.metrics.fuse_request(fn.__name__, time.perf_counter() - start, err)

    async def _answer(self: FuseOps, args: tuple) -> Any:
        try:
            if faults.should_raise(fn.__name__):
                raise RuntimeError(f"injected fault in {fn.__name__}")
            if self.views.claims(fn.__name__, args):  # [views hook 1/4] .s3fuse and
                handled, answer = await self.views.intercept(self, fn.__name__, args)
                if handled:  # below are views.py's
                    return answer
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the one place that must
            err = to_errno(exc)
            if err == errno.EIO:
                if isinstance(exc, S3FuseError):
                    # an expected failure (the bucket unreachable, ...): one line; the
                    # traceback only at DEBUG
                    log.warning("%s%r failed: %s", fn.__name__, args[:2], exc)
                    log.debug("%s%r failed", fn.__name__, args[:2], exc_info=True)
                else:
                    log.exception("%s%r failed", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(err) from None
    return wrapper


class FuseOps(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, timeout_s: float, control: Any = None,
                 metrics: Metrics | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.timeout_s = timeout_s
        self.control = control  # the daemon: drains, status, keep-pending for the CLI
        self.metrics = metrics  # times every request, when set
        self.views = Views(fs, timeout_s)  # [views hook 2/4] .s3fuse/ (views.py)

    def _attr(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        a.generation = 0
        # attributes known only from a listing (defaults until a HEAD) must not be
        # cached: the kernel comes back through lookup/getattr, which load them,
        # before it checks permissions or follows a symlink
        timeout = self.timeout_s if inode.meta_loaded else 0
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        a.st_mode = inode.mode
        a.st_nlink = inode.nlink
        a.st_uid = inode.uid
        a.st_gid = inode.gid
        a.st_rdev = inode.rdev
        a.st_size = inode.size
        a.st_blksize = 4096
        a.st_blocks = (inode.size + 511) // 512
        a.st_atime_ns = inode.atime_ns
        a.st_mtime_ns = inode.mtime_ns
        a.st_ctime_ns = inode.ctime_ns
        return a

    @_guard
    async def lookup(self, parent_inode, name, ctx):
        try:
            return self._attr(await self.fs.lookup(parent_inode, name))
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # a negative entry the kernel keeps for the TTL: the filesystem looked in the
        # bucket for the name if its listing was older (``Filesystem.lookup``), and
        # tells the kernel when the name appears
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = self.timeout_s
        return a

    async def forget(self, inode_list):
        try:
            # [views hook 3/4] the views' inodes are forgotten by views.py
            self.fs.forget(self.views.forget(list(inode_list)))
        except Exception:  # forget must never raise
            log.exception("forget failed")

    @_guard
    async def getattr(self, inode, ctx):
        return self._attr(await self.fs.stat(inode))

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = SetAttrs(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self._attr(await self.fs.setattr(inode, changes))

    @_guard
    async def readlink(self, inode, ctx):
        return await self.fs.readlink(inode)

    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._attr(await self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid))

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(await self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, name)

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        return self._attr(await self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_guard
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        # pyfuse3's flags to the core's; any other bit (RENAME_WHITEOUT...) is passed
        # on as it is, for the core to refuse (EINVAL)
        known = pyfuse3.RENAME_NOREPLACE | pyfuse3.RENAME_EXCHANGE
        fl = flags & ~known
        if flags & pyfuse3.RENAME_NOREPLACE:
            fl |= RENAME_NOREPLACE
        if flags & pyfuse3.RENAME_EXCHANGE:
            fl |= RENAME_EXCHANGE
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, fl)

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._attr(await self.fs.link(inode, new_parent_inode, new_name))

    @_guard
    async def open(self, inode, flags, ctx):
        fh, changed = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=not changed)

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        fh, inode = await self.fs.create(parent_inode, name, mode, ctx.uid, ctx.gid, writable,
                                         append=bool(flags & os.O_APPEND),
                                         direct=bool(flags & os.O_DIRECT))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attr(inode)

    @_guard
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_guard
    async def write(self, fh, off, buf):
        written = await self.fs.write(fh, off, buf)
        ino = self.fs.is_direct(fh)
        if ino is not None:
            # A direct write is seen at once by buffered readers: the kernel drops
            # the range's pages before it sends the write, but not after an
            # asynchronous one (libaio, io_uring) completes, and a buffered read that
            # reached us in between cached the old bytes (kept, keep_cache, until the
            # bucket changes). So the pages go now that the cache file has the new
            # bytes, before the reply; in a thread, since a read holding a page lock
            # needs this loop to finish. (A handle made direct later by fcntl is
            # not seen as such: FUSE does not say so in a write.)
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
            except OSError as exc:  # the kernel no longer knows the inode: no pages
                log.debug("invalidate inode %d after a direct write: %s", ino, exc)
        return written

    @_guard
    async def flush(self, fh):
        return None

    @_guard
    async def release(self, fh):
        await self.fs.release(fh)

    @_guard
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @_guard
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode)

    @_guard
    async def readdir(self, fh, start_id, token):
        # positions, "." and "..", lookup counts: ``Filesystem.reply_entries``
        def reply(name: bytes, inode: Inode, type_known: bool, next_id: int) -> bool:
            if inode.parent == pyfuse3.ROOT_INODE and name == self.views.reserved:
                # [views hook 4/4] the journal's .s3fuse (lost+found) is listed as the
                # views' directory (views.py; not listed while the journal has none).
                # The lookup reply_entries counts stays on the journal's directory,
                # which is never purged; the kernel forgets the views' inode.
                return pyfuse3.readdir_reply(token, name, self.views.root_attr(), next_id)
            attr = self._attr(inode)
            if not type_known:
                # DT_UNKNOWN (no type bits). The kernel declines to cache such an
                # entry and answers its lookup count with a forget of one.
                attr.st_mode = stat.S_IMODE(inode.mode)
            return pyfuse3.readdir_reply(token, name, attr, next_id)

        self.fs.reply_entries(fh, start_id, reply)

    @_guard
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @_guard
    async def fsyncdir(self, fh, datasync):
        self.fs.fsyncdir()

    @_guard
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        total = 1 << 38  # 1 PiB in 4 KiB blocks: a bucket has no fixed size
        s.f_blocks = total
        s.f_bfree = s.f_bavail = total
        s.f_files = 1 << 32
        s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        key = name.decode("utf-8", "surrogateescape")
        if inode == pyfuse3.ROOT_INODE and self.control is not None \
                and key in (CONTROL_DRAIN, CONTROL_KEEP_PENDING):
            if ctx.uid not in (0, self.fs.defaults.uid):
                raise pyfuse3.FUSEError(errno.EPERM)
            if key == CONTROL_DRAIN:
                self.control.start_drain(value)  # returns at once (see control.py)
            else:
                self.control.keep_pending(value)
            return
        await self.fs.setxattr(inode, key, value)

    @_guard
    async def getxattr(self, inode, name, ctx):
        key = name.decode("utf-8", "surrogateescape")
        if inode == pyfuse3.ROOT_INODE and self.control is not None:
            if key == CONTROL_STATUS:
                return self.control.status_json().encode()
            if key == CONTROL_PID:
                return str(os.getpid()).encode()
            if key.startswith(DRAIN_RESULT_PREFIX):
                return self.control.drain_result_json(key[len(DRAIN_RESULT_PREFIX):]).encode()
        return await self.fs.getxattr(inode, key)

    @_guard
    async def listxattr(self, inode, ctx):
        return [n.encode() for n in await self.fs.listxattr(inode)]

    @_guard
    async def removexattr(self, inode, name, ctx):
        await self.fs.removexattr(inode, name.decode("utf-8", "surrogateescape"))

    @_guard
    async def access(self, inode, mode, ctx):
        # default_permissions: the kernel checks modes; existence is all we add
        self.fs.get(inode)
        return True

