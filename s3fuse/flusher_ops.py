"""The flusher's op log: carrying out the server-side copies and deletes that renames
and unlinks leave (``oplog``), several at once, in log order, and committing what
each one did to the bucket.

``OpLogRunner`` is a part of ``flusher.Flusher`` (its base class): its methods use
the flusher's state (``_busy``, the op backoff, ``counts``, ``metrics``) and its
bookkeeping (``_room``, ``_record_error``, ``_succeeded``, ``_progressed``).
"""

from __future__ import annotations

import logging

import trio

from . import faults, oplog, retry
from .errors import StoreError
from .journal import DIRTY_DATA, Inode
from .namespace import set_remote
from .oplog import CopyOp, Op

log = logging.getLogger("s3fuse.flusher")  # (the flusher's log lines keep its name)


class OpLogRunner:
    """The op-log half of ``Flusher`` (see the module docstring)."""


    async def _run_ops(self) -> None:
        """Carry out the op log until it is empty or an op fails. Up to ``max_ops``
        run at once, in log order, each only once no earlier pending op (and no
        upload in flight) names any of its keys: ops on disjoint keys commute, so
        the bucket sees the same history as one-at-a-time, and a crash leaves a log
        whose replay is still correct (every op is idempotent)."""
        if trio.current_time() < self._ops_retry_at:
            return
        running: dict[int, tuple[str, ...]] = {}
        failed: list[bool] = []
        changed = trio.Event()

        async def one(seq: int, op: Op, keys: tuple[str, ...]) -> None:
            nonlocal changed
            try:
                await faults.await_point("bucket-work")
                etag = await oplog.carry_out(op, self.links.remote, self.counts)
            except Exception as exc:  # noqa: BLE001 - StoreError, or a surprise: retried
                if not isinstance(exc, StoreError):
                    log.exception("%s %s failed unexpectedly", op.kind, keys[-1])
                self._record_error(keys[-1], op.kind, exc)
                if self.metrics is not None:
                    self.metrics.retry("operation")
                self._ops_backoff = retry.next_backoff(self._ops_backoff)
                self._ops_retry_at = trio.current_time() + self._ops_backoff
                failed.append(True)
                return
            else:
                if isinstance(op, CopyOp):
                    faults.crash_point("after-copy")
                self._ops_backoff = 0.0
                self._succeeded(keys[-1])
                self._finish_op(seq, op, etag)
                self._progressed()
            finally:
                del running[seq]
                for k in keys:
                    self._busy[k] -= 1
                    if self._busy[k] <= 0:
                        del self._busy[k]
                changed.set()

        async with trio.open_nursery() as nursery:
            while True:
                if not failed:
                    for seq, op, keys in self._startable_ops(running):
                        running[seq] = keys
                        for k in keys:
                            self._busy[k] += 1
                        nursery.start_soon(one, seq, op, keys)
                if not running:
                    return
                await changed.wait()
                changed = trio.Event()

    def _startable_ops(self, running: dict[int, tuple[str, ...]]
                       ) -> list[tuple[int, Op, tuple[str, ...]]]:
        """The pending ops that may start now, in log order (see ``_run_ops``). Looks
        at no more than a few windows' worth of the log's head."""
        out: list[tuple[int, Op, tuple[str, ...]]] = []
        room = self._room(self.max_ops) - len(running)
        if room <= 0:
            return out
        blocked: set[str] = set()
        with self.journal.read() as txn:
            for looked, (seq, op) in enumerate(txn.ops_from()):
                if looked >= 4 * self.max_ops or len(out) >= room:
                    break
                keys = op.keys
                if seq not in running and not any(k in blocked or self._busy[k]
                                                  for k in keys):
                    out.append((seq, op, keys))
                blocked.update(keys)
        return out

    def _finish_op(self, seq: int, op: Op, etag: str | None) -> None:
        self.ops_finished += 1
        pending: list[int] = []
        entries: list[tuple[int, bytes]] = []
        gone: int | None = None
        with self.journal.write() as txn:
            txn.remove_op(seq)
            if not isinstance(op, CopyOp):
                return
            if txn.copy_pending_to(op.dst):
                return  # a later copy overwrites this object: its ETag is the one
            inode: Inode | None = txn.get(op.ino)
            if inode is None or inode.nlink == 0 or inode.remote_key != op.dst:
                # renamed over meanwhile: the copy's object belongs to whoever holds
                # that path now (it inherited the key, waiting for this ETag)
                inode = self.ns.inode_at_key(txn, op.dst)
            if inode is None or inode.remote_key != op.dst or inode.remote_etag:
                return
            if etag and etag != op.etag and op.etag \
                    and not self.links.remote.capabilities.conditional_copy:
                # The server does not check a copy's source version, and the copy's
                # ETag is not the one it was pinned to (a multipart source, or a
                # version written outside since): the object may not be the version
                # our bytes are. The mount keeps knowing the version its bytes are
                # (the pinned one), so the object there is judged like any outside
                # change: an upload meets a 412 (S3 wins), and the next check of
                # the clean file (close-to-open, the poller) takes the copy's bytes.
                set_remote(inode, inode.remote_key, op.etag)
            elif etag:
                self.links.reconciler.note_bucket_state(inode.ino)
                set_remote(inode, inode.remote_key, etag)
            else:
                self.links.reconciler.note_bucket_state(inode.ino)
                # the source was gone: what we have locally (if anything) is the
                # newest version the mount knows; upload it as new
                set_remote(inode, None, None)
                if self.ns.data_of(txn, inode).cached and inode.nlink > 0:
                    self.ns.mark(txn, inode, DIRTY_DATA, pending)
                elif inode.nlink > 0 and not inode.links and not inode.link_of:
                    # ... and nothing local: that version is nowhere any more
                    gone = inode.ino
                    self.links.reconciler.version_lost(txn, inode, entries)
            txn.put(inode)
        self.ns.notify(pending)
        if gone is not None:
            self.links.invalidate(entries, [])
            self.links.maybe_purge(gone)
