"""The read-only views under MOUNTPOINT/.s3fuse/ (s3fuse/views.py, SEMANTICS §9),
through real mounts on file:// (versioning on), S3 on moto (a versioned bucket) and
Ceph RGW (tests/conftest.py's RGW_FUSE_MODULES).

* ``at/<time>/`` shows the tree as it was, and stays so byte for byte while the live
  tree is written, deleted and renamed under it (also when read afresh, from a new
  name for the same time, after the changes);
* ``snapshots/<NAME>/`` shows what a record written with timeline.pin_tree pinned;
* every change inside answers EROFS; ``.s3fuse`` itself cannot be created, replaced
  or removed;
* keys that cannot be paths never become entries, in a view either;
* on a bucket without versioning, ``at/`` answers EOPNOTSUPP and the log says how to
  turn versioning on.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from mounts import S3FUSE, require_fuse

from s3fuse import timeline
from s3fuse.store.base import ObjectStore

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300)]


def enable_versioning(m) -> None:
    store, _ = m.store()
    try:
        if hasattr(store, "enable_versioning"):
            store.enable_versioning()
        else:
            store._client.put_bucket_versioning(
                Bucket=store.bucket, VersioningConfiguration={"Status": "Enabled"})
        assert store.versioning() == "enabled"
    finally:
        store.close()


@pytest.fixture
def versioned(unmounted, request):
    """A mount whose bucket keeps versions (turned on before mounting)."""
    require_fuse()
    enable_versioning(unmounted)
    if request.node.callspec.params["unmounted"] == "s3":
        # moto's ListObjectsV2 with a delimiter, on a versioned bucket, still lists a
        # prefix whose keys all have a delete marker on top (S3 does not), so fsck
        # sees a removed directory as new in the bucket
        unmounted.fsck_allow = ("new-outside",)
    unmounted.mount()
    return unmounted


def snapshot_tree(root: str) -> dict[str, tuple]:
    """path -> ("d", mode) | ("f", mode, bytes) | ("l", target), below ``root``."""
    out: dict[str, tuple] = {}
    for here, dirs, files in os.walk(root):
        assert len(out) < 10_000, "walk does not end"
        rel_here = os.path.relpath(here, root)
        for name in dirs + files:
            full = os.path.join(here, name)
            rel = os.path.normpath(os.path.join(rel_here, name))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(st.st_mode), f.read())
    return out


def a_moment() -> str:
    """A time strictly between what was written before and what is written after
    (moto keeps LastModified in whole seconds)."""
    time.sleep(1.2)
    when = timeline.format_when(time.time_ns() // 1_000_000_000 * 1_000_000_000)
    time.sleep(1.2)
    return when


def write_first_tree(m) -> dict[str, tuple]:
    big = os.urandom(300_000)
    Path(m.p("a.txt")).write_bytes(b"first a\n")
    os.makedirs(m.p("d/sub"))
    Path(m.p("d/b.bin")).write_bytes(big)
    # several of the views' 1 MiB read blocks, read sequentially and at odd offsets
    Path(m.p("d/large.bin")).write_bytes(os.urandom(2_600_000))
    Path(m.p("d/sub/c.txt")).write_bytes(b"c\n")
    Path(m.p("run.sh")).write_bytes(b"#!/bin/sh\n")
    os.chmod(m.p("run.sh"), 0o750)
    os.symlink("a.txt", m.p("link"))
    os.mkdir(m.p("empty"), 0o700)
    m.sync()
    return snapshot_tree(m.path)


def change_live_tree(m) -> None:
    Path(m.p("a.txt")).write_bytes(b"second a, longer\n")
    Path(m.p("d/large.bin")).write_bytes(os.urandom(2_600_000))
    os.unlink(m.p("d/b.bin"))
    os.rename(m.p("d/sub"), m.p("d/moved"))
    os.unlink(m.p("link"))
    os.rmdir(m.p("empty"))
    Path(m.p("new.txt")).write_bytes(b"new\n")
    m.sync()


def assert_erofs(view: str) -> None:
    some_file = os.path.join(view, "a.txt")
    for call in (lambda: open(some_file, "r+b"),
                 lambda: open(os.path.join(view, "x"), "wb"),
                 lambda: os.mkdir(os.path.join(view, "nd")),
                 lambda: os.unlink(some_file),
                 lambda: os.rename(some_file, os.path.join(view, "b")),
                 lambda: os.chmod(some_file, 0o600),
                 lambda: os.setxattr(some_file, "user.x", b"1"),
                 lambda: os.symlink("a", os.path.join(view, "s"))):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS, call


def test_point_in_time_view_stays_as_it_was(versioned):
    m = versioned
    first = write_first_tree(m)
    assert first["link"] == ("l", "a.txt") and first["empty"] == ("d", 0o700)
    t1 = a_moment()
    view = m.p(f".s3fuse/at/{t1}")
    seen = snapshot_tree(view)
    assert seen == first
    assert os.listdir(m.p(".s3fuse")) == ["at", "snapshots"] or \
        sorted(os.listdir(m.p(".s3fuse"))) == ["at", "snapshots"]
    assert ".s3fuse" not in os.listdir(m.path)  # hidden from the root's listing
    assert os.listdir(m.p(".s3fuse/at")) == []

    # every view file names its version; the bucket agrees
    store, prefix = m.store()
    try:
        vid = os.getxattr(os.path.join(view, "a.txt"), "user.s3fuse.version-id").decode()
        etag = os.getxattr(os.path.join(view, "a.txt"), "user.s3fuse.etag").decode()
        assert store.get(prefix + "a.txt", version_id=vid) == b"first a\n"
        assert store.head(prefix + "a.txt", version_id=vid).etag == etag
        assert "user.s3fuse.version-id" in os.listxattr(os.path.join(view, "d/b.bin"))
        with pytest.raises(OSError) as err:  # as the live tree: only user.* exist
            os.getxattr(os.path.join(view, "a.txt"), "security.selinux")
        assert err.value.errno == errno.EOPNOTSUPP
    finally:
        store.close()

    change_live_tree(m)
    t2 = a_moment()
    assert snapshot_tree(view) == first  # the same view, after the changes
    # read afresh from the bucket: a new name for the same time
    fresh = m.p(f".s3fuse/at/{t1[:-1]}.000Z")
    assert snapshot_tree(fresh) == first
    with open(os.path.join(view, "d/large.bin"), "rb") as f:
        f.seek(1_048_000)
        assert f.read(2_000) == first["d/large.bin"][2][1_048_000:1_050_000]
    later = snapshot_tree(m.p(f".s3fuse/at/{t2}"))
    assert later == snapshot_tree(m.path)
    assert "d/moved/c.txt" in later and "d/b.bin" not in later and "empty" not in later
    assert_erofs(view)
    # nothing of the views went to the bucket
    assert not [k for k in m.objects() if k.startswith(".s3fuse")]
    m.umount()


def test_reserved_name_cannot_be_made_or_replaced(versioned):
    m = versioned
    os.mkdir(m.p("dir"))
    Path(m.p("f")).write_bytes(b"f")
    reserved = m.p(".s3fuse")
    for call, err in (
            (lambda: os.mkdir(reserved), errno.EEXIST),
            (lambda: os.symlink("f", reserved), errno.EEXIST),
            (lambda: os.link(m.p("f"), reserved), errno.EEXIST),
            (lambda: os.mknod(reserved, stat.S_IFIFO | 0o600), errno.EEXIST),
            (lambda: os.open(reserved, os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST),
            (lambda: os.rename(m.p("dir"), reserved), errno.EPERM),
            (lambda: os.rename(reserved, m.p("elsewhere")), errno.EPERM),
            (lambda: os.rmdir(reserved), errno.EPERM),
            (lambda: os.mkdir(m.p(".s3fuse/x")), errno.EROFS),
            (lambda: open(m.p(".s3fuse/at/x"), "wb"), errno.EROFS)):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == err, (call, info.value)
    assert os.path.isdir(m.p("dir")) and not os.path.exists(m.p("elsewhere"))
    m.sync()
    assert set(m.objects()) == {"dir/", "f"}
    m.umount()


def test_snapshot_view_shows_the_pinned_versions(versioned):
    m = versioned
    first = write_first_tree(m)
    store: ObjectStore
    store, prefix = m.store()
    try:
        pinned = timeline.pin_tree(store, prefix, time.time_ns())
        record = timeline.Snapshot("before-risky-step", time.time_ns(), "b", prefix, pinned)
        store.put(timeline.snapshot_key(prefix, "before-risky-step"), record.encode(), {})
        # a record s3fuse cannot read and one with a name that is not a snapshot name
        store.put(timeline.snapshot_key(prefix, "broken"), b"{not json", {})
        store.put(prefix + ".s3fuse/snapshots/..json", b"{}", {})
    finally:
        store.close()
    change_live_tree(m)
    assert sorted(os.listdir(m.p(".s3fuse/snapshots"))) == ["before-risky-step", "broken"]
    view = m.p(".s3fuse/snapshots/before-risky-step")
    assert snapshot_tree(view) == first
    by_key = {p.key: p for p in pinned}
    for rel in ("a.txt", "d/b.bin", "d/sub/c.txt"):
        got = os.getxattr(os.path.join(view, rel), "user.s3fuse.version-id").decode()
        assert got == by_key[rel].version_id
        assert os.getxattr(os.path.join(view, rel), "user.s3fuse.etag").decode() \
            == by_key[rel].etag
    with pytest.raises(OSError) as info:
        os.listdir(m.p(".s3fuse/snapshots/broken"))
    assert info.value.errno == errno.EIO
    with pytest.raises(FileNotFoundError):
        os.stat(m.p(".s3fuse/snapshots/none-such"))
    assert_erofs(view)
    # the live tree never shows the records' keys
    assert ".s3fuse" not in os.listdir(m.path)
    m.umount()


HOSTILE = ["../x", "a/../../b", "/abs", "a//b", ".", "./y", "..", "L" * 300,
           "N" * 300 + "/f", ".s3fuse/lost+found/z", "both"]


def test_hostile_keys_never_escape_a_view(unmounted, tmp_path):
    require_fuse()
    m = unmounted
    enable_versioning(m)
    store, prefix = m.store()
    try:
        normal = {"ok.txt": b"fine\n", "both/inner": b"inner\n", "dir/f": b"f\n"}
        for key, body in normal.items():
            store.put(prefix + key, body, {})
        if m.source.startswith("s3://"):
            for key in HOSTILE:
                store.put(prefix + key, b"hostile " + key.encode(), {})
        # a record (any store can hold one) naming keys that cannot be paths
        hostile_pins = [timeline.Pinned(k, "null", "0" * 32, 1, 0) for k in HOSTILE]
        pinned = timeline.pin_tree(store, prefix, time.time_ns())
        record = timeline.Snapshot("s", time.time_ns(), "b", prefix,
                                   [p for p in pinned if p.key in normal] + hostile_pins)
        store.put(timeline.snapshot_key(prefix, "s"), record.encode(), {})
    finally:
        store.close()
    before = set(os.listdir(tmp_path))
    m.mount()
    when = a_moment()
    expected = {"ok.txt": ("f", 0o644, b"fine\n"), "both": ("d", 0o755),
                "both/inner": ("f", 0o644, b"inner\n"), "dir": ("d", 0o755),
                "dir/f": ("f", 0o644, b"f\n")}
    # as in the live tree (test_hostile_keys.py), "a/" is a common prefix (of a//b and
    # a/../../b): a directory, with none of the odd keys under it as entries
    with_a = {**expected, "a": ("d", 0o755)}
    on_s3 = m.source.startswith("s3://")
    assert snapshot_tree(m.p(f".s3fuse/at/{when}")) == (with_a if on_s3 else expected)
    assert snapshot_tree(m.p(".s3fuse/snapshots/s")) == with_a
    for name in ("x", "b", "abs", "y", "z", "f"):
        assert not os.path.lexists(os.path.join(str(tmp_path), name))
        assert not os.path.lexists(os.path.join(m.path, "..", name))
    assert set(os.listdir(tmp_path)) - {"cache"} == before
    m.umount(fsck=False)


def test_at_views_need_versioning(unmounted):
    require_fuse()
    m = unmounted
    m.mount()
    Path(m.p("a")).write_bytes(b"a")
    m.sync()
    when = timeline.format_when(time.time_ns() // 1_000_000_000 * 1_000_000_000)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            os.listdir(m.p(f".s3fuse/at/{when}"))
        assert info.value.errno == errno.EOPNOTSUPP
    log = Path(m.cache_dir, "s3fuse.log").read_text(errors="replace")
    said = [line for line in log.splitlines() if "does not keep old versions" in line]
    assert len(said) == 1 and "versioning" in said[0]
    assert os.listdir(m.p(".s3fuse/snapshots")) == []
    m.umount()


def test_versioning_turned_on_while_mounted(unmounted, request):
    """Ceph RGW 16 refuses every If-Match PUT once a bucket is versioned: turned on
    while mounted, the first refused upload makes the mount probe again and go on with
    the fallback, with no conflict; elsewhere conditional uploads simply go on. Either
    way the change lands, and the new at-views work without a remount."""
    require_fuse()
    m = unmounted
    m.mount()
    Path(m.p("f")).write_bytes(b"one")
    m.sync()
    enable_versioning(m)
    Path(m.p("f")).write_bytes(b"two")
    m.sync()
    assert m.objects()["f"] == b"two"
    res = subprocess.run([S3FUSE, "status", "--json", m.path], capture_output=True,
                         text=True, timeout=30)
    status = json.loads(res.stdout)
    assert status["conflicts"] == [] and status["errors"] == []
    server = request.node.callspec.params["unmounted"]
    log = Path(m.cache_dir, "s3fuse.log").read_text(errors="replace")
    if server == "rgw":
        assert status["capabilities"]["conditional_put"] is False
        assert "no longer honours conditional PUTs" in log
    else:
        assert status["capabilities"]["conditional_put"] is True
    when = a_moment()
    assert Path(m.p(f".s3fuse/at/{when}/f")).read_bytes() == b"two"
    m.umount()
