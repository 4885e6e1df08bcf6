"""How many FUSE and S3 requests common tools cost on a real mount: counted by the
daemon's own metrics (FUSE) and by the counting proxy (S3), so a change that adds
round trips fails here, not only in the benchmark."""

from __future__ import annotations

import errno
import os
import subprocess
import time
import urllib.request

import pytest
from counting_proxy import CountingProxy
from mounts import make_mount, require_fuse
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

from s3fuse.discovery_checks import WALKED_S

pytestmark = pytest.mark.fuse


def latency_samples(port: int, suffix: str) -> list:
    """The daemon's FUSE latency histogram samples named ``..._seconds_{suffix}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    name = f"s3fuse_fuse_operation_duration_seconds_{suffix}"
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def fuse_requests(port: int) -> dict[str, float]:
    """FUSE requests answered so far, by operation (the latency histogram's count)."""
    return {s.labels["operation"]: s.value for s in latency_samples(port, "count")}


def test_ls_l_asks_for_security_and_acl_xattrs_once(tmp_path, file_source):
    """``ls -l`` asks every file for ``security.selinux`` and
    ``system.posix_acl_access`` unless the device says "not supported": s3fuse keeps
    only ``user.*``, so it answers EOPNOTSUPP for the others, and 200 files cost a
    handful of getxattr requests, not 400. ``user.*`` attributes still work."""
    require_fuse()
    port = free_port()
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["-o", f"metrics_addr=127.0.0.1:{port}"]
    m.mount()
    try:
        d = m.p("many")
        os.mkdir(d)
        for i in range(200):
            with open(os.path.join(d, f"f{i:03}"), "wb") as f:
                f.write(b"x")
        os.setxattr(os.path.join(d, "f007"), "user.colour", b"blue")
        for name in ("security.selinux", "system.posix_acl_access", "trusted.t"):
            with pytest.raises(OSError) as exc:
                os.getxattr(os.path.join(d, "f001"), name)
            assert exc.value.errno == errno.EOPNOTSUPP, name
        before = fuse_requests(port).get("getxattr", 0)
        out = subprocess.run(["ls", "-l", d], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        asked = fuse_requests(port).get("getxattr", 0) - before
        assert out.count(" f") == 200
        assert asked <= 4, f"ls -l of 200 files made {asked} getxattr requests"
        assert os.getxattr(os.path.join(d, "f007"), "user.colour") == b"blue"
        with pytest.raises(OSError) as exc:
            os.getxattr(os.path.join(d, "f008"), "user.colour")
        assert exc.value.errno == errno.ENODATA
    finally:
        m.cleanup()


@pytest.fixture
def counted(tmp_path, moto_endpoint, s3_bucket):
    """A mount of a moto bucket through a counting proxy (not mounted yet), with the
    poller out of the way (its LISTs would blur the counts)."""
    require_fuse()
    proxy = CountingProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    m = make_mount(tmp_path, f"s3://{s3_bucket}/data", proxy.url)
    m.extra_args = ["--poll-interval", "3600"]
    try:
        yield m, proxy
    finally:
        m.cleanup()
        proxy.stop()


def gets(proxy: CountingProxy) -> int:
    """GETs so far (LISTs are GETs of the bucket; nothing here reads a file)."""
    with proxy.count_lock:
        return proxy.counts.get("GET", 0)


def test_one_listing_answers_name_and_etag_checks(counted):
    """Past the metadata TTL, a lookup of a known file (its ETag checked), a lookup of
    a missing name and an open in the same directory share one LIST (they made one
    each for names and for ETags before), and that LIST still shows a name created
    outside meanwhile and a change made outside."""
    m, proxy = counted
    for i in range(3):
        m.put(f"dir/f{i}", b"v1")
    m.mount()
    assert sorted(os.listdir(m.p("dir"))) == ["f0", "f1", "f2"]
    for i in range(3):
        os.stat(m.p(f"dir/f{i}"))
    time.sleep(1.3)  # past --metadata-ttl: the kernel and the mount ask again
    m.put("dir/new", b"outside")
    m.put("dir/f2", b"changed outside")
    before = gets(proxy)
    assert os.stat(m.p("dir/f0")).st_size == 2
    assert not os.path.exists(m.p("dir/missing"))
    with open(m.p("dir/f1"), "rb"):
        pass
    assert os.stat(m.p("dir/new")).st_size == len(b"outside")
    assert gets(proxy) - before == 1, f"{gets(proxy) - before} LISTs for one directory"
    with open(m.p("dir/f2"), "rb") as f:
        assert f.read() == b"changed outside"



def test_a_walk_of_a_small_tree_past_the_ttl_lists_it_once(counted):
    """``grep -r``: past the TTL, reading every file of a tree of 21 directories costs
    one listing of the whole tree (no delimiter) for the opens' checks, not one LIST
    per directory, and the walk still shows what changed outside anywhere in it: a
    new file deep down, a changed file, a deleted one."""
    m, proxy = counted
    m.put("proj/setup.py", b"setup")
    for top in range(4):
        for sub in range(4):
            for f in ("a", "b"):
                m.put(f"proj/d{top}/s{sub}/{f}", b"v1")
    m.mount()

    def walk() -> dict[str, bytes]:
        seen = {}
        for root, _, files in os.walk(m.p("proj")):
            for f in files:
                path = os.path.join(root, f)
                try:
                    with open(path, "rb") as fh:
                        seen[os.path.relpath(path, m.p("proj"))] = fh.read()
                except FileNotFoundError:
                    pass  # listed, then found deleted outside at its open's check
        return seen

    first = walk()
    assert len(first) == 33
    # past --metadata-ttl, and past the time a walk is taken as recent (a tree
    # walked a moment ago is not listed whole again)
    time.sleep(WALKED_S + 1.3)
    m.put("proj/d2/s3/new", b"outside")
    m.put("proj/d1/s0/a", b"changed outside")
    store, prefix = m.store()
    try:
        store.delete(prefix + "proj/d3/s1/b")
    finally:
        store.close()
    before = gets(proxy)
    second = walk()
    # one LIST, and one GET each for the bytes of the new and the changed file
    assert gets(proxy) - before == 1 + 2, f"{gets(proxy) - before} GETs for 21 directories"
    assert set(second) ^ set(first) == {"d2/s3/new", "d3/s1/b"}
    assert second["d2/s3/new"] == b"outside"
    assert second["d1/s0/a"] == b"changed outside"


def lookups_slower_than(port: int, seconds: float) -> float:
    """Lookups so far that took longer than ``seconds`` (a bucket bound of the
    latency histogram)."""
    buckets = {float(s.labels["le"]): s.value for s in latency_samples(port, "bucket")
               if s.labels["operation"] == "lookup"}
    return buckets[float("inf")] - buckets[seconds]


def test_rm_rf_of_a_directory_slower_to_list_than_the_ttl_does_not_wait_per_file(
        tmp_path, file_source):
    """``rm -rf`` of a directory that takes longer than the TTL to list (2,000 entries
    on moto): once the kernel's entries expire, each unlink makes a lookup, whose
    check waited for a new listing of the directory (10-19 s for 2,000 files on moto
    instead of under 4). A lookup now answers from the last listing while the next
    runs in the background: at most the first lookup after a quiet spell waits. The
    files still leave the bucket."""
    require_fuse()
    port = free_port()
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["-o", f"metrics_addr=127.0.0.1:{port}"]
    m.env = {"S3FUSE_TEST_FAULTS": "sleep@listing=1.3"}  # the TTL is 1 s
    store, prefix = m.store()
    try:
        for i in range(1500):
            store.put(f"{prefix}d/f{i:04}", b"x", {})
    finally:
        store.close()
    m.mount()
    try:
        names = os.listdir(m.p("d"))
        assert len(names) == 1500
        for n in names:
            os.lstat(m.p(f"d/{n}"))
        time.sleep(2.0)  # the kernel's entries and the mount's listing are past the TTL
        slow_before = lookups_slower_than(port, 1.0)
        subprocess.run(["rm", "-rf", m.p("d")], check=True, timeout=120)
        slow = lookups_slower_than(port, 1.0) - slow_before
        assert slow <= 2, f"{slow} lookups waited more than 1 s during rm -rf"
        assert not os.path.exists(m.p("d"))
        m.sync()
        assert not [k for k in m.objects() if k.startswith("d/")]
    finally:
        m.cleanup()
