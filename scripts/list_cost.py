"""What a LIST costs on a moto server this script starts: a delimited listing of one
small directory, one of a directory of many subdirectories, and pages of 1,000 and 100
keys without the delimiter (a subtree listing), each timed with boto3 (medians). It
shows whether a server's cost is per request or per key returned, which decides where
listing a subtree at once (close-to-open checks, ``discovery_checks._tree_below``)
pays.

Seeds a project of ``--dirs`` directories of ``--files`` keys each under ``proj/``,
plus ``--other`` keys elsewhere in the bucket (moto scans every key of the bucket for
each listing).

Usage (on a host where ``bash scripts/install`` ran):

    .venv/bin/python scripts/list_cost.py [--dirs 100] [--files 20] [--other 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import MotoServer  # noqa: E402
from views_latency import private_moto_env  # noqa: E402

from s3fuse.store.s3 import S3Store  # noqa: E402

BUCKET = "list-cost"


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dirs", type=int, default=100)
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--other", type=int, default=0, help="keys elsewhere in the bucket")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    private_moto_env("list-cost")
    with MotoServer() as moto:
        store = S3Store(BUCKET, endpoint_url=moto.endpoint)
        client = store._client
        client.create_bucket(Bucket=BUCKET)
        keys = [f"other/{i:07d}" for i in range(args.other)]
        keys += [f"proj/d{d:04d}/f{f:04d}" for d in range(args.dirs) for f in range(args.files)]
        print(f"seeding {len(keys)} keys ...", flush=True)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b"x"), keys))
        steps = {
            f"delimited LIST of a directory of {args.files} keys":
                dict(Prefix="proj/d0000/", Delimiter="/"),
            f"delimited LIST of a directory of {args.dirs} subdirectories":
                dict(Prefix="proj/", Delimiter="/"),
            "a page of up to 1,000 keys, no delimiter": dict(Prefix="proj/"),
            "a page of up to 100 keys, no delimiter": dict(Prefix="proj/", MaxKeys=100),
        }
        for title, kwargs in steps.items():
            got = client.list_objects_v2(Bucket=BUCKET, **kwargs)
            n = len(got.get("Contents", [])) + len(got.get("CommonPrefixes", []))
            took = median_seconds(lambda kw=kwargs: client.list_objects_v2(
                Bucket=BUCKET, **kw), args.rounds)
            print(f"{title:<55} {took * 1000:7.1f} ms  ({n} entries)")
        store.close()


if __name__ == "__main__":
    main()
