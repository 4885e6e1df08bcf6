"""S3 wins under load (SPEC §4, §7): writers on the mount, outside writers and a
second mount of the same bucket act on a few shared files at the same time, with
the flush window, the metadata TTL and the poller at 1 s.

Every writer only ever *adds* a unique line (its token) to a file:

* on mount A: appends (``open(path, "a")``, one write, close) and rewrites in the
  style of an editor or a model download (read, write the old lines plus a new one
  to a temporary file, ``os.replace`` it over the path);
* on mount B (another cache directory, as on another host): appends;
* outside: a conditional read-modify-write through the store API (read the body and
  its ETag, PUT body + line with ``If-Match``; again on 412), as a pipeline would;
  and now and then a conditional delete (where the server honours ``If-Match`` on
  DELETE): the lines of the version it deleted are gone on purpose.

A's writers (and B's) take a lock per file among themselves, as one program would:
the races under test are between the mount's own machinery (flusher, poller,
close-to-open, fetcher), the other mount and the outside writer, never between two
writers of one mount that a local disk would not order either.

The rule checked: every acknowledged line ends in the bucket or in one of the
mounts' ``.s3fuse/lost+found`` copies; no write on a mount fails (no EIO); and once
everything is synced, each mount shows exactly what the bucket holds.

``S3FUSE_STRESS_S`` sets the seconds of load (default 15; run minutes by hand).
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from mounts import S3FUSE, Mount, is_mounted, make_mount, require_fuse

from s3fuse.errors import NoSuchKey, PreconditionFailed

DURATION_S = float(os.environ.get("S3FUSE_STRESS_S", "15"))
FILES = [f"c/f{i}" for i in range(6)]
FAST = ["--flush-window", "1", "--metadata-ttl", "1", "--poll-interval", "1"]


@dataclass
class Ledger:
    """What every writer was told succeeded, and what failed."""

    acked: dict[str, str] = field(default_factory=dict)  # token -> file
    deleted: set[str] = field(default_factory=set)  # lines of versions deleted outside
    errors: list[str] = field(default_factory=list)
    conflicts_outside: int = 0  # 412s the outside writer met
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, token: str, path: str) -> None:
        with self.lock:
            self.acked[token] = path

    def fail(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def _lines(body: bytes) -> set[str]:
    return {line for line in body.decode(errors="replace").split("\n") if line}


def _read_or_empty(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _mount_writer(m: Mount, name: str, ledger: Ledger, stop: threading.Event,
                  rewrites: bool, seed: int) -> None:
    rng = random.Random(seed)
    locks = {f: threading.Lock() for f in FILES}  # (one writer thread per mount)
    n = 0
    while not stop.is_set():
        rel = rng.choice(FILES)
        n += 1
        token = f"{name}-{n}"
        path = m.p(rel)
        with locks[rel]:
            try:
                if rewrites and rng.random() < 0.3:
                    old = _read_or_empty(path)
                    tmp = m.p(f"c/.tmp-{name}-{n}")
                    with open(tmp, "wb") as f:
                        f.write(old + f"{token}\n".encode())
                    os.replace(tmp, path)
                else:
                    with open(path, "a") as f:
                        f.write(f"{token}\n")
            except OSError as exc:
                ledger.fail(f"{name} {rel}: {errno.errorcode.get(exc.errno, exc.errno)} "
                            f"{exc}")
                continue
        ledger.ack(token, rel)
        time.sleep(rng.uniform(0, 0.02))


def _outside_writer(m: Mount, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    store, prefix = m.store()
    deletes = store.probe(prefix + ".s3fuse-probe-stress").conditional_delete
    n = 0
    try:
        while not stop.is_set():
            rel = rng.choice(FILES)
            n += 1
            token = f"out-{n}"
            if deletes and rng.random() < 0.05:
                try:
                    info = store.head(prefix + rel)
                    body = store.get(prefix + rel, if_match=info.etag)
                    store.delete(prefix + rel, if_match=info.etag)
                except (NoSuchKey, PreconditionFailed):
                    continue
                with ledger.lock:
                    ledger.deleted |= _lines(body)
                continue
            for _ in range(50):
                try:
                    info = store.head(prefix + rel)
                    body = store.get(prefix + rel, if_match=info.etag)
                    store.put(prefix + rel, body + f"{token}\n".encode(), {},
                              if_match=info.etag)
                except NoSuchKey:
                    try:
                        store.put(prefix + rel, f"{token}\n".encode(), {},
                                  if_none_match=True)
                    except PreconditionFailed:
                        ledger.conflicts_outside += 1
                        continue
                except PreconditionFailed:
                    ledger.conflicts_outside += 1
                    continue
                ledger.ack(token, rel)
                break
            time.sleep(rng.uniform(0, 0.05))
    finally:
        store.close()


def _lost_found_lines(m: Mount) -> set[str]:
    d = m.p(".s3fuse/lost+found")
    out: set[str] = set()
    if os.path.isdir(d):
        for name in os.listdir(d):
            out |= _lines(_read_or_empty(os.path.join(d, name)))
    return out


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def _status(m: Mount) -> dict:
    res = subprocess.run([S3FUSE, "status", "--json", m.path], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _mount_view(m: Mount) -> dict[str, bytes]:
    return {f"c/{n}": _read_or_empty(m.p(f"c/{n}")) for n in sorted(os.listdir(m.p("c")))
            if not n.startswith(".tmp-")}


@pytest.mark.timeout(DURATION_S + 300)
def test_concurrent_writers_never_lose_a_version(unmounted, tmp_path):
    require_fuse()
    a = unmounted
    a.extra_args += FAST
    (tmp_path / "b").mkdir()
    b = make_mount(tmp_path / "b", a.source, a.endpoint)
    b.extra_args += FAST
    a.mount()
    try:
        os.mkdir(a.p("c"))
        a.sync()
        b.mount()
        ledger = Ledger()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_mount_writer, args=(a, "a", ledger, stop, True, 1)),
            threading.Thread(target=_mount_writer, args=(b, "b", ledger, stop, False, 2)),
            threading.Thread(target=_outside_writer, args=(a, ledger, stop, 3)),
        ]
        for t in threads:
            t.start()
        time.sleep(DURATION_S)
        stop.set()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a writer hung"

        # settle: upload everything, let each side's poller see the other's changes
        for _ in range(2):
            for m in (a, b):
                m.sync()
            time.sleep(2.5)
        bucket = {k: v for k, v in a.objects().items()
                  if k.startswith("c/") and not k.endswith("/")
                  and not k.startswith("c/.tmp-")}
        kept = _lost_found_lines(a) | _lost_found_lines(b)
        in_bucket = set().union(*(_lines(v) for v in bucket.values())) if bucket else set()
        lost = sorted(t for t in ledger.acked
                      if t not in in_bucket and t not in kept and t not in ledger.deleted)
        conflicts = sum(_status(m)["conflicts_total"] for m in (a, b))
        print(f"\n{DURATION_S:.0f} s: {len(ledger.acked)} lines acknowledged, "
              f"{conflicts} conflicts kept in lost+found, {ledger.conflicts_outside} "
              f"outside 412s, {len(ledger.deleted)} lines deleted outside")
        assert not ledger.errors and not lost, (
            f"{len(ledger.errors)} writes failed on a mount: {sorted(set(ledger.errors))[:10]}"
            f"; {len(lost)} acknowledged lines lost: {lost[:20]}")
        assert not lost, f"{len(lost)} acknowledged lines lost: {lost[:20]}"
        for m in (a, b):
            agreed = _wait_for(lambda m=m: _mount_view(m) == bucket, timeout=20)
            assert agreed, (f"{m.path} does not show the bucket: "
                            f"{ {k: len(v) for k, v in _mount_view(m).items()} } vs "
                            f"{ {k: len(v) for k, v in bucket.items()} }")
        for m in (a, b):
            m.umount()  # and fsck: the journal agrees with the bucket
    finally:
        if is_mounted(b.path):
            b.cleanup()
