"""The object store seen from the event loop: every call runs in a worker thread.

A ``CapacityLimiter`` bounds how many store calls run at once (and so how many
threads and connections). Foreground reads retry transient errors a few times with
backoff before answering EIO; the flusher does its own, longer, retrying (both as
``retry`` says: the one policy, with its budgets).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar
from collections.abc import Callable

import trio

from . import retry
from .errors import NoSuchKey, StoreError
from .keys import RESERVED_ROOT_NAME
from .store.base import Body, Capabilities, ListPage, ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
RESERVED = RESERVED_ROOT_NAME.decode()


def probe_key(prefix: str) -> str:
    """A fresh scratch key for ``ObjectStore.probe`` under the mounted prefix, below
    the reserved ``.s3fuse`` name, which no listing of the mount shows: the probe runs
    while the mount is up (``Daemon._learn_capabilities``, ``Remote.reprobe``)."""
    return f"{prefix}{RESERVED}/.s3fuse-probe-{uuid.uuid4().hex[:8]}"


class Remote:
    def __init__(self, store: ObjectStore, max_concurrency: int = 16,
                 read_attempts: int = retry.FOREGROUND_ATTEMPTS, inline: bool = False,
                 metrics: Metrics | None = None) -> None:
        """``inline``: call the store on the event loop itself. Only for in-memory
        stores in unit tests, where it makes trio's MockClock deterministic."""
        self.store = store
        self.inline = inline
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.read_attempts = read_attempts
        # what the server honours (the daemon's probe, or its kept answer, right after
        # the mount is up: ``adopt_capabilities``; ``reprobe`` after a refusal the
        # bucket's state does not explain): owned here
        self.capabilities = Capabilities()
        # set while the daemon's probe has not answered yet (``expect_capabilities``):
        # every bucket write waits for it (``capabilities_known``, at the start of
        # each flusher round), so no upload decides on the default answer
        self._capabilities_pending: trio.Event | None = None
        self._reprobing = trio.Lock()
        self.metrics = metrics  # counts and times every store call, when set
        # trio time of the last read that failed for want of the bucket (None: the last
        # one worked): while it is recent, reads try once instead of backing off, so
        # that each request of the mount does not wait seconds for a bucket known away
        self.unreachable_at: float | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, abandon: bool = False,
                    **kwargs: Any) -> T:
        """``abandon``: a cancelled caller returns at once, and the request's answer,
        when it comes, is dropped (only for requests that change nothing)."""
        if self.inline:
            await trio.lowlevel.checkpoint()
            return fn(*args, **kwargs)
        call = functools.partial(fn, *args, **kwargs)
        if self.metrics is None:
            return await trio.to_thread.run_sync(call, limiter=self.limiter,
                                                 abandon_on_cancel=abandon)
        metrics = self.metrics

        def timed() -> T:  # in the worker thread: the time is the request's own
            start = time.perf_counter()
            try:
                result = call()
            except BaseException as exc:
                metrics.s3_request(fn.__name__, time.perf_counter() - start, exc)
                raise
            metrics.s3_request(fn.__name__, time.perf_counter() - start)
            return result

        return await trio.to_thread.run_sync(timed, limiter=self.limiter,
                                             abandon_on_cancel=abandon)

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read-only call, retried on transient errors with backoff (once only while
        the bucket is known to be away: see ``unreachable_at``). A caller may give up
        on it (a cancel scope): it changes nothing in the bucket."""
        delay = retry.FOREGROUND_FIRST_DELAY_S
        attempts = self.read_attempts
        if self.unreachable_at is not None \
                and trio.current_time() - self.unreachable_at < retry.OUTAGE_MEMORY_S:
            attempts = 1
        for attempt in range(attempts):
            try:
                result = await self._call(fn, *args, abandon=True, **kwargs)
                self.unreachable_at = None
                return result
            except StoreError as exc:
                if not retry.is_temporary(exc):
                    self.unreachable_at = None  # it answered (404, 412, ...)
                    raise
                if attempt == attempts - 1:
                    self.unreachable_at = trio.current_time()
                    raise
                # the caller logs the error if the last attempt fails too
                log.debug("retrying after transient error: %s", exc)
                if self.metrics is not None:
                    self.metrics.retry("read")
                await trio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def read_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any read-only call of the store (``store.head``, ``store.list_versions``,
        ...) with the foreground retries above: for the read-only views."""
        return await self._read(fn, *args, **kwargs)

    def expect_capabilities(self) -> None:
        """The probe runs after the mount is up: bucket writes wait for its answer."""
        if self._capabilities_pending is None:
            self._capabilities_pending = trio.Event()

    def adopt_capabilities(self, caps: Capabilities) -> None:
        """The probe's answer (or its kept copy): writes may go ahead with it."""
        self.capabilities = caps
        pending, self._capabilities_pending = self._capabilities_pending, None
        if pending is not None:
            pending.set()

    @property
    def capabilities_pending(self) -> bool:
        return self._capabilities_pending is not None

    async def capabilities_known(self) -> None:
        """Return once the server's capabilities are known (at once when no probe is
        pending). Called before anything is written to the bucket."""
        pending = self._capabilities_pending
        if pending is not None:
            await pending.wait()

    async def reprobe(self, prefix: str) -> bool:
        """The server refused an If-Match PUT although the bucket holds that ETag: it
        may have stopped honouring the condition on this bucket (Ceph RGW 16 refuses
        every If-Match PUT once the bucket's versioning is turned on). Probe again and
        adopt the answer; True if conditional PUTs are off now, so the next attempt
        takes the fallback (a HEAD, then an unconditional PUT). Concurrent callers
        share one probe."""
        if not self.capabilities.conditional_put:
            return True  # another refusal's probe found it already
        async with self._reprobing:
            if not self.capabilities.conditional_put:
                return True
            try:
                caps = await self._call(self.store.probe, probe_key(prefix))
            except StoreError as exc:
                log.info("could not probe the server's capabilities again (%s)", exc)
                return False
            if caps.conditional_put:
                return False
            self.capabilities = caps
            log.warning("the server no longer honours conditional PUTs on this bucket "
                        "(was its versioning turned on?): conflict detection with outside "
                        "writers is best-effort from now on")
            return True

    async def head(self, key: str) -> ObjectInfo:
        return await self._read(self.store.head, key)

    async def head_or_none(self, key: str) -> ObjectInfo | None:
        """``head``, with None for a key the bucket does not hold."""
        try:
            return await self.head(key)
        except NoSuchKey:
            return None

    async def get(self, key: str, start: int = 0, end: int | None = None, *,
                  if_match: str | None = None) -> bytes:
        return await self._read(self.store.get, key, start, end, if_match=if_match)

    async def list_all(self, prefix: str, delimiter: str | None = "/") -> ListPage:
        """Every page of a listing, merged."""
        merged = await self.list_upto(prefix, delimiter, None)
        assert merged is not None
        return merged

    async def list_upto(self, prefix: str, delimiter: str | None, max_pages: int | None
                        ) -> ListPage | None:
        """Every page of a listing, merged, or None once it has taken ``max_pages``
        pages and more are left (None: no bound)."""
        merged = ListPage()
        token = None
        pages = 0
        while True:
            if max_pages is not None and pages >= max_pages:
                return None
            page = await self._read(self.store.list, prefix, delimiter, token)
            pages += 1
            merged.objects.extend(page.objects)
            merged.prefixes.extend(page.prefixes)
            token = page.next_token
            if token is None:
                return merged

    async def put(self, key: str, body: Body, metadata: dict[str, str], *,
                  if_match: str | None = None, if_none_match: bool = False,
                  unchanged: Callable[[], bool] | None = None) -> str:
        return await self._call(self.store.put, key, body, metadata, if_match=if_match,
                                if_none_match=if_none_match, unchanged=unchanged)

    async def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None, *,
                   src_if_match: str | None = None) -> str:
        return await self._call(self.store.copy, src, dst, metadata, src_if_match=src_if_match)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        if not self.capabilities.conditional_delete:
            if_match = None
        await self._call(self.store.delete, key, if_match=if_match)
