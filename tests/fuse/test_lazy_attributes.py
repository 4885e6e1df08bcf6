"""Attributes of listed objects load lazily, through a real mount.

A listing creates entries from LIST data alone; the HEAD that reads an object's
attribute headers happens when something needs them (lookup, stat, open). These tests
count the requests that reach the S3 server, and check that what users see is exact
anyway: modes, owners, symlinks and special files after a fresh-cache remount, and the
entry types readdir reports.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from mounts import make_mount, require_fuse
from counting_proxy import CountingProxy

pytestmark = pytest.mark.fuse


@pytest.fixture
def counted(tmp_path, moto_endpoint, s3_bucket):
    """A mount of a moto bucket through a counting proxy (not mounted yet)."""
    require_fuse()
    port = int(moto_endpoint.rsplit(":", 1)[1])
    proxy = CountingProxy(port)
    m = make_mount(tmp_path, f"s3://{s3_bucket}/data", proxy.url)
    try:
        yield m, proxy
    finally:
        m.cleanup()
        proxy.stop()


def test_listing_heads_nothing_and_stat_loads_each_entry_once(counted):
    m, proxy = counted
    n = 60
    for i in range(n):
        m.put(f"dir/f{i:03d}", b"x" * i, {"mode": str(stat.S_IFREG | 0o640), "uid": "123"})
    m.put("dir/big", b"b" * 10_000, {"mode": str(stat.S_IFREG | 0o600)})
    m.put("dir/link", b"f001", {"mode": str(stat.S_IFLNK | 0o777)})
    m.put("dir/sub/", b"", {"mode": str(stat.S_IFDIR | 0o700)})
    m.put("dir/sub/inner", b"", {})
    m.mount()
    os.lstat(m.p("dir"))
    before = proxy.heads()
    names = sorted(os.listdir(m.p("dir")))
    assert len(names) == n + 3
    # types readdir can know from the listing alone: no stat, no HEAD
    with os.scandir(m.p("dir")) as it:
        kinds = {e.name: e for e in it}
    assert kinds["sub"].is_dir(follow_symlinks=False)
    assert kinds["big"].is_file(follow_symlinks=False)
    assert proxy.heads() == before, "listing a directory must not HEAD its entries"

    # ls -l: every entry's real attributes, one HEAD each
    st = {name: os.lstat(m.p(f"dir/{name}")) for name in names}
    assert proxy.heads() - before == len(names)
    assert st["f010"].st_mode == stat.S_IFREG | 0o640 and st["f010"].st_uid == 123
    assert st["f010"].st_size == 10
    assert st["big"].st_mode == stat.S_IFREG | 0o600
    assert stat.S_ISLNK(st["link"].st_mode) and os.readlink(m.p("dir/link")) == "f001"
    assert st["sub"].st_mode == stat.S_IFDIR | 0o700
    # a small object may be a symlink until its headers are read: readdir says
    # "unknown" for it, so scandir asks, and gets the truth
    with os.scandir(m.p("dir")) as it:
        kinds = {e.name: e for e in it}
    assert kinds["link"].is_symlink() and not kinds["f005"].is_symlink()
    # loaded once: stat again (past the metadata TTL) asks nothing more
    time.sleep(1.2)  # past --metadata-ttl: the kernel asks the daemon again
    again = proxy.heads()
    for name in names:
        os.lstat(m.p(f"dir/{name}"))
    assert proxy.heads() == again


@pytest.mark.parametrize("unmounted", ["file", "s3"], indirect=True)
def test_attributes_survive_a_fresh_cache_remount(unmounted):
    m = unmounted
    require_fuse()
    m.mount()
    os.mkdir(m.p("d"), 0o700)
    with open(m.p("d/secret"), "wb") as f:
        f.write(b"s")
    os.chmod(m.p("d/secret"), 0o600)
    os.chown(m.p("d/secret"), 4321, 8765)
    os.symlink("secret", m.p("d/lnk"))
    os.mkfifo(m.p("d/fifo"), 0o620)
    os.utime(m.p("d/secret"), ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    before = {n: os.lstat(m.p(f"d/{n}")) for n in ("secret", "lnk", "fifo")}
    m.umount()
    m.cache_dir += "-fresh"
    m.mount()
    with os.scandir(m.p("d")) as it:
        types = {e.name: (e.is_file(follow_symlinks=False), e.is_symlink()) for e in it}
    assert types == {"secret": (True, False), "lnk": (False, True), "fifo": (False, False)}
    d = os.lstat(m.p("d"))
    assert d.st_mode == stat.S_IFDIR | 0o700
    for name, old in before.items():
        new = os.lstat(m.p(f"d/{name}"))
        assert (new.st_mode, new.st_uid, new.st_gid, new.st_mtime_ns) == \
            (old.st_mode, old.st_uid, old.st_gid, old.st_mtime_ns), name
    assert os.readlink(m.p("d/lnk")) == "secret"
    with open(m.p("d/secret"), "rb") as f:
        assert f.read() == b"s"
