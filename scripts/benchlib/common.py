"""Constants, logging, running commands, formatting: shared by every module."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # scripts/
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
MiB = 1 << 20
S3_SYSTEMS = ("s3fuse", "s3fs", "rclone")
ALL_SYSTEMS = ("s3fuse", "s3fs", "rclone", "local", "ref", "boto3")
TABLE_SYSTEMS = ("s3fuse", "s3fs", "rclone", "local", "ref")
ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key"
KINDS = ("GET", "LIST", "HEAD", "PUT", "COPY", "POST", "DELETE", "OTHER")
SHORT = {"GET": "G", "LIST": "L", "HEAD": "H", "PUT": "P", "COPY": "C", "POST": "O",
         "DELETE": "D", "OTHER": "X"}
SDIST = "setuptools==75.8.0"
#: what the agent workloads install (with their dependencies) from a local wheelhouse
WHEELS = ("requests", "rich", "click")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

# ======================================================================================
# Small helpers
# ======================================================================================

class StepFailed(Exception):
    pass


class StepTimeout(StepFailed):
    pass


def run(cmd: list[str], timeout: float, cwd: str | Path | None = None,
        env: dict[str, str] | None = None, check: bool = True) -> tuple[float, str]:
    """Run a command in its own session; return (seconds, stdout). Raises StepFailed
    (non-zero exit) or StepTimeout (its process group is killed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel on a hung mount; the caller unmounts it
        raise StepTimeout(f"timed out after {timeout:g} s: {' '.join(cmd)[:120]}") from None
    elapsed = time.perf_counter() - t0
    if check and proc.returncode != 0:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-3:]
        raise StepFailed(f"{Path(cmd[0]).name} exited {proc.returncode}: "
                         + " | ".join(tail)[:300])
    return elapsed, out.decode(errors="replace")


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def wait_mounted(mp: Path, proc: subprocess.Popen | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mp):
            return
        if proc is not None and proc.poll() is not None:
            raise StepFailed(f"mount process exited with {proc.returncode}")
        time.sleep(0.05)
    raise StepFailed(f"{mp} not mounted after {timeout:.0f} s")


def mount_responsive(mp: Path) -> bool:
    try:
        subprocess.run(["stat", "-t", str(mp)], capture_output=True, timeout=15, check=True)
        return True
    except (subprocess.SubprocessError, OSError):
        return False


def vm_hwm_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in KINDS
            if after.get(k, 0) - before.get(k, 0)}


def fmt_counts(c: dict[str, int] | None) -> str:
    if c is None:
        return "-"
    total = sum(c.values())
    if not total:
        return "0"
    return f"{total}: " + " ".join(f"{SHORT[k]}{c[k]}" for k in KINDS if c.get(k))


def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s:.3f}"
    if s < 10:
        return f"{s:.2f}"
    if s < 100:
        return f"{s:.1f}"
    return f"{s:.0f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    r = a / b
    if r < 10:
        return f"{r:.2f}"
    if r < 100:
        return f"{r:.1f}"
    return f"{r:.0f}"


def table(headers: list[str], rows: list[list[str]], sep_after: int | None = None) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    out = []
    for n, r in enumerate([headers, *rows]):
        cells = []
        for i, cell in enumerate(r):
            cells.append(str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]))
            if sep_after is not None and i == sep_after:
                cells.append("|")
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)

