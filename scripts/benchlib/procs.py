"""Processes and mounts a run started, and their cleanup (also ``bench.py cleanup``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from benchlib.common import HOST, log

# ======================================================================================
# Process bookkeeping and cleanup (also ``bench.py cleanup --workdir W`` from the trap)
# ======================================================================================

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Registry:
    """Processes and mounts this run started, in a file the bash trap can read."""

    def __init__(self, workdir: Path) -> None:
        self.file = workdir / "state" / "pids"
        self.file.parent.mkdir(parents=True, exist_ok=True)

    def add(self, pid: int, what: str) -> None:
        start = proc_start_time(pid)
        if start is None:
            return
        with open(self.file, "a") as f:
            f.write(f"{pid} {start} {what}\n")

    def remove(self, pid: int) -> None:
        if not self.file.exists():
            return
        lines = [x for x in self.file.read_text().splitlines() if x.split()[0] != str(pid)]
        self.file.write_text("".join(x + "\n" for x in lines))


def mounts_under(root: Path) -> list[tuple[str, str]]:
    """(mountpoint, major:minor) of every mount below ``root``, deepest first."""
    out = []
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].replace("\\040", " ")
            if mp.startswith(prefix):
                out.append((mp, fields[2]))
    return sorted(out, key=lambda x: -len(x[0]))


def abort_fuse(devid: str) -> None:
    minor = devid.split(":")[1]
    with contextlib.suppress(OSError), \
            open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
        f.write("1")


def lazy_unmount(mp: str, devid: str | None = None) -> None:
    if devid is None:
        for m, d in mounts_under(Path(mp).parent):
            if m == mp:
                devid = d
    if devid:
        abort_fuse(devid)
    for cmd in (["fusermount3", "-uz", mp], ["fusermount", "-uz", mp], ["umount", "-l", mp]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0:
                return


def kill_pid(pid: int, start: str | None, grace: float = 10) -> None:
    if start is not None and proc_start_time(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and proc_alive(pid):
        time.sleep(0.1)
    if proc_alive(pid) and (start is None or proc_start_time(pid) == start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cleanup_workdir(workdir: Path) -> None:
    """Unmount everything below workdir/mnt (lazily) and stop what the run started."""
    for mp, dev in mounts_under(workdir):
        log(f"cleanup: lazy unmount {mp}")
        lazy_unmount(mp, dev)
    pids = workdir / "state" / "pids"
    if pids.exists():
        for line in pids.read_text().splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and proc_start_time(int(parts[0])) == parts[1]:
                what = parts[2] if len(parts) > 2 else ""
                log(f"cleanup: stopping pid {parts[0]} ({what})")
                kill_pid(int(parts[0]), parts[1], grace=5)
        pids.unlink()

