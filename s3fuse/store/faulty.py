"""A ``MemoryStore`` whose requests can be failed, held, slowed and traced: the one
fault store of the tests (a test asks for the faults it needs, instead of
subclassing the memory store).

* ``inject(kind, exc, times)`` (the memory store's own): the next requests of a kind
  raise ``exc``;
* ``hold(kind, after=False)``: requests of a kind wait at a gate (before their work,
  or after it with ``after``: their answer is then old when it arrives) until
  ``Gate.open``; ``Gate.entered`` is set once one waits; ``unhold`` stops holding;
* ``slow(kind, seconds)``: requests of a kind take ``seconds`` longer, and ``trace``
  records when each began and ended (``most_active``: how many overlapped at most);
* ``calls``: every request as (kind, key, detail), detail being a GET's range.

Requests count in ``counts`` as the memory store counts them. Held and slowed
requests wait outside the bucket's lock, in the caller's (worker) thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from s3fuse.store.memory import MemoryStore

T = TypeVar("T")


class Gate:
    """Where held requests wait."""

    def __init__(self, after: bool) -> None:
        self.after = after
        self.entered = threading.Event()
        self.opened = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        assert self.opened.wait(30), "gate never opened"

    def open(self) -> None:
        self.opened.set()


class FaultyStore(MemoryStore):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gates: dict[str, Gate] = {}
        self._slow: dict[str, float] = {}
        self._lock = threading.Lock()
        self.active = 0
        self.most_active = 0
        self.trace: list[tuple[str, str, str]] = []  # (begin|end, kind, key)
        self.calls: list[tuple[str, str, Any]] = []  # (kind, key, detail)

    # --- what a test asks for -----------------------------------------------------
    def hold(self, kind: str, after: bool = False) -> Gate:
        """Requests of ``kind`` wait at the returned gate until it opens."""
        gate = self._gates[kind] = Gate(after)
        return gate

    def unhold(self, kind: str) -> None:
        """Requests of ``kind`` that come from now on do not wait (open the gate to let
        those that wait go)."""
        self._gates.pop(kind, None)

    def slow(self, kind: str, seconds: float) -> None:
        """Requests of ``kind`` take ``seconds`` longer, and are traced."""
        self._slow[kind] = seconds

    # --- the requests -----------------------------------------------------------------
    def _around(self, kind: str, key: str, detail: Any, fn: Callable[[], T]) -> T:
        with self._lock:
            self.calls.append((kind, key, detail))
        gate = self._gates.get(kind)
        if gate is not None and not gate.after:
            gate.wait()
        delay = self._slow.get(kind)
        if delay is None:
            result = fn()
        else:
            with self._lock:
                self.active += 1
                self.most_active = max(self.most_active, self.active)
                self.trace.append(("begin", kind, key))
            try:
                time.sleep(delay)
                result = fn()
            finally:
                with self._lock:
                    self.active -= 1
                    self.trace.append(("end", kind, key))
        gate = self._gates.get(kind)  # (an after-gate is asked for when the work is done)
        if gate is not None and gate.after:
            gate.wait()
        return result

    def head(self, key, **kwargs):
        return self._around("head", key, None, lambda: super(FaultyStore, self).head(
            key, **kwargs))

    def get(self, key, start=0, end=None, **kwargs):
        return self._around("get", key, (start, end), lambda: super(FaultyStore, self).get(
            key, start, end, **kwargs))

    def put(self, key, body, metadata, **kwargs):
        return self._around("put", key, None, lambda: super(FaultyStore, self).put(
            key, body, metadata, **kwargs))

    def copy(self, src_key, dst_key, metadata=None, **kwargs):
        return self._around("copy", src_key, dst_key, lambda: super(FaultyStore, self).copy(
            src_key, dst_key, metadata, **kwargs))

    def delete(self, key, **kwargs):
        return self._around("delete", key, None, lambda: super(FaultyStore, self).delete(
            key, **kwargs))
