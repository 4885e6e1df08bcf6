"""Operating a mount: status, sync (all or some paths), mount(8) and fstab, logs."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from mounts import S3FUSE, is_mounted, make_mount

STATUS_KEYS = {"dirty_files", "dirty_bytes", "oldest_pending_age_s", "uploads_in_flight",
               "conflicts", "not_exported", "skipped_keys", "errors", "cache_bytes",
               "cache_limit_bytes", "capabilities"}


def status(path: str) -> dict:
    res = subprocess.run([S3FUSE, "status", "--json", path], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_status_counts_go_up_with_writes_and_to_zero_after_sync(tmp_path, file_source):
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["--flush-window", "3600"]
    try:
        m.mount()
        st = status(m.path)
        assert set(st) >= STATUS_KEYS
        assert isinstance(st["capabilities"], dict) and "conditional_put" in st["capabilities"]
        assert st["dirty_files"] == 0
        for i in range(5):
            with open(m.p(f"f{i}"), "wb") as f:
                f.write(b"x" * 1000)
        st = status(m.path)
        assert st["dirty_files"] == 5 and st["dirty_bytes"] == 5000
        assert st["oldest_pending_age_s"] >= 0
        human = subprocess.run([S3FUSE, "status", m.path], capture_output=True, text=True,
                               timeout=30)
        assert "pending: 5 files (4.9 KiB); oldest change" in human.stdout
        m.sync()
        st = status(m.path)
        assert (st["dirty_files"], st["dirty_bytes"], st["uploads_in_flight"]) == (0, 0, 0)
    finally:
        m.cleanup()


def test_sync_of_some_paths_uploads_just_those(tmp_path, file_source):
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["--flush-window", "3600"]
    try:
        m.mount()
        for d in ("a", "b"):
            os.mkdir(m.p(d))
            for i in range(3):
                with open(m.p(f"{d}/f{i}"), "wb") as f:
                    f.write(d.encode())
        res = subprocess.run([S3FUSE, "sync", m.path, m.p("a")], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "under" in res.stdout
        objs = m.objects()
        assert {k for k in objs if k.startswith("a/f")} == {"a/f0", "a/f1", "a/f2"}
        assert not any(k.startswith("b/f") for k in objs)
        res = subprocess.run([S3FUSE, "sync", m.path, "/etc"], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode != 0 and "not inside the mount" in res.stderr
    finally:
        m.cleanup()


def test_sync_reports_progress_without_a_terminal(tmp_path, file_source):
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["--flush-window", "3600", "--max-uploads", "1"]
    try:
        m.mount()
        for i in range(1500):
            with open(m.p(f"f{i}"), "wb") as f:
                f.write(b"y")
        start = time.monotonic()
        res = subprocess.run([S3FUSE, "sync", m.path], capture_output=True, text=True,
                             timeout=300)
        took = time.monotonic() - start
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[-1].startswith("s3fuse: everything pending")
        if took > 2.5:  # a progress line every 2 s without a terminal
            assert any(line.startswith("syncing: ") for line in lines)
    finally:
        m.cleanup()


def test_mount_t_fuse_s3fuse_and_plain_umount_drains(tmp_path, file_source):
    if not os.path.exists("/sbin/mount.fuse.s3fuse"):
        pytest.skip("scripts/install puts /sbin/mount.fuse.s3fuse in place")
    mp = tmp_path / "mnt"
    mp.mkdir()
    cache = tmp_path / "cache"
    res = subprocess.run(["mount", "-t", "fuse.s3fuse", file_source, str(mp), "-o",
                          f"cache_dir={cache},flush_window=3600,_netdev"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""  # a mount helper is quiet on success
    try:
        assert is_mounted(str(mp))
        with open(mp / "via-mount", "wb") as f:
            f.write(b"mounted by mount(8)")
        pid = int(os.getxattr(str(mp), "user.s3fuse.pid"))
        assert subprocess.run(["umount", str(mp)], timeout=60).returncode == 0
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        bucket = file_source[len("file://"):]
        with open(os.path.join(bucket, "via-mount"), "rb") as f:
            assert f.read() == b"mounted by mount(8)"
    finally:
        if is_mounted(str(mp)):
            subprocess.run(["fusermount3", "-uz", str(mp)], timeout=30, check=False)


def test_fstab_line_is_understood(tmp_path, file_source):
    if not os.path.exists("/sbin/mount.fuse.s3fuse"):
        pytest.skip("scripts/install puts /sbin/mount.fuse.s3fuse in place")
    mp = tmp_path / "mnt"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{file_source} {mp} fuse.s3fuse "
                     f"_netdev,nofail,cache_dir={tmp_path / 'cache'},flush_window=5 0 0\n")
    res = subprocess.run(["mount", "--fstab", str(fstab), str(mp)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        assert is_mounted(str(mp))
        assert subprocess.run([S3FUSE, "umount", str(mp)], timeout=60).returncode == 0
    finally:
        if is_mounted(str(mp)):
            subprocess.run(["fusermount3", "-uz", str(mp)], timeout=30, check=False)


def test_no_secret_in_the_log_of_a_working_mount(tmp_path, moto_endpoint, s3_bucket):
    secret = "SECRET-do-not-log-4f9a1c"
    m = make_mount(tmp_path, f"s3://{s3_bucket}", moto_endpoint)
    m.extra_args = ["--log-level", "DEBUG"]
    m.env = {"AWS_SECRET_ACCESS_KEY": secret}
    try:
        m.mount()
        with open(m.p("f"), "wb") as f:
            f.write(b"data")
        os.rename(m.p("f"), m.p("g"))
        m.sync()
        os.unlink(m.p("g"))
        m.umount(fsck=False)
        with open(os.path.join(m.cache_dir, "s3fuse.log")) as f:
            log = f.read()
        assert "DEBUG" in log or "INFO" in log
        assert secret not in log
    finally:
        m.cleanup()
