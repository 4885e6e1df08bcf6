"""Running one workload step on one system: timing, catching up, request counts,
profiles, verification."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib.common import (
    TABLE_SYSTEMS,
    VENV_BIN,
    StepFailed,
    StepTimeout,
    diff_counts,
    drop_caches,
    fmt_counts,
    fmt_s,
    log,
    mount_responsive,
    run,
)
from benchlib.inputs import Inputs, Sizes
from benchlib.procs import lazy_unmount
from benchlib.systems import Ctx, Local, Rclone, Ref, S3fs, S3fuse, System
from benchlib.agent import agent_workloads
from benchlib.ml import ml_workloads
from benchlib.workloads import Workload, workloads

#: workloads that move big files: the ones also run against Ceph RGW (``--rgw``)
LARGE_FILE_KEYS = {"seqwrite", "coldread", "ml_ckpt", "ml_dataset", "ml_parread", "ml_hub",
                   "ml_rmrf"}


def all_workloads(inp: Inputs) -> list[Workload]:
    """The file-system workloads, then an agent's, then ML's (each set removes what it
    made at its end)."""
    return workloads(inp) + agent_workloads(inp) + ml_workloads(inp)


def workload_groups(inp: Inputs) -> dict[str, list[str]]:
    """Names ``--workloads`` accepts for several workloads at once."""
    return {"fs": [w.key for w in workloads(inp)],
            "agent": [w.key for w in agent_workloads(inp)],
            "ml": [w.key for w in ml_workloads(inp)],
            "large": sorted(LARGE_FILE_KEYS)}


@dataclass
class StepResult:
    status: str = "skipped"          # ok | failed | timeout | skipped
    seconds: float | None = None     # until the command returned
    catch_up_seconds: float | None = None   # extra time until the bucket caught up
    requests: dict[str, int] | None = None  # until caught up
    requests_during_run: dict[str, int] | None = None
    error: str = ""
    s3fuse_own_counts: dict[str, int] | None = None

    @property
    def caught_up(self) -> float | None:
        if self.seconds is None:
            return None
        return self.seconds + (self.catch_up_seconds or 0.0)


class Profiler:
    """py-spy on the s3fuse daemon during a step (raw collapsed stacks)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.dir = ctx.workdir / "profiles"
        self.dir.mkdir(exist_ok=True)
        self.exe = shutil.which("py-spy", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None

    def start(self, pid: int | None, name: str) -> None:
        if not self.exe or pid is None:
            return
        self.out = self.dir / f"{name}.txt"
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
             "--output", str(self.out), "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ctx.reg.add(self.proc.pid, "py-spy")
        time.sleep(1.0)

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.ctx.reg.remove(self.proc.pid)
        self.proc = None
        return self.out if self.out and self.out.exists() else None


def _frame(f: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``."""
    name, _, where = f.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].split('/')[-1]})" if where else name


def summarize_profile(path: Path, top: int = 12) -> dict:
    """Top functions by own samples and, for s3fuse's own code, by inclusive samples,
    from py-spy's raw (collapsed stack) output. Idle threads are not sampled."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = [f for f in stack.split(";")
                  if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        leaf = _frame(frames[-1])
        own[leaf] = own.get(leaf, 0) + n
        seen = set()
        for f in frames:
            short = _frame(f)
            if "s3fuse/" in f and short not in seen:
                seen.add(short)
                incl[short] = incl.get(short, 0) + n

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1))
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "self": pct(own), "inclusive_s3fuse": pct(incl)}


class Runner:
    def __init__(self, ctx: Ctx, sizes: Sizes, only: list[str]) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.only = only
        self.systems: dict[str, System] = {}
        self.results: dict[str, dict[str, StepResult]] = {}
        self.titles: dict[str, str] = {}
        self.profiles: dict[str, dict] = {}
        self.profiler = Profiler(ctx) if ctx.args.profile else None

    def build_systems(self) -> None:
        w, pp = self.ctx.workdir, self.ctx.proxy_ports
        order = [n for n in TABLE_SYSTEMS if n in self.only]
        for n in order:
            if n == "local":
                s: System = Local(self.ctx, w / "local")
            elif n == "ref":
                s = Ref(self.ctx, w / "mnt" / "ref")
            elif n == "s3fuse":
                s = S3fuse(self.ctx, w / "mnt" / "s3fuse", "bench-s3fuse", pp["s3fuse"])
            elif n == "s3fs":
                s = S3fs(self.ctx, w / "mnt" / "s3fs", "bench-s3fs", pp["s3fs"])
            else:
                s = Rclone(self.ctx, w / "mnt" / "rclone", "bench-rclone", pp["rclone"])
            if s.s3:
                self.ctx.client().create_bucket(Bucket=s.bucket)
            log(f"starting {n}")
            try:
                s.start()
            except (StepFailed, OSError) as exc:
                s.alive = False
                s.dead_reason = f"did not start: {exc}"
                log(f"{n}: {s.dead_reason}")
            self.systems[n] = s

    def stop_systems(self) -> None:
        for s in self.systems.values():
            if s.alive:
                log(f"stopping {s.name}")
                try:
                    s.stop()
                except Exception as exc:  # noqa: BLE001 - cleanup goes on
                    log(f"{s.name}: stop failed: {exc}")
                    lazy_unmount(str(s.root))

    def step(self, w: Workload, s: System) -> StepResult:
        r = StepResult()
        if not s.alive:
            r.error = f"not run: {s.dead_reason}"
            return r
        timeout = self.sizes.step_timeout
        phase = "prepare"
        prof = False
        twin: System | None = None
        target = s  # the mount the timed command runs on
        try:
            w.prepare(s)
            if w.cold:
                if w.remount and s.s3:
                    # a second mount of the same bucket with an empty cache directory,
                    # so the bytes come from S3 and the main mount keeps its state
                    phase = "second mount"
                    twin = s.twin()
                    twin.start()
                    target = twin
                drop_caches()
            else:
                # no step pays for the write-back of the one before it
                os.sync()
            phase = "run"
            pid = target.daemon_pid() if isinstance(target, S3fuse) else None
            if self.profiler and pid:
                self.profiler.start(pid, w.key)
                prof = True
            before = self.ctx.counts().get(s.name, {}) if s.s3 else None
            own0 = target.status().get("requests", {}) if isinstance(target, S3fuse) else None
            cmd, cwd, self_timed = w.command(target)
            elapsed, out = run(cmd, timeout, cwd=cwd, env=self.ctx.env)
            if self_timed:
                elapsed = json.loads(out.strip().splitlines()[-1])["elapsed"]
            r.seconds = elapsed
            if s.s3:
                mid = self.ctx.counts().get(s.name, {})
                r.requests_during_run = diff_counts(mid, before)
                if w.writes:
                    phase = "catch up"
                    r.catch_up_seconds = target.catch_up(timeout)
                after = self.ctx.counts().get(s.name, {})
                r.requests = diff_counts(after, before)
                if own0 is not None:
                    own1 = target.status().get("requests", {})
                    r.s3fuse_own_counts = {k: own1.get(k, 0) - own0.get(k, 0) for k in own1
                                           if own1.get(k, 0) - own0.get(k, 0)}
            if prof:
                path = self.profiler.stop()
                prof = False
                if path:
                    self.profiles[w.key] = summarize_profile(path)
            phase = "verify"
            w.verify(target)
            if s.s3:
                w.verify_bucket(s)
            r.status = "ok"
        except StepTimeout as exc:
            r.status, r.error = "timeout", f"{phase}: {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure fails the step, not the run
            r.status, r.error = "failed", f"{phase}: {type(exc).__name__}: {exc}"[:400]
        finally:
            if prof:
                self.profiler.stop()
            if twin is not None:
                try:
                    twin.stop()
                except Exception as exc:  # noqa: BLE001
                    log(f"{twin.name}: stop of the second mount failed: {exc}")
                    lazy_unmount(str(twin.root))
        if r.status != "ok":
            if not (r.status == "failed" and phase == "verify"):
                r.seconds = None  # kept in the JSON when only the check failed
            log(f"  {s.name}: {r.status.upper()}: {r.error}")
            if s.fuse and not mount_responsive(s.root):
                s.kill_hung("mount not responding")
        return r

    def as_json(self) -> list[dict]:
        return [{"key": k, "title": self.titles[k],
                 "results": {n: asdict(r) | {"caught_up_seconds": r.caught_up}
                             for n, r in self.results[k].items()}}
                for k in self.results]

    def run_workloads(self, inp: Inputs, keys: set[str] | None = None) -> None:
        """Every workload (or those in ``--workloads``), in order; ``keys`` narrows
        them further."""
        selected = self.ctx.args.workloads
        for w in all_workloads(inp):
            if (selected and w.key not in selected) or (keys is not None and
                                                           w.key not in keys):
                continue
            log(f"{w.title}")
            row: dict[str, StepResult] = {}
            for name, s in self.systems.items():
                res = self.step(w, s)
                row[name] = res
                if res.status == "ok":
                    extra = (f", caught up +{fmt_s(res.catch_up_seconds)} s"
                             if res.catch_up_seconds is not None else "")
                    log(f"  {name}: {fmt_s(res.seconds)} s{extra} "
                        f"[{fmt_counts(res.requests)}]")
            self.results[w.key] = row
            self.titles[w.key] = w.title

