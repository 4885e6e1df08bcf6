"""Entry types from the listing alone (``--types-from-listing``), through a real
mount: ``find`` over small objects makes no HEAD per file, ``ls -l`` still shows the
headers' modes and owners, and a symlink or FIFO stored as a small object (with
s3fuse's or s3fs's headers) shows as one from its first lookup on, with a new inode.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from mounts import make_mount, require_fuse
from counting_proxy import CountingProxy

pytestmark = pytest.mark.fuse

N_OURS, N_BARE = 40, 10


@pytest.fixture(params=["file", "s3"])
def typed(request, tmp_path):
    """(a mount not mounted yet with types from the listing, its counting proxy or
    None on the file store)."""
    require_fuse()
    proxy = None
    if request.param == "file":
        root = tmp_path / "bucket"
        root.mkdir()
        m = make_mount(tmp_path, f"file://{root}", None)
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        proxy = CountingProxy(int(endpoint.rsplit(":", 1)[1]))
        m = make_mount(tmp_path, f"s3://{request.getfixturevalue('s3_bucket')}/data",
                       proxy.url)
    m.extra_args.append("--types-from-listing")
    try:
        yield m, proxy
    finally:
        m.cleanup()
        if proxy is not None:
            proxy.stop()


def _find(m, *args: str) -> set[str]:
    out = subprocess.run(["find", ".", *args], cwd=m.p("d"), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return {line[2:] for line in out.splitlines() if line.startswith("./")}


def _heads(proxy: CountingProxy | None) -> int:
    return proxy.heads() if proxy is not None else 0


def test_find_stats_no_small_file_and_types_show_from_the_first_lookup(typed):
    m, proxy = typed
    regular = {f"f{i:03d}" for i in range(N_OURS)} | {f"g{i:03d}" for i in range(N_BARE)}
    for i in range(N_OURS):
        m.put(f"d/f{i:03d}", b"x" * (i + 1),
              {"mode": str(stat.S_IFREG | 0o640), "uid": "123", "gid": "456"})
    for i in range(N_BARE):
        m.put(f"d/g{i:03d}", b"y" * (i + 1))  # no headers: the mount's defaults
    m.put("d/ln_ours", b"f000", {"mode": str(stat.S_IFLNK | 0o777), "uid": "123",
                                 "gid": "456", "mtime": "1700000000.5"})
    m.put("d/ln_s3fs", b"f001", {"mode": str(stat.S_IFLNK | 0o777), "mtime": "1700000000"})
    m.put("d/fifo", b"", {"mode": str(stat.S_IFIFO | 0o620), "uid": "7", "gid": "8"})
    m.put("d/sub/inner", b"i")
    m.mount()
    os.lstat(m.p("d"))

    # a plain find: every name, no HEAD for any file (one for the subdirectory's marker)
    before = _heads(proxy)
    names = _find(m)
    assert names == regular | {"ln_ours", "ln_s3fs", "fifo", "sub", "sub/inner"}
    if proxy is not None:
        assert proxy.heads() - before <= 1, "find HEADs small files"

    # readdir called them files; their first lookup reads the headers: the symlinks
    # and the FIFO take their names with new inodes, the regular files keep theirs
    with os.scandir(m.p("d")) as it:
        listed = {e.name: (e.inode(), e.is_file(follow_symlinks=False)) for e in it}
    assert all(is_file for name, (_, is_file) in listed.items() if name != "sub")
    st = {name: os.lstat(m.p(f"d/{name}")) for name in listed}
    for name in ("ln_ours", "ln_s3fs", "fifo"):
        assert st[name].st_ino != listed[name][0], name
    for name in regular:
        assert st[name].st_ino == listed[name][0], name
    assert st["ln_ours"].st_mode == stat.S_IFLNK | 0o777 and st["ln_ours"].st_uid == 123
    assert st["fifo"].st_mode == stat.S_IFIFO | 0o620 and st["fifo"].st_gid == 8
    assert os.readlink(m.p("d/ln_ours")) == "f000"
    assert os.readlink(m.p("d/ln_s3fs")) == "f001"
    with open(m.p("d/ln_s3fs"), "rb") as f:  # followed, to f001's bytes
        assert f.read() == b"xx"

    # now that they are known, readdir and find say what they are
    assert _find(m, "-type", "l") == {"ln_ours", "ln_s3fs"}
    assert _find(m, "-type", "p") == {"fifo"}
    assert _find(m, "-type", "f") == regular | {"sub/inner"}


def test_ls_l_after_a_cold_ls_shows_the_headers(typed):
    """``ls`` hands the kernel entries with readdir's attributes (timeouts 0 until the
    headers are read), so ``ls -l`` right after still looks each one up: modes,
    owners and times are the headers', and symlinks show their targets."""
    m, proxy = typed
    for i in range(N_OURS):
        m.put(f"d/f{i:03d}", b"x" * (i + 1),
              {"mode": str(stat.S_IFREG | 0o600), "uid": "123", "gid": "456",
               "mtime": "1600000000"})
    m.put("d/ln", b"f000", {"mode": str(stat.S_IFLNK | 0o777), "uid": "123", "gid": "456"})
    m.put("d/fifo", b"", {"mode": str(stat.S_IFIFO | 0o640), "uid": "7", "gid": "8"})
    m.mount()
    assert len(os.listdir(m.p("d"))) == N_OURS + 2  # a cold ls
    out = subprocess.run(["ls", "-ln", "--time-style=+%s", m.p("d")], capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()[1:]
    rows = {line.split()[6]: line.split() for line in out}
    assert len(rows) == N_OURS + 2
    for i in range(N_OURS):
        mode, _, uid, gid, size, mtime, _name = rows[f"f{i:03d}"]
        assert (mode, uid, gid, size, mtime) == ("-rw-------", "123", "456", str(i + 1),
                                                 "1600000000")
    assert rows["ln"][0] == "lrwxrwxrwx" and rows["ln"][2:4] == ["123", "456"]
    assert rows["ln"][7:] == ["->", "f000"]
    assert rows["fifo"][0] == "prw-r-----" and rows["fifo"][2:4] == ["7", "8"]
