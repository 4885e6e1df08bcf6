"""Run a function as another user: in a forked child with that user's ids.

Used by the tests that check permissions through ``--allow-other`` mounts: the
child takes the uid, gid and supplementary groups, runs the function, and pickles
what it returned (or its traceback) back to the parent through a pipe.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable

CHILD_TIMEOUT_S = 60


def run_as(ids: tuple[int, int, list[int]], label: str, fn: Callable, *args,
           umask: int = 0o022) -> object:
    """``fn(*args)`` with ``ids`` = (uid, gid, groups); returns what it returned (it
    must pickle). ``label`` names the user in failure messages."""
    uid, gid, groups = ids
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            try:
                result = ("ok", fn(*args))
            except BaseException:  # noqa: BLE001 - reported to the parent
                result = ("error", traceback.format_exc())
            data = pickle.dumps(result)
            while data:
                data = data[os.write(w, data):]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"{fn.__name__} as {label} did not finish in time")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError(f"{fn.__name__} as {label}: the child died before answering "
                             f"(could it take the user's ids?)")
    status, value = pickle.loads(b"".join(chunks))
    if status != "ok":
        raise AssertionError(f"{fn.__name__} as {label} raised:\n{value}")
    return value
