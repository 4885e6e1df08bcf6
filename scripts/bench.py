#!/usr/bin/env python3
"""The s3fuse benchmark: s3fuse against s3fs, ``rclone mount``, a local directory and a
reference in-memory FUSE filesystem, on the same workloads and one moto S3 server.

Run it through ``scripts/bench`` (which installs what is missing and cleans up on any
exit); ``scripts/bench --help`` lists the options. This file is the entry point; the
work is in ``scripts/benchlib/``: ``common`` (constants, running commands, formatting),
``procs`` (processes and mounts, cleanup), ``proxy`` (the counting proxy), ``ops``
(Python workloads timed in a child process), ``systems``, ``inputs``, ``workloads``,
``runner`` (one step on one system), ``baselines`` (boto3, reffs --discard), ``scale``
and ``report``.

How it measures
---------------
* One moto server on 127.0.0.1. In front of it, one counting HTTP proxy process with
  one port per system (so every request is attributed to the system that made it); it
  counts requests by kind: GET, LIST (GET on a bucket), HEAD, PUT (also multipart
  parts), COPY (PUT with ``x-amz-copy-source``), POST (multipart start/finish, bulk
  delete), DELETE. Bucket checks made by this script go to moto directly.
* Systems: ``s3fuse`` (``--flush-window 5``), ``s3fs`` (Debian's s3fs 1.90 with
  ``enable_noobj_cache``, the default from 1.91 on; it uploads on close), ``rclone``
  (``rclone mount --vfs-cache-mode writes --vfs-write-back 5s``), ``local`` (a directory
  on the disk that holds the caches),
  ``ref`` (``scripts/reffs.py``: in-memory pyfuse3, s3fuse's FUSE options, no S3), plus
  two baselines for the 256 MiB file: ``reffs.py --discard`` and plain boto3.
* Workloads run workload by workload, each on every system in turn, all mounts up at
  once. A step is: prepare (untimed), the timed command (seconds as the user sees them:
  until the command returns), then "caught up" (s3fuse: ``s3fuse sync``; rclone: its
  write-back queue is forced through its rc API and waited for; s3fs has uploaded before
  ``close()`` returns), then verification (diff, git fsck, SQLite integrity_check, and
  for S3 systems a look at the bucket). A step that fails or times out is reported as
  such and not timed; a hung mount is unmounted lazily and its system skipped after.
* "Cold" means ``sync; echo 3 > /proc/sys/vm/drop_caches``. For the cold read of the
  256 MiB file each S3 system reads through a second mount of its bucket with an empty
  cache directory (started untimed), so the bytes really come from the bucket; the
  first mount keeps its state for the steps after.
* Scale: a bucket of N objects in D directories (one of them with 5,000 entries),
  written with boto3, then per S3 system: time from ``mount`` to the first ``ls`` of the
  root, ``ls -l`` of the 5,000-entry directory cold, ``find`` over everything, the
  daemon's peak RSS (VmHWM), and the requests each step made.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchlib.baselines import run_baselines
from benchlib.common import (
    ACCESS_KEY,
    ALL_SYSTEMS,
    S3_SYSTEMS,
    SECRET_KEY,
    VENV_BIN,
    log,
)
from benchlib.inputs import QUICK, Inputs, Sizes
from benchlib.ops import op_main
from benchlib.procs import Registry, cleanup_workdir, kill_pid
from benchlib.proxy import proxy_main
from benchlib.report import compare_main, render, versions
from benchlib.rgw import rgw_report, run_rgw
from benchlib.runner import Runner, workload_groups
from benchlib.servers import start_servers
from benchlib.scale import run_scale
from benchlib.systems import Ctx

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark s3fuse against s3fs, rclone mount, a local directory and "
                    "an in-memory reference FUSE filesystem, on one moto S3 server.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes for a smoke run (a few minutes)")
    p.add_argument("--only", default=",".join(ALL_SYSTEMS),
                   help="comma-separated systems: s3fuse,s3fs,rclone,local,ref,boto3 "
                        "(boto3: the baseline upload/download; ref also runs reffs --discard)")
    p.add_argument("--workloads", default="",
                   help="comma-separated workload keys or groups (default: all). Groups: "
                        "fs (cptree,gitcommit,gitclone,untar,sqlite,tmpreplace,seqwrite,"
                        "coldread,smallfiles,empty,ls_warm,ls_cold,rmrf), agent (agent_pip,"
                        "agent_import,agent_gitstatus_cold,agent_gitstatus_warm,agent_grep,"
                        "agent_rmrf), ml (ml_ckpt,ml_dataset,ml_parread,ml_hub,ml_rmrf), "
                        "large (the big-file ones: seqwrite,coldread and ml)")
    p.add_argument("--skip-scale", action="store_true", help="skip the scale figures")
    p.add_argument("--skip-workloads", action="store_true", help="only the scale figures")
    p.add_argument("--scale-objects", type=int, help="objects in the scale bucket "
                   "(default 10000, --quick 3000; the issue's figure is 100000: moto "
                   "takes about 6 minutes to be seeded with that many)")
    p.add_argument("--scale-dirs", type=int, help="directories in the scale bucket "
                   "(default 100, --quick 30; the issue's figure is 1000)")
    p.add_argument("--seq-mib", type=int, help="size of the sequential write and of the "
                   "hub-style download (default 256, --quick 32)")
    p.add_argument("--ckpt-mib", type=int, help="size of the ML checkpoint (default 2048, "
                   "--quick 128)")
    p.add_argument("--dataset-files", type=int, help="1 MiB files in the ML dataset "
                   "(default 1000, --quick 100)")
    p.add_argument("--rgw", action="store_true",
                   help="also run the large-file workloads (--workloads large) and the boto3 "
                        "baselines on a private Ceph RGW (scripts/ceph-rgw; moto reads a whole "
                        "object for every ranged GET, RGW does not)")
    p.add_argument("--step-timeout", type=float, help="seconds per step (default 600; "
                   "--quick 240)")
    p.add_argument("--flush-window", type=int, default=5,
                   help="s3fuse --flush-window and rclone --vfs-write-back, seconds "
                        "(default 5)")
    p.add_argument("--s3fuse-options", default="",
                   help="extra options for s3fuse mount, e.g. '--metadata-ttl 30' (the "
                        "freshness rclone's 5-minute --dir-cache-time gives up)")
    p.add_argument("--s3fs-options", default="enable_noobj_cache",
                   help="extra s3fs -o options (default enable_noobj_cache, the default of "
                        "s3fs 1.91+; Debian 12 ships 1.90)")
    p.add_argument("--json", default="", help="write the results as JSON here (default: "
                   "WORKDIR/bench-<time>.json)")
    p.add_argument("--workdir", default="/var/tmp/s3fuse-bench",
                   help="scratch space on local disk (default /var/tmp/s3fuse-bench)")
    p.add_argument("--profile", action="store_true",
                   help="record py-spy profiles of the s3fuse daemon per step (slows s3fuse)")
    a = p.parse_args(argv)
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in ALL_SYSTEMS]
    if bad:
        p.error(f"unknown system(s) {bad}; choose from {','.join(ALL_SYSTEMS)}")
    a.workloads = [x.strip() for x in a.workloads.split(",") if x.strip()]
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (it mounts, and drops the page cache)", file=sys.stderr)
        return 2
    sizes = Sizes(**asdict(QUICK)) if args.quick else Sizes()
    for attr, val in (("scale_objects", args.scale_objects), ("scale_dirs", args.scale_dirs),
                      ("seq_mib", args.seq_mib), ("step_timeout", args.step_timeout),
                      ("ckpt_mib", args.ckpt_mib), ("dataset_files", args.dataset_files)):
        if val:
            setattr(sizes, attr, val)
    if sizes.scale_big >= sizes.scale_objects:
        sizes.scale_big = sizes.scale_objects // 2
    workdir = Path(args.workdir).resolve()
    cleanup_workdir(workdir)  # whatever an interrupted run left
    for sub in ("logs", "state", "tmp", "mnt", "cache", "home"):
        if sub in ("mnt", "cache", "tmp"):
            shutil.rmtree(workdir / sub, ignore_errors=True)
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    reg = Registry(workdir)
    ctx = Ctx(args=args, workdir=workdir, reg=reg)
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith("AWS_") and not k.startswith("GIT_")}
    home = workdir / "home"
    (home / ".gitconfig").write_text("[safe]\n\tdirectory = *\n[init]\n\tdefaultBranch = main\n"
                                     "[gc]\n\tauto = 0\n")
    ctx.env = {**base_env, "HOME": str(home), "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
               "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
               "PATH": f"{VENV_BIN}:{base_env.get('PATH', '/usr/bin:/bin')}",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    ctx.s3env = {**ctx.env, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                 "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_CONFIG_FILE": "/nonexistent/bench", "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/bench"}

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    t_start = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    json_path = Path(args.json) if args.json else \
        workdir / f"bench-{started.strftime('%Y%m%d-%H%M%S')}.json"
    only = args.only
    moto = proxy = None
    runner = Runner(ctx, sizes, only)
    inp = Inputs(ctx, sizes)
    groups = workload_groups(inp)
    args.workloads = [k for x in args.workloads for k in groups.get(x, [x])]
    baselines: dict = {}
    scale: dict | None = None
    rgw: dict | None = None
    try:
        log(f"workdir {workdir}; systems {','.join(only)}; "
            f"{'quick' if args.quick else 'full'} sizes")
        moto, proxy = start_servers(ctx, [n for n in (*S3_SYSTEMS, "boto3") if n in only])
        log(f"moto on {ctx.s3_port}; counting proxy ports {ctx.proxy_ports}")
        if not args.skip_workloads:
            log("making the inputs")
            inp.make()
            runner.build_systems()
            runner.run_workloads(inp)
            runner.stop_systems()
            baselines = run_baselines(ctx, inp, only, set(runner.results))
            if args.rgw:
                rgw = run_rgw(ctx, inp, sizes, only)
        if not args.skip_scale and any(n in only for n in S3_SYSTEMS):
            scale = run_scale(ctx, sizes, only, runner.profiler)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        runner.stop_systems()
        raise
    finally:
        inp.remove()
        for proc in (proxy, moto):
            if proc is not None:
                kill_pid(proc.pid, None, grace=5)
                reg.remove(proc.pid)
        cleanup_workdir(workdir)
    runtime = time.perf_counter() - t_start
    report = render(runner, baselines, scale, ctx, sizes, inp)
    if rgw is not None:
        report += "\n\n" + rgw_report(rgw, ctx, sizes, inp)
    results = {
        "version": 1, "started": started.isoformat(), "runtime_s": runtime,
        "args": {k: v for k, v in vars(args).items()}, "sizes": asdict(sizes),
        "host": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
                 "versions": versions()},
        "flush_window_s": args.flush_window,
        "catch_up_method": {n: runner.systems[n].catch_up_how for n in runner.systems},
        "inputs": {"sdist": inp.sdist_name, "tree_files": sizes.tree_files},
        "workloads": runner.as_json(),
        "baselines": baselines, "scale": scale, "profiles": runner.profiles,
        "rgw": None if rgw is None else {"workloads": rgw["runner"].as_json(),
                                         "baselines": rgw["baselines"],
                                         "error": rgw.get("error")},
        "table": report,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    print(report)
    print(f"\nruntime {runtime / 60:.1f} min; JSON: {json_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        sys.exit(proxy_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "op":
        sys.exit(op_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        sys.exit(compare_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "cleanup":
        wd = sys.argv[sys.argv.index("--workdir") + 1] if "--workdir" in sys.argv else \
            "/var/tmp/s3fuse-bench"
        cleanup_workdir(Path(wd))
        sys.exit(0)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("bench: interrupted; mounts and servers cleaned up", file=sys.stderr)
        sys.exit(130)
