"""How the time-travel commands (``history``, ``restore``, ``snapshot``, ``fork``)
reach a bucket, and how they show progress.

A command given a path on a mount asks the running daemon for its status (the
``user.s3fuse.status`` control attribute on the mount's root): the source URL, the
endpoint, the region and the journal id. It then opens its own store client on that
source (``open_mount``), with the user's usual credentials: the same AWS chain
(environment, profile, instance role) the mount used when started by the same user.
No credential ever passes through the mount. ``fork`` with ``s3://`` URLs opens its
stores from the URLs and ``--endpoint-url`` (``open_url``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from . import timeline, words
from .control import CONTROL_PID, CONTROL_STATUS
from .errors import StoreError, UsageError
from .store import ObjectStore, open_store

T = TypeVar("T")


@dataclass
class Workspace:
    """A mounted prefix seen directly in the bucket, for one command."""

    mountpoint: str
    status: dict
    store: ObjectStore
    prefix: str

    @property
    def journal_id(self) -> str:
        return str(self.status.get("journal_id") or "")

    @property
    def where(self) -> str:
        return f"{self.status['source']} (mounted at {self.mountpoint})"

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def close(self) -> None:
        self.store.close()


def find_mount(path: str) -> tuple[str, str]:
    """``(mount point, path relative to it)`` for ``path`` on an s3fuse mount. The
    path itself need not exist (a deleted file, an ``rm -rf``'d tree). Paths under
    the reserved ``.s3fuse`` are refused; the root's relative path is ""."""
    full = os.path.abspath(path)
    root = full
    while not os.path.ismount(root):
        parent = os.path.dirname(root)
        if parent == root:
            break
        root = parent
    try:
        os.getxattr(root, CONTROL_PID)
    except OSError:
        raise UsageError(f"{full} is not on an s3fuse mount") from None
    rel = os.path.relpath(full, root) if full != root else ""
    if timeline.is_reserved(rel):
        raise UsageError(f"{full} is inside s3fuse's reserved {timeline.RESERVED} directory")
    return root, rel


def mount_status(mountpoint: str) -> dict:
    try:
        return json.loads(os.getxattr(mountpoint, CONTROL_STATUS))
    except OSError as exc:
        raise UsageError(f"no s3fuse mount at {mountpoint} ({exc.strerror})") from None
    except ValueError:
        raise UsageError(f"the daemon at {mountpoint} gave a status that is not JSON; "
                         "is it the same s3fuse version?") from None


def open_mount(mountpoint: str) -> Workspace:
    """The store behind the mount at ``mountpoint`` (see the module docstring)."""
    status = mount_status(mountpoint)
    if "journal_id" not in status:
        raise UsageError(f"the daemon at {mountpoint} is an older s3fuse; remount it to use "
                         "time travel")
    store, prefix = open_store(status["source"], endpoint_url=status.get("endpoint_url"),
                               region=status.get("region"))
    return Workspace(mountpoint, status, store, prefix)


def open_url(url: str, endpoint_url: str | None, region: str | None = None
             ) -> tuple[ObjectStore, str]:
    """A store and prefix for ``s3://BUCKET[/PREFIX]`` (or ``file:///PATH``), checked
    to be reachable (one line if not)."""
    store, prefix = open_store(url, endpoint_url=endpoint_url, region=region)
    try:
        store.check()
    except StoreError as exc:
        store.close()
        raise UsageError(str(exc)) from None
    return store, prefix


class Progress:
    """``LABEL: N of TOTAL`` for a long command. On a terminal: one line on stderr,
    rewritten in place at most 10 times a second; otherwise a line on stderr every
    2 s. Nothing for work that ends within the first second."""

    def __init__(self, label: str, total: int, unit: str = "entry") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = self.started
        self.drawn = False

    def show(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if now - self.started < 1 or now - self.last < (0.1 if self.tty else 2.0):
            return
        self.last = now
        line = (f"{self.label}: {done} of {words.plural(self.total, self.unit)}"
                f"{', ' + extra if extra else ''} [{words.duration(now - self.started)}]")
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns
            sys.stderr.write("\r" + line[:max(10, width - 1)] + "\x1b[K")
            self.drawn = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


#: after Ctrl-C (or a failure), how long ``run_parallel`` lets the items already
#: running finish before it goes on up without them
STOP_GRACE_S = 2.0

#: set by ``parallel`` (its only writer) when it is left with an exception: work may
#: still be running on its threads, and the process must not wait for them at its end
_stopped = threading.Event()


@contextmanager
def parallel(jobs: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``jobs`` threads, for ``run_parallel`` (or ``map``). Leaving it
    normally waits for its threads; leaving it with an exception does not
    (``run_parallel`` has waited ``STOP_GRACE_S`` already), and ``leave_if_stopped``
    then ends the process: Ctrl-C never waits for a request that a busy server is
    slow to answer, whatever botocore's retries and timeouts."""
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        yield pool
    except BaseException:
        _stopped.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_parallel(pool: ThreadPoolExecutor, fn: Callable[[T], None], items: Iterable[T],
                 progress: Callable[[int], None]) -> None:
    """``fn(item)`` for every item on ``pool`` (made by ``parallel``), calling
    ``progress(done)`` at least twice a second. The first exception (KeyboardInterrupt
    included) cancels what has not started, gives what runs already ``STOP_GRACE_S``
    to finish, and goes on up; an item still running then is left to run until the
    process ends (``leave_if_stopped``), so each ``fn`` must leave nothing that a rerun
    of its command cannot finish or undo.

    Completions come through a queue, not ``concurrent.futures.wait``: that one takes
    the lock of every pending future in turn, and a Ctrl-C landing between two of
    them leaves locks taken that a worker then waits for forever."""
    pending: set[Future] = set()
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    done = 0
    try:
        for item in items:
            future = pool.submit(fn, item)
            pending.add(future)
            future.add_done_callback(finished.put)
        while pending:
            try:
                future = finished.get(timeout=0.5)
                while True:
                    pending.discard(future)
                    future.result()
                    done += 1
                    future = finished.get_nowait()
            except queue.Empty:
                pass
            progress(done)
    except BaseException:
        for future in pending:
            future.cancel()
        wait(pending, timeout=STOP_GRACE_S)
        raise


def leave_if_stopped(code: int) -> None:
    """End the process now with ``code`` if a ``parallel`` pool was left early: the
    interpreter would otherwise wait at its end for the threads of the items left
    running (``concurrent.futures`` joins them), that is for requests that may take
    minutes. They are abandoned: each command's rerun finishes what they did not."""
    if _stopped.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
