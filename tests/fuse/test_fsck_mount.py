"""``s3fuse fsck`` on the cache directory of a real mount (SPEC §8), on the file://
store and on S3: clean after a workload and an unmount; outside changes and deletes
are found (exit 1) and repaired (exit 0), and the next mount shows the bucket's
versions; a cache directory in use by a running mount is refused in one line.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from fsck_helper import S3FUSE, assert_fsck_clean, run_fsck

pytestmark = pytest.mark.fuse


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def workload(m) -> None:
    os.makedirs(m.p("proj/src/deep"))
    write(m.p("proj/src/main.py"), b"print('hi')\n")
    write(m.p("proj/src/deep/data.bin"), os.urandom(300_000))
    write(m.p("proj/notes.txt"), b"notes v1")
    write(m.p("top.txt"), b"top")
    os.symlink("proj/notes.txt", m.p("link"))
    m.sync()  # uploaded: the renames below are server-side copies
    os.rename(m.p("proj/src"), m.p("proj/lib"))
    os.rename(m.p("proj/notes.txt"), m.p("notes.txt"))
    # replaced while the rename's copy is still pending (a bug fsck found once)
    write(m.p("proj/.tmp"), b"notes v2")
    os.replace(m.p("proj/.tmp"), m.p("notes.txt"))
    os.unlink(m.p("top.txt"))
    os.mkdir(m.p("empty"))
    write(m.p("scratch"), b"gone before upload")
    os.unlink(m.p("scratch"))


def test_fsck_finds_and_repairs_outside_changes(mount):
    workload(mount)
    mount.umount()
    assert_fsck_clean(mount.cache_dir, mount.source, mount.endpoint)
    assert set(mount.objects()) == {"proj/", "proj/lib/", "proj/lib/deep/", "proj/lib/main.py",
                                    "proj/lib/deep/data.bin", "notes.txt", "link", "empty/"}

    # behind the mount's back
    mount.put("proj/lib/main.py", b"print('changed outside')\n")
    store, prefix = mount.store()
    try:
        store.delete(prefix + "proj/lib/deep/data.bin")
        store.delete(prefix + "proj/lib/deep/")
        store.delete(prefix + "empty/")
    finally:
        store.close()
    mount.put("proj/added.txt", b"added outside")

    res = run_fsck(mount.cache_dir, mount.source, mount.endpoint)
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    found = {(f["kind"], f["path"] or f["subject"]) for f in report["findings"]}
    assert found == {("changed-outside", "/proj/lib/main.py"),
                     ("deleted-outside", "/proj/lib/deep/data.bin"),
                     ("deleted-outside", "/proj/lib/deep"),
                     ("deleted-outside", "/empty"),
                     ("new-outside", prefix + "proj/added.txt")}

    human = run_fsck(mount.cache_dir, mount.source, mount.endpoint, as_json=False)
    assert human.returncode == 1 and "--repair" in human.stdout.splitlines()[-1]
    assert "/proj/lib/main.py" in human.stdout

    fixed = run_fsck(mount.cache_dir, mount.source, mount.endpoint, repair=True)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert all(f["repaired"] for f in json.loads(fixed.stdout)["findings"])
    assert_fsck_clean(mount.cache_dir, mount.source, mount.endpoint)

    mount.mount()
    assert read(mount.p("proj/lib/main.py")) == b"print('changed outside')\n"
    assert read(mount.p("proj/added.txt")) == b"added outside"
    assert sorted(os.listdir(mount.p("proj"))) == ["added.txt", "lib"]
    assert os.listdir(mount.p("proj/lib")) == ["main.py"]
    assert sorted(os.listdir(mount.path)) == ["link", "notes.txt", "proj"]
    assert read(mount.p("notes.txt")) == b"notes v2"
    assert os.stat(mount.p("proj")).st_nlink == 3
    mount.umount()
    assert_fsck_clean(mount.cache_dir, mount.source, mount.endpoint)


def test_fsck_refuses_a_cache_directory_in_use(file_mount):
    write(file_mount.p("f"), b"x")
    res = subprocess.run([S3FUSE, "fsck", file_mount.source, "--cache-dir",
                          file_mount.cache_dir], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s3fuse: ")
    assert "in use" in lines[0] and "unmount" in lines[0]
    assert os.path.ismount(file_mount.path)
    assert read(file_mount.p("f")) == b"x"  # the mount is unharmed
    file_mount.umount()
    assert_fsck_clean(file_mount.cache_dir, file_mount.source)
    # another source's cache directory
    other = run_fsck(file_mount.cache_dir, "file:///tmp/some-other-bucket")
    assert other.returncode == 2 and "belongs to" in other.stderr
