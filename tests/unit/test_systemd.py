"""The shipped systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)


@needs_analyze
def test_service_template_verifies(tmp_path):
    instance = tmp_path / "s3fuse@demo.service"
    shutil.copy(SYSTEMD / "s3fuse@.service", instance)
    res = verify(instance)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # not even a warning
    text = instance.read_text()
    for needed in ("Type=notify", "KillSignal=SIGTERM", "TimeoutStopSec=", "Restart=on-failure",
                   "/var/cache/s3fuse/%i", "--foreground"):
        assert needed in text


@needs_analyze
def test_mount_unit_verifies_as_shipped():
    # verified in place, under its own name: systemd refuses a mount unit whose name
    # is not the escaped Where=
    res = verify(SYSTEMD / "mnt-data.mount")
    assert res.returncode == 0, res.stderr
    assert "Where=/mnt/data" in (SYSTEMD / "mnt-data.mount").read_text()


def minutes(value: str) -> float:
    return float(value[:-3]) * 60 if value.endswith("min") else float(value.rstrip("s"))


def test_drain_timeouts_fit_in_the_units_stop_timeouts():
    """A stop waits for the bucket up to the drain timeout (which is also the default
    of ``s3fuse umount --timeout``); systemd must not kill the daemon before that."""
    conf = dict(line.split("=", 1) for line in
                (SYSTEMD / "s3fuse-example.conf").read_text().splitlines()
                if line and not line.startswith("#"))
    service = (SYSTEMD / "s3fuse@.service").read_text()
    stop = minutes(re.search(r"^TimeoutStopSec=(\S+)", service, re.M).group(1))
    assert float(conf["S3FUSE_DRAIN_TIMEOUT"]) < stop
    mount = (SYSTEMD / "mnt-data.mount").read_text()
    drain = float(re.search(r"drain_timeout=(\d+)", mount).group(1))
    assert drain < minutes(re.search(r"^TimeoutSec=(\S+)", mount, re.M).group(1))
