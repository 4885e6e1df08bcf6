"""What time travel costs on moto: a snapshot of an N-file workspace, and a fork of it.

Starts its own moto server on 127.0.0.1 (tests/servers.py), makes a versioned bucket,
writes N small objects under ``ws/`` (default 10,000), then measures:

* ``snapshot``: ``snapshots.create`` as ``s3fuse snapshot create`` runs it after its
  sync barrier (the versioning check, the version listing, the record's PUT, the
  lifecycle check): seconds and S3 requests by kind;
* ``snapshot (CLI)``: the whole ``s3fuse snapshot create`` through a real mount of the
  prefix (process start, status, the drain with nothing pending, the above), as root
  with /dev/fuse only (skipped otherwise);
* ``fork``: ``fork.fork`` of that snapshot into ``forked/`` (another prefix of the
  bucket): seconds to finish, copies per second, S3 requests.
* ``DEST usable``: from starting ``s3fuse fork`` of the snapshot into ``usable/`` to
  the first ``ls`` of a mount of DEST that shows the whole tree (the fork's record
  written, the mount up, the listing merged with the keys not copied yet), as root
  with /dev/fuse only; the fork is stopped (Ctrl-C) once it is measured. Its
  baseline: ``s3fuse mount`` of the workspace itself and its first ``ls``, in the
  same run (a mount's start-up costs the same on DEST: on moto, its capability
  probe's version listing takes seconds in a bucket of many versions).

Baselines of the same run, for ratios: the N PUTs that made the workspace (the
server's write pace, which a fork's copies cannot beat) and one plain listing of the
prefix (ListObjectsV2, the floor for anything that lists it: moto answers every page
in time proportional to the whole bucket).

Usage (as root, in a tree where ``bash scripts/install`` ran):

    .venv/bin/python scripts/timetravel_bench.py [--files 10000] [--jobs 32] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from servers import MotoServer  # noqa: E402

from s3fuse import snapshots  # noqa: E402
from s3fuse.errors import NoSuchKey  # noqa: E402
from s3fuse.fork import FORK_RECORD, Side, fork  # noqa: E402
from s3fuse.store.s3 import S3Store  # noqa: E402

S3FUSE = os.path.join(os.path.dirname(sys.executable), "s3fuse")


def counting(store: S3Store) -> collections.Counter:
    """Count the store's requests by operation name (botocore's before-send event)."""
    counts: collections.Counter = collections.Counter()

    def seen(event_name: str = "", **_kw) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    store._client.meta.events.register("before-send.s3", seen)  # noqa: SLF001
    return counts


def populate(store: S3Store, prefix: str, files: int, jobs: int) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda i: store.put(f"{prefix}d{i % 100:02d}/f{i:05d}",
                                          f"file {i}\n".encode(), {"mode": "33188"}),
                      range(files)))


def cli_snapshot(endpoint: str, bucket: str) -> float | None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        mp, cache = os.path.join(tmp, "mnt"), os.path.join(tmp, "cache")
        os.mkdir(mp)
        subprocess.run([S3FUSE, "mount", f"s3://{bucket}/ws", mp, "--cache-dir", cache,
                        "--endpoint-url", endpoint], check=True, capture_output=True,
                       timeout=60)
        try:
            started = time.monotonic()
            subprocess.run([S3FUSE, "snapshot", "create", mp, "cli"], check=True,
                           capture_output=True, timeout=300)
            return time.monotonic() - started
        finally:
            subprocess.run([S3FUSE, "umount", mp], capture_output=True, timeout=120,
                           check=False)


def mount_and_ls(endpoint: str, source: str, dirs: set[str], started: float,
                 tmp: str) -> tuple[float, float]:
    """Mount ``source`` and wait for an ``ls`` showing ``dirs``: the seconds since
    ``started`` when the mount was up, and when the ``ls`` showed them; unmounts."""
    mp, cache = os.path.join(tmp, "mnt"), os.path.join(tmp, "cache")
    os.mkdir(mp)
    subprocess.run([S3FUSE, "mount", source, mp, "--cache-dir", cache, "--endpoint-url",
                    endpoint], check=True, capture_output=True, timeout=120)
    mounted = time.monotonic() - started
    try:
        while not dirs <= set(os.listdir(mp)):
            if time.monotonic() - started > 180:
                raise RuntimeError(f"the mount of {source} never showed the tree")
            time.sleep(0.01)
        return mounted, time.monotonic() - started
    finally:
        subprocess.run([S3FUSE, "umount", mp], capture_output=True, timeout=120,
                       check=False)


def dest_usable(endpoint: str, bucket: str, dirs: set[str]) -> dict | None:
    """Seconds from starting ``s3fuse fork`` to the first ``ls`` of DEST's mount
    showing every directory of the snapshot, and the parts of it."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        plain = mount_and_ls(endpoint, f"s3://{bucket}/ws", dirs, started, tmp)
    store = S3Store(bucket, endpoint_url=endpoint)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        fork_proc = subprocess.Popen(
            [S3FUSE, "fork", f"s3://{bucket}/ws", "--snapshot", "bench",
             f"s3://{bucket}/usable", "--endpoint-url", endpoint],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:  # the record comes before the first copy
                try:
                    store.head("usable/" + FORK_RECORD)
                    break
                except NoSuchKey:
                    if fork_proc.poll() is not None or time.monotonic() - started > 120:
                        raise RuntimeError("the fork wrote no record") from None
                    time.sleep(0.01)
            record_s = time.monotonic() - started
            mounted_s, usable_s = mount_and_ls(endpoint, f"s3://{bucket}/usable", dirs,
                                               started, tmp)
        finally:
            fork_proc.send_signal(signal.SIGINT)
            fork_proc.wait(timeout=60)
            store.close()
    return {"record_s": round(record_s, 3), "mounted_s": round(mounted_s, 3),
            "usable_s": round(usable_s, 3), "plain_mount_s": round(plain[0], 3),
            "plain_ls_s": round(plain[1], 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=32, help="fork's copies in parallel")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--only-usable", action="store_true",
                    help="after the snapshot, measure only DEST usable (no CLI snapshot, "
                         "no whole fork)")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    figures: dict[str, object] = {"files": args.files}
    with MotoServer() as server:
        store = S3Store("tt-bench", endpoint_url=server.endpoint)
        store._client.create_bucket(Bucket="tt-bench")  # noqa: SLF001
        store.enable_versioning()
        started = time.monotonic()
        populate(store, "ws/", args.files, args.jobs)
        took = time.monotonic() - started
        figures["put_per_s"] = round(args.files / took)
        print(f"baseline: {args.files} PUTs ({args.jobs} in parallel) in {took:.1f} s, "
              f"{args.files / took:.0f}/s")
        started = time.monotonic()
        token = None
        while True:  # the floor for anything that lists the prefix on this server
            token = store.list("ws/", None, token).next_token
            if token is None:
                break
        figures["list_s"] = round(time.monotonic() - started, 3)
        print(f"baseline: a listing (ListObjectsV2) of the {args.files} keys: "
              f"{figures['list_s']:.2f} s")

        counts = counting(store)
        started = time.monotonic()
        made = snapshots.create(store, "tt-bench", "ws/", "bench", time.time_ns())
        took = time.monotonic() - started
        assert len(made.snapshot.objects) == args.files
        figures["snapshot_s"] = round(took, 3)
        figures["snapshot_requests"] = dict(counts)
        print(f"snapshot of {args.files} files: {took:.2f} s, "
              f"{sum(counts.values())} requests {dict(counts)}")

        if not args.only_usable:
            cli = cli_snapshot(server.endpoint, "tt-bench")
            if cli is not None:
                figures["snapshot_cli_s"] = round(cli, 3)
                print(f"s3fuse snapshot create (CLI, through a mount): {cli:.2f} s")

            counts.clear()
            pins = {p.key: p for p in made.snapshot.objects}
            source = Side(store, "tt-bench", "ws/", "s3://tt-bench/ws")
            dest = Side(store, "tt-bench", "forked/", "s3://tt-bench/forked")
            report = fork(source, dest, {"snapshot": "bench"}, pins, jobs=args.jobs)
            rate = report.copied / report.seconds
            figures.update(fork_s=round(report.seconds, 3), fork_copies_per_s=round(rate),
                           fork_requests=dict(counts))
            print(f"fork of {args.files} files ({args.jobs} in parallel): "
                  f"{report.seconds:.1f} s, {rate:.0f} copies/s, "
                  f"{sum(counts.values())} requests")
        usable = dest_usable(server.endpoint, "tt-bench",
                             {f"d{i % 100:02d}" for i in range(args.files)})
        if usable is not None:
            figures["dest_usable"] = usable
            print(f"DEST usable (from starting s3fuse fork to the first full ls of its "
                  f"mount): {usable['usable_s']:.2f} s (record written at "
                  f"{usable['record_s']:.2f} s, mount up at {usable['mounted_s']:.2f} s); "
                  f"baseline: a mount of the workspace itself up in "
                  f"{usable['plain_mount_s']:.2f} s, its first ls at "
                  f"{usable['plain_ls_s']:.2f} s")
        store.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
