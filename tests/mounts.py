"""Real mounts for tests: ``s3fuse mount`` run as a user runs it.

``mount`` is parametrized over the embedded ``file://`` store and S3 (the moto server
the suite starts on 127.0.0.1); ``file_mount`` is the file store only, for tests
whose point is not the backend. Each mount gets its own cache directory and a short
flush window; teardown unmounts (lazily if it must) and never leaves a dead mount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from s3fuse.store import open_store

S3FUSE = os.path.join(os.path.dirname(sys.executable), "s3fuse")

def require_fuse() -> None:
    """Skip (with the reason) where real mounts cannot run."""
    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0 and shutil.which("fusermount3")):
        pytest.skip("real mounts need /dev/fuse, fusermount3 and root")


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


@dataclass
class Mount:
    """One s3fuse mount under test, and a direct view of its bucket."""

    source: str
    path: str
    cache_dir: str
    endpoint: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    fsck_allow: tuple[str, ...] = ()

    def args(self) -> list[str]:
        a = [S3FUSE, "mount", self.source, self.path, "--cache-dir", self.cache_dir,
             "--flush-window", "1", "--drain-timeout", "60", *self.extra_args]
        if self.endpoint:
            a += ["--endpoint-url", self.endpoint]
        return a

    def mount(self, wait_probe: bool = True) -> subprocess.CompletedProcess:
        """Mount; with ``wait_probe``, return once the capability probe (which runs
        after the mount is up) has answered, so that tests counting requests start
        from a quiet mount."""
        res = subprocess.run(self.args(), capture_output=True, text=True, timeout=60,
                             env={**os.environ, **self.env})
        assert res.returncode == 0, f"mount failed: {res.stdout} {res.stderr}"
        assert is_mounted(self.path)
        deadline = time.monotonic() + 60
        while wait_probe:
            try:
                status = json.loads(os.getxattr(self.path, "user.s3fuse.status"))
            except OSError:
                break  # (a test injecting faults into getxattr: nothing to wait on)
            if not status["capabilities"]["pending"]:
                break
            assert time.monotonic() < deadline, "the capability probe did not answer"
            time.sleep(0.02)
        return res

    def umount(self, fsck: bool = True) -> None:
        """Unmount (everything pending goes up first), then, like S3QL's tests, check
        the journal against the bucket: after a clean unmount fsck must find nothing
        but what outside writers left (``fsck_allow``)."""
        res = subprocess.run([S3FUSE, "umount", self.path], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, f"umount failed: {res.stdout} {res.stderr}"
        assert not is_mounted(self.path)
        if fsck:
            from fsck_helper import assert_fsck_clean

            assert_fsck_clean(self.cache_dir, self.source, self.endpoint,
                              allow=self.fsck_allow)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def sync(self) -> None:
        res = subprocess.run([S3FUSE, "sync", self.path], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, f"sync failed: {res.stdout} {res.stderr}"

    def p(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    # --- the bucket, seen directly -------------------------------------------------
    def store(self):
        store, prefix = open_store(self.source, endpoint_url=self.endpoint)
        return store, prefix

    def objects(self) -> dict[str, bytes]:
        """Every object under the mount's prefix: relative key -> bytes."""
        store, prefix = self.store()
        try:
            out = {}
            token = None
            while True:
                page = store.list(prefix, None, token)
                for obj in page.objects:
                    if ".s3fuse-probe" in obj.key:
                        continue
                    out[obj.key[len(prefix):]] = store.get(obj.key)
                token = page.next_token
                if token is None:
                    return out
        finally:
            store.close()

    def head(self, rel_key: str) -> dict[str, str]:
        store, prefix = self.store()
        try:
            return store.head(prefix + rel_key).metadata or {}
        finally:
            store.close()

    def put(self, rel_key: str, body: bytes, metadata: dict[str, str] | None = None) -> None:
        store, prefix = self.store()
        try:
            store.put(prefix + rel_key, body, metadata or {})
        finally:
            store.close()

    def cleanup(self) -> None:
        if not is_mounted(self.path):
            return
        subprocess.run([S3FUSE, "umount", self.path], capture_output=True, timeout=120,
                       check=False)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", self.path], capture_output=True, timeout=30,
                           check=False)
        deadline = time.monotonic() + 10
        while is_mounted(self.path) and time.monotonic() < deadline:
            time.sleep(0.1)


def make_mount(tmp_path: Path, source: str, endpoint: str | None) -> Mount:
    mp = tmp_path / "mnt"
    mp.mkdir()
    return Mount(source=source, path=str(mp), cache_dir=str(tmp_path / "cache"),
                 endpoint=endpoint)


# --- helpers of the crash tests -------------------------------------------------------

def daemon_pid(m: Mount) -> int:
    """The pid of the daemon serving ``m`` (from its control xattr)."""
    return int(os.getxattr(m.path, "user.s3fuse.pid"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, "the daemon did not die at the crash point"
        time.sleep(0.05)


def tree(root: str) -> dict[str, bytes | None]:
    """Relative path -> bytes (files) or None (directories)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out
