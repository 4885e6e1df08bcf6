"""Cache files: the local copy of file data, one sparse file per inode.

``CACHE_DIR/data/<ino>`` holds the file's bytes at their offsets; its length is
always the file's logical size. A file is either *fully cached* (the journal's
``Inode.cached``; always so for dirty data) or *partially cached*: then the blocks
present are tracked here in memory, and forgotten on restart (refetched on demand).

Local disk I/O runs inline on the event loop on purpose: a pread/pwrite that hits
the page cache costs microseconds, far less than a hop to a worker thread. Only
object-store calls go to threads.

Large sequential writes start their own write-back (``sync_file_range``) every
``WRITEBACK_KICK_BYTES``: the disk works while the writer goes on, so an ``fsync`` at
the end (or the kernel's own write-back) finds little left to write.

Clean data is evicted least-recently-used once the cache holds more than its limit;
dirty data and files in use are never evicted (``evict`` asks the caller).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
from collections.abc import Callable

import cachetools
import trio

BLOCK_BYTES = 1 << 20
SNAPSHOT_INLINE_BYTES = 8 << 20
_MAX_OPEN_FDS = 256
WRITEBACK_KICK_BYTES = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)``: start writing
    those dirty pages to disk, without waiting (None where libc lacks it)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return lambda fd, offset, length: fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_start_writeback = _writeback_starter()


class _FdCache(cachetools.LRUCache):
    def popitem(self):
        key, fd = super().popitem()
        os.close(fd)
        return key, fd


class Cache:
    def __init__(self, root: str, limit_bytes: int, inline: bool = False) -> None:
        self.root = root
        #: ``snapshot_ahead`` copies on the calling thread, not a worker thread (for
        #: tests on a MockClock, as ``Remote``'s ``inline``)
        self.inline = inline
        self.data_dir = os.path.join(root, "data")
        self.snap_dir = os.path.join(root, "snapshots")
        for d in (self.data_dir, self.snap_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        for leftover in os.listdir(self.snap_dir):
            os.unlink(os.path.join(self.snap_dir, leftover))
        self.limit_bytes = limit_bytes
        self._fds: _FdCache = _FdCache(maxsize=_MAX_OPEN_FDS)
        self._present: dict[int, set[int]] = {}
        # ino -> a number that changes whenever the cache file's bytes change other
        # than by ``fill`` (see ``generation``)
        self._gen: dict[int, int] = {}
        self._gen_next = itertools.count(1)
        # LRU order of inodes with cache files: ino -> bytes accounted
        self._lru: dict[int, int] = {}
        self.used_bytes = 0
        self._snap_seq = 0
        # ino -> end of the range whose write-back was last started (see write)
        self._kicked: dict[int, int] = {}
        for entry in os.scandir(self.data_dir):
            if entry.name.isdigit():
                size = entry.stat().st_blocks * 512
                self._lru[int(entry.name)] = size
                self.used_bytes += size

    def path(self, ino: int) -> str:
        return os.path.join(self.data_dir, str(ino))

    def _fd(self, ino: int) -> int:
        fd = self._fds.get(ino)
        if fd is None:
            fd = os.open(self.path(ino), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fds[ino] = fd
        return fd

    def _touch(self, ino: int, delta: int = 0) -> None:
        size = self._lru.pop(ino, 0) + delta
        self._lru[ino] = max(size, 0)
        self.used_bytes += delta

    def generation(self, ino: int) -> int:
        """Changes whenever the file's cache is created, written, truncated or removed:
        bytes fetched from the bucket belong in it only if it has not changed since
        their GET started."""
        return self._gen.get(ino, 0)

    def _changed(self, ino: int) -> None:
        self._gen[ino] = next(self._gen_next)

    def exists(self, ino: int) -> bool:
        return ino in self._lru or os.path.exists(self.path(ino))

    def create(self, ino: int, size: int = 0) -> None:
        """Start an empty cache file of ``size`` bytes (a hole), nothing present. An
        empty one for an inode with no file yet is made on first use (``_fd``): a
        file created and never written costs no file here."""
        fd = self._fds.get(ino)
        if fd is not None:
            os.ftruncate(fd, 0)
        elif size or ino in self._lru:  # (a file not in _lru is absent or empty)
            # O_TRUNC: one system call where ftruncate would be two
            fd = os.open(self.path(ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o600)
            self._fds[ino] = fd
        if size:
            os.ftruncate(fd, size)
        self._changed(ino)
        self._present.pop(ino, None)
        self._kicked.pop(ino, None)
        old = self._lru.pop(ino, 0)
        self.used_bytes -= old
        self._lru[ino] = 0

    def read(self, ino: int, offset: int, size: int) -> bytes:
        self._touch(ino)
        return os.pread(self._fd(ino), size, offset)

    def write(self, ino: int, offset: int, data: bytes) -> None:
        fd = self._fd(ino)
        end = os.fstat(fd).st_size
        self._changed(ino)
        written = os.pwrite(fd, data, offset)
        if written != len(data):  # a short write to a regular file means a full disk
            raise OSError(28, "cache disk full")
        self._touch(ino, max(0, offset + len(data) - max(end, offset)) + 0)
        stop = offset + len(data)
        kicked = self._kicked.get(ino, 0)
        if stop - kicked >= WRITEBACK_KICK_BYTES and _start_writeback is not None:
            # (a failure only means the pages are written back later, as usual)
            _start_writeback(fd, kicked, stop - kicked)
            self._kicked[ino] = stop

    def truncate(self, ino: int, size: int) -> None:
        fd = self._fd(ino)
        old = os.fstat(fd).st_size
        self._changed(ino)
        os.ftruncate(fd, size)
        self._touch(ino, size - old if size < old else 0)
        if self._kicked.get(ino, 0) > size:
            self._kicked[ino] = size
        present = self._present.get(ino)
        if present is not None:
            last = (size + BLOCK_BYTES - 1) // BLOCK_BYTES
            present.difference_update({b for b in present if b >= last})

    def size(self, ino: int) -> int:
        return os.fstat(self._fd(ino)).st_size

    def fsync(self, ino: int) -> None:
        if ino in self._fds or os.path.exists(self.path(ino)):
            os.fsync(self._fd(ino))

    def close(self, ino: int) -> None:
        fd = self._fds.pop(ino, None)
        if fd is not None:
            os.close(fd)

    def remove(self, ino: int) -> None:
        self.close(ino)
        self._present.pop(ino, None)
        self._kicked.pop(ino, None)
        self._gen.pop(ino, None)
        self.used_bytes -= self._lru.pop(ino, 0)
        try:
            os.unlink(self.path(ino))
        except FileNotFoundError:
            pass

    def close_all(self) -> None:
        for ino in list(self._fds.keys()):
            self.close(ino)

    # --- partially cached files ---------------------------------------------------
    def missing(self, ino: int, offset: int, size: int, file_size: int) -> list[tuple[int, int]]:
        """Block-aligned byte ranges of ``[offset, offset+size)`` not yet present,
        merged into runs, clipped to ``file_size``."""
        end = min(offset + size, file_size)
        if end <= offset:
            return []
        present = self._present.setdefault(ino, set())
        runs: list[tuple[int, int]] = []
        for block in range(offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES + 1):
            if block in present:
                continue
            start = block * BLOCK_BYTES
            stop = min(start + BLOCK_BYTES, file_size)
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], stop)
            else:
                runs.append((start, stop))
        return runs

    def fill(self, ino: int, start: int, data: bytes) -> None:
        """Store fetched bytes at ``start`` and mark their whole blocks present."""
        os.pwrite(self._fd(ino), data, start)
        self._touch(ino, len(data))
        present = self._present.setdefault(ino, set())
        first = start // BLOCK_BYTES
        last = (start + len(data) - 1) // BLOCK_BYTES if data else first - 1
        present.update(range(first, last + 1))

    def holds_any(self, ino: int) -> bool:
        """Some fetched bytes of a partially cached file are here."""
        return bool(self._present.get(ino))

    def all_present(self, ino: int, file_size: int) -> bool:
        present = self._present.get(ino)
        blocks = (file_size + BLOCK_BYTES - 1) // BLOCK_BYTES
        if blocks and (present is None or len(present) < blocks):
            return False  # (at once: a streaming reader asks after every read)
        return not self.missing(ino, 0, file_size, file_size)

    def forget_presence(self, ino: int) -> None:
        self._present.pop(ino, None)

    # --- upload snapshots ---------------------------------------------------------
    def snapshot(self, ino: int, size: int) -> bytes | str:
        """A private copy of the file's current bytes for an upload: bytes for small
        files, else a path under ``snapshots/`` (remove it with ``drop_snapshot``).
        Taken on the calling thread, at once: nothing can write the file meanwhile
        on the daemon's event loop (see ``snapshot_ahead`` for one taken off it)."""
        if size <= SNAPSHOT_INLINE_BYTES:
            data = os.pread(self._fd(ino), size, 0)
            return data.ljust(size, b"\0")
        dst = self._snapshot_path(ino)
        self._copy_out(self._fd(ino), size, dst)
        return dst

    async def snapshot_ahead(self, ino: int, size: int) -> tuple[str, int] | None:
        """A copy of a large file's first ``size`` bytes made in a worker thread, so
        that copying gigabytes does not stop the event loop (and with it every
        request on the mount): (its path, the file's ``generation`` when it began).
        It holds the file's bytes only if the generation is still that when it is
        used (nothing wrote or truncated the file meanwhile); else drop it. None if
        it could not be made (the file is gone: the caller finds out)."""
        generation = self.generation(ino)
        dst = self._snapshot_path(ino)
        try:
            if self.inline:
                await trio.lowlevel.checkpoint()
                self._copy_own(ino, size, dst)
            else:
                await trio.to_thread.run_sync(self._copy_own, ino, size, dst)
        except OSError:
            self.drop_snapshot(dst)
            return None
        return dst, generation

    def _snapshot_path(self, ino: int) -> str:
        self._snap_seq += 1
        return os.path.join(self.snap_dir, f"{ino}.{self._snap_seq}")

    def _copy_own(self, ino: int, size: int, dst: str) -> None:
        """``_copy_out`` from a descriptor of its own, not the bounded set's (which the
        event loop may close meanwhile), so that it is safe in a worker thread."""
        src_fd = os.open(self.path(ino), os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._copy_out(src_fd, size, dst)
        finally:
            os.close(src_fd)

    @staticmethod
    def _copy_out(src_fd: int, size: int, dst: str) -> None:
        """Copy the first ``size`` bytes of the file open as ``src_fd`` to a new file
        ``dst`` (holes past its end read as zeros)."""
        with open(dst, "wb") as out:
            copied = 0
            while copied < size:
                n = os.copy_file_range(src_fd, out.fileno(), size - copied, copied, copied)
                if n == 0:
                    break
                copied += n
            out.truncate(size)

    @staticmethod
    def drop_snapshot(body: bytes | str) -> None:
        if isinstance(body, str):
            try:
                os.unlink(body)
            except FileNotFoundError:
                pass

    # --- eviction -----------------------------------------------------------------
    def evict(self, can_evict: Callable[[int], bool]) -> list[int]:
        """Drop least-recently-used cache files while over the limit, for inodes
        ``can_evict`` allows (clean, not open). Returns the evicted inodes."""
        evicted: list[int] = []
        if self.used_bytes <= self.limit_bytes:
            return evicted
        for ino in list(self._lru):
            if self.used_bytes <= self.limit_bytes:
                break
            if can_evict(ino):
                self.remove(ino)
                evicted.append(ino)
        return evicted

    def disk_free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
