"""The scale figures: a bucket of many objects, mounted cold."""

from __future__ import annotations

import os
import time

from benchlib.common import (
    S3_SYSTEMS,
    StepFailed,
    StepTimeout,
    diff_counts,
    drop_caches,
    fmt_counts,
    fmt_s,
    log,
    mount_responsive,
    run,
    vm_hwm_kib,
)
from benchlib.inputs import Sizes
from benchlib.procs import lazy_unmount
from benchlib.runner import Profiler, summarize_profile
from benchlib.systems import Ctx, Rclone, S3fs, S3fuse
from benchlib.workloads import expect

# ======================================================================================
# Scale
# ======================================================================================

def scale_layout(sizes: Sizes) -> tuple[list[str], int, int]:
    n, dirs, big = sizes.scale_objects, sizes.scale_dirs, sizes.scale_big
    per = (n - big) // max(dirs - 1, 1)
    keys = [f"big/f{j:05d}" for j in range(big)]
    for d in range(dirs - 1):
        keys.extend(f"d{d:04d}/f{j:05d}" for j in range(per))
    root_files = n - len(keys)
    keys.extend(f"r{j:05d}" for j in range(root_files))
    return keys, dirs, root_files


def seed_scale(ctx: Ctx, bucket: str, keys: list[str]) -> float:
    from concurrent.futures import ThreadPoolExecutor
    client = ctx.client()
    client.create_bucket(Bucket=bucket)
    t0 = time.perf_counter()

    def put(k: str) -> None:
        client.put_object(Bucket=bucket, Key=k, Body=f"object {k}\n".encode())
    with ThreadPoolExecutor(32) as ex:
        for i, _ in enumerate(ex.map(put, keys)):
            if i and i % 10000 == 0:
                log(f"  seeded {i:,} objects")
    return time.perf_counter() - t0


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) ``pid`` has used so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(port: int) -> int | None:
    """The S3 server's pid (the moto process serving ``port``), for its CPU time."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"moto" in a for a in argv[:2]) and str(port).encode() in argv:
            return int(entry)
    return None


class StepCpu:
    """CPU seconds the daemon and the S3 server spent between two marks: on a
    shared 2-core host, what a step costs each side (moto serves in one process)."""

    def __init__(self, daemon: int | None, server: int | None) -> None:
        self.pids = {"daemon": daemon, "server": server}
        self.last = {k: cpu_s(p) for k, p in self.pids.items()}

    def mark(self) -> dict[str, float]:
        now = {k: cpu_s(p) for k, p in self.pids.items()}
        spent = {k: round(now[k] - self.last[k], 2) for k in now}
        self.last = now
        return spent


def run_scale(ctx: Ctx, sizes: Sizes, only: list[str], profiler: Profiler | None) -> dict:
    keys, dirs, root_files = scale_layout(sizes)
    bucket = "bench-scale"
    log(f"scale: writing {len(keys):,} objects in {dirs:,} directories with boto3")
    seed_s = seed_scale(ctx, bucket, keys)
    log(f"scale: seeded in {seed_s:.0f} s ({len(keys) / seed_s:.0f} objects/s)")
    out: dict = {"objects": len(keys), "directories": dirs, "big_dir_entries": sizes.scale_big,
                 "root_files": root_files, "seed_seconds": seed_s, "systems": {}}
    timeout = sizes.scale_timeout
    for name in S3_SYSTEMS:
        if name not in only:
            continue
        mp = ctx.workdir / "mnt" / f"scale-{name}"
        cls = {"s3fuse": S3fuse, "s3fs": S3fs, "rclone": Rclone}[name]
        s = cls(ctx, mp, bucket, ctx.proxy_ports[name], tag=f"scale-{name}")
        res: dict = {}
        out["systems"][name] = res
        log(f"scale: {name}")
        step = "mount"
        try:
            c0 = ctx.counts().get(name, {})
            t0 = time.perf_counter()
            s.start()
            res["mount_s"] = time.perf_counter() - t0
            step = "first ls of the root"
            _, o = run(["ls", str(mp)], timeout)
            res["mount_to_first_ls_s"] = time.perf_counter() - t0
            c1 = ctx.counts().get(name, {})
            res["mount_to_first_ls_requests"] = diff_counts(c1, c0)
            n = len([x for x in o.splitlines() if x != ".s3fuse"])
            expect(n == dirs + root_files, f"ls of the root shows {n} entries, expected "
                                           f"{dirs + root_files}")
            log(f"  mount→ls {fmt_s(res['mount_to_first_ls_s'])} s")
            drop_caches()
            step = f"ls -l of the {sizes.scale_big:,}-entry directory"
            pid = s.daemon_pid()
            cpu = StepCpu(pid, server_pid(ctx.s3_port))
            if profiler and name == "s3fuse":
                profiler.start(pid, "scale-ls-l")
            t, o = run(["ls", "-l", str(mp / "big")], timeout)
            if profiler and name == "s3fuse":
                p = profiler.stop()
                if p:
                    res["profile_ls_l"] = summarize_profile(p)
            c2 = ctx.counts().get(name, {})
            res["ls_l_big_cold_s"] = t
            res["ls_l_big_cold_requests"] = diff_counts(c2, c1)
            res["ls_l_big_cold_cpu_s"] = cpu.mark()
            n = len(o.splitlines())
            expect(n == sizes.scale_big + 1, f"ls -l printed {n} lines")
            log(f"  ls -l big {fmt_s(t)} s [{fmt_counts(res['ls_l_big_cold_requests'])}] "
                f"cpu s {res['ls_l_big_cold_cpu_s']}")
            step = "find over everything"
            if profiler and name == "s3fuse":
                profiler.start(pid, "scale-find")
            t, o = run(["find", str(mp), "-path", str(mp / ".s3fuse"), "-prune", "-o",
                        "-print"], timeout)
            if profiler and name == "s3fuse":
                p = profiler.stop()
                if p:
                    res["profile_find"] = summarize_profile(p)
            c3 = ctx.counts().get(name, {})
            res["find_s"] = t
            res["find_requests"] = diff_counts(c3, c2)
            res["find_cpu_s"] = cpu.mark()
            n = len(o.splitlines())
            expect(n == 1 + dirs + len(keys), f"find printed {n} paths, expected "
                                              f"{1 + dirs + len(keys)}")
            log(f"  find {fmt_s(t)} s [{fmt_counts(res['find_requests'])}] "
                f"cpu s {res['find_cpu_s']}")
            res["peak_rss_mib"] = (vm_hwm_kib(pid) or 0) / 1024
            res["status"] = "ok"
        except StepFailed as exc:
            res["status"] = "timeout" if isinstance(exc, StepTimeout) else "failed"
            res["error"] = f"{step}: {exc}"[:400]
            res["peak_rss_mib"] = (vm_hwm_kib(s.daemon_pid()) or 0) / 1024 or None
            log(f"  {name}: {res['status'].upper()}: {res['error']}")
            if s.fuse and os.path.ismount(mp) and not mount_responsive(mp):
                s.kill_hung("mount not responding")
        finally:
            if profiler:
                profiler.stop()
            if s.alive:
                try:
                    s.stop()
                except Exception as exc:  # noqa: BLE001
                    log(f"{name}: stop failed: {exc}")
                    lazy_unmount(str(mp))
    return out

