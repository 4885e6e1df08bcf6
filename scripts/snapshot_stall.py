"""How long other requests on a mount stall while a large file is written past its
flush window: the upload of a file still being written is overtaken, and the next
one goes from a snapshot (a copy of the cache file), which used to be taken on the
daemon's event loop. Starts its own moto server, mounts s3fuse with a short window,
writes a checkpoint the way ML tools do (``name.tmp`` in 64 MiB chunks, fsync,
``os.replace``) while a second thread opens and reads another small file on the
mount every 10 ms, and prints that reader's latencies and the flusher's counts
(``snapshot_ahead``: snapshots copied off the event loop).

Usage (root, on a host where ``bash scripts/install`` ran):

    .venv/bin/python scripts/snapshot_stall.py [--mib 1024] [--window 1]

To compare another commit: ``git checkout REV -- s3fuse/``, run, then ``git checkout
HEAD -- s3fuse/`` (the editable install is asked before ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import MotoServer  # noqa: E402
from views_latency import private_moto_env  # noqa: E402

from s3fuse.store.s3 import S3Store  # noqa: E402

BUCKET = "snapshot-stall"
CHUNK = 64 << 20


def s3fuse(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "s3fuse.cli", *args], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=900)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="checkpoint size (MiB)")
    ap.add_argument("--window", default="1", help="--flush-window of the mount (s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("snapshot_stall: run as root (it mounts)", file=sys.stderr)
        return 2
    private_moto_env("snapshot-stall")
    with MotoServer() as moto, tempfile.TemporaryDirectory(prefix="snap-stall-") as tmp:
        store = S3Store(BUCKET, endpoint_url=moto.endpoint)
        store._client.create_bucket(Bucket=BUCKET)
        store.close()
        mnt, cache = Path(tmp) / "mnt", Path(tmp) / "cache"
        mnt.mkdir()
        s3fuse("mount", f"s3://{BUCKET}", str(mnt), "--endpoint-url", moto.endpoint,
               "--cache-dir", str(cache), "--flush-window", args.window)
        try:
            (mnt / "probe").write_bytes(b"p")
            chunk = os.urandom(CHUNK)
            latencies: list[float] = []
            stop = threading.Event()

            def reader() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    (mnt / "probe").read_bytes()
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.01)

            probe = threading.Thread(target=reader)
            probe.start()
            t0 = time.perf_counter()
            tmp_path = mnt / "model.ckpt.tmp"
            with open(tmp_path, "wb") as f:
                for _ in range(max(1, args.mib * (1 << 20) // CHUNK)):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, mnt / "model.ckpt")
            wrote = time.perf_counter() - t0
            stop.set()
            probe.join(timeout=60)
            t1 = time.perf_counter()
            s3fuse("sync", str(mnt), "--timeout", "600")
            synced = time.perf_counter() - t1
            counts = json.loads(os.getxattr(mnt, "user.s3fuse.status"))["requests"]
        finally:
            s3fuse("umount", str(mnt))
        latencies.sort()
        n = len(latencies)
        print(f"checkpoint of {args.mib} MiB written in {wrote:.2f} s, then in the bucket "
              f"after {synced:.2f} s more")
        print(f"reader of another file: {n} open+read, p50 {latencies[n // 2] * 1000:.1f} "
              f"ms, p99 {latencies[int(n * 0.99)] * 1000:.1f} ms, max "
              f"{latencies[-1] * 1000:.1f} ms")
        print(f"flusher: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
