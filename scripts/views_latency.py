"""Cold ``ls -l`` of a directory in a point-in-time view against the same ``ls -l`` in
the live tree (issue 15's target: within 1.5x), on a moto server this script starts.

Seeds a versioned bucket with ``--entries`` objects (default 1,000) in one directory,
each with s3fuse's attribute headers (so each entry costs the mount a HEAD, as in the
live tree), then ``--rounds`` times: mounts afresh (a new cache directory: nothing
known), drops the kernel's caches, and times ``ls -l DIR`` in the live tree; mounts
afresh again and times ``ls -l .s3fuse/at/<time>/DIR``. Prints the medians and the
ratio, the store requests each made (from the daemon's metrics), and checks that both
listings show the same names, sizes and modes.

Usage (root, on a host where ``bash scripts/install`` ran):

    .venv/bin/python scripts/views_latency.py [--entries 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import MotoServer, free_port  # noqa: E402

from s3fuse import timeline  # noqa: E402
from s3fuse.store.s3 import S3Store  # noqa: E402

S3FUSE = os.path.join(os.path.dirname(sys.executable), "s3fuse")


def run(cmd: list[str], timeout: float = 120) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {res.stderr.strip()}")
    return res.stdout


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def listing(out: str) -> list[tuple[str, str, str]]:
    """(mode, size, name) of each line of ``ls -l`` (the times differ in format)."""
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split()
        rows.append((parts[0], parts[4], parts[-1]))
    return rows


def requests_made(port: int) -> dict[str, int]:
    """The daemon's store requests so far, by operation (its Prometheus metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r'^s3fuse_s3_requests_total\{operation="([^"]+)"\} ([0-9.e+]+)$',
                       text, re.M)
    return {op: int(float(n)) for op, n in found}


def timed_ls(source: str, endpoint: str, work: Path, rel: str
             ) -> tuple[float, str, dict[str, int]]:
    """Seconds of a cold ``ls -l`` of ``rel`` on a fresh mount, its output, and the
    store requests it made (beyond what the mount made before it)."""
    mp = Path(tempfile.mkdtemp(dir=work, prefix="mnt-"))
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    port = free_port()
    run([S3FUSE, "mount", source, str(mp), "--cache-dir", str(cache),
         "--endpoint-url", endpoint, "--metrics-addr", f"127.0.0.1:{port}"])
    try:
        before = requests_made(port)
        drop_caches()
        t0 = time.perf_counter()
        out = run(["ls", "-l", str(mp / rel)])
        took = time.perf_counter() - t0
        after = requests_made(port)
        made = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
        return took, out, made
    finally:
        run([S3FUSE, "umount", str(mp)])


def private_moto_env(name: str) -> None:
    """Credentials for a private moto server (it takes any), for it and the mounts,
    with nothing from the host's AWS configuration and no proxy for 127.0.0.1."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        os.environ.pop(var, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": name, "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": f"/nonexistent/{name}/config",
                       "AWS_SHARED_CREDENTIALS_FILE": f"/nonexistent/{name}/creds",
                       "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("views_latency: run as root (mounts, drop_caches)", file=sys.stderr)
        return 2
    private_moto_env("views-latency")
    with MotoServer() as moto, tempfile.TemporaryDirectory(prefix="views-lat-") as tmp:
        work = Path(tmp)
        store = S3Store("views-latency", endpoint_url=moto.endpoint)
        store._client.create_bucket(Bucket="views-latency")
        store._client.put_bucket_versioning(
            Bucket="views-latency", VersioningConfiguration={"Status": "Enabled"})
        meta = {"mode": str(0o100640), "uid": "0", "gid": "0",
                "mtime": "1700000000.000000000"}
        print(f"seeding {args.entries} objects ...", flush=True)
        for i in range(args.entries):
            store.put(f"w/dir/f{i:05d}", b"x" * (i % 97), meta)
        time.sleep(1.2)  # moto keeps LastModified in whole seconds
        when = timeline.format_when(time.time_ns() // 1_000_000_000 * 1_000_000_000)
        store.close()
        source = "s3://views-latency/w"
        live_s, view_s = [], []
        for r in range(args.rounds):
            t_live, live_out, live_req = timed_ls(source, moto.endpoint, work, "dir")
            t_view, view_out, view_req = timed_ls(source, moto.endpoint, work,
                                                  f".s3fuse/at/{when}/dir")
            if listing(live_out) != listing(view_out):
                print("views_latency: the view's listing differs from the live tree's",
                      file=sys.stderr)
                return 1
            live_s.append(t_live)
            view_s.append(t_view)
            print(f"round {r + 1}: live {t_live:.3f} s {live_req}, "
                  f"view {t_view:.3f} s {view_req}", flush=True)
        live, view = statistics.median(live_s), statistics.median(view_s)
        print(f"cold ls -l of {args.entries} entries (median of {args.rounds}): "
              f"live {live:.3f} s, at-view {view:.3f} s, ratio {view / live:.2f}x "
              f"(target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
