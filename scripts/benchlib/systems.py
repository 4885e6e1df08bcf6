"""The systems under test: s3fuse, s3fs, rclone mount, a local directory, reffs."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.common import (
    ACCESS_KEY,
    HERE,
    HOST,
    SECRET_KEY,
    VENV_BIN,
    StepFailed,
    StepTimeout,
    log,
    run,
    wait_mounted,
)
from benchlib.procs import Registry, free_port, kill_pid, lazy_unmount, proc_alive

# ======================================================================================
# Systems under test
# ======================================================================================

@dataclass
class Ctx:
    args: argparse.Namespace
    workdir: Path
    reg: Registry
    s3_port: int = 0  # the S3 server: moto, or Ceph RGW with --rgw
    proxy_ports: dict[str, int] = field(default_factory=dict)
    control_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    s3env: dict[str, str] = field(default_factory=dict)
    _client: object = None

    def counts(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"http://{HOST}:{self.control_port}/", timeout=30) as r:
            return json.loads(r.read())

    def client(self):
        """boto3 client straight to the S3 server (not counted): seeding and bucket checks."""
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client(
                "s3", endpoint_url=f"http://{HOST}:{self.s3_port}", region_name="us-east-1",
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
        # empty, as every mount starts (an interrupted or partial run leaves files)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)

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
               "--flush-window", str(self.ctx.args.flush_window), "--drain-timeout", "300",
               *shlex.split(self.ctx.args.s3fuse_options)]
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

