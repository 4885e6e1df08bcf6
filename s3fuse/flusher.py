"""Write-back: the aggregation window, the op log, and upload commits.

Two kinds of bucket work come out of the journal:

* the **op log** (server-side copies and deletes left by renames and unlinks of
  objects already in the bucket), started in log order, several at once on keys
  no earlier pending op names (see ``_run_ops``);
* **dirty inodes**, each uploaded whole (PUT, or a metadata-only server-side copy
  onto itself) once it has been quiet for ``window_s`` seconds, and at most
  ``window_s`` after its first unflushed change, even while a writer keeps it open.

An upload to a key waits while any pending op names that key, so the bucket sees
the mount's history in order. Every upload is conditional: ``If-Match`` the ETag we
last saw at that key, or ``If-None-Match: *`` where we believe there is nothing.

A crash anywhere here is repaired by replay, because the journal changes only after
the bucket did:

* crash before or during a PUT: the inode is still dirty; the PUT is made again.
* crash after the PUT, before the commit: the inode is still dirty and still has
  the old ETag; the repeated PUT's ``If-Match`` fails against our own object. The
  flusher then HEADs the key: an object carrying our ``s3fuse-seq`` marker for this
  very change is ours, and is adopted instead of being treated as a conflict.
* crash between a rename's COPY and its DELETE: the op log still holds the op that
  was running; copies and deletes are idempotent and are simply done again.

Timing uses ``trio.current_time()`` so tests drive the window with ``MockClock``.
"""

from __future__ import annotations

import logging
import stat
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from . import faults, retry
from .cache import SNAPSHOT_INLINE_BYTES
from .errors import BodyChanged, ConditionMismatch, FsError, PreconditionFailed, StoreError
from .flusher_ops import OpLogRunner
from .journal import DIRTY_DATA, Inode, Txn
from .namespace import object_metadata, set_remote, unmark
from .oplog import CopyOp, DeleteOp
from .reconcile import SEQ_META, Decision, Stamp
from .store.base import ObjectInfo

if TYPE_CHECKING:
    from .cache import Cache
    from .metrics import Metrics
    from .namespace import Namespace
    from .reconcile import Reconciler
    from .remote import Remote

log = logging.getLogger(__name__)

MAX_BACKOFF_S = retry.BACKGROUND_MAX_DELAY_S  # (a drain of strays waits 4 times this)
#: While the mount is serving requests (one came within ``BUSY_S``), bucket work runs
#: at most ``BUSY_CONCURRENCY`` uploads and ops at once. Worker threads making requests
#: take the CPU and the GIL that the request handlers need: ``rm -rf`` of 3,000
#: uploaded files took 3.6 s with 16 deletes at once, 1.1 s with one. Once requests
#: stop, or while a drain, ``sync`` or a writer waiting for room needs the bucket,
#: the full concurrency applies again.
BUSY_S = 0.25
BUSY_CONCURRENCY = 1
#: files at least this large are uploaded from their cache file, not from a copy (at
#: least the S3 store's multipart threshold: its parts are read, and the file checked,
#: before the upload completes)
LIVE_BODY_MIN_BYTES = 16 << 20


@dataclass
class FlusherLinks:
    """What the flusher uses from the layers around it, as narrow references
    (``Filesystem.flusher_links`` makes them; the flusher never sees a Filesystem)."""

    remote: Remote
    cache: Cache
    #: the S3-wins policy: what an upload's refusal, or a copy's outcome, means
    reconciler: Reconciler
    #: fetch whatever part of a file is not cached yet (before uploading it whole)
    ensure_cached: Callable[[int], Awaitable[None]]
    #: tell the kernel to drop cached entries and inodes
    invalidate: Callable[[list[tuple[int, bytes]], list[int]], None]
    #: drop an unlinked inode once nothing refers to it
    maybe_purge: Callable[[int], None]
    #: trio time of the last FUSE request (the flusher holds back while they come)
    last_request_at: Callable[[], float]


@dataclass
class FlushError:
    when: float
    path: str
    operation: str
    message: str
    transient: bool = False  # the bucket could not be reached (or answered 5xx)


class Flusher(OpLogRunner):
    def __init__(self, ns: Namespace, links: FlusherLinks, window_s: float,
                 max_uploads: int = 8, fsync_upload: bool = False, instance_id: str = "",
                 dirty_limit_bytes: int = 10 << 30, max_ops: int = 16) -> None:
        self.ns = ns
        self.links = links
        self.journal = ns.journal
        self.window_s = window_s
        self.max_uploads = max_uploads
        self.max_ops = max_ops
        self.fsync_upload = fsync_upload
        self.instance_id = instance_id
        # ino -> [first change not yet in the bucket, last change]: real times, which
        # ``pending()`` reports; nothing else is ever written there
        self._due: dict[int, list[float]] = {}
        # inos to upload now, whatever their window says (a drain, a writer waiting
        # for room, a stray found dirty): kept apart from ``_due`` so that the age of
        # the oldest change stays a real, finite figure
        self._due_now: set[int] = set()
        self._inflight: dict[int, str] = {}
        # ino -> the change sequence its upload in flight sends (set once it is sent)
        self._inflight_seq: dict[int, int] = {}
        # uploads in flight that nobody needs any more: the file left their key and
        # changed since they read it (``_abandon_superseded``); their body check says
        # so, and the store stops them without storing anything
        self._abandoned: set[int] = set()
        self._busy: Counter[str] = Counter()
        self._retry_at: dict[int, float] = {}
        self._live_changed: set[int] = set()  # their last upload from the cache failed
        # data inos whose snapshot is being copied off the event loop -> set when the
        # copy ends (``_snapshot_ahead``, its one writer); writes to them wait for it
        # (``wait_for_room``), so that the copy holds the file as it was
        self._copying: dict[int, trio.Event] = {}
        self._backoff: dict[int, float] = {}
        self._ops_retry_at = 0.0
        self._ops_backoff = 0.0
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._pump_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.ops_finished = 0
        self.dirty_limit_bytes = dirty_limit_bytes
        self._dirty_sizes: dict[int, int] = {}
        self.dirty_total_bytes = 0
        self._waiting_for_room = False
        self._draining = 0
        self.errors: deque[FlushError] = deque(maxlen=100)
        self.counts: Counter[str] = Counter()
        self.metrics: Metrics | None = None  # set by the daemon: retries, conflicts
        # keys whose upload or op failed because the bucket was unreachable, and said
        # so in the log: their next failures go to DEBUG, until one succeeds
        self._reported: set[str] = set()

    # --- bookkeeping called by the filesystem ----------------------------------------
    def load(self) -> None:
        """Schedule everything the journal holds as dirty, due at once (replay). Its
        age counts from the file's last change (its ctime): a change kept across an
        unmount or a crash is as old as that, not as old as this mount."""
        now = trio.current_time()
        wall = time.time()
        with self.journal.read() as txn:
            for ino in txn.dirty_inos():
                inode = txn.get(ino)
                age = max(0.0, wall - inode.ctime_ns / 1e9) \
                    if inode is not None and inode.ctime_ns > 0 else 0.0
                self._due[ino] = [now - age, now - age]
                self._due_now.add(ino)
                if inode is not None and inode.dirty & DIRTY_DATA:
                    self._note_size(ino, inode.size)
        self._wake.set()

    def note_change(self, ino: int) -> None:
        now = trio.current_time()
        due = self._due.get(ino)
        if due is None:
            self._due[ino] = [now, now]
        else:
            due[1] = now

    def _note_size(self, ino: int, size: int) -> None:
        self.dirty_total_bytes += size - self._dirty_sizes.get(ino, 0)
        self._dirty_sizes[ino] = size

    def _drop_size(self, ino: int) -> None:
        self.dirty_total_bytes -= self._dirty_sizes.pop(ino, 0)

    async def wait_for_room(self, ino: int, new_size: int) -> None:
        """Back-pressure: account a write growing ``ino`` to ``new_size`` dirty bytes,
        and while dirty data exceeds the cache limit, push uploads and wait for them.
        A single file larger than the limit is let through (waiting cannot help it).
        A write to a file whose snapshot is being copied waits for the copy first."""
        copying = self._copying.get(ino)
        if copying is not None:
            await copying.wait()
        self._note_size(ino, max(new_size, self._dirty_sizes.get(ino, 0)))
        if self.dirty_total_bytes <= self.dirty_limit_bytes or \
                self._dirty_sizes[ino] >= self.dirty_limit_bytes:
            return
        if not self._waiting_for_room:
            log.warning("dirty data (%d bytes) is over the cache limit (%d bytes): writers "
                        "wait for uploads", self.dirty_total_bytes, self.dirty_limit_bytes)
        self._waiting_for_room = True
        try:
            while self.dirty_total_bytes > self.dirty_limit_bytes:
                self._due_now.update(other for other in self._due if other != ino)
                progress = self._progress
                self._wake.set()
                await progress.wait()
        finally:
            self._waiting_for_room = False

    def forget(self, ino: int) -> None:
        self._drop_size(ino)
        self._due.pop(ino, None)
        self._due_now.discard(ino)
        self._retry_at.pop(ino, None)
        self._backoff.pop(ino, None)
        self._live_changed.discard(ino)

    def is_uploading(self, ino: int) -> bool:
        return ino in self._inflight

    def pending_copy_source(self, ino: int) -> tuple[str, str | None] | None:
        """The source of the first pending copy op of ``ino``: where its bytes are
        until that copy has run."""
        if ino not in self.journal.ops_index.copy_inos:
            return None
        with self.journal.read() as txn:
            for _, op in txn.ops_from():
                if isinstance(op, CopyOp) and op.ino == ino:
                    return op.src, op.etag
        return None

    def pending_op_keys(self) -> set[str]:
        return self.journal.pending_op_keys()

    def op_generation(self) -> tuple[int, bytes | None]:
        """Changes whenever an op is appended or finished: a listing taken across a
        change may show keys the op log has since removed or is about to."""
        with self.journal.read() as txn:
            return self.ops_finished, txn.get_meta(b"next_op")

    def pending(self) -> dict:
        ops = self.journal.ops_index.count
        with self.journal.read() as txn:
            dirty = txn.dirty_inos()
            dirty_bytes = 0
            for ino in dirty:
                inode = txn.get(ino)
                if inode is not None and inode.dirty & DIRTY_DATA:
                    dirty_bytes += inode.size
        now = trio.current_time()
        oldest = min((d[0] for d in self._due.values()), default=now)
        retrying = sum(1 for at in self._retry_at.values() if at > now)
        last = self.errors[-1] if self.errors else None
        return {
            "dirty_files": len(dirty),
            "dirty_bytes": dirty_bytes,
            "pending_ops": ops,
            "uploads_in_flight": len(self._inflight),
            "oldest_pending_age_s": max(0.0, now - oldest),
            # files whose last upload failed, waiting for their next try; and whether
            # the bucket's op log is backing off after a failed copy or delete
            "retrying_files": retrying,
            "ops_retrying": self._ops_retry_at > now and bool(ops),
            "last_error": None if last is None else {
                "time": last.when, "path": last.path, "operation": last.operation,
                "message": last.message, "transient": last.transient},
        }

    def _record_error(self, path: str, operation: str, exc: BaseException) -> None:
        transient = retry.is_temporary(exc)
        self.errors.append(FlushError(time.time(), path, operation, str(exc), transient))
        if not transient:
            log.warning("%s %s failed: %s", operation, path, exc)
        elif path not in self._reported:
            self._reported.add(path)
            log.warning("%s %s failed: %s; retrying with backoff (until it works, its "
                        "failures are logged at DEBUG)", operation, path, exc)
        else:
            log.debug("%s %s failed again: %s", operation, path, exc)

    def _succeeded(self, path: str) -> None:
        if path in self._reported:
            self._reported.discard(path)
            log.info("%s: the bucket took it after all", path)

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # --- the loop ---------------------------------------------------------------------
    def _tick_s(self) -> float:
        return max(0.05, min(1.0, self.window_s / 4))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                try:
                    await self.pump()
                except Exception:  # noqa: BLE001 - the flusher outlives any one round
                    log.exception("flusher round failed; trying again after a tick")
                with trio.move_on_after(self._tick_s()):
                    await self._wake.wait()
                self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def pump(self, force: bool = False) -> None:
        """One round: run the op log, then start the uploads that are due."""
        # what the server honours decides how each write is made: wait for the probe
        await self.links.remote.capabilities_known()
        async with self._pump_lock:
            await self._run_ops()
            self._start_uploads(force)

    def _room(self, limit: int) -> int:
        """How many uploads (or ops) may run at once now (see ``BUSY_S``)."""
        if self._draining or self._waiting_for_room \
                or trio.current_time() - self.links.last_request_at() >= BUSY_S:
            return limit
        return min(limit, BUSY_CONCURRENCY)

    def _start_uploads(self, force: bool) -> None:
        assert self._nursery is not None, "Flusher.run() is not running"
        now = trio.current_time()
        self._abandon_superseded()
        blocked = self.journal.ops_index.keys
        room = self._room(self.max_uploads)
        for ino, (first, last) in list(self._due.items()):
            if len(self._inflight) >= room:
                break
            if ino in self._inflight or self._retry_at.get(ino, 0.0) > now:
                continue
            if not force and ino not in self._due_now and now - last < self.window_s \
                    and now - first < self.window_s:
                continue
            key = self._key_for(ino)
            if key is None:
                continue
            if key in blocked or self._busy[key]:
                continue
            self._inflight[ino] = key
            self._busy[key] += 1
            self._nursery.start_soon(self._upload, ino, key)

    def _key_for(self, ino: int) -> str | None:
        """The key to upload ``ino`` to, or None after settling an inode that has
        nothing to upload (gone, unlinked, clean, or not exported)."""
        with self.journal.write() as txn:
            inode = txn.get(ino)
            key = None
            if inode is not None and inode.nlink > 0 and inode.dirty:
                key = self.ns.object_key(txn, inode)
            if key is None:
                if inode is not None and inode.dirty:
                    unmark(txn, inode)
                    txn.put(inode)
                else:
                    txn.clear_dirty(ino)  # (a stray entry: no record, or a clean one)
        if key is None:
            self.forget(ino)
        return key

    # --- uploads ------------------------------------------------------------------------
    async def _upload(self, ino: int, key: str) -> None:
        try:
            await faults.await_point("bucket-work")
            await self._upload_inner(ino, key)
        except Exception as exc:  # noqa: BLE001 - a bug or a store surprise: retried
            log.exception("uploading %s failed unexpectedly", key)
            self._failed(ino, key, "upload", exc)
        finally:
            self._inflight.pop(ino, None)
            self._inflight_seq.pop(ino, None)
            self._abandoned.discard(ino)
            self._busy[key] -= 1
            if self._busy[key] <= 0:
                del self._busy[key]
            self._progressed()
            self._wake.set()

    async def _upload_inner(self, ino: int, key: str) -> None:
        # ``ino`` may be a link record (one name of a hard-linked file): its own key,
        # ETag and dirty flags; the bytes and attributes are the data record's
        try:
            with self.journal.read() as txn:
                inode = self.ns.get_in(txn, ino)
                data = self.ns.data_of(txn, inode)
            if stat.S_ISREG(data.mode) and not data.cached and (
                    inode.dirty & DIRTY_DATA or inode.remote_key != key):
                await self.links.ensure_cached(data.ino)
        except FsError as exc:
            self._failed(ino, key, "fetch", exc)
            return
        ahead = await self._snapshot_ahead(ino, key)
        try:
            await self._send(ino, key, ahead)
        finally:
            if ahead is not None:
                self.links.cache.drop_snapshot(ahead[0])  # (used or not: it is done)

    async def _snapshot_ahead(self, ino: int, key: str) -> tuple[str, int, int] | None:
        """A large file that will go up from a snapshot (``_from_snapshot``) has it
        copied in a worker thread first: (path, cache generation, size). Made on the
        event loop, the copy stopped every request on the mount while it ran (a
        second or more a GiB); now only writes to this file wait for it
        (``wait_for_room``). ``_file_body`` uses it if the file has not changed
        since (a write already past that wait, or a truncate, may have changed it:
        the snapshot is then taken on the loop, as before). Only for a file whole in
        the cache: bytes fetched into it do not change its generation. One copy per
        file at a time: another name of a hard-linked file, uploaded meanwhile, takes
        its snapshot on the loop."""
        with self.journal.read() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink == 0:
                return None
            data = txn.get(inode.link_of) if inode.link_of else inode
        if data is None or not stat.S_ISREG(data.mode) or not data.cached \
                or data.ino in self._copying \
                or data.size <= SNAPSHOT_INLINE_BYTES \
                or not (inode.dirty & DIRTY_DATA or inode.remote_key != key) \
                or not self._from_snapshot(ino, data):
            return None
        copied = self._copying[data.ino] = trio.Event()
        try:
            made = await self.links.cache.snapshot_ahead(data.ino, data.size)
        finally:
            del self._copying[data.ino]
            copied.set()
        return None if made is None else (made[0], made[1], data.size)

    async def _send(self, ino: int, key: str, ahead: tuple[str, int, int] | None) -> None:
        """The rest of ``_upload_inner``: the upload itself, from one consistent view
        of the file."""
        # From here to the request: no await, so the snapshot, its sequence number
        # and the condition are one consistent view. Deferred records are written
        # first: the object's s3fuse-seq tag must never be ahead of the journal on disk.
        self.journal.persist()
        with self.journal.read() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink == 0 or not inode.dirty \
                    or self.ns.object_key(txn, inode) != key:
                return
            data = txn.get(inode.link_of) if inode.link_of else inode
            if data is None or data.nlink == 0:
                return
            blocked = txn.op_names(key)
        if blocked:
            return
        if stat.S_ISREG(data.mode) and not data.cached and (
                inode.dirty & DIRTY_DATA or inode.remote_key != key):
            # the bucket replaced the clean file these bytes were to come from while
            # they were fetched: fetch again, after a tick
            self._retry_at[ino] = trio.current_time() + self._tick_s()
            return
        if inode.remote_key == key and inode.remote_etag is None:
            # a copy to this key has not committed yet: look again after a tick (an
            # immediate retry would spin, since nothing here waits)
            self._retry_at[ino] = trio.current_time() + self._tick_s()
            return
        seq = inode.change_seq
        md = object_metadata(data)
        md[SEQ_META] = f"{self.instance_id}:{ino}:{seq}"
        if_match = inode.remote_etag if inode.remote_key == key else None
        body: bytes | str = b""
        unchanged: Callable[[], bool] | None = None
        as_copy = False
        if stat.S_ISREG(data.mode):
            if not inode.dirty & DIRTY_DATA and inode.remote_key == key:
                as_copy = True
            else:
                body, unchanged = self._file_body(ino, data, ahead)
                unchanged = self._still_wanted(ino, unchanged)
        elif stat.S_ISLNK(data.mode):
            body = (data.target or "").encode("utf-8", "surrogateescape")
        snapshot = body if body != self.links.cache.path(data.ino) else b""  # (not ours)
        if not self.links.remote.capabilities.conditional_put and not as_copy:
            # the server ignores conditions: check first (best effort, not atomic)
            if await self._changed_outside(ino, key, inode.remote_etag if if_match else None,
                                           seq):
                self.links.cache.drop_snapshot(snapshot)
                return
            if_match, unconditional = None, True
        else:
            unconditional = False
        faults.crash_point("before-put")
        self._inflight_seq[ino] = seq
        try:
            if as_copy:
                etag = await self.links.remote.copy(key, key, md, src_if_match=if_match)
                self.counts["copy"] += 1
            else:
                etag = await self.links.remote.put(key, body, md, if_match=if_match,
                                           if_none_match=if_match is None and not unconditional,
                                           unchanged=unchanged)
                self.counts["put"] += 1
        except (BodyChanged, OSError) as exc:
            if isinstance(exc, OSError) and (unchanged is None or unchanged()):
                raise
            if ino in self._abandoned:
                # stopped: the file left this key and changed since (nothing stored;
                # its next upload goes to its new key)
                self.counts["abandoned"] += 1
                return
            # written (or removed: an OSError reading it) while it went up: nothing
            # was stored; the change made it due again, and the next attempt sends a
            # snapshot, so a file written all the time still gets uploaded
            self._live_changed.add(ino)
            self.counts["body_changed"] += 1
            return
        except PreconditionFailed:
            ours = await self._refused(ino, key, seq, if_match)
            if ours is None:
                return
            # our own earlier upload landed (before a crash, or its reply was lost):
            # adopt it; if it is older than this change, the next round replaces it
            etag, seq = ours
        except StoreError as exc:
            self._failed(ino, key, "copy" if as_copy else "put", exc)
            return
        finally:
            self.links.cache.drop_snapshot(snapshot)
        faults.crash_point("after-put")
        self._commit(ino, key, etag, seq, if_match if as_copy else None)

    def _file_body(self, ino: int, data: Inode, ahead: tuple[str, int, int] | None = None
                   ) -> tuple[bytes | str, Callable[[], bool] | None]:
        """What an upload of a regular file sends. A large file goes straight from its
        cache file, with a check the store makes before the object becomes visible
        (nothing written since the upload began: see ``ObjectStore.put``), so no copy
        of it is made. Smaller files, and one whose last such upload was overtaken by
        a write while it is still being written (``_quiet``), go from a private
        snapshot. Where ``_snapshot_ahead`` made one, the choice was made then: that
        one if the file has not changed since, else one taken now."""
        cache = self.links.cache
        if ahead is not None:
            if ahead[1:] == (cache.generation(data.ino), data.size):
                self.counts["snapshot_ahead"] += 1
                return ahead[0], None
        elif not self._from_snapshot(ino, data):
            generation = cache.generation(data.ino)
            return cache.path(data.ino), lambda: cache.generation(data.ino) == generation
        return cache.snapshot(data.ino, data.size), None

    def _from_snapshot(self, ino: int, data: Inode) -> bool:
        """An upload of ``data`` (the data record of ``ino``) goes from a snapshot, not
        from the cache file (``_file_body``)."""
        return data.size < LIVE_BODY_MIN_BYTES or (ino in self._live_changed
                                                   and not self._quiet(ino))

    def _quiet(self, ino: int) -> bool:
        """No change to ``ino`` for a tick: a writer that overtook its last upload from
        the cache file has stopped, so the next one goes from the cache file again
        instead of from a copy of it (a checkpoint of gigabytes, after the write
        that overtook the upload the flush window started). If it writes again, the
        upload after that one is a copy: a file written all the time still goes up."""
        due = self._due.get(ino)
        return due is None or trio.current_time() - due[1] >= self._tick_s()

    def _still_wanted(self, ino: int, unchanged: Callable[[], bool] | None
                      ) -> Callable[[], bool]:
        """The body check of a file's upload (``ObjectStore.put``'s ``unchanged``),
        which also fails once the upload is abandoned (``_abandon_superseded``). (A
        store checks it before a single PUT and before every part: a PUT already on
        its way lands, and is deleted at its commit, as before.)"""
        if unchanged is None:
            return lambda: ino not in self._abandoned
        return lambda: ino not in self._abandoned and unchanged()

    def _abandon_superseded(self) -> None:
        """Mark the uploads in flight whose file left their key (renamed or removed)
        and changed since they read it: once landed, the object would only be
        deleted again (``_commit``), and the file's upload to its new key waits for
        them (one upload per file at a time). A checkpoint renamed while an upload of
        an earlier state of it runs: that upload stops at its next part."""
        if not self._inflight_seq:
            return
        with self.journal.read() as txn:
            for ino, seq in self._inflight_seq.items():
                if ino in self._abandoned:
                    continue
                inode = txn.get(ino)
                if inode is None or inode.nlink == 0 or (
                        inode.change_seq != seq
                        and self.ns.object_key(txn, inode) != self._inflight[ino]):
                    self._abandoned.add(ino)

    async def _refused(self, ino: int, key: str, seq: int,
                       if_match: str | None) -> tuple[str, int] | None:
        """The bucket did not hold what an upload of change ``seq`` expected at ``key``
        (its condition ``if_match``): ask what it holds and let the S3-wins policy
        settle it. (ETag, change sequence) of our own earlier upload to adopt, or None
        (settled: a conflict kept ours in lost+found, or the attempt is retried)."""
        seen_at = self.links.reconciler.stamp()
        try:
            info = await self.links.remote.head_or_none(key)
        except StoreError as exc:
            self._failed(ino, key, "put", exc)
            return None
        if if_match is not None and info is not None and info.etag == if_match:
            # The bucket holds what the condition named: no conflict, and nothing to
            # adopt. The server may have stopped honouring If-Match on this bucket
            # (Ceph RGW 16, once versioning is turned on while mounted): probe again,
            # and retry at once with the fallback if so; else later, never overwriting.
            if await self.links.remote.reprobe(self.ns.prefix):
                self._retry_at[ino] = trio.current_time()
            else:
                self._failed(ino, key, "put", ConditionMismatch(
                    f"{key}: the server refused the condition but holds what the mount "
                    "expected"))
            return None
        return self._settle_refusal(ino, key, info, seen_at, seq)

    def _settle_refusal(self, ino: int, key: str, info: ObjectInfo | None, seen_at: Stamp,
                        seq: int) -> tuple[str, int] | None:
        """Hand what the bucket holds at ``key`` (``info``, seen at ``seen_at``) to the
        S3-wins policy for an upload of change ``seq`` it did not expect. (ETag,
        change sequence) of our own earlier upload to adopt, or None: a conflict
        was kept in lost+found, or the inode moved on (tried again after a tick), or
        the attempt failed (tried again with backoff)."""
        try:
            outcome = self.links.reconciler.upload_refused(ino, key, info, seen_at,
                                                        self.instance_id, seq)
        except StoreError as exc:  # (ConditionMismatch too: retried, never overwritten)
            self._failed(ino, key, "put", exc)
            return None
        if isinstance(outcome, tuple):
            return outcome
        if outcome is Decision.KEEP:
            self._retry_at[ino] = trio.current_time() + self._tick_s()  # (moved on)
        else:
            self._count_conflict()
        return None

    def _count_conflict(self) -> None:
        self.counts["conflicts"] += 1
        if self.metrics is not None:
            self.metrics.conflict()

    async def _changed_outside(self, ino: int, key: str, expect_etag: str | None,
                               seq: int) -> bool:
        """For servers without conditional PUTs: HEAD first and settle a change the
        way a refused condition would. True if the upload must not go ahead."""
        seen_at = self.links.reconciler.stamp()
        try:
            info = await self.links.remote.head_or_none(key)
        except StoreError as exc:
            self._failed(ino, key, "head", exc)
            return True
        if (info.etag if info else None) != expect_etag \
                and self._settle_refusal(ino, key, info, seen_at, 1 << 62) is None:
            return True
        # the inode may have moved on while we asked
        with self.journal.read() as txn:
            inode = txn.get(ino)
            return inode is None or inode.nlink == 0 or inode.change_seq != seq \
                or self.ns.object_key(txn, inode) != key

    def _failed(self, ino: int, key: str, operation: str, exc: BaseException) -> None:
        self._record_error(key, operation, exc)
        if self.metrics is not None:
            self.metrics.retry("upload")
        delay = retry.next_backoff(self._backoff.get(ino, 0.5))
        self._backoff[ino] = delay
        self._retry_at[ino] = trio.current_time() + delay

    def _commit(self, ino: int, key: str, etag: str, seq: int,
                rewrote: str | None = None) -> None:
        """Our upload of change ``seq`` of ``ino`` is in the bucket at ``key`` as
        ``etag``. ``rewrote``: it was a metadata-only rewrite of the object that had
        that ETag (same bytes)."""
        clean = False
        with self.journal.write() as txn:
            if rewrote is not None and rewrote != etag:
                # a rename that happened meanwhile queued a copy of the object pinned
                # to the ETag it had before our rewrite: the copy must find it
                txn.repin_copies(key, rewrote, etag)
            inode = txn.get(ino)
            if inode is not None and inode.nlink > 0 and self.ns.object_key(txn, inode) == key:
                self.links.reconciler.note_bucket_state(ino)
                set_remote(inode, key, etag)
                if inode.change_seq == seq:
                    unmark(txn, inode)
                    clean = True
                    self._live_changed.discard(ino)
                txn.put(inode)
            elif txn.copy_pending_to(key):
                # It moved or went away while we uploaded, and a queued server-side
                # copy will overwrite what we wrote: that copy's ETag is the one the
                # holder of this path must see (_finish_op gives it), not ours.
                pass
            else:
                # It moved or went away while we uploaded. If it was renamed and has
                # not changed since, the object is its current version: it follows
                # the rename server-side instead of going up again (``_follow_rename``).
                clean = self._follow_rename(txn, inode, key, etag, seq)
                # The object we just wrote belongs to whoever holds that path now, or
                # to nobody. (Not a holder that knows another object there: that is a
                # newer fact than our upload, and its cached bytes are that version's.)
                holder = self.ns.inode_at_key(txn, key)
                if holder is not None and holder.ino != ino \
                        and holder.remote_key in (None, key) \
                        and (holder.dirty or holder.remote_etag is None):
                    self.links.reconciler.note_bucket_state(holder.ino)
                    set_remote(holder, key, etag)
                    txn.put(holder)
                else:
                    txn.append_op(DeleteOp(key, etag, ino))
        self._backoff.pop(ino, None)
        self._retry_at.pop(ino, None)
        self._succeeded(key)
        if clean:
            self._due.pop(ino, None)
            self._due_now.discard(ino)
            self._drop_size(ino)
        elif ino in self._due:
            # changed again while it went up: a new first change, in a new window
            self._due[ino][0] = trio.current_time()
            self._due_now.discard(ino)

    def _follow_rename(self, txn: Txn, inode: Inode | None, key: str, etag: str, seq: int) -> bool:
        """Our upload of change ``seq`` of ``inode`` landed at ``key`` as ``etag``, and
        the file was renamed meanwhile (its key is another one now). If nothing changed
        since that upload read it (the same change sequence: bytes and attributes),
        the object is the file's current version: queue a server-side copy to its new
        key, as a rename of a clean file does (``Renamer._move_remote``), instead of
        sending the bytes again. The copy overwrites whatever is at the new key (the
        object a rename over an existing name replaced), and is pinned to ``etag``:
        if the object changes in the bucket first, S3 wins and ``_finish_op`` has
        the file uploaded from its cache file. The caller appends the delete of
        ``key`` (or hands the object to the path's new holder): the copy is before
        it in the log. True if the file is clean now."""
        if inode is None or inode.nlink == 0 or inode.change_seq != seq \
                or not stat.S_ISREG(inode.mode) or inode.links or inode.link_of:
            return False
        new_key = self.ns.object_key(txn, inode)
        if new_key is None or new_key == key or inode.remote_key not in (None, new_key):
            return False
        txn.append_op(CopyOp(key, new_key, etag, inode.ino))
        set_remote(inode, new_key, None)  # (the copy gives the ETag: ``_finish_op``)
        unmark(txn, inode)
        txn.put(inode)
        self._live_changed.discard(inode.ino)
        self.counts["renamed_uploads"] += 1
        return True

    # --- waiting for the bucket ---------------------------------------------------------
    def _idle(self, inos: list[int] | None = None) -> bool:
        """Nothing left to do (for ``inos``, or at all). Uses the in-memory schedule,
        which mirrors the journal's dirty set; cheap enough to ask after every upload."""
        if self.journal.ops_index.count:
            return False
        if inos is None:
            return not self._due and not self._inflight
        return not any(i in self._due or i in self._inflight for i in inos)

    def _reschedule_strays(self) -> bool:
        """Schedule dirty inodes the journal has and the schedule lacks (there should
        be none); True if any were found."""
        with self.journal.read() as txn:
            strays = [i for i in txn.dirty_inos() if i not in self._due]
        now = trio.current_time()
        for ino in strays:
            log.warning("inode %d was dirty but not scheduled; scheduling it", ino)
            self._due[ino] = [now, now]
            self._due_now.add(ino)
        return bool(strays)

    async def drain(self, timeout_s: float, inos: list[int] | None = None) -> bool:
        """Upload everything pending (or just ``inos``) now, and wait until it is in
        the bucket. False if ``timeout_s`` passed first; nothing is dropped then."""
        inos = list(inos) if inos is not None else None
        # asked for explicitly: try again now rather than after the backoff
        self._retry_at.clear()
        self._ops_retry_at = 0.0
        self._due_now.update(ino for ino in (inos if inos is not None else self._due)
                             if ino in self._due)
        self._draining += 1
        try:
            return await self._drain(timeout_s, inos)
        finally:
            self._draining -= 1

    async def _drain(self, timeout_s: float, inos: list[int] | None) -> bool:
        with trio.move_on_after(timeout_s):
            while True:
                while not self._idle(inos):
                    progress = self._progress
                    # only ``inos`` are marked due when given: the rest keep their window
                    await self.pump(force=inos is None)
                    with trio.move_on_after(min(1.0, self._tick_s())):
                        await progress.wait()
                if inos is not None or not self._reschedule_strays():
                    return True
        return False

    async def upload_now(self, inos: list[int]) -> None:
        if not await self.drain(MAX_BACKOFF_S * 4, inos):
            raise FsError(5, "upload did not complete (bucket unreachable?)")
