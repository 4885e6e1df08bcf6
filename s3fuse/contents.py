"""File contents: the bytes of regular files, in the cache and in the bucket.

Fetching what is not cached (through ``fetch.Fetcher``), adopting the bucket's
current version when the one being fetched is gone (S3 wins: nothing local is at
stake for a clean file), reading, and writing with the dirty mark committed before
the cache file changes. The one-version invariant (``journal.Inode``) is kept here:
between ``ensure_cached`` and a write of the cache file there is no ``await``.
Open handles are ``Filesystem``'s; this module works on inode numbers.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cache import Cache
from .errors import FsError, StoreError, VersionGone
from .fetch import Fetcher
from .journal import DIRTY_DATA, Inode
from .namespace import Namespace

if TYPE_CHECKING:
    from .flusher import Flusher
    from .reconcile import Reconciler

#: how often a read or write fetches again after the bucket replaced the version it
#: was fetching (each time the bucket's current version is adopted first)
FETCH_ATTEMPTS = 8


class Contents:
    """The bytes of one mount's regular files."""

    def __init__(self, ns: Namespace, cache: Cache, fetcher: Fetcher,
                 reconciler: Reconciler,
                 invalidate: Callable[[list[tuple[int, bytes]], list[int]], None]) -> None:
        self.ns = ns
        self.cache = cache
        self.fetcher = fetcher
        #: the S3-wins policy: adopting the bucket's current version
        self.reconciler = reconciler
        #: tells the kernel to drop cached entries and pages
        self.invalidate = invalidate
        #: the flusher (room in the cache, pending copies' sources); None without one
        self.flusher: Flusher | None = None

    def read_source(self, inode: Inode) -> tuple[str | None, str | None]:
        """Where this inode's uncached bytes can be read right now: its object, or,
        while a pending copy has not run yet, that copy's source."""
        if self.flusher is not None:
            src = self.flusher.pending_copy_source(inode.ino)
            if src is not None:
                return src
        return inode.remote_key, inode.remote_etag

    def dirty_before_change(self, ino: int) -> None:
        """Commit DIRTY_DATA before the cache file changes. A crash in between then
        leaves a dirty file to upload again, never a "clean" file whose cache differs
        from its object. (No-op when already dirty: one extra commit per change run.)
        The file must be whole in the cache (``ensure_cached``, with no await
        since): dirty bytes are always all local."""
        pending: list[int] = []
        with self.ns.journal.read() as txn:
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
        with self.ns.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            self.ns.mark(txn, inode, DIRTY_DATA, pending)
            txn.put(inode)
        self.ns.notify(pending)

    async def start_empty(self, ino: int) -> None:
        """The file's content becomes empty, whole in the cache (a truncate to 0, or
        a version that is gone)."""
        with self.ns.journal.write() as txn:
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
            inode = self.ns.get(ino)
            if inode.cached or not stat.S_ISREG(inode.mode):
                return
            if inode.nlink == 0 and self.read_source(inode)[0] is None:
                await self.start_empty(ino)
                return
            try:
                await self.fetcher.whole(ino)
            except VersionGone as exc:
                await self._adopt_current(ino, exc)
        if not self.ns.get(ino).cached:
            raise FsError(errno.EIO, "the file kept changing in the bucket while it was read")

    async def _adopt_current(self, ino: int, gone: VersionGone) -> None:
        """After ``gone``: take the bucket's current version of ``ino``, or fail."""
        try:
            changed = await self.reconciler.adopt_current(ino, gone.etag)
        except StoreError as exc:
            raise FsError(errno.EIO, f"{gone}; asking the bucket failed: {exc}") from None
        if not changed:
            raise FsError(errno.ESTALE, str(gone))

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Bytes of file ``ino`` as it is when they are returned: fetched first where
        not cached (a version replaced in the bucket meanwhile is adopted, then read).
        Changes nothing but the cache (fetched bytes); EIO when the bytes cannot be had."""
        for _ in range(FETCH_ATTEMPTS):
            if not self.ns.get(ino).cached:
                try:
                    await self.fetcher.for_read(ino, offset, size)
                except VersionGone as exc:
                    await self._adopt_current(ino, exc)
                    continue
            inode = self.ns.get(ino)
            if offset >= inode.size:
                return b""
            length = min(size, inode.size - offset)
            # (no await between this check and the read of the cache file)
            if inode.cached or not self.cache.missing(ino, offset, length, inode.size):
                return self.cache.read(ino, offset, length)
        raise FsError(errno.EIO, "the file kept changing in the bucket while it was read")

    async def write(self, ino: int, offset: int, data: bytes, append: bool = False) -> int:
        """Write ``data`` at ``offset`` of file ``ino`` (at the end, for ``append``: a
        handle opened with O_APPEND). A clean file not whole in the cache is fetched
        first; if the bucket replaced it meanwhile, the write lands on the bucket's
        current version (S3 wins, nothing local was at stake). Marks DIRTY_DATA
        (committed before the cache file changes); may wait for room in the cache."""
        inode = self.ns.get(ino)
        if self.flusher is not None:
            await self.flusher.wait_for_room(ino, max(inode.size, offset + len(data)))
        await self.ensure_cached(ino)
        # From here on no await: the bytes the write lands on, and the ETag an upload
        # of them names, are the same version (see ``journal.Inode``).
        if append:
            size = self.ns.get(ino).size
            if offset != size:
                # the kernel's idea of the end of the file was stale (the bucket's
                # newer version was adopted meanwhile): its cached pages and size
                # for this file are dropped
                offset = size
                self.invalidate([], [ino])
        now = time.time_ns()
        end = offset + len(data)
        if self._write_deferred(ino, end, now):
            self.cache.write(ino, offset, data)
            return len(data)
        self.dirty_before_change(ino)
        pending: list[int] = []
        self.cache.write(ino, offset, data)
        with self.ns.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
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
        with self.ns.journal.read() as txn:
            inode = txn.get(ino)
        if inode is None or inode.nlink == 0 or not inode.dirty & DIRTY_DATA \
                or inode.links or inode.link_of:
            return False
        inode.size = max(inode.size, end)
        inode.mtime_ns = inode.ctime_ns = now
        inode.change_seq += 1
        self.ns.journal.defer(inode)
        self.ns.notify([ino])
        return True
