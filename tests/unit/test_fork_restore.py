"""fork's bookkeeping on the in-memory store (fast; the real runs are in
tests/fuse/test_timetravel.py): the record, resuming after a crash midway without
copying twice, leaving alone what someone changed in DEST, refusing a DEST in use.
And restore's plan never names a path outside the mount."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from s3fuse import workspace
from s3fuse.errors import UsageError
from s3fuse.fork import FORK_RECORD, Side, fork
from s3fuse.snapshots import pinned
from s3fuse.store.memory import MemoryStore


class Crash(Exception):
    pass


class CrashingStore(MemoryStore):
    """Copies fail with Crash after ``allowed`` of them."""

    allowed = 10**9

    def copy_version(self, *args, **kwargs):
        if self.allowed <= 0:
            raise Crash
        self.allowed -= 1
        return super().copy_version(*args, **kwargs)


@pytest.fixture
def store() -> CrashingStore:
    s = CrashingStore(f"fork-{uuid.uuid4().hex}")
    s.enable_versioning()
    for i in range(30):
        s.put(f"ws/f{i:02d}", f"v1 {i}".encode(), {"mode": "33188"})
    s.put("ws/d/", b"", {})
    s.put("ws/.s3fuse/snapshots/x.json", b"{}", {})  # a record: never forked
    return s


def sides(store: MemoryStore) -> tuple[Side, Side]:
    return (Side(store, "b", "ws/", "memory://b/ws"), Side(store, "b", "new/", "memory://b/new"))


def test_fork_copies_every_pinned_version_and_writes_its_record(store) -> None:
    at = max(v.mtime_ns for v in store.list_versions("ws/").versions)
    pins = pinned(store, "ws/", at_ns=at)
    store.put("ws/f00", b"v2", {})  # after the point: not forked
    source, dest = sides(store)
    report = fork(source, dest, {"at": "T"}, pins, jobs=4)
    assert (report.copied, report.present, report.resumed) == (31, 0, False)
    assert store.get("new/f00") == b"v1 0" and store.get("new/d/") == b""
    assert store.head("new/f01").metadata == {"mode": "33188"}
    record = json.loads(store.get("new/" + FORK_RECORD))
    assert record["finished"] and len(record["objects"]) == 31
    assert record["source"] == {"bucket": "b", "prefix": "ws/"}
    assert not [k for k in store.snapshot() if k.startswith("new/.s3fuse/snapshots")]


def test_a_fork_crashed_midway_resumes_and_leaves_dest_changes_alone(store) -> None:
    at = max(v.mtime_ns for v in store.list_versions("ws/").versions)
    pins = pinned(store, "ws/", at_ns=at)
    source, dest = sides(store)
    store.allowed = 12
    with pytest.raises(Crash):
        fork(source, dest, {"at": "T"}, pins, jobs=1)
    assert json.loads(store.get("new/" + FORK_RECORD))["finished"] is None
    assert len([k for k in store.snapshot()
                if k.startswith("new/") and not k.startswith("new/.s3fuse/")]) == 12
    copied = sorted(k for k in store.snapshot() if k.startswith("new/f"))
    store.put(copied[0], b"changed in DEST", {})
    store.delete(copied[1])  # deleted in DEST: a versioned DEST remembers it had it
    store.allowed = 10**9
    report = fork(source, dest, {"at": "T"}, pins, jobs=3)
    assert report.resumed and report.copied == 31 - 12 and report.present == 12
    assert store.get(copied[0]) == b"changed in DEST"
    assert copied[1] not in store.snapshot()
    assert all(store.get(f"new/f{i:02d}") == f"v1 {i}".encode()
               for i in range(30) if f"new/f{i:02d}" not in copied[:2])


def test_a_dest_in_use_or_holding_another_fork_is_refused(store) -> None:
    at = max(v.mtime_ns for v in store.list_versions("ws/").versions)
    pins = pinned(store, "ws/", at_ns=at)
    source, dest = sides(store)
    store.put("new/mine", b"x", {})
    with pytest.raises(UsageError, match="not empty"):
        fork(source, dest, {"at": "T"}, pins)
    store.delete("new/mine")
    other = Side(store, "b", "other/", "memory://b/other")
    fork(source, other, {"at": "T"}, pins)
    fewer = dict(list(pins.items())[:5])
    with pytest.raises(UsageError, match="another fork"):
        fork(source, other, {"at": "T"}, fewer)


def test_restore_plans_no_path_outside_the_mount() -> None:
    from s3fuse.restore import plan
    from s3fuse.timeline import Pinned

    target = {k: Pinned(k, "v", "e", 0, 0) for k in
              ("a/b", "../../etc/passwd", "x//y", "./z", "d/", "ok/../../up")}
    wants, skipped = plan(target, "")
    assert set(wants) == {"a", "a/b", "d"}
    assert sorted(skipped) == sorted(["../../etc/passwd", "x//y", "./z", "ok/../../up"])


def test_run_parallel_goes_on_up_after_ctrl_c_without_waiting_for_what_runs() -> None:
    """A KeyboardInterrupt (here raised by the progress callback) leaves
    ``run_parallel`` and ``parallel`` within STOP_GRACE_S although an item is stuck,
    cancels what has not started, and marks the process as one to end at once."""
    release = threading.Event()
    started: list[int] = []

    def stuck(i: int) -> None:
        started.append(i)
        release.wait(30)

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt

    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), workspace.parallel(2) as pool:
            workspace.run_parallel(pool, stuck, range(100), interrupt)
        assert time.monotonic() - t0 < workspace.STOP_GRACE_S + 3
        assert workspace._stopped.is_set()
        assert len(started) <= 2  # the other 98 were cancelled
    finally:
        release.set()
        workspace._stopped.clear()  # (this process goes on: the other tests)


def test_run_parallel_reports_every_item_done() -> None:
    seen: list[int] = []
    calls: list[int] = []
    with workspace.parallel(4) as pool:
        workspace.run_parallel(pool, seen.append, range(500), calls.append)
    assert sorted(seen) == list(range(500)) and calls[-1] == 500
    assert not workspace._stopped.is_set()
