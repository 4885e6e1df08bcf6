"""``find`` over many small objects, with readdir's types as by default (``DT_UNKNOWN``
for objects under 4 KiB whose headers were not read, so ``find`` stats each: one HEAD)
and with ``--types-from-listing`` (they are called regular files until their
headers say otherwise), on a moto server this script starts.

Seeds ``--objects`` small objects (default 5,000) with s3fuse's attribute headers in
``--dirs`` directories (default 50), one symlink per directory among them, then for
each mode ``--rounds`` times: mounts afresh (a new cache directory: nothing known),
drops the kernel's caches and times ``find MOUNT``; then, on another fresh mount,
``find MOUNT -type l``, which shows what the fast mode trades: symlinks whose headers
were never read are not found by their d_type. Prints times and the store requests
each made (from the daemon's metrics).

Usage (root, on a host where ``bash scripts/install`` ran):

    .venv/bin/python scripts/find_cost.py [--objects 5000] [--dirs 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import stat
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import MotoServer, free_port  # noqa: E402
from views_latency import (S3FUSE, drop_caches, private_moto_env,  # noqa: E402
                           requests_made, run)

from s3fuse.store.s3 import S3Store  # noqa: E402

BUCKET = "find-cost"


def timed_find(endpoint: str, work: Path, types_from_listing: bool, *args: str
               ) -> tuple[float, int, dict[str, int]]:
    """Seconds of ``find MOUNT *args`` on a fresh mount, the lines it printed, and the
    store requests it made."""
    mp = Path(tempfile.mkdtemp(dir=work, prefix="mnt-"))
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    port = free_port()
    run([S3FUSE, "mount", f"s3://{BUCKET}/w", str(mp), "--cache-dir", str(cache),
         "--endpoint-url", endpoint, "--metrics-addr", f"127.0.0.1:{port}",
         *(["--types-from-listing"] if types_from_listing else [])])
    try:
        before = requests_made(port)
        drop_caches()
        t0 = time.perf_counter()
        out = run(["find", str(mp), *args], timeout=3600)
        took = time.perf_counter() - t0
        after = requests_made(port)
        made = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
        return took, len(out.splitlines()), made
    finally:
        run([S3FUSE, "umount", str(mp)])


def seed(endpoint: str, objects: int, dirs: int) -> None:
    store = S3Store(BUCKET, endpoint_url=endpoint)
    store._client.create_bucket(Bucket=BUCKET)
    meta = {"mode": str(stat.S_IFREG | 0o640), "uid": "0", "gid": "0",
            "mtime": "1700000000.000000000"}
    link = {**meta, "mode": str(stat.S_IFLNK | 0o777)}

    def one(i: int) -> None:
        d = i % dirs
        if i < dirs:  # the first object of each directory: a symlink to its neighbour
            store.put(f"w/d{d:04d}/link", f"f{i + dirs:06d}".encode(), link)
        else:
            store.put(f"w/d{d:04d}/f{i:06d}", b"x" * 20, meta)

    print(f"seeding {objects} objects in {dirs} directories ...", flush=True)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(objects)))
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=5000)
    ap.add_argument("--dirs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("find_cost: run as root (mounts, drop_caches)", file=sys.stderr)
        return 2
    private_moto_env("find-cost")
    with MotoServer() as moto, tempfile.TemporaryDirectory(prefix="find-cost-") as tmp:
        work = Path(tmp)
        seed(moto.endpoint, args.objects, args.dirs)
        for fast in (False, True):
            label = "--types-from-listing" if fast else "default"
            times = []
            for r in range(args.rounds):
                took, lines, made = timed_find(moto.endpoint, work, fast)
                times.append(took)
                print(f"{label} round {r + 1}: find {took:.2f} s, {lines} lines, {made}",
                      flush=True)
            took, lines, made = timed_find(moto.endpoint, work, fast, "-type", "l")
            print(f"{label}: find -type l, cold: {took:.2f} s, {lines} of {args.dirs} "
                  f"symlinks found, {made}", flush=True)
            print(f"{label}: find median {statistics.median(times):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
