"""Test-only fault injection, driven by the ``S3FUSE_TEST_FAULTS`` environment variable.

Comma-separated entries:

``crash@POINT``      ``os._exit(137)`` when the daemon reaches POINT (the first time)
``crash@POINT#N``    ... the N-th time it reaches POINT
``raise@HANDLER``    the FUSE handler HANDLER (``getattr``, ``read``...) raises
                     RuntimeError, to exercise the "unexpected exception -> EIO" edge
``sleep@POINT=S``    sleep S seconds each time POINT is reached
``hold@POINT=PATH``  wait at POINT while the file PATH exists (at most 5 minutes)

Wait points: ``fork-copy``, before each of ``s3fuse fork``'s copies (so a test can
use DEST midway); ``bucket-work``, before each upload and each op (copy, delete) the
flusher starts (so a test can make several changes before any of them reaches the
bucket, whatever the timing: a crash point is then reached after them all);
``listing``, before each listing of a directory (or subtree) the mount asks for (so a
test can make a directory slow to list, as thousands of entries on a loaded server are).

Crash points, each a moment the crash tests kill the daemon at:

``before-put``       an upload is about to be sent
``after-put``        the object is in the bucket, the journal does not know yet
``after-copy``       a rename's server-side copy is done, its delete is not
``before-delete``    a delete op is about to be sent
``mid-rename``       inside a rename's journal transaction, before it commits
``mid-exchange``     inside a RENAME_EXCHANGE's journal transaction, before it commits

Unset (always, outside tests) this module does nothing but one dict lookup.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "S3FUSE_TEST_FAULTS"


def _parse(spec: str) -> tuple[dict[str, int], set[str], dict[str, float], dict[str, str]]:
    crashes: dict[str, int] = {}
    raises: set[str] = set()
    sleeps: dict[str, float] = {}
    holds: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        kind, _, target = item.partition("@")
        if kind == "crash":
            point, _, nth = target.partition("#")
            crashes[point] = int(nth) if nth else 1
        elif kind == "raise":
            raises.add(target)
        elif kind == "sleep":
            point, _, seconds = target.partition("=")
            sleeps[point] = float(seconds or 0)
        elif kind == "hold":
            point, _, path = target.partition("=")
            holds[point] = path
    return crashes, raises, sleeps, holds


_crashes, _raises, _sleeps, _holds = _parse(os.environ.get(ENV, ""))
_seen: dict[str, int] = {}


def wait_point(point: str) -> None:
    """Wait here, if a test asked for it (``sleep@POINT=S``, ``hold@POINT=PATH``)."""
    if point in _sleeps:
        time.sleep(_sleeps[point])
    if point in _holds:
        deadline = time.monotonic() + 300
        while os.path.exists(_holds[point]) and time.monotonic() < deadline:
            time.sleep(0.05)


async def await_point(point: str) -> None:
    """``wait_point`` for code on the daemon's event loop: waits without blocking it."""
    if point not in _sleeps and point not in _holds:
        return
    import trio  # (only here: the daemon's loop; the rest of this module needs none)

    if point in _sleeps:
        await trio.sleep(_sleeps[point])
    if point in _holds:
        hold = trio.Path(_holds[point])
        with trio.move_on_after(300):
            # (polled: the test that removes the file is another process)
            while await hold.exists():  # noqa: ASYNC110
                await trio.sleep(0.05)


def crash_point(point: str) -> None:
    """Exit on the spot, with no cleanup at all, if a test asked for it here."""
    if point not in _crashes:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == _crashes[point]:
        sys.stderr.write(f"s3fuse: test fault: crashing at {point}\n")
        sys.stderr.flush()
        os._exit(137)


def should_raise(handler: str) -> bool:
    return handler in _raises
