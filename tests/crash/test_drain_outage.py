"""Drain on stop, S3 outages, --fsync=upload, and the EIO edge, through real mounts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from urllib.parse import urlparse

import pytest
from mounts import S3FUSE, Mount, daemon_pid, is_mounted, make_mount, tree, wait_dead
from servers import FaultProxy


def strict_json(text: str) -> dict:
    """JSON as the standard has it: Infinity and NaN (which Python's json accepts)
    are refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def status(path: str) -> dict:
    res = subprocess.run([S3FUSE, "status", "--json", path], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    st = strict_json(res.stdout)
    assert 0 <= st["oldest_pending_age_s"] < 3600, st["oldest_pending_age_s"]
    return st


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
def proxied(request, tmp_path, moto_endpoint, s3_bucket):
    """A mount through the fault proxy (extra mount arguments: the fixture's param)."""
    proxy = FaultProxy(urlparse(moto_endpoint).port)
    m = make_mount(tmp_path, f"s3://{s3_bucket}", proxy.url)
    m.extra_args = ["--drain-timeout", "8", *getattr(request, "param", [])]
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
    assert res.returncode != 0 and "3 files (" in res.stderr
    assert "still pending after" in res.stderr and "bucket unreachable" in res.stderr
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


def cli_run(*args: str, timeout: float = 60, **kw) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([S3FUSE, *args], capture_output=True, text=True, timeout=timeout,
                         **kw)
    return res, time.monotonic() - start


def run_on_a_terminal(args: list[str], timeout: float) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (as a user at a shell has it); returns the
    exit status and everything written to the terminal."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(timeout=10)
    return code, out.decode(errors="replace")


def test_umount_during_an_outage_says_what_waits_and_keep_pending_keeps_it(proxied):
    m, proxy, direct = proxied
    with open(m.p("a"), "wb") as f:
        f.write(b"a" * 1000)
    with open(m.p("b"), "wb") as f:
        f.write(b"b" * (3 << 20))
    proxy.set_mode("refuse")

    # a sync that gives up leaves a valid, finite status behind
    res, took = cli_run("sync", "--timeout", "2", m.path)
    assert res.returncode == 1 and took < 20, (took, res.stderr)
    st = status(m.path)
    assert st["dirty_files"] == 2 and st["dirty_bytes"] == 1000 + (3 << 20)
    assert st["last_error"]["transient"] is True

    # umount on a terminal: progress drawn in place, then the give-up message in words
    start = time.monotonic()
    code, out = run_on_a_terminal([S3FUSE, "umount", "--timeout", "3", m.path], timeout=60)
    took = time.monotonic() - start
    assert code == 1, out
    assert 3 <= took < 20, took
    assert "\runmounting: 2 files (3.0 MiB) pending" in out, out
    assert "2 files (3.0 MiB) still pending after 3.0 s, bucket unreachable (last error:" \
        in out, out
    assert f"the mount stays. Run `s3fuse umount --keep-pending {m.path}` to unmount " \
        "anyway; the next mount of this cache directory uploads them." in out, out
    assert "Traceback" not in out and "Operation not supported" not in out
    assert is_mounted(m.path)

    # Ctrl-C stops the waiting, not the mount
    proc = subprocess.Popen([S3FUSE, "umount", "--timeout", "300", m.path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first progress line: it is waiting now
    assert line.startswith("unmounting: 2 files (3.0 MiB) pending"), line
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 5
    assert proc.returncode == 130, (out, err)
    assert "stopped waiting; 2 files (3.0 MiB) still pending" in err, err
    assert "The mount stays and nothing is lost" in err and "Traceback" not in err
    assert is_mounted(m.path)
    assert open(m.p("a"), "rb").read() == b"a" * 1000  # still serving
    # and so does SIGTERM (kill)
    proc = subprocess.Popen([S3FUSE, "sync", m.path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("syncing: 2 files (3.0 MiB) pending")
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "stopped waiting; 2 files" in err, (out, err)
    assert is_mounted(m.path)

    # a forced unmount keeps everything in the journal
    pid = daemon_pid(m)
    res, took = cli_run("umount", "--keep-pending", m.path)
    assert res.returncode == 0 and took < 15, (took, res.stderr)
    assert f"unmounted {m.path}; 2 files (3.0 MiB) kept in the journal in {m.cache_dir}; " \
        "the next mount of this cache directory uploads them" in res.stdout, res.stdout
    wait_dead(pid, timeout=30)
    assert not is_mounted(m.path)
    assert direct.objects() == {}
    with open(os.path.join(m.cache_dir, "s3fuse.log")) as f:
        log = f.read()
    assert "unmounted without waiting for the bucket: 2 files (3.0 MiB) stay pending" in log
    # many failed attempts, one line each file: the rest went to DEBUG
    assert log.count("put b failed") == 1 and log.count("put a failed") == 1, log
    assert "s3fuse umount gave up waiting after 3.0 s" in log
    assert "s3fuse umount stopped waiting" in log

    # the next mount of the cache directory uploads them, once the bucket is back
    proxy.set_mode("pass")
    m.mount()
    m.umount()
    assert direct.objects() == {"a": b"a" * 1000, "b": b"b" * (3 << 20)}


@pytest.mark.parametrize("proxied", [["--cache-size", "1M"]], indirect=True)
def test_status_is_strict_json_while_writers_wait_for_room(proxied):
    m, proxy, direct = proxied
    proxy.set_mode("refuse")
    done = threading.Event()
    failures: list[BaseException] = []
    chunk = b"w" * (300 << 10)

    def writer() -> None:
        try:
            for i in range(6):  # 1.8 MiB in files of 300 KiB: over the 1 MiB limit
                with open(m.p(f"w{i}"), "wb") as f:
                    f.write(chunk)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        assert not done.wait(6), f"the writer did not wait for room: {failures}"
        st = status(m.path)  # strict: no Infinity while a writer waits
        assert st["dirty_bytes"] > 1 << 20 or st["dirty_files"] >= 3
        assert st["oldest_pending_age_s"] >= 2
        human = subprocess.run([S3FUSE, "status", m.path], capture_output=True, text=True,
                               timeout=30)
        assert human.returncode == 0 and "inf" not in human.stdout, human.stdout
    finally:
        proxy.set_mode("pass")
    assert done.wait(60), "the writer never got room once the bucket was back"
    assert not failures, failures
    m.sync()
    objects = direct.objects()
    assert {f"w{i}" for i in range(6)} <= set(objects)
    assert all(objects[f"w{i}"] == chunk for i in range(6))


def test_second_sigterm_stops_the_drain_and_keeps_pending(proxied):
    m, proxy, direct = proxied
    with open(m.p("kept"), "wb") as f:
        f.write(b"kept across the stop")
    proxy.set_mode("refuse")
    pid = daemon_pid(m)
    os.kill(pid, signal.SIGTERM)
    time.sleep(1)
    assert is_mounted(m.path)  # draining (for up to --drain-timeout 8)
    start = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_dead(pid, timeout=30)
    assert time.monotonic() - start < 5
    with open(os.path.join(m.cache_dir, "s3fuse.log")) as f:
        log = f.read()
    assert "SIGTERM received again: unmounting now" in log
    assert "1 file (20 bytes) stay pending in the journal" in log
    subprocess.run(["fusermount3", "-uz", m.path], capture_output=True, timeout=30,
                   check=False)
    proxy.set_mode("pass")
    m.mount()
    m.sync()
    assert direct.objects() == {"kept": b"kept across the stop"}


def test_work_in_an_unlisted_directory_during_an_outage_then_merge(proxied):
    m, proxy, direct = proxied
    direct.put("dir/old", b"from the bucket")
    direct.put("dir/clash", b"the bucket's clash")
    assert os.listdir(m.path) == ["dir"]  # the root is listed, "dir" is not yet
    proxy.set_mode("refuse")
    start = time.monotonic()
    with open(m.p("dir/new1"), "wb") as f:
        f.write(b"made during the outage")
    os.rename(m.p("dir/new1"), m.p("dir/new2"))
    with open(m.p("dir/clash"), "wb") as f:
        f.write(b"the mount's clash")
    os.mkdir(m.p("dir/sub"))
    with open(m.p("dir/sub/f"), "wb") as f:
        f.write(b"deeper")
    # reading it shows what the mount knows
    assert sorted(os.listdir(m.p("dir"))) == ["clash", "new2", "sub"]
    assert open(m.p("dir/new2"), "rb").read() == b"made during the outage"
    assert time.monotonic() - start < 30
    with pytest.raises(OSError):  # moving a directory the mount cannot list: refused
        os.rename(m.p("dir"), m.p("moved"))

    proxy.set_mode("pass")
    deadline = time.monotonic() + 60
    while "old" not in os.listdir(m.p("dir")):  # listed again after a few seconds
        assert time.monotonic() < deadline, "the directory was never merged"
        time.sleep(0.5)
    assert sorted(os.listdir(m.p("dir"))) == ["clash", "new2", "old", "sub"]
    m.sync()
    objects = direct.objects()
    # nothing lost: S3 won the name both sides made, the mount's copy is in lost+found
    assert objects == {"dir/old": b"from the bucket", "dir/clash": b"the bucket's clash",
                       "dir/new2": b"made during the outage", "dir/sub/": b"",
                       "dir/sub/f": b"deeper"}
    assert open(m.p("dir/clash"), "rb").read() == b"the bucket's clash"
    conflicts = status(m.path)["conflicts"]
    assert [c["path"] for c in conflicts] == ["dir/clash"]
    lost = os.path.join(m.path, conflicts[0]["lost_found"])
    assert open(lost, "rb").read() == b"the mount's clash"
    with open(os.path.join(m.cache_dir, "s3fuse.log")) as f:
        log = f.read()
    assert log.count("cannot list directory dir/") == 1, log
    assert "merged with what the mount made meanwhile" in log
    assert "Traceback" not in log
