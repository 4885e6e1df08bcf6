#!/usr/bin/env python3
"""The s3fuse benchmark: s3fuse against s3fs, ``rclone mount``, a local directory and a
reference in-memory FUSE filesystem, on the same workloads and one moto S3 server.

Run it through ``scripts/bench`` (which installs what is missing and cleans up on any
exit); ``scripts/bench --help`` lists the options.

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
import asyncio
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
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


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ======================================================================================
# The counting proxy (runs as its own process: ``bench.py proxy ...``)
# ======================================================================================

class CountingProxy:
    """Forwards bytes unchanged to the upstream server; parses only the request heads
    (and request body framing, to find the next request on a kept-alive connection)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.counts: dict[str, dict[str, int]] = {}

    def count(self, name: str, method: str, target: str, headers: dict[bytes, bytes]) -> None:
        path = target.split("?", 1)[0]
        if path.startswith("http://"):
            path = "/" + path.split("/", 3)[-1]
        parts = path.lstrip("/").split("/", 1)
        has_key = len(parts) == 2 and parts[1] != ""
        if method == "GET":
            kind = "GET" if has_key else "LIST"
        elif method == "PUT":
            kind = "COPY" if b"x-amz-copy-source" in headers else "PUT"
        elif method in ("HEAD", "POST", "DELETE"):
            kind = method
        else:
            kind = "OTHER"
        c = self.counts.setdefault(name, {})
        c[kind] = c.get(kind, 0) + 1

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(1 << 18)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> None:
        while n > 0:
            data = await reader.read(min(n, 1 << 18))
            if not data:
                raise ConnectionError("client closed inside a request body")
            writer.write(data)
            n -= len(data)
            await writer.drain()

    async def client(self, name: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(HOST, self.upstream, limit=1 << 20)
        except OSError:
            writer.close()
            return
        pump = asyncio.ensure_future(self._pump(up_r, writer))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    break
                lines = head.split(b"\r\n")
                try:
                    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
                except ValueError:
                    break
                headers: dict[bytes, bytes] = {}
                for h in lines[1:]:
                    k, sep, v = h.partition(b":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                self.count(name, method.upper(), target, headers)
                up_w.write(head)
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        up_w.write(size_line)
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while True:
                                trailer = await reader.readuntil(b"\r\n")
                                up_w.write(trailer)
                                if trailer == b"\r\n":
                                    break
                            break
                        await self._copy(reader, up_w, size + 2)
                else:
                    await self._copy(reader, up_w, int(headers.get(b"content-length") or 0))
                await up_w.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                up_w.close()
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            with contextlib.suppress(Exception):
                writer.close()

    async def control(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            body = json.dumps(self.counts).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)
            await writer.drain()
        writer.close()


async def _proxy_serve(upstream: int, listens: list[tuple[str, int]], control: int) -> None:
    proxy = CountingProxy(upstream)
    servers = []
    for name, port in listens:
        proxy.counts[name] = {}

        async def handler(r, w, name=name):
            await proxy.client(name, r, w)
        servers.append(await asyncio.start_server(handler, HOST, port, limit=1 << 20,
                                                  backlog=512))
    servers.append(await asyncio.start_server(proxy.control, HOST, control))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def proxy_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.py proxy")
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--listen", action="append", default=[], help="NAME:PORT")
    p.add_argument("--control", type=int, required=True)
    a = p.parse_args(argv)
    listens = [(x.split(":")[0], int(x.split(":")[1])) for x in a.listen]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_proxy_serve(a.upstream, listens, a.control))
    return 0


# ======================================================================================
# Python workloads, run in a child process and timed inside it (``bench.py op ...``)
# ======================================================================================

def small_content(i: int, size: int) -> bytes:
    block = hashlib.sha256(str(i).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def tmp_content(i: int) -> bytes:
    return (f'{{"round": {i}, "pad": "' + "x" * 4000 + '"}\n').encode()


def op_main(argv: list[str]) -> int:
    name, args = argv[0], argv[1:]
    t0 = time.perf_counter()
    if name == "sqlite":
        import sqlite3
        db, tx, rows = args[0], int(args[1]), int(args[2])
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, tx INTEGER, v TEXT)")
        for i in range(tx):
            with conn:
                conn.executemany("INSERT INTO t (tx, v) VALUES (?, ?)",
                                 [(i, f"row {i}.{j} " + "x" * 100) for j in range(rows)])
        conn.close()
    elif name == "tmpreplace":
        import tempfile
        d, rounds = args[0], int(args[1])
        target = os.path.join(d, "config.json")
        for i in range(rounds):
            with tempfile.NamedTemporaryFile(dir=d, prefix=".config-", delete=False) as f:
                f.write(tmp_content(i))
                f.flush()
                os.fsync(f.fileno())
            os.replace(f.name, target)
    elif name == "smallfiles":
        d, n, size = args[0], int(args[1]), int(args[2])
        for i in range(n):
            with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
                f.write(small_content(i, size))
    elif name == "touch":
        d, n = args[0], int(args[1])
        for i in range(n):
            os.close(os.open(os.path.join(d, f"e{i:05d}"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    else:
        print(f"unknown op {name}", file=sys.stderr)
        return 2
    print(json.dumps({"elapsed": time.perf_counter() - t0}))
    return 0


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


# ======================================================================================
# Systems under test
# ======================================================================================

@dataclass
class Ctx:
    args: argparse.Namespace
    workdir: Path
    reg: Registry
    moto_port: int = 0
    proxy_ports: dict[str, int] = field(default_factory=dict)
    control_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    s3env: dict[str, str] = field(default_factory=dict)
    _client: object = None

    def counts(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"http://{HOST}:{self.control_port}/", timeout=30) as r:
            return json.loads(r.read())

    def client(self):
        """boto3 client straight to moto (not counted): seeding and bucket checks."""
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client(
                "s3", endpoint_url=f"http://{HOST}:{self.moto_port}", region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                config=Config(max_pool_connections=64, retries={"max_attempts": 10}))
        return self._client

    def keys(self, bucket: str, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out


class System:
    name = ""
    s3 = False
    fuse = True
    catch_up_how = "n/a"

    def __init__(self, ctx: Ctx, root: Path) -> None:
        self.ctx = ctx
        self.root = root
        self.alive = True
        self.dead_reason = ""
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def catch_up(self, timeout: float) -> float | None:
        """Seconds until the bucket has caught up, or None where that means nothing."""
        return None

    def daemon_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def twin(self) -> System:
        """Another mount of the same bucket, with its own empty cache directory."""
        raise NotImplementedError

    def kill_hung(self, why: str) -> None:
        log(f"{self.name}: {why}; unmounting lazily, skipping its remaining steps")
        self.alive = False
        self.dead_reason = why
        if self.fuse:
            lazy_unmount(str(self.root))
        pid = self.daemon_pid()
        if pid:
            kill_pid(pid, None, grace=5)
            self.ctx.reg.remove(pid)

    def _popen(self, cmd: list[str], logname: str, env: dict[str, str] | None = None) -> None:
        logf = open(self.ctx.workdir / "logs" / logname, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, env=env or self.ctx.env,
                                     start_new_session=True)
        logf.close()
        self.ctx.reg.add(self.proc.pid, f"{self.name} {self.root}")
        try:
            wait_mounted(self.root, self.proc)
        except StepFailed:
            tail = (self.ctx.workdir / "logs" / logname).read_text(errors="replace")[-600:]
            raise StepFailed(f"{self.name} did not mount: {tail.strip()}") from None

    def _fusermount_stop(self, timeout: float = 120) -> None:
        if os.path.ismount(self.root):
            res = subprocess.run(["fusermount3", "-u", str(self.root)], capture_output=True,
                                 timeout=60, check=False)
            if res.returncode != 0:
                subprocess.run(["fusermount", "-u", str(self.root)], capture_output=True,
                               timeout=60, check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_pid(self.proc.pid, None, grace=5)
            self.ctx.reg.remove(self.proc.pid)
            self.proc = None
        if os.path.ismount(self.root):
            lazy_unmount(str(self.root))


class Local(System):
    name = "local"
    fuse = False

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        pass


class Ref(System):
    name = "ref"

    def __init__(self, ctx: Ctx, root: Path, discard: bool = False) -> None:
        super().__init__(ctx, root)
        self.discard = discard
        if discard:
            self.name = "ref-discard"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE / "reffs.py"), str(self.root)]
        if self.discard:
            cmd.append("--discard")
        self._popen(cmd, f"{self.name}.log")

    def stop(self) -> None:
        self._fusermount_stop()


class S3fuse(System):
    name = "s3fuse"
    s3 = True
    catch_up_how = "s3fuse sync"

    def __init__(self, ctx: Ctx, root: Path, bucket: str, port: int, tag: str = "") -> None:
        super().__init__(ctx, root)
        self.bucket = bucket
        self.port = port
        self.tag = tag or self.name
        self.pid: int | None = None
        self.exe = str(VENV_BIN / "s3fuse")

    def cache_dir(self) -> Path:
        return self.ctx.workdir / "cache" / self.tag

    def twin(self) -> System:
        return S3fuse(self.ctx, self.root.with_name(self.root.name + "-cold"), self.bucket,
                      self.port, tag=self.tag + "-cold")

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cache = self.cache_dir()
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [self.exe, "mount", f"s3://{self.bucket}", str(self.root),
               "--endpoint-url", f"http://{HOST}:{self.port}", "--cache-dir", str(cache),
               "--flush-window", str(self.ctx.args.flush_window), "--drain-timeout", "300"]
        run(cmd, 120, env=self.ctx.s3env)
        self.pid = int(os.getxattr(self.root, "user.s3fuse.pid"))
        self.ctx.reg.add(self.pid, f"s3fuse daemon {self.root}")

    def stop(self) -> None:
        if os.path.ismount(self.root):
            try:
                run([self.exe, "umount", str(self.root)], 600, env=self.ctx.s3env)
            except StepFailed as exc:
                log(f"s3fuse umount failed ({exc}); unmounting lazily")
                lazy_unmount(str(self.root))
        if self.pid is not None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc_alive(self.pid):
                time.sleep(0.05)
            if proc_alive(self.pid):
                kill_pid(self.pid, None)
            self.ctx.reg.remove(self.pid)
            self.pid = None

    def daemon_pid(self) -> int | None:
        return self.pid

    def catch_up(self, timeout: float) -> float | None:
        t, _ = run([self.exe, "sync", str(self.root), "--timeout", str(max(1, int(timeout)))],
                   timeout + 30, env=self.ctx.s3env)
        return t

    def status(self) -> dict:
        return json.loads(os.getxattr(self.root, "user.s3fuse.status"))


class S3fs(System):
    name = "s3fs"
    s3 = True
    catch_up_how = "uploads before close() returns"

    def __init__(self, ctx: Ctx, root: Path, bucket: str, port: int, tag: str = "") -> None:
        super().__init__(ctx, root)
        self.bucket = bucket
        self.port = port
        self.tag = tag or self.name

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        passwd = self.ctx.workdir / "state" / "s3fs-passwd"
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        passwd.chmod(0o600)
        opts = ",".join([f"url=http://{HOST}:{self.port}", "use_path_request_style",
                         f"passwd_file={passwd}", "endpoint=us-east-1", "dbglevel=warn"]
                        + ([self.ctx.args.s3fs_options] if self.ctx.args.s3fs_options else []))
        self._popen(["s3fs", self.bucket, str(self.root), "-f", "-o", opts],
                    f"{self.tag}.log")

    def twin(self) -> System:
        return S3fs(self.ctx, self.root.with_name(self.root.name + "-cold"), self.bucket,
                    self.port, tag=self.tag + "-cold")

    def stop(self) -> None:
        self._fusermount_stop()


class Rclone(System):
    name = "rclone"
    s3 = True
    catch_up_how = "write-back queue forced via rc, then drained"

    def __init__(self, ctx: Ctx, root: Path, bucket: str, port: int, tag: str = "") -> None:
        super().__init__(ctx, root)
        self.bucket = bucket
        self.port = port
        self.tag = tag or self.name
        self.rc_port = 0
        self.exe = str(VENV_BIN / "rclone") if (VENV_BIN / "rclone").exists() else "rclone"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cache = self.ctx.workdir / "cache" / self.tag
        shutil.rmtree(cache, ignore_errors=True)
        self.rc_port = free_port()
        wb = self.ctx.args.flush_window
        cmd = [self.exe, "mount", f":s3:{self.bucket}", str(self.root),
               "--config", "/dev/null",
               "--s3-provider", "Other", "--s3-endpoint", f"http://{HOST}:{self.port}",
               "--s3-access-key-id", ACCESS_KEY, "--s3-secret-access-key", SECRET_KEY,
               "--s3-region", "us-east-1", "--s3-force-path-style=true",
               "--vfs-cache-mode", "writes", "--vfs-write-back", f"{wb}s",
               "--cache-dir", str(cache), "--rc", "--rc-addr", f"{HOST}:{self.rc_port}",
               "--rc-no-auth", "--log-level", "NOTICE"]
        self._popen(cmd, f"{self.tag}.log")

    def twin(self) -> System:
        return Rclone(self.ctx, self.root.with_name(self.root.name + "-cold"), self.bucket,
                      self.port, tag=self.tag + "-cold")

    def stop(self) -> None:
        self._fusermount_stop()

    def rc(self, method: str, params: dict | None = None) -> dict:
        conn = http.client.HTTPConnection(HOST, self.rc_port, timeout=60)
        try:
            conn.request("POST", f"/{method}", body=json.dumps(params or {}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise StepFailed(f"rclone rc {method}: {resp.status} {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def catch_up(self, timeout: float) -> float | None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            queue = self.rc("vfs/queue").get("queue") or []
            for item in queue:
                if not item.get("uploading") and item.get("expiry", 0) > 0:
                    with contextlib.suppress(StepFailed):
                        self.rc("vfs/queue-set-expiry", {"id": item["id"], "expiry": 0})
            stats = self.rc("vfs/stats").get("diskCache", {})
            if not queue and not stats.get("uploadsInProgress") \
                    and not stats.get("uploadsQueued"):
                return time.perf_counter() - t0
            if time.monotonic() > deadline:
                raise StepTimeout(f"rclone uploads not done after {timeout:.0f} s")
            time.sleep(0.05)


# ======================================================================================
# Inputs
# ======================================================================================

@dataclass
class Sizes:
    tree_files: int = 500
    sqlite_tx: int = 100
    sqlite_rows: int = 10
    tmp_rounds: int = 100
    seq_mib: int = 256
    small_files: int = 2000
    small_kib: int = 4
    empty_files: int = 5000
    scale_objects: int = 10000
    scale_dirs: int = 100
    scale_big: int = 5000
    step_timeout: float = 600
    scale_timeout: float = 1500


QUICK = Sizes(tree_files=50, sqlite_tx=20, tmp_rounds=20, seq_mib=32, small_files=100,
              empty_files=500, scale_objects=3000, scale_dirs=30, scale_big=500,
              step_timeout=240, scale_timeout=300)


class Inputs:
    def __init__(self, ctx: Ctx, sizes: Sizes) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.src = ctx.workdir / "src"
        self.tree = self.src / "tree"
        self.repo = self.src / "repo"
        self.sdist = self.src / "sdist.tar.gz"
        self.sdist_tree = self.src / "sdist-extracted"
        self.sdist_name = ""
        self.seq = Path("/dev/shm") / f"s3fuse-bench-{os.getpid()}.bin"

    def make(self) -> None:
        shutil.rmtree(self.src, ignore_errors=True)
        self.src.mkdir(parents=True)
        rnd = random.Random(6)
        n = self.sizes.tree_files
        for i in range(n):
            d = self.tree / f"pkg{i % 10:02d}" / f"mod{(i // 10) % 5}"
            d.mkdir(parents=True, exist_ok=True)
            kind = rnd.random()
            size = rnd.randint(64, 8192) if kind < 0.6 else (
                rnd.randint(8192, 65536) if kind < 0.9 else rnd.randint(65536, 262144))
            (d / f"file{i:04d}.dat").write_bytes(rnd.randbytes(size))
        # a repository with a few commits, packed, to clone
        genv = self.ctx.env
        shutil.copytree(self.tree, self.repo)
        run(["git", "init", "-q", str(self.repo)], 60, env=genv)
        run(["git", "add", "-A"], 60, cwd=self.repo, env=genv)
        run(["git", "commit", "-q", "-m", "initial"], 60, cwd=self.repo, env=genv)
        files = sorted(p for p in self.repo.rglob("*.dat"))
        for c in range(4):
            for p in rnd.sample(files, max(1, len(files) // 10)):
                p.write_bytes(rnd.randbytes(rnd.randint(64, 16384)))
            run(["git", "commit", "-q", "-a", "-m", f"change {c}"], 60, cwd=self.repo,
                env=genv)
        run(["git", "gc", "-q"], 120, cwd=self.repo, env=genv)
        self._sdist()
        self.sdist_tree.mkdir()
        run(["tar", "xzf", str(self.sdist)], 120, cwd=self.sdist_tree, env=genv)
        # 256 MiB of incompressible data on tmpfs: drop_caches cannot evict it
        with open(self.seq, "wb") as f:
            for _ in range(self.sizes.seq_mib):
                f.write(rnd.randbytes(MiB))

    def _sdist(self) -> None:
        cached = self.ctx.workdir / "downloads"
        cached.mkdir(exist_ok=True)
        name, version = SDIST.split("==")
        found = sorted(cached.glob(f"{name}-{version}.tar.gz"))
        if not found:
            log(f"downloading the sdist of {SDIST} from PyPI (once)")
            with contextlib.suppress(StepFailed):
                run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                     "--no-binary", ":all:", "--no-build-isolation", "-d", str(cached), SDIST],
                    300, env=self.ctx.env)
            found = sorted(cached.glob(f"{name}-{version}.tar.gz"))
        if found:
            shutil.copy(found[0], self.sdist)
            self.sdist_name = found[0].name
            return
        # offline: pack the installed pip package the way an sdist is packed
        import pip
        log("could not download the sdist; using a tar.gz of the installed pip package")
        base = Path(pip.__file__).parent
        run(["tar", "czf", str(self.sdist), "-C", str(base.parent), base.name], 120)
        self.sdist_name = f"pip-package-{pip.__version__}.tar.gz (fallback)"

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.seq.unlink()


# ======================================================================================
# Workloads
# ======================================================================================

class Workload:
    key = ""
    title = ""
    cold = False       # drop caches before the timed part
    remount = False    # ... and remount S3 systems with an empty cache directory
    writes = True      # catch up afterwards and count those requests

    def __init__(self, inp: Inputs) -> None:
        self.inp = inp
        self.sizes = inp.sizes

    def dir(self, s: System) -> Path:
        return s.root / "bench" / self.key

    def prefix(self) -> str:
        return f"bench/{self.key}/"

    def prepare(self, s: System) -> None:
        self.dir(s).mkdir(parents=True, exist_ok=True)

    def command(self, s: System) -> tuple[list[str], Path | None, bool]:
        """(argv, cwd, self_timed)"""
        raise NotImplementedError

    def verify(self, s: System) -> None:
        pass

    def verify_bucket(self, s: System) -> None:
        pass


def op_cmd(*args: object) -> list[str]:
    return [sys.executable, str(HERE / "bench.py"), "op", *map(str, args)]


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise StepFailed(msg)


def bucket_files(s: System, prefix: str) -> list[str]:
    return [k for k in s.ctx.keys(s.bucket, prefix) if not k.endswith("/")]


class CpTree(Workload):
    key = "cptree"

    @property
    def title(self) -> str:
        return f"cp -r of a {self.sizes.tree_files}-file tree"

    def prepare(self, s: System) -> None:
        self.dir(s).mkdir(parents=True, exist_ok=True)

    def command(self, s):
        return ["cp", "-r", str(self.inp.tree), str(self.dir(s) / "tree")], None, False

    def verify(self, s):
        run(["diff", "-r", "-q", str(self.inp.tree), str(self.dir(s) / "tree")], 600)

    def verify_bucket(self, s):
        n = len(bucket_files(s, self.prefix()))
        expect(n == self.sizes.tree_files, f"bucket has {n} files, expected "
                                           f"{self.sizes.tree_files}")


class GitCommit(Workload):
    key = "gitcommit"

    @property
    def title(self) -> str:
        return f"git init+add+commit, {self.sizes.tree_files} files"

    def prepare(self, s):
        self.dir(s).mkdir(parents=True, exist_ok=True)
        run(["cp", "-r", str(self.inp.tree), str(self.dir(s) / "work")], 600)
        if s.s3:
            s.catch_up(600)

    def command(self, s):
        script = "git init -q && git add -A && git commit -q -m bench"
        return ["sh", "-c", script], self.dir(s) / "work", False

    def verify(self, s):
        w = self.dir(s) / "work"
        env = s.ctx.env
        run(["git", "fsck", "--full", "--no-progress"], 600, cwd=w, env=env)
        _, out = run(["git", "ls-files"], 120, cwd=w, env=env)
        n = len(out.splitlines())
        expect(n == self.sizes.tree_files, f"git ls-files lists {n} files")
        _, st = run(["git", "status", "--porcelain"], 300, cwd=w, env=env)
        expect(st.strip() == "", f"git status not clean: {st[:200]}")


class GitClone(Workload):
    key = "gitclone"
    title = "git clone of a local repository"

    def command(self, s):
        return ["git", "clone", "-q", str(self.inp.repo), "clone"], self.dir(s), False

    def verify(self, s):
        c = self.dir(s) / "clone"
        env = s.ctx.env
        run(["git", "fsck", "--full", "--no-progress"], 600, cwd=c, env=env)
        run(["diff", "-r", "-q", "--exclude=.git", str(self.inp.repo), str(c)], 600)


class Untar(Workload):
    key = "untar"

    @property
    def title(self) -> str:
        return "tar xzf of a Python sdist"

    def command(self, s):
        return ["tar", "xzf", str(self.inp.sdist)], self.dir(s), False

    def verify(self, s):
        run(["diff", "-r", "-q", str(self.inp.sdist_tree), str(self.dir(s))], 600)


class Sqlite(Workload):
    key = "sqlite"

    @property
    def title(self) -> str:
        return f"SQLite, {self.sizes.sqlite_tx} tx of {self.sizes.sqlite_rows} inserts"

    def command(self, s):
        return op_cmd("sqlite", self.dir(s) / "db.sqlite", self.sizes.sqlite_tx,
                      self.sizes.sqlite_rows), None, True

    def _check(self, path: Path) -> None:
        import sqlite3
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
            n = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        finally:
            conn.close()
        expect(ok == "ok", f"integrity_check: {ok}")
        want = self.sizes.sqlite_tx * self.sizes.sqlite_rows
        expect(n == want, f"{n} rows, expected {want}")

    def verify(self, s):
        self._check(self.dir(s) / "db.sqlite")

    def verify_bucket(self, s):
        tmp = s.ctx.workdir / "tmp" / f"bucket-{s.name}.sqlite"
        s.ctx.client().download_file(s.bucket, self.prefix() + "db.sqlite", str(tmp))
        try:
            self._check(tmp)
        finally:
            tmp.unlink()
        left = bucket_files(s, self.prefix())
        expect(left == [self.prefix() + "db.sqlite"], f"bucket holds {left}")


class TmpReplace(Workload):
    key = "tmpreplace"

    @property
    def title(self) -> str:
        return f"{self.sizes.tmp_rounds}x NamedTemporaryFile+fsync+os.replace"

    def command(self, s):
        return op_cmd("tmpreplace", self.dir(s), self.sizes.tmp_rounds), None, True

    def verify(self, s):
        names = sorted(os.listdir(self.dir(s)))
        expect(names == ["config.json"], f"directory holds {names[:5]}")
        want = tmp_content(self.sizes.tmp_rounds - 1)
        expect((self.dir(s) / "config.json").read_bytes() == want, "wrong final content")

    def verify_bucket(self, s):
        keys = bucket_files(s, self.prefix())
        expect(keys == [self.prefix() + "config.json"], f"bucket holds {keys[:5]}")
        body = s.ctx.client().get_object(Bucket=s.bucket, Key=keys[0])["Body"].read()
        expect(body == tmp_content(self.sizes.tmp_rounds - 1), "bucket: wrong final content")


class SeqWrite(Workload):
    key = "seqwrite"

    @property
    def title(self) -> str:
        return f"write {self.sizes.seq_mib} MiB + fsync"

    def command(self, s):
        return ["dd", f"if={self.inp.seq}", f"of={self.dir(s) / 'big.bin'}", "bs=1M",
                "conv=fsync", "status=none"], None, False

    def verify(self, s):
        run(["cmp", str(self.inp.seq), str(self.dir(s) / "big.bin")], 600)

    def verify_bucket(self, s):
        head = s.ctx.client().head_object(Bucket=s.bucket, Key=self.prefix() + "big.bin")
        size = head["ContentLength"]
        expect(size == self.sizes.seq_mib * MiB, f"bucket object has {size} bytes")


class ColdRead(Workload):
    key = "coldread"
    cold = True
    remount = True
    writes = False

    @property
    def title(self) -> str:
        return f"read {self.sizes.seq_mib} MiB cold (S3: fresh mount)"

    def dir(self, s):
        return s.root / "bench" / "seqwrite"

    def prepare(self, s):
        expect((self.dir(s) / "big.bin").exists(), "no file from the write step")

    def command(self, s):
        return ["dd", f"if={self.dir(s) / 'big.bin'}", "of=/dev/null", "bs=1M",
                "status=none"], None, False

    def verify(self, s):
        run(["cmp", str(self.inp.seq), str(self.dir(s) / "big.bin")], 600)


class SmallFiles(Workload):
    key = "smallfiles"

    @property
    def title(self) -> str:
        return f"{self.sizes.small_files:,} files of {self.sizes.small_kib} KiB"

    def command(self, s):
        return op_cmd("smallfiles", self.dir(s), self.sizes.small_files,
                      self.sizes.small_kib * 1024), None, True

    def verify(self, s):
        d = self.dir(s)
        names = os.listdir(d)
        expect(len(names) == self.sizes.small_files, f"{len(names)} files")
        for i in range(self.sizes.small_files):
            data = (d / f"f{i:05d}").read_bytes()
            expect(data == small_content(i, self.sizes.small_kib * 1024), f"f{i:05d} differs")

    def verify_bucket(self, s):
        n = len(bucket_files(s, self.prefix()))
        expect(n == self.sizes.small_files, f"bucket has {n} files")


class Touch(Workload):
    key = "empty"

    @property
    def title(self) -> str:
        return f"create {self.sizes.empty_files:,} empty files"

    def command(self, s):
        return op_cmd("touch", self.dir(s), self.sizes.empty_files), None, True

    def verify(self, s):
        n = len(os.listdir(self.dir(s)))
        expect(n == self.sizes.empty_files, f"{n} files")

    def verify_bucket(self, s):
        n = len(bucket_files(s, self.prefix()))
        expect(n == self.sizes.empty_files, f"bucket has {n} files")


class LsL(Workload):
    writes = False

    def __init__(self, inp: Inputs, cold: bool) -> None:
        super().__init__(inp)
        self.cold = cold
        self.key = "ls_cold" if cold else "ls_warm"

    @property
    def title(self) -> str:
        return (f"ls -l of {self.sizes.empty_files:,} entries, "
                + ("after drop_caches" if self.cold else "warm"))

    def dir(self, s):
        return s.root / "bench" / "empty"

    def out(self, s: System) -> Path:
        return s.ctx.workdir / "tmp" / f"{self.key}-{s.name}.txt"

    def prepare(self, s):
        expect(self.dir(s).is_dir(), "no directory from the create step")
        if not self.cold:  # warm: the listing has been done once already
            run(["ls", "-l", str(self.dir(s))], 600)

    def command(self, s):
        return ["sh", "-c", f"ls -l '{self.dir(s)}' > '{self.out(s)}'"], None, False

    def verify(self, s):
        lines = self.out(s).read_text().splitlines()
        expect(len(lines) == self.sizes.empty_files + 1, f"ls -l printed {len(lines)} lines")


class RmRf(Workload):
    key = "rmrf"
    title = "rm -rf of everything"

    def prepare(self, s):
        expect((s.root / "bench").is_dir(), "nothing to remove")

    def command(self, s):
        return ["rm", "-rf", str(s.root / "bench")], None, False

    def verify(self, s):
        expect(not (s.root / "bench").exists(), "bench/ still there")

    def verify_bucket(self, s):
        left = s.ctx.keys(s.bucket, "bench/")
        expect(not left, f"bucket still holds {len(left)} keys under bench/, e.g. {left[:3]}")


def workloads(inp: Inputs) -> list[Workload]:
    return [CpTree(inp), GitCommit(inp), GitClone(inp), Untar(inp), Sqlite(inp),
            TmpReplace(inp), SeqWrite(inp), ColdRead(inp), SmallFiles(inp), Touch(inp),
            LsL(inp, cold=False), LsL(inp, cold=True), RmRf(inp)]


# ======================================================================================
# Steps
# ======================================================================================

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

    def run_workloads(self, inp: Inputs) -> None:
        selected = self.ctx.args.workloads
        for w in workloads(inp):
            if selected and w.key not in selected:
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


# ======================================================================================
# Baselines: reffs --discard for the big write, boto3 for the big object
# ======================================================================================

def run_baselines(ctx: Ctx, inp: Inputs, only: list[str]) -> dict:
    out: dict = {}
    timeout = inp.sizes.step_timeout
    if "ref" in only:
        s = Ref(ctx, ctx.workdir / "mnt" / "ref-discard", discard=True)
        try:
            s.start()
            t, _ = run(["dd", f"if={inp.seq}", f"of={s.root / 'big.bin'}", "bs=1M",
                        "conv=fsync", "status=none"], timeout)
            out["ref_discard_write_s"] = t
        except StepFailed as exc:
            out["ref_discard_write_error"] = str(exc)
        finally:
            s.stop()
    if "boto3" in only:
        import boto3
        from boto3.s3.transfer import TransferConfig
        client = boto3.client(
            "s3", endpoint_url=f"http://{HOST}:{ctx.proxy_ports['boto3']}",
            region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY)
        ctx.client().create_bucket(Bucket="bench-boto3")
        tmp = ctx.workdir / "tmp" / "boto3-download.bin"
        try:
            c0 = ctx.counts().get("boto3", {})
            t0 = time.perf_counter()
            client.upload_file(str(inp.seq), "bench-boto3", "big.bin", Config=TransferConfig())
            out["boto3_put_s"] = time.perf_counter() - t0
            c1 = ctx.counts().get("boto3", {})
            drop_caches()
            t0 = time.perf_counter()
            client.download_file("bench-boto3", "big.bin", str(tmp), Config=TransferConfig())
            out["boto3_get_s"] = time.perf_counter() - t0
            c2 = ctx.counts().get("boto3", {})
            out["boto3_put_requests"] = diff_counts(c1, c0)
            out["boto3_get_requests"] = diff_counts(c2, c1)
            run(["cmp", str(inp.seq), str(tmp)], 300)
        except Exception as exc:  # noqa: BLE001
            out["boto3_error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return out


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
            n = len(o.splitlines())
            expect(n == sizes.scale_big + 1, f"ls -l printed {n} lines")
            log(f"  ls -l big {fmt_s(t)} s [{fmt_counts(res['ls_l_big_cold_requests'])}]")
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
            n = len(o.splitlines())
            expect(n == 1 + dirs + len(keys), f"find printed {n} paths, expected "
                                              f"{1 + dirs + len(keys)}")
            log(f"  find {fmt_s(t)} s [{fmt_counts(res['find_requests'])}]")
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


# ======================================================================================
# Report
# ======================================================================================

def render(runner: Runner, baselines: dict, scale: dict | None, ctx: Ctx,
           sizes: Sizes, inp: Inputs) -> str:
    systems = [n for n in TABLE_SYSTEMS if n in runner.systems]
    peers = [n for n in ("s3fs", "rclone", "ref", "local") if n in systems]
    wkeys = list(runner.results)
    lines: list[str] = []
    have_s3fuse = "s3fuse" in systems

    def cell(r: StepResult | None, value: float | None) -> str:
        if r is None:
            return "-"
        if r.status == "ok":
            return fmt_s(value)
        return {"failed": "FAIL", "timeout": "TIMEOUT", "skipped": "skip"}[r.status]

    def ok_value(r: StepResult | None, caught: bool = False) -> float | None:
        if r is None or r.status != "ok":
            return None
        return r.caught_up if caught else r.seconds

    if wkeys:
        # 1. seconds until the command returned
        headers = ["workload (seconds, lower is better)"] + systems
        if have_s3fuse:
            headers += [f"s3fuse/{p}" for p in peers]
        rows = []
        for k in wkeys:
            row = runner.results[k]
            cells = [runner.titles[k]]
            cells += [cell(row.get(n), ok_value(row.get(n))) for n in systems]
            if have_s3fuse:
                a = ok_value(row.get("s3fuse"))
                cells += [fmt_ratio(a, ok_value(row.get(p))) for p in peers]
            rows.append(cells)
        lines.append("Seconds until the command returned (what the user waits for). "
                     f"s3fuse --flush-window {ctx.args.flush_window}; rclone --vfs-cache-mode "
                     f"writes --vfs-write-back {ctx.args.flush_window}s; s3fs -o "
                     f"{ctx.args.s3fs_options or '(defaults)'}.")
        lines.append("Ratios: s3fuse time / peer time (below 1: s3fuse is faster).")
        lines.append(table(headers, rows, sep_after=len(systems) if have_s3fuse else None))

        # 2. until the bucket has caught up
        s3s = [n for n in S3_SYSTEMS if n in systems]
        if s3s:
            lines.append("")
            lines.append("Seconds until the bucket has caught up: the command's time plus "
                         "s3fuse: `s3fuse sync`; rclone: write-back queue forced through rc and "
                         "drained; s3fs: nothing (it uploads before close() returns).")
            headers = ["workload (seconds until in the bucket)"] + s3s
            cmp_peers = [p for p in ("s3fs", "rclone") if p in s3s]
            if have_s3fuse:
                headers += [f"s3fuse/{p}" for p in cmp_peers]
            rows = []
            for k in wkeys:
                row = runner.results[k]
                cells = [runner.titles[k]]
                cells += [cell(row.get(n), ok_value(row.get(n), True)) for n in s3s]
                if have_s3fuse:
                    a = ok_value(row.get("s3fuse"), True)
                    cells += [fmt_ratio(a, ok_value(row.get(p), True)) for p in cmp_peers]
                rows.append(cells)
            lines.append(table(headers, rows, sep_after=len(s3s) if have_s3fuse else None))

            # 3. requests
            lines.append("")
            lines.append("S3 requests per workload, from the start of the command until caught "
                         "up (counting proxy): total: G=GET L=LIST H=HEAD P=PUT (and parts) "
                         "C=COPY O=POST D=DELETE")
            headers = ["workload (S3 requests)"] + s3s
            rows = []
            for k in wkeys:
                row = runner.results[k]
                cells = [runner.titles[k]]
                for n in s3s:
                    r = row.get(n)
                    cells.append(fmt_counts(r.requests) if r and r.requests is not None else
                                 ("-" if r is None or r.status == "ok" else r.status))
                rows.append(cells)
            lines.append(table(headers, rows))

    # baselines
    b = baselines
    bl = []
    if "ref_discard_write_s" in b:
        bl.append(f"write {sizes.seq_mib} MiB + fsync to reffs --discard: "
                  f"{fmt_s(b['ref_discard_write_s'])} s")
    if "boto3_put_s" in b:
        bl.append(f"boto3 upload_file {sizes.seq_mib} MiB: {fmt_s(b['boto3_put_s'])} s "
                  f"[{fmt_counts(b.get('boto3_put_requests'))}]; download_file: "
                  f"{fmt_s(b['boto3_get_s'])} s [{fmt_counts(b.get('boto3_get_requests'))}]")
        sw = runner.results.get("seqwrite", {}).get("s3fuse")
        cr = runner.results.get("coldread", {}).get("s3fuse")
        if cr is not None and cr.status == "ok":
            bl.append(f"s3fuse cold read / boto3 download: "
                      f"{fmt_ratio(cr.seconds, b['boto3_get_s'])}")
        if sw is not None and sw.status == "ok":
            bl.append(f"s3fuse write+sync (until in bucket) / boto3 upload: "
                      f"{fmt_ratio(sw.caught_up, b['boto3_put_s'])}")
    for k in ("ref_discard_write_error", "boto3_error"):
        if k in b:
            bl.append(f"{k}: {b[k]}")
    if bl:
        lines.append("")
        lines.append("Baselines: " + "; ".join(bl))

    # scale
    if scale:
        lines.append("")
        lines.append(f"Scale: {scale['objects']:,} objects in {scale['directories']:,} "
                     f"directories (one with {scale['big_dir_entries']:,} entries, "
                     f"{scale['root_files']} files at the root), written by boto3 in "
                     f"{scale['seed_seconds']:.0f} s; every mount starts with an empty cache.")
        ss = [n for n in S3_SYSTEMS if n in scale["systems"]]
        metrics = [
            ("mount → first ls of the root (s)", "mount_to_first_ls_s", True),
            ("  of which the mount command (s)", "mount_s", True),
            ("  requests", "mount_to_first_ls_requests", False),
            (f"ls -l of the {scale['big_dir_entries']:,}-entry dir, cold (s)",
             "ls_l_big_cold_s", True),
            ("  requests", "ls_l_big_cold_requests", False),
            ("find over everything (s)", "find_s", True),
            ("  requests", "find_requests", False),
        ]
        rows = []
        for title, key, is_time in metrics:
            cells = [title]
            for n in ss:
                r = scale["systems"][n]
                v = r.get(key)
                if v is None:
                    cells.append(r.get("status", "-").upper() if is_time and
                                 r.get("status") != "ok" else "-")
                else:
                    cells.append(fmt_s(v) if is_time else fmt_counts(v))
            rows.append(cells)
        rows.append(["daemon peak RSS (MiB, VmHWM)"] + [
            f"{scale['systems'][n]['peak_rss_mib']:.0f}"
            if scale["systems"][n].get("peak_rss_mib") else "-" for n in ss])
        lines.append(table(["scale"] + ss, rows))
        for n in ss:
            if scale["systems"][n].get("error"):
                lines.append(f"  {n}: {scale['systems'][n]['error']}")

    # failures
    fails = []
    for k in wkeys:
        for n, r in runner.results[k].items():
            if r.status != "ok":
                fails.append(f"  {k} on {n}: {r.status}: {r.error}")
    if fails:
        lines.append("")
        lines.append("Not timed (failed, timed out or skipped):")
        lines.extend(fails)

    # profiles
    if runner.profiles or (scale and any("profile_find" in v for v in
                                         scale["systems"].values())):
        lines.append("")
        lines.append("py-spy on the s3fuse daemon (percent of samples; profiled runs are "
                     "slower, so their times above are not comparable):")
        profs = dict(runner.profiles)
        if scale:
            for v in scale["systems"].values():
                for k in ("profile_ls_l", "profile_find"):
                    if k in v:
                        profs["scale " + k[8:]] = v[k]
        for k, p in profs.items():
            lines.append(f"  {k}: {p['samples']} samples; top own: " + "; ".join(
                f"{n} {v}%" for n, v in p["self"][:6]))
            lines.append("      s3fuse inclusive: " + "; ".join(
                f"{n} {v}%" for n, v in p["inclusive_s3fuse"][:8]))
    lines.append("")
    lines.append("Notes: moto reads the whole object for every GET, ranged or not, so many "
                 "small ranged GETs of a big object cost far more on moto than on S3 (see "
                 "the GET counts of the cold read). s3fuse's LIST counts include its "
                 "directory poller (every --poll-interval, default 30 s, each directory "
                 "used within two intervals), whichever step is running. moto closes the "
                 "connection after each response (HTTP/1.0), for every client alike.")
    inputs = (f"Inputs: tree {sizes.tree_files} files; sdist {inp.sdist_name}; "
              if wkeys else "")
    lines.append(f"{inputs}machine {os.cpu_count()} cores, load average "
                 f"{os.getloadavg()[0]:.1f} at the end (shared: compare ratios).")
    return "\n".join(lines)


def compare_main(argv: list[str]) -> int:
    """``bench.py compare OLD.json NEW.json``: seconds of each workload and system in
    two runs, and NEW/OLD (below 1: NEW is faster)."""
    if len(argv) != 2:
        print("usage: scripts/bench compare OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(x).read_text()) for x in argv)

    def secs(run: dict) -> dict[tuple[str, str], tuple[float | None, str]]:
        out = {}
        for w in run.get("workloads", []):
            for n, r in w["results"].items():
                v = r["seconds"] if r["status"] == "ok" else None
                out[(w["key"], n)] = (v, r["status"])
                v2 = r.get("caught_up_seconds") if r["status"] == "ok" else None
                if r.get("catch_up_seconds") is not None:
                    out[(w["key"] + " (caught up)", n)] = (v2, r["status"])
        for n, r in ((run.get("scale") or {}).get("systems") or {}).items():
            for k in ("mount_to_first_ls_s", "ls_l_big_cold_s", "find_s"):
                out[("scale " + k, n)] = (r.get(k), r.get("status", "?"))
        return out
    a, b = secs(old), secs(new)
    if old.get("sizes") != new.get("sizes"):
        print("warning: the two runs used different sizes (--quick, --seq-mib, "
              "--scale-objects...): compare with care", file=sys.stderr)
    rows = []
    for key in [k for k in b if k in a]:
        (va, sa), (vb, sb) = a[key], b[key]
        rows.append([key[0], key[1], fmt_s(va) if va is not None else sa,
                     fmt_s(vb) if vb is not None else sb, fmt_ratio(vb, va)])
    print(f"OLD {argv[0]} ({old.get('started', '?')})\nNEW {argv[1]} "
          f"({new.get('started', '?')})")
    print(table(["workload", "system", "OLD s", "NEW s", "NEW/OLD"], rows))
    return 0


def versions() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"
    rclone = str(VENV_BIN / "rclone") if (VENV_BIN / "rclone").exists() else "rclone"
    out = {"s3fs": first(["s3fs", "--version"]), "rclone": first([rclone, "version"]),
           "python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(Exception):
        import moto
        out["moto"] = moto.__version__
    with contextlib.suppress(Exception):
        out["s3fuse_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "s3fuse"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["s3fuse_tree_dirty"] = bool(dirty)
    return out


# ======================================================================================
# Main
# ======================================================================================

def start_servers(ctx: Ctx, names: list[str]) -> tuple[subprocess.Popen, subprocess.Popen]:
    ctx.moto_port = free_port()
    logf = open(ctx.workdir / "logs" / "moto.log", "ab")  # noqa: SIM115
    moto = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", HOST, "-p",
                             str(ctx.moto_port)], stdin=subprocess.DEVNULL, stdout=logf,
                            stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()
    ctx.reg.add(moto.pid, "moto_server")
    ctx.proxy_ports = {n: free_port() for n in names}
    ctx.control_port = free_port()
    cmd = [sys.executable, str(HERE / "bench.py"), "proxy", "--upstream", str(ctx.moto_port),
           "--control", str(ctx.control_port)]
    for n, p in ctx.proxy_ports.items():
        cmd += ["--listen", f"{n}:{p}"]
    logf = open(ctx.workdir / "logs" / "proxy.log", "ab")  # noqa: SIM115
    proxy = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()
    ctx.reg.add(proxy.pid, "counting proxy")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{ctx.moto_port}/moto-api/",
                                        timeout=2):
                pass
            ctx.counts()
            return moto, proxy
        except (OSError, urllib.error.URLError, ValueError):
            if moto.poll() is not None or proxy.poll() is not None or \
                    time.monotonic() > deadline:
                raise SystemExit("bench: the moto server or the counting proxy did not "
                                 f"start; see {ctx.workdir / 'logs'}") from None
            time.sleep(0.2)


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
                   help="comma-separated workload keys (default: all): cptree,gitcommit,"
                        "gitclone,untar,sqlite,tmpreplace,seqwrite,coldread,smallfiles,"
                        "empty,ls_warm,ls_cold,rmrf")
    p.add_argument("--skip-scale", action="store_true", help="skip the scale figures")
    p.add_argument("--skip-workloads", action="store_true", help="only the scale figures")
    p.add_argument("--scale-objects", type=int, help="objects in the scale bucket "
                   "(default 10000, --quick 3000; the issue's figure is 100000: moto "
                   "takes about 6 minutes to be seeded with that many)")
    p.add_argument("--scale-dirs", type=int, help="directories in the scale bucket "
                   "(default 100, --quick 30; the issue's figure is 1000)")
    p.add_argument("--seq-mib", type=int, help="size of the sequential write (default 256)")
    p.add_argument("--step-timeout", type=float, help="seconds per step (default 600; "
                   "--quick 240)")
    p.add_argument("--flush-window", type=int, default=5,
                   help="s3fuse --flush-window and rclone --vfs-write-back, seconds "
                        "(default 5)")
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
                      ("seq_mib", args.seq_mib), ("step_timeout", args.step_timeout)):
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
    baselines: dict = {}
    scale: dict | None = None
    try:
        log(f"workdir {workdir}; systems {','.join(only)}; "
            f"{'quick' if args.quick else 'full'} sizes")
        moto, proxy = start_servers(ctx, [n for n in (*S3_SYSTEMS, "boto3") if n in only])
        log(f"moto on {ctx.moto_port}; counting proxy ports {ctx.proxy_ports}")
        if not args.skip_workloads:
            log("making the inputs")
            inp.make()
            runner.build_systems()
            runner.run_workloads(inp)
            runner.stop_systems()
            baselines = run_baselines(ctx, inp, only)
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
    results = {
        "version": 1, "started": started.isoformat(), "runtime_s": runtime,
        "args": {k: v for k, v in vars(args).items()}, "sizes": asdict(sizes),
        "host": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
                 "versions": versions()},
        "flush_window_s": args.flush_window,
        "catch_up_method": {n: runner.systems[n].catch_up_how for n in runner.systems},
        "inputs": {"sdist": inp.sdist_name, "tree_files": sizes.tree_files},
        "workloads": [
            {"key": k, "title": runner.titles[k],
             "results": {n: asdict(r) | {"caught_up_seconds": r.caught_up}
                         for n, r in runner.results[k].items()}}
            for k in runner.results],
        "baselines": baselines, "scale": scale, "profiles": runner.profiles,
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
