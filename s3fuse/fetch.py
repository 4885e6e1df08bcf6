"""Reading file data that is not in the cache: ranged GETs, in parallel, with
read-ahead for sequential readers (docs/SEMANTICS.md, "The cache").

Bytes are fetched in *pieces*: spans of at most ``PIECE_BYTES`` aligned to that size
(the part size boto3's own downloads use), each one GET pinned to the ETag the read
started from, written into the file's sparse cache file as it arrives. A piece in
flight is registered, so a second reader of the same bytes waits for it instead of
fetching them again.

A reader that goes on near where its last read ended is *sequential*: besides the pieces
it needs now, the pieces of a read-ahead window after them are fetched in the
background (the window doubles on every sequential read, up to ``MAX_WINDOW_BYTES``),
so the next reads find their bytes already there or on the way. A read elsewhere
fetches only the blocks it touches (plus one), and resets the window.

A piece that arrives after the file's cache changed (a write, a truncate, a newer
version adopted from the bucket: ``Cache.generation``) is dropped, never written
over newer bytes: the check and the write into the cache happen with no ``await``
between them.

A GET that finds its version gone (412 on the pinned ETag, or 404) raises
``VersionGone``: the fetcher never decides what the bucket's change means. Its
callers (``Filesystem.ensure_cached`` and ``read``) hand that to the S3-wins policy
and fetch again; none of these functions promises that the file is cached when it
returns, so callers check, with no ``await`` between the check and the use.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .cache import BLOCK_BYTES
from .errors import (FsError, NoSuchKey, PreconditionFailed, StoreError, VersionGone,
                     fetch_failed)

if TYPE_CHECKING:
    from .cache import Cache
    from .journal import Inode
    from .namespace import Namespace
    from .remote import Remote

log = logging.getLogger(__name__)

PIECE_BYTES = 8 << 20
#: GETs in flight at once, for all readers together: boto3's ``download_file`` makes
#: 10 (its transfer manager's default), and parallel readers of small files (a data
#: loader's workers) each need one at a time
PIECES_AT_ONCE = 10
FIRST_WINDOW_BYTES = 2 * PIECE_BYTES
#: a sequential reader's read-ahead grows to as many pieces as may be in flight
MAX_WINDOW_BYTES = PIECES_AT_ONCE * PIECE_BYTES


class Fetcher:
    def __init__(self, ns: Namespace, cache: Cache, remote: Remote,
                 read_source: Callable[[Inode], tuple[str | None, str | None]]) -> None:
        self.ns = ns
        self.cache = cache
        self.remote = remote
        #: where an inode's uncached bytes are now: (key, ETag) of its object, or of
        #: a pending copy's source (``Filesystem.read_source``)
        self.read_source = read_source
        #: set by the daemon: where read-ahead runs (None: read-ahead is awaited)
        self.nursery: trio.Nursery | None = None
        self._inflight: dict[tuple[int, int], trio.Event] = {}
        self._errors: dict[tuple[int, int], FsError | VersionGone] = {}
        self._limiter = trio.CapacityLimiter(PIECES_AT_ONCE)
        #: ino -> (where the last read ended, read-ahead window, the last piece a
        #: sequential reader's read-ahead has started or -1)
        self._streams: dict[int, tuple[int, int, int]] = {}

    def forget(self, ino: int) -> None:
        self._streams.pop(ino, None)

    # --- entry points ------------------------------------------------------------------
    async def for_read(self, ino: int, offset: int, size: int) -> None:
        """Make ``[offset, offset+size)`` present for a reader."""
        inode = self.ns.get(ino)
        if inode.cached:
            return
        end = min(offset + size, inode.size)
        last_end, window, started = self._streams.get(ino, (0, 0, -1))
        # near where the last read ended: the kernel sends several reads at once, so
        # a sequential reader's reads may arrive a little out of order
        sequential = last_end - window - PIECE_BYTES <= offset <= last_end + PIECE_BYTES
        if not sequential:
            self._streams[ino] = (end, 0, -1)
            await self._fetch_span(ino, offset, end + BLOCK_BYTES)
            return
        window = min(MAX_WINDOW_BYTES, max(FIRST_WINDOW_BYTES, window * 2))
        first, last = offset // PIECE_BYTES, max(offset, end - 1) // PIECE_BYTES
        ahead_last = min((end + window - 1) // PIECE_BYTES, (inode.size - 1) // PIECE_BYTES)
        self._streams[ino] = (max(end, last_end), window, max(ahead_last, started))
        if end > offset and ahead_last <= started \
                and not self.cache.missing(ino, offset, end - offset, inode.size):
            # the common case of a streaming reader: its bytes are here and its
            # read-ahead was started by an earlier read (a piece that failed or was
            # dropped is missing again, and takes the slow path)
            return
        await self._pieces(ino, range(first, last + 1), range(last + 1, ahead_last + 1))

    async def whole(self, ino: int) -> None:
        """Fetch the whole file (before a write, an upload, a hard link). If the file
        changed meanwhile it may still not be whole: ``Filesystem.ensure_cached``
        loops."""
        inode = self.ns.get(ino)
        if inode.cached:
            return
        await self._pieces(ino, range(0, (inode.size + PIECE_BYTES - 1) // PIECE_BYTES),
                           range(0))

    # --- the work ------------------------------------------------------------------------
    def _source(self, ino: int) -> tuple[int, str, str | None, int] | None:
        """(size, key, ETag, cache generation) to read ``ino`` from, with its cache
        file ready; None when it is whole in the cache already."""
        inode = self.ns.get(ino)
        if inode.cached:
            return None
        key, etag = self.read_source(inode)
        if key is None:
            # (an open file whose object was deleted before its bytes were cached)
            raise FsError(errno.ESTALE, "file data is neither cached nor in the bucket")
        if not self.cache.exists(ino) or self.cache.size(ino) != inode.size:
            self.cache.create(ino, inode.size)
        return inode.size, key, etag, self.cache.generation(ino)

    async def _pieces(self, ino: int, needed: range, ahead: range, retries: int = 3) -> None:
        """Fetch the pieces ``needed`` and wait for them; start those ``ahead`` in
        the background (or wait for them too, without a nursery)."""
        source = self._source(ino)
        if source is None:
            return
        waits: list[tuple[tuple[int, int], trio.Event]] = []
        background = self.nursery
        async with trio.open_nursery() as nursery:
            for idx in needed:
                waits.extend(self._start(nursery, ino, idx, source))
            for idx in ahead:
                if background is not None:
                    self._start(background, ino, idx, source)
                else:
                    waits.extend(self._start(nursery, ino, idx, source))
            for _, event in waits:
                await event.wait()
        for slot, _ in waits:
            err = self._errors.pop(slot, None)
            if err is not None and slot[1] in needed:
                raise err
        self._settle(ino, source[0])
        size = source[0]
        # a piece was dropped (the file changed while it was in flight): again, from
        # what the file is now (the caller checks what it got)
        if needed and retries > 0 and not self.ns.get(ino).cached \
                and self.cache.missing(ino, needed.start * PIECE_BYTES,
                                          len(needed) * PIECE_BYTES, size):
            await self._pieces(ino, needed, range(0), retries - 1)

    def _start(self, nursery: trio.Nursery, ino: int, idx: int,
               source: tuple[int, str, str | None, int]
               ) -> list[tuple[tuple[int, int], trio.Event]]:
        """Start fetching piece ``idx`` unless it is present or already on its way;
        returns what to wait for."""
        slot = (ino, idx)
        event = self._inflight.get(slot)
        if event is not None:
            return [(slot, event)]
        size, key, etag, gen = source
        runs = self.cache.missing(ino, idx * PIECE_BYTES, PIECE_BYTES, size)
        if not runs:
            return []
        event = self._inflight[slot] = trio.Event()
        self._errors.pop(slot, None)  # an old failure of this piece is not this one's
        nursery.start_soon(self._fetch_piece, slot, runs[0][0], runs[-1][1], key, etag,
                           gen, size, event)
        return [(slot, event)]

    async def _fetch_piece(self, slot: tuple[int, int], start: int, end: int, key: str,
                           etag: str | None, gen: int, size: int, event: trio.Event) -> None:
        try:
            async with self._limiter:
                data = await self._get(key, start, end, etag)
            self._fill(slot[0], start, data, gen)
            # (read-ahead lands after the reads that asked for it: a reader finding
            # every byte here never calls ``_pieces``, so the last piece settles)
            self._settle(slot[0], size)
        except (FsError, VersionGone) as exc:
            self._errors[slot] = exc
        except Exception as exc:  # noqa: BLE001 - also in the background: never fatal
            log.exception("fetching %s [%d, %d) failed", key, start, end)
            self._errors[slot] = FsError(getattr(exc, "errno", None) or errno.EIO, str(exc))
        finally:
            del self._inflight[slot]
            event.set()

    async def _fetch_span(self, ino: int, offset: int, end: int) -> None:
        """The missing blocks of ``[offset, end)``, one GET each run, waited for."""
        source = self._source(ino)
        if source is None:
            return
        size, key, etag, gen = source
        runs = self.cache.missing(ino, offset, end - offset, size)
        got: dict[int, bytes] = {}
        failed: list[FsError | VersionGone] = []

        async def one(start: int, stop: int) -> None:
            try:
                got[start] = await self._get(key, start, stop, etag)
            except (FsError, VersionGone) as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            for start, stop in runs:
                nursery.start_soon(one, start, stop)
        if failed:
            raise failed[0]  # (itself, not in an exception group: callers catch it)
        for start, data in got.items():
            self._fill(ino, start, data, gen)
        self._settle(ino, size)

    async def _get(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        try:
            return await self.remote.get(key, start, end, if_match=etag)
        except PreconditionFailed:
            raise VersionGone(f"{key} changed in the bucket", etag) from None
        except NoSuchKey:
            raise VersionGone(f"{key} vanished from the bucket", etag) from None
        except StoreError as exc:
            raise fetch_failed(key, exc) from None

    def _fill(self, ino: int, start: int, data: bytes, gen: int) -> None:
        """Write fetched bytes into the cache file, unless the cache changed since the
        GET started (written, truncated, dropped for a newer version): then they
        are stale, and dropped."""
        cache = self.cache
        if cache.generation(ino) != gen or not cache.exists(ino):
            log.debug("dropping %d fetched bytes of inode %d: its cache changed",
                      len(data), ino)
            return
        cache.fill(ino, start, data)

    def _settle(self, ino: int, size: int) -> None:
        """Every byte is present: the file is whole in the cache from now on."""
        if not self.cache.exists(ino) or not self.cache.all_present(ino, size):
            return
        with self.ns.journal.write() as txn:
            fresh = txn.get(ino)
            if fresh is None or fresh.cached or fresh.size != size:
                return
            fresh.cached = True
            txn.put(fresh)
        self.cache.forget_presence(ino)
        self._streams.pop(ino, None)
