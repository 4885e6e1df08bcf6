"""A single-node Ceph cluster with an S3 gateway (RGW) on 127.0.0.1, for tests.

``scripts/ceph-rgw`` does the work (one mon, one BlueStore OSD, radosgw, everything
under one directory); this is the Python side, shaped like ``servers.MotoServer``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ceph-rgw"
#: what scripts/ceph-rgw start needs on PATH
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool",
            "monmaptool")
#: Ceph's admin sockets live under the directory; unix socket paths are short
MAX_DIR_LEN = 70


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None if it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"Ceph RGW is not installed ({', '.join(missing)} missing; "
                f"run: bash scripts/ceph-rgw install)")
    if os.geteuid() != 0:
        return "a Ceph RGW test cluster needs root"
    return None


class RgwServer:
    """Ceph RGW on 127.0.0.1:<free port>, with an S3 user.

    ``access_key``/``secret_key``: the user's keys (random if not given). ``directory``:
    where the cluster lives (a new temporary directory if not given, removed on stop;
    a given one keeps its ``log/`` after stop).
    """

    def __init__(self, directory: str | os.PathLike | None = None, *,
                 access_key: str | None = None, secret_key: str | None = None,
                 start_timeout: float = 300, stop_timeout: float = 120) -> None:
        self._own_dir = directory is None or len(str(directory)) > MAX_DIR_LEN
        self.directory = Path(tempfile.mkdtemp(prefix="s3fuse-rgw-", dir="/tmp")
                              if self._own_dir else directory)
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.endpoint = ""
        self.started = False

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        if self.access_key:
            env["RGW_ACCESS_KEY"] = self.access_key
        if self.secret_key:
            env["RGW_SECRET_KEY"] = self.secret_key
        # Each step of the script has its own timeout; this bounds the whole.
        env.setdefault("CEPH_RGW_TIMEOUT", str(int(max(30, timeout / 3))))
        # If this process dies without stopping the cluster, the script's watcher does.
        env["CEPH_RGW_OWNER_PID"] = str(os.getpid())
        return subprocess.run(["bash", str(SCRIPT), command, str(self.directory)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env=env)

    def start(self) -> RgwServer:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        try:
            res = self._run("start", self.start_timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"scripts/ceph-rgw start did not finish within "
                               f"{self.start_timeout:.0f} s") from None
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"scripts/ceph-rgw start failed ({res.returncode}): "
                               f"{(res.stderr + res.stdout)[-3000:]}")
        values = {}
        for line in (self.directory / "rgw.env").read_text().splitlines():
            name, _, value = line.partition("=")
            values[name] = value
        self.endpoint = values["RGW_ENDPOINT"]
        self.access_key = values["AWS_ACCESS_KEY_ID"]
        self.secret_key = values["AWS_SECRET_ACCESS_KEY"]
        self.started = True
        return self

    def stop(self) -> None:
        """Stop rgw, then the osd, then the mon (the script's order), remove the data."""
        try:
            self._run("stop", self.stop_timeout)
        finally:
            self.started = False
            if self._own_dir:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RgwServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
