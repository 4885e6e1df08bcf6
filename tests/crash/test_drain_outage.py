"""Drain on stop, S3 outages, --fsync=upload, and the EIO edge, through real mounts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from urllib.parse import urlparse

import pytest
from mounts import S3FUSE, Mount, make_mount
from servers import FaultProxy
from test_crash_points import daemon_pid, tree, wait_dead


def status(path: str) -> dict:
    res = subprocess.run([S3FUSE, "status", "--json", path], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def write_files(root: str, n: int) -> dict[str, bytes]:
    files = {}
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        body = f"file {i} ".encode() * (i % 7 + 1)
        with open(os.path.join(root, f"f{i:03d}"), "wb") as f:
            f.write(body)
        files[f"f{i:03d}"] = body
    return files


@pytest.mark.parametrize("how", ["umount", "sigterm"])
def test_stop_uploads_everything_pending(tmp_path, file_source, how):
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["--flush-window", "3600"]  # nothing would go up on its own
    try:
        m.mount()
        files = write_files(m.p("batch"), 500)
        assert status(m.path)["dirty_files"] >= 500
        if how == "umount":
            m.umount()
        else:
            pid = daemon_pid(m)
            os.kill(pid, signal.SIGTERM)
            wait_dead(pid, timeout=120)
            assert not os.path.ismount(m.path)
        objects = m.objects()
        assert {k: v for k, v in objects.items() if k.startswith("batch/f")} == \
            {f"batch/{k}": v for k, v in files.items()}
        m.cache_dir += "-wiped"  # a fresh cache: everything must come from the bucket
        m.mount()
        assert tree(m.p("batch")) == files
    finally:
        m.cleanup()


def test_fsync_upload_waits_for_the_bucket(tmp_path, file_source):
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["--flush-window", "3600", "--fsync", "upload"]
    try:
        m.mount()
        with open(m.p("durable"), "wb") as f:
            f.write(b"in the bucket when fsync returns")
            f.flush()
            os.fsync(f.fileno())
            assert m.objects() == {"durable": b"in the bucket when fsync returns"}
    finally:
        m.cleanup()


def test_exception_in_a_handler_is_eio_and_the_mount_lives(tmp_path, file_source):
    m = make_mount(tmp_path, file_source, None)
    m.env = {"S3FUSE_TEST_FAULTS": "raise@getxattr"}
    try:
        m.mount()
        with open(m.p("f"), "w") as f:
            f.write("x")
        with pytest.raises(OSError) as exc:
            os.getxattr(m.p("f"), "user.anything")
        assert exc.value.errno == errno.EIO
        with open(m.p("f")) as f:  # still serving
            assert f.read() == "x"
        os.mkdir(m.p("after"))
        assert sorted(os.listdir(m.path)) == ["after", "f"]
        with open(os.path.join(m.cache_dir, "s3fuse.log")) as f:
            log = f.read()
        assert "injected fault in getxattr" in log and "Traceback" in log
    finally:
        m.cleanup()


@pytest.fixture
def proxied(tmp_path, moto_endpoint, s3_bucket):
    proxy = FaultProxy(urlparse(moto_endpoint).port)
    m = make_mount(tmp_path, f"s3://{s3_bucket}", proxy.url)
    m.extra_args = ["--drain-timeout", "8"]
    m.mount()
    # the same bucket seen directly, not through the proxy
    direct = Mount(source=m.source, path=m.path, cache_dir=m.cache_dir,
                   endpoint=moto_endpoint)
    yield m, proxy, direct
    proxy.set_mode("pass")
    m.cleanup()
    proxy.stop()


def test_outage_keeps_serving_and_uploads_once_when_back(proxied):
    m, proxy, direct = proxied
    with open(m.p("a"), "wb") as f:
        f.write(b"before")
    m.sync()
    proxy.set_mode("refuse")
    with open(m.p("a"), "wb") as f:
        f.write(b"during")
    for name in ("b", "c"):
        with open(m.p(name), "wb") as f:
            f.write(name.encode() * 1000)
    assert open(m.p("a"), "rb").read() == b"during"  # served from the cache
    assert sorted(os.listdir(m.path)) == ["a", "b", "c"]
    deadline = time.monotonic() + 60
    while not status(m.path)["errors"]:
        assert time.monotonic() < deadline, "no upload was attempted during the outage"
        time.sleep(0.5)
    st = status(m.path)
    assert st["dirty_files"] == 3
    res = subprocess.run([S3FUSE, "sync", "--timeout", "3", m.path], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0 and "could not upload" in res.stderr
    assert direct.objects() == {"a": b"before"}  # nothing partial, nothing lost
    proxy.set_mode("pass")
    m.sync()
    assert direct.objects() == {"a": b"during", "b": b"b" * 1000, "c": b"c" * 1000}
    assert status(m.path)["requests"]["put"] == 4  # each pending file went up once


def test_frozen_server_stalls_then_everything_converges(tmp_path, moto_server, s3_bucket):
    """SIGSTOP the S3 server mid-workload for a few seconds, then SIGCONT."""
    server = [moto_server.proc.pid]
    moto_endpoint = moto_server.endpoint
    m = make_mount(tmp_path, f"s3://{s3_bucket}", moto_endpoint)
    try:
        m.mount()
        files = write_files(m.p("w"), 30)
        for pid in server:
            os.kill(pid, signal.SIGSTOP)
        try:
            more = write_files(m.p("x"), 30)  # local writes do not wait for the bucket
            time.sleep(3)
        finally:
            for pid in server:
                os.kill(pid, signal.SIGCONT)
        m.sync()
        objects = m.objects()
        files_in = {k: v for k, v in objects.items() if not k.endswith("/")}
        assert {k[2:]: v for k, v in files_in.items() if k.startswith("w/")} == files
        assert {k[2:]: v for k, v in files_in.items() if k.startswith("x/")} == more
    finally:
        m.cleanup()


def test_unreachable_bucket_on_stop_keeps_data_for_next_mount(proxied):
    m, proxy, direct = proxied
    with open(m.p("precious"), "wb") as f:
        f.write(b"keep me")
    proxy.set_mode("refuse")
    pid = daemon_pid(m)
    os.kill(pid, signal.SIGTERM)
    wait_dead(pid, timeout=60)  # gives up after --drain-timeout 8
    with open(os.path.join(m.cache_dir, "s3fuse.log")) as f:
        log = f.read()
    assert "stay pending in the journal" in log
    assert direct.objects() == {}
    proxy.set_mode("pass")
    subprocess.run(["fusermount3", "-uz", m.path], capture_output=True, timeout=30,
                   check=False)
    m.mount()
    m.sync()
    assert direct.objects() == {"precious": b"keep me"}


def test_full_cache_disk_gives_enospc_and_loses_nothing(tmp_path, file_source):
    cache = tmp_path / "cache"
    cache.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(cache)],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    m = make_mount(tmp_path, file_source, None)
    m.cache_dir = str(cache)
    m.extra_args = ["--flush-window", "3600"]
    try:
        m.mount()
        with open(m.p("small"), "wb") as f:
            f.write(b"acknowledged before the disk filled")
        with pytest.raises(OSError) as exc, open(m.p("huge"), "wb") as f:
            for _ in range(64):
                f.write(b"z" * (1 << 20))
                f.flush()
        assert exc.value.errno == errno.ENOSPC
        os.unlink(m.p("huge"))  # room again once its last handle is released
        deadline = time.monotonic() + 20
        while shutil.disk_usage(cache).free < (8 << 20):
            assert time.monotonic() < deadline, "the cache space was never freed"
            time.sleep(0.1)
        with open(m.p("after"), "wb") as f:  # and the mount keeps working
            f.write(b"still writable")
        m.umount()  # also runs fsck: the journal is consistent
        objects = m.objects()
        assert objects["small"] == b"acknowledged before the disk filled"
        assert objects["after"] == b"still writable" and "huge" not in objects
    finally:
        m.cleanup()
        subprocess.run(["umount", "-l", str(cache)], capture_output=True, timeout=30,
                       check=False)
