"""How long an outside change takes to show on a mount, with the default settings.

Mounts SOURCE (default: a fresh ``file://`` store in a temporary directory) at a
temporary mount point with s3fuse's defaults (``--metadata-ttl 1``,
``--poll-interval 30``), then, ``--rounds`` times each, changes the bucket directly
(through the store API, as another tool would) and measures how long the mount takes
to show it, as programs look:

Each change is made right after the mount last looked at the path, the worst case
for close-to-open (what the mount saw is as fresh as it gets).

* create: ``stat(path)`` until it exists;
* change: ``open`` + ``read`` until the new bytes come back;
* delete, seen by ``open``: ``open(path)`` until it fails with ENOENT;
* delete, seen by ``stat``: ``stat(path)`` until it fails (no open: only the poller).

Usage (root, on a host where ``bash scripts/install`` ran):

    .venv/bin/python scripts/outside_latency.py [--rounds 5] [--source s3://BUCKET/PREFIX
        --endpoint-url http://127.0.0.1:9000]

Each wait gives up after ``--give-up`` seconds (default 45) and says so.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from s3fuse.store import open_store

S3FUSE = os.path.join(os.path.dirname(sys.executable), "s3fuse")


def wait(pred: Callable[[], bool], give_up: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < give_up:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False


def reads(path: str, want: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == want
    except OSError:
        return False


def opens(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except FileNotFoundError:
        return False


def gone_for_open(path: str) -> bool:
    return not opens(path)


def gone_for_stat(path: str) -> bool:
    return not exists(path)


def measure(results: dict[str, list[float | None]], what: str, seen: Callable[[], bool],
            give_up: float) -> None:
    results.setdefault(what, []).append(wait(seen, give_up))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source")
    ap.add_argument("--endpoint-url")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--give-up", type=float, default=45.0)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="s3fuse-latency-")
    source = args.source
    if source is None:
        os.mkdir(os.path.join(work, "bucket"))
        source = f"file://{work}/bucket"
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    cmd = [S3FUSE, "mount", source, mnt, "--cache-dir", os.path.join(work, "cache")]
    if args.endpoint_url:
        cmd += ["--endpoint-url", args.endpoint_url]
    subprocess.run(cmd, check=True, timeout=120)
    store, prefix = open_store(source, endpoint_url=args.endpoint_url)
    results: dict[str, list[float | None]] = {}
    try:
        os.mkdir(os.path.join(mnt, "d"))
        subprocess.run([S3FUSE, "sync", mnt], check=True, timeout=120,
                       stdout=subprocess.DEVNULL)
        for r in range(args.rounds):
            key, path = f"{prefix}d/f{r}", os.path.join(mnt, "d", f"f{r}")
            key2, path2 = f"{prefix}d/g{r}", os.path.join(mnt, "d", f"g{r}")
            os.listdir(os.path.join(mnt, "d"))  # the directory is in use, as a program's
            # each change comes right after the mount last looked (the worst case:
            # what the mount saw is as fresh as it gets)
            exists(path)
            store.put(key, b"one", {})
            measure(results, "create (stat)", functools.partial(exists, path), args.give_up)
            reads(path, b"one")  # (its bytes are cached now)
            store.put(key, b"two", {})
            measure(results, "change (open+read)", functools.partial(reads, path, b"two"),
                    args.give_up)
            store.delete(key)
            measure(results, "delete (open)", functools.partial(gone_for_open, path),
                    args.give_up)
            store.put(key2, b"x", {})
            wait(functools.partial(exists, path2), args.give_up)
            store.delete(key2)
            measure(results, "delete (stat)", functools.partial(gone_for_stat, path2),
                    args.give_up)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        store.close()
        subprocess.run([S3FUSE, "umount", mnt], timeout=300, check=False)
    print(f"{'outside change':22} {'median s':>9} {'max s':>7}  (n={args.rounds}, {source})")
    for what, times in results.items():
        done = [t for t in times if t is not None]
        if len(done) < len(times):
            print(f"{what:22} {len(times) - len(done)} of {len(times)} not seen within "
                  f"{args.give_up:.0f} s")
        if done:
            print(f"{what:22} {statistics.median(done):9.2f} {max(done):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
