"""The shipped systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

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
def test_mount_unit_example_verifies(tmp_path):
    unit = tmp_path / "mnt-my\\x2dbucket.mount"
    shutil.copy(SYSTEMD / "s3fuse-example.mount", unit)
    res = verify(unit)
    assert res.returncode == 0, res.stderr
