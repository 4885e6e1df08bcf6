"""The composition root: check everything, mount, serve, drain on the way out.

Order matters for the user: every check that can fail on bad input (the source, the
bucket and credentials, the cache directory lock, the mount point) runs before
anything is mounted, and its message is one line. Then the journal is opened
(replaying whatever a previous daemon left), the mount goes up, readiness is
reported (to the waiting ``s3fuse mount`` parent, and to systemd when it asked),
and the flusher runs beside ``pyfuse3.main``.

Stopping: ``s3fuse umount`` asks the daemon to drain over the control xattrs (see
``control``), shows the progress, then unmounts. SIGTERM and SIGINT (systemd's stop,
Ctrl-C) drain while still serving, logging the progress, then unmount; a second one
unmounts at once. Either way nothing pending is dropped: if the bucket stays
unreachable past ``drain_timeout_s`` (or the user asked not to wait) the daemon exits
with the data kept in the journal and says how much is pending; the next mount uploads
it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyfuse3
import trio

from . import capcache
from .cache import Cache
from .config import Settings, parse_seconds
from .errors import StoreError, TransientStoreError, UsageError
from .cachelock import CacheLock
from .discovery import Poller
from .filesystem import Defaults, Filesystem
from .flusher import Flusher
from .forkstore import fork_status, wrap_if_forking
from .fuse_ops import FuseOps
from .journal import Journal
from .remote import Remote, probe_key
from .store import open_store
from .store.base import Capabilities, ObjectStore
from .words import duration, pending as pending_words

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

CHECKPOINT_S = 5.0
#: a drain (of a stop, a sync or an unmount) logs how it is doing this often
DRAIN_REPORT_S = 15.0
#: the results of this many drains asked for by the CLI are kept for it to read
KEPT_DRAINS = 64


@dataclass
class DrainJob:
    """One drain asked for by ``s3fuse sync``/``umount`` (see ``control``)."""

    timeout_s: float
    started: float  # trio.current_time() when it began
    who: str  # who asked, for the log
    state: str = "running"  # then done, gave_up or cancelled
    ended: float | None = None
    scope: trio.CancelScope | None = None  # cancels it (the CLI's Ctrl-C)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, when it is listening."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("could not notify systemd: %s", exc)


def check_mountpoint(path: str, nonempty: bool = False) -> str:
    """The mount point as an absolute path; clean up a dead FUSE mount left by a
    crashed daemon ("Transport endpoint is not connected"). A directory with entries
    is refused unless ``nonempty``: mounting over it would hide them."""
    mp = os.path.abspath(path)
    try:
        # statfs always reaches a FUSE daemon (stat may be answered from the kernel's
        # attribute cache), so it is what tells a dead mount from a live one
        os.statvfs(mp)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True, check=False,
                           timeout=30)
            print(f"s3fuse: cleaned up a stale mount at {mp} left by a stopped daemon",
                  flush=True)
        elif exc.errno == errno.ENOENT:
            raise UsageError(f"mount point {mp} does not exist") from None
        else:
            raise UsageError(f"mount point {mp}: {exc.strerror}") from None
    if not os.path.isdir(mp):
        raise UsageError(f"mount point {mp} is not a directory")
    if os.path.ismount(mp):
        raise UsageError(f"mount point {mp} is in use (something is mounted there)")
    if not nonempty:
        try:
            with os.scandir(mp) as entries:
                busy = next(entries, None) is not None
        except OSError as exc:
            raise UsageError(f"mount point {mp}: {exc.strerror}") from None
        if busy:
            raise UsageError(f"mount point {mp} is not empty (mounting would hide its "
                             "entries); use --nonempty (-o nonempty) to mount over it")
    return mp


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: ObjectStore | None = None
        self.lock: CacheLock | None = None
        self.journal: Journal | None = None
        self.fs: Filesystem | None = None
        self.flusher: Flusher | None = None
        self.metrics: Metrics | None = None  # with --metrics-addr
        self.started = time.time()
        self._nursery: trio.Nursery | None = None  # the daemon's tasks (drains run here)
        # the stop a signal started (a second signal cancels its drain), if any
        self._stop_scope: trio.CancelScope | None = None
        self._signal_drain_failed = False
        # unmount without waiting for the bucket: pending data stays in the journal
        self._keep_pending = False
        self._drains: OrderedDict[str, DrainJob] = OrderedDict()  # by the CLI's id
        #: what ``prepare`` opened (store, lock, journal, metrics server), closed in
        #: reverse order however ``run`` ends; ``main`` keeps its own stack inside it
        self.resources = contextlib.ExitStack()

    # --- checks before anything is mounted --------------------------------------------
    def prepare(self) -> None:
        s = self.settings
        self.mountpoint = check_mountpoint(s.mountpoint, s.nonempty)
        store, self.prefix = open_store(s.source, endpoint_url=s.endpoint_url,
                                        region=s.region)
        self.store = store
        self.resources.callback(store.close)
        try:
            store.check()
            # DEST of an unfinished fork: the keys not copied yet come from the source
            self.store = store = wrap_if_forking(store, self.prefix, s.source,
                                                 endpoint_url=s.endpoint_url, region=s.region)
        except StoreError as exc:
            raise UsageError(str(exc)) from None
        self.resources.callback(store.close)  # (closing twice is fine)
        self.lock = CacheLock(s.cache_dir)
        self.resources.callback(self.lock.release)
        self.journal = Journal(os.path.join(s.cache_dir, "journal"))
        self.resources.callback(self.journal.close)
        ident = f"{s.source} {s.endpoint_url or ''}".strip()
        known = self.journal.get_meta(b"source")
        if known is None:
            self.journal.set_meta(b"source", ident.encode())
            self.journal.set_meta(b"instance", uuid.uuid4().hex[:12].encode())
        elif known.decode() != ident:
            raise UsageError(f"cache directory {s.cache_dir} belongs to {known.decode()!r}, "
                             f"not {ident!r}; use another --cache-dir")
        self.instance_id = (self.journal.get_meta(b"instance") or b"").decode()
        if s.metrics_addr:
            host, _, port = s.metrics_addr.rpartition(":")
            from .metrics import Metrics  # (prometheus_client: only when asked for)

            self.metrics = Metrics()
            self.resources.callback(self.metrics.close)
            try:
                self.metrics.serve(host.strip("[]"), int(port))
            except OSError as exc:
                raise UsageError(f"cannot serve metrics at {s.metrics_addr}: "
                                 f"{exc.strerror or exc}") from None
            log.info("serving Prometheus metrics at http://%s/metrics", s.metrics_addr)

    def probe(self, kept: Capabilities | None) -> Capabilities:
        """What the server honours (in a worker thread): ``kept`` (the answer a
        previous mount found, see ``capcache``) while the bucket's versioning still
        reads as it did then, else a fresh probe. Raises TransientStoreError."""
        assert self.store is not None
        if kept is not None:
            try:
                if self.store.versioning() == kept.versioning:
                    return kept
            except TransientStoreError:
                raise
            except StoreError as exc:  # not allowed to ask: probe
                log.info("could not read the bucket's versioning (%s); probing", exc)
        try:
            return self.store.probe(probe_key(self.prefix))
        except TransientStoreError:
            raise
        except StoreError as exc:
            log.warning("could not probe server capabilities (%s); assuming none", exc)
            return Capabilities(conditional_put=False)

    async def _learn_capabilities(self, remote: Remote) -> None:
        """Find out what the server honours, after the mount is up (the probe used to
        be most of the mount's time); bucket writes wait for it (``Remote``). While the
        bucket cannot be reached it tries again, with backoff."""
        assert self.store is not None and self.journal is not None
        where = self.store.description
        kept = capcache.decode(self.journal.get_meta(capcache.KEY), where, time.time())
        delay = 1.0
        while True:
            try:
                caps = await trio.to_thread.run_sync(self.probe, kept,
                                                     abandon_on_cancel=True)
                break
            except TransientStoreError as exc:
                log.warning("could not probe the server's capabilities (%s); uploads wait "
                            "for it; trying again in %s", exc, duration(delay))
                await trio.sleep(delay)
                delay = min(delay * 2, 60.0)
        if caps is kept:
            log.info("server capabilities as probed before (bucket versioning still %s)",
                     caps.versioning)
        else:
            raw = capcache.encode(where, caps, time.time())
            if raw is not None:
                self.journal.set_meta(capcache.KEY, raw)
        if not caps.conditional_put:
            log.warning("the server ignores conditional PUTs: conflict detection with "
                        "outside writers is best-effort")
        remote.adopt_capabilities(caps)

    # --- running ----------------------------------------------------------------------
    def fuse_options(self) -> set[str]:
        s = self.settings
        opts = set(pyfuse3.default_options)
        opts.add(f"fsname={s.source}")
        opts.add("subtype=s3fuse")
        if s.allow_other:
            opts.add("allow_other")
        if s.read_only:
            opts.add("ro")  # the kernel refuses every change with EROFS
        opts.update(s.fuse_options)
        return opts

    async def main(self, ready: Callable[[], None]) -> int:
        """The composition root: build the mount's parts, serve until unmounted, drain.
        Whatever it opened is closed, in reverse order, on any failure or exit."""
        async with contextlib.AsyncExitStack() as stack:
            return await self._main(ready, stack)

    async def _main(self, ready: Callable[[], None], stack: contextlib.AsyncExitStack) -> int:
        s = self.settings
        assert self.store is not None and self.journal is not None
        remote = Remote(self.store, max_concurrency=max(16, s.max_uploads * 2),
                        metrics=self.metrics)
        remote.expect_capabilities()  # (``_learn_capabilities`` answers, once mounted)
        cache = Cache(s.cache_dir, s.cache_size_bytes)
        stack.callback(cache.close_all)
        fs = Filesystem(self.journal, cache, remote, self.prefix,
                        Defaults(uid=s.uid, gid=s.gid, file_mode=s.file_mode,
                                 dir_mode=s.dir_mode))
        fs.init()
        fs.metadata_ttl_s = s.metadata_ttl_s
        fs.discovery.types_from_listing = s.types_from_listing
        invalidations_in, self._invalidations = trio.open_memory_channel(10_000)

        def notify_kernel(entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
            try:
                invalidations_in.send_nowait((entries, inodes))
            except trio.WouldBlock:
                log.warning("too many kernel cache invalidations queued; dropping some")

        fs.notify_kernel = notify_kernel
        flusher = Flusher(fs.ns, fs.flusher_links(), s.flush_window_s, max_uploads=s.max_uploads,
                          fsync_upload=s.fsync_upload, instance_id=self.instance_id,
                          dirty_limit_bytes=s.cache_size_bytes)
        fs.flusher = flusher
        flusher.metrics = self.metrics
        flusher.load()
        self.fs, self.flusher = fs, flusher
        ops = FuseOps(fs, timeout_s=s.metadata_ttl_s, control=self, metrics=self.metrics)
        pyfuse3.init(ops, self.mountpoint, self.fuse_options())
        stack.callback(pyfuse3.close, unmount=True)
        log.info("mounted %s at %s (cache %s)", self.store.description, self.mountpoint,
                 s.cache_dir)
        ready()
        sd_notify("READY=1")
        pending_left = False
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._learn_capabilities, remote)
            await nursery.start(flusher.run)
            fs.fetcher.nursery = nursery  # read-ahead runs in the background
            nursery.start_soon(self._checkpoint)
            nursery.start_soon(self._signals)
            nursery.start_soon(Poller(fs.discovery, s.poll_interval_s).run)
            nursery.start_soon(self._invalidator)
            if self.metrics is not None:
                nursery.start_soon(self._sample_metrics, self.metrics)
            fs.meta_loads.nursery = nursery  # attribute prefetches run here
            await pyfuse3.main()
            sd_notify("STOPPING=1")
            if self._keep_pending:
                self._log_kept("unmounted without waiting for the bucket")
            else:
                log.info("unmounted; uploading what is pending")
                # after a signal's drain already waited its time, do not wait twice
                final_s = 1.0 if self._signal_drain_failed else s.drain_timeout_s
                pending_left = not await self._drain_logged(final_s, stopping=True)
            nursery.cancel_scope.cancel()
        return 1 if pending_left else 0

    def _pending_words(self) -> str:
        assert self.flusher is not None
        p = self.flusher.pending()
        return pending_words(p["dirty_files"], p["dirty_bytes"], p["pending_ops"])

    def _log_kept(self, why: str) -> None:
        assert self.flusher is not None
        p = self.flusher.pending()
        if p["dirty_files"] or p["pending_ops"]:
            log.warning("%s: %s stay pending in the journal; the next mount of this cache "
                        "directory uploads them", why, self._pending_words())
        else:
            log.info("%s; nothing was pending", why)

    async def _drain_logged(self, timeout_s: float, inos: list[int] | None = None,
                            stopping: bool = False, who: str = "a sync") -> bool:
        """``flusher.drain``, saying in the log what it waits for, every
        ``DRAIN_REPORT_S`` while it waits, and how it ended."""
        assert self.flusher is not None
        flusher = self.flusher
        before = flusher.pending()
        if before["dirty_files"] or before["pending_ops"]:
            log.info("uploading what is pending: %s", self._pending_words())

        async def report() -> None:
            started = trio.current_time()
            while True:
                await trio.sleep(DRAIN_REPORT_S)
                p = flusher.pending()
                last = p["last_error"]
                log.info("still uploading after %s: %s pending, %d uploading, %d waiting "
                         "to retry%s", duration(trio.current_time() - started),
                         self._pending_words(), p["uploads_in_flight"], p["retrying_files"],
                         f"; last error: {last['operation']} {last['path']}: "
                         f"{last['message']}" if last else "")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            ok = await flusher.drain(timeout_s, inos)
            nursery.cancel_scope.cancel()
        if ok:
            log.info("drained: everything is in the bucket")
        elif stopping:
            log.error("gave up waiting for the bucket after %s: %s stay pending in the "
                      "journal; the next mount of this cache directory uploads them",
                      duration(timeout_s), self._pending_words())
        else:
            log.warning("%s gave up waiting after %s: %s still pending; the mount keeps "
                        "retrying", who, duration(timeout_s), self._pending_words())
        return ok

    async def _sample_metrics(self, metrics: Metrics) -> None:
        """Copy the pending figures into the metrics' gauges, once a second."""
        assert self.flusher is not None and self.fs is not None
        while True:
            metrics.set_state(self.flusher.pending(), self.fs.cache.used_bytes,
                              self.fs.cache.limit_bytes)
            await trio.sleep(1.0)

    async def _invalidator(self) -> None:
        """Tell the kernel to forget cached names and pages the bucket changed. Done
        from here, never inside a request handler (that could deadlock the kernel)."""
        async for entries, inodes in self._invalidations:
            for parent, name in entries:
                try:
                    pyfuse3.invalidate_entry_async(parent, name)
                except Exception as exc:  # the kernel may not know it: fine
                    log.debug("invalidate entry %d/%r: %s", parent, name, exc)
            for ino in inodes:
                try:
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
                except OSError as exc:
                    log.debug("invalidate inode %d: %s", ino, exc)

    async def _checkpoint(self) -> None:
        assert self.journal is not None and self.fs is not None
        while True:
            await trio.sleep(CHECKPOINT_S)
            self.journal.sync()
            self.fs.cache.evict(lambda ino: self._evictable(ino))

    def _evictable(self, ino: int) -> bool:
        assert self.fs is not None
        if self.fs.open_count.get(ino):
            return False
        try:
            inode = self.fs.get(ino)
        except Exception:
            return True
        if inode.dirty or inode.links:
            return False  # (every name of a hard-linked file uploads from its cache file)
        if inode.cached:
            with self.fs.journal.write() as txn:
                fresh = txn.get(ino)
                if fresh is not None:
                    fresh.cached = False
                    txn.put(fresh)
        return True

    async def _signals(self) -> None:
        assert self._nursery is not None
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._stop_scope is None:
                    log.info("%s received: uploading what is pending (for up to %s), then "
                             "unmounting; send it again to unmount at once, keeping what "
                             "is pending in the journal", name,
                             duration(self.settings.drain_timeout_s))
                    self._stop_scope = trio.CancelScope()
                    self._nursery.start_soon(self._stop_after_drain, self._stop_scope)
                elif not self._keep_pending:
                    log.warning("%s received again: unmounting now", name)
                    self._keep_pending = True
                    self._stop_scope.cancel()

    async def _stop_after_drain(self, scope: trio.CancelScope) -> None:
        with scope:
            if not await self._drain_logged(self.settings.drain_timeout_s, stopping=True):
                self._signal_drain_failed = True
        pyfuse3.terminate()

    # --- control requests from the CLI (over xattrs on the mount's root) --------------
    def start_drain(self, value: bytes) -> None:
        """Start (or cancel) a drain asked for by ``s3fuse sync``/``umount``; returns at
        once. The value is JSON ``{"id": str, "timeout": seconds or null, "paths":
        [mount-relative paths] or null}``, or ``{"id": str, "cancel": true}``."""
        assert self.flusher is not None and self.fs is not None
        assert self._nursery is not None
        try:
            request = json.loads(value or b"{}")
        except ValueError:
            raise UsageError("a drain request must be JSON") from None
        if not isinstance(request, dict) or not isinstance(request.get("id"), str) \
                or not 0 < len(request["id"]) <= 64:
            raise UsageError("a drain request needs an id")
        drain_id = request["id"]
        if request.get("cancel"):
            job = self._drains.get(drain_id)
            if job is not None and job.scope is not None:
                job.scope.cancel()
            return
        timeout = self.settings.drain_timeout_s
        if request.get("timeout") is not None:
            timeout = parse_seconds(request["timeout"], "drain timeout")
        paths = request.get("paths")
        inos = self.fs.inodes_under([p.encode() for p in paths]) if paths else None
        # who asked, for the log: ``s3fuse umount`` or ``s3fuse sync``
        who = "s3fuse umount" if request.get("for") == "umount" else "s3fuse sync"
        job = DrainJob(timeout_s=timeout, started=trio.current_time(), who=who,
                       scope=trio.CancelScope())
        self._drains[drain_id] = job
        while len(self._drains) > KEPT_DRAINS:
            self._drains.popitem(last=False)
        self._nursery.start_soon(self._run_drain, job, inos)

    async def _run_drain(self, job: DrainJob, inos: list[int] | None) -> None:
        assert job.scope is not None
        with job.scope:
            ok = await self._drain_logged(job.timeout_s, inos, who=job.who)
            job.state = "done" if ok else "gave_up"
        if job.scope.cancelled_caught:
            job.state = "cancelled"
            log.info("%s stopped waiting (Ctrl-C, or --keep-pending): %s still pending",
                     job.who, self._pending_words())
        job.ended = trio.current_time()
        job.scope = None

    def drain_result(self, drain_id: str) -> dict:
        """How the drain ``drain_id`` is doing: its state and the pending figures."""
        assert self.flusher is not None
        job = self._drains.get(drain_id)
        if job is None:
            raise UsageError(f"no drain {drain_id!r}")
        end = job.ended if job.ended is not None else trio.current_time()
        return {"state": job.state, "elapsed_s": end - job.started,
                "timeout_s": job.timeout_s, **self.flusher.pending()}

    def keep_pending(self, value: bytes = b"1") -> None:
        """``1``: the coming unmount does not wait for the bucket (``umount
        --keep-pending``); ``0``: it does again (that unmount failed)."""
        self._keep_pending = value.strip() != b"0"
        if not self._keep_pending:
            return
        for job in self._drains.values():
            if job.scope is not None:
                job.scope.cancel()
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    def status(self) -> dict:
        assert self.flusher is not None and self.fs is not None
        pending = self.flusher.pending()
        caps = self.fs.remote.capabilities  # (a refusal may have probed again)
        return {
            **pending,
            "conflicts": list(self.fs.reconciler.conflicts),
            "not_exported": self.fs.not_exported_paths(),
            "skipped_keys": [{"key": k, "reason": r} for k, r in self.fs.skipped_keys.items()],
            "errors": [{"time": e.when, "path": e.path, "operation": e.operation,
                        "message": e.message} for e in self.flusher.errors],
            "cache_bytes": self.fs.cache.used_bytes,
            "cache_limit_bytes": self.fs.cache.limit_bytes,
            "capabilities": {"conditional_put": caps.conditional_put,
                             "conditional_copy": caps.conditional_copy,
                             "conditional_delete": caps.conditional_delete,
                             # the probe has not answered yet (uploads wait for it)
                             "pending": self.fs.remote.capabilities_pending},
            "requests": dict(self.flusher.counts),
            "fork": fork_status(self.fs.remote.store),  # DEST of a fork in progress
            "source": self.settings.source,
            # what a command needs to reach the bucket as the mount does (never
            # credentials: the command uses the user's own AWS chain)
            "endpoint_url": self._endpoint_for_status(),
            "region": self.settings.region,
            # the id in the s3fuse-seq tag of this mount's uploads (s3fuse history)
            "journal_id": self.instance_id,
            "mountpoint": self.mountpoint,
            "cache_dir": self.settings.cache_dir,
            "drain_timeout_s": self.settings.drain_timeout_s,
            "read_only": self.settings.read_only,
            "pid": os.getpid(),
        }

    def _endpoint_for_status(self) -> str | None:
        """The endpoint without any user:password part an URL may carry (the status
        is readable by whoever may read the mount's root)."""
        if not self.settings.endpoint_url:
            return None
        from .store.s3 import safe_endpoint

        return safe_endpoint(self.settings.endpoint_url)

    def status_json(self) -> str:
        """The status as JSON that fits in one extended attribute (the kernel's
        limit is 64 KiB): the longest lists keep their newest entries, and
        ``<list>_total`` says how many there are in all. (allow_nan=False: a figure
        that is not finite is a bug to hear about, never output that JSON parsers
        refuse.)"""
        status = self.status()
        for name in STATUS_LISTS:
            status[f"{name}_total"] = len(status[name])
        text = json.dumps(status, sort_keys=True, allow_nan=False)
        while len(text.encode()) > STATUS_MAX_BYTES:
            longest = max(STATUS_LISTS, key=lambda n: len(status[n]))
            if not status[longest]:
                break
            status[longest] = status[longest][len(status[longest]) // 2:]
            text = json.dumps(status, sort_keys=True, allow_nan=False)
        return text

    def drain_result_json(self, drain_id: str) -> str:
        return json.dumps(self.drain_result(drain_id), sort_keys=True, allow_nan=False)


#: the lists in the status, and how large its JSON may be (an xattr value: 64 KiB)
STATUS_LISTS = ("conflicts", "not_exported", "skipped_keys", "errors")
STATUS_MAX_BYTES = 60_000


def run(settings: Settings, ready: Callable[[], None]) -> int:
    """Check, mount and serve until unmounted. Raises UsageError before mounting."""
    daemon = Daemon(settings)
    with daemon.resources:  # closes whatever was opened, however it ends
        daemon.prepare()
        return trio.run(daemon.main, ready)
