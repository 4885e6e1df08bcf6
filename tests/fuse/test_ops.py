"""Each operation through a real mount, on the file:// store and on S3 (moto).

After ``umount`` the bucket must hold exactly the expected keys, bytes and attribute
headers; a remount must show the same tree, modes and times.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import stat
import subprocess
import sys
import time

import pytest

from s3fuse.metadata import parse_time_ns

_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE = 1


def renameat2(src: str, dst: str, flags: int) -> None:
    AT_FDCWD = -100
    res = _libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags)
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def test_create_open_flags(mount):
    p = mount.p("f.txt")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"hello world")
    os.close(fd)
    assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"!")
    os.close(fd)
    assert open(p, "rb").read() == b"hello world!"
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    assert open(p, "rb").read() == b"new"
    assert errno_of(os.open, mount.p("missing"), os.O_RDONLY) == errno.ENOENT
    mount.umount()
    objs = mount.objects()
    assert objs == {"f.txt": b"new"}
    md = mount.head("f.txt")
    assert int(md["mode"]) == stat.S_IFREG | 0o640
    assert int(md["uid"]) == 0 and int(md["gid"]) == 0


def test_random_writes_truncate_and_sparse(mount):
    p = mount.p("data.bin")
    ref = bytearray()
    with open(p, "wb+") as f:
        for off, chunk in [(0, b"a" * 5000), (100, b"B" * 10), (9000, b"tail"),
                           (4000, b"x" * 2000)]:
            f.seek(off)
            f.write(chunk)
            if len(ref) < off:
                ref.extend(b"\0" * (off - len(ref)))
            ref[off:off + len(chunk)] = chunk
        f.flush()
        assert os.path.getsize(p) == len(ref)
        f.truncate(7000)
        del ref[7000:]
        f.truncate(12000)
        ref.extend(b"\0" * 5000)
    os.truncate(p, 11000)
    del ref[11000:]
    assert open(p, "rb").read() == bytes(ref)
    # a sparse file with a far-away write
    with open(mount.p("sparse"), "wb") as f:
        f.seek(50 << 20)
        f.write(b"end")
    assert os.path.getsize(mount.p("sparse")) == (50 << 20) + 3
    with open(mount.p("sparse"), "rb") as f:
        f.seek((50 << 20) - 2)
        assert f.read() == b"\0\0end"
    mount.umount()
    objs = mount.objects()
    assert objs["data.bin"] == bytes(ref)
    assert len(objs["sparse"]) == (50 << 20) + 3 and objs["sparse"].endswith(b"\0end")
    mount.mount()
    assert open(mount.p("data.bin"), "rb").read() == bytes(ref)


def test_mmap_shared_write(mount):
    p = mount.p("mm")
    with open(p, "wb") as f:
        f.write(b"\0" * 8192)
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 8192)
        m[10:15] = b"hello"
        m.flush()
        m.close()
    assert open(p, "rb").read()[10:15] == b"hello"
    mount.umount()
    assert mount.objects()["mm"][10:15] == b"hello"


def test_unlinked_open_file_keeps_its_data(mount):
    p = mount.p("doomed")
    with open(p, "wb") as f:
        f.write(b"still here")
    f = open(p, "rb")
    os.unlink(p)
    assert not os.path.exists(p)
    assert f.read() == b"still here"
    f.close()
    mount.umount()
    assert "doomed" not in mount.objects()


def test_directories(mount):
    os.mkdir(mount.p("d"), 0o750)
    os.makedirs(mount.p("d/e/f"))
    with open(mount.p("d/e/f/file"), "w") as f:
        f.write("x")
    assert errno_of(os.rmdir, mount.p("d/e")) == errno.ENOTEMPTY
    assert errno_of(os.mkdir, mount.p("d")) == errno.EEXIST
    assert errno_of(os.rmdir, mount.p("d/e/f/file")) == errno.ENOTDIR
    assert errno_of(os.unlink, mount.p("d")) in (errno.EISDIR, errno.EPERM)
    assert sorted(os.listdir(mount.p("d"))) == ["e"]
    assert stat.S_IMODE(os.stat(mount.p("d")).st_mode) == 0o750
    os.mkdir(mount.p("empty"))
    os.unlink(mount.p("d/e/f/file"))
    mount.umount()
    objs = mount.objects()
    # empty directories survive as markers, also the one whose last file went away
    assert set(objs) == {"d/", "d/e/", "d/e/f/", "empty/"}
    assert int(mount.head("d/")["mode"]) == stat.S_IFDIR | 0o750
    mount.mount()
    assert sorted(os.listdir(mount.path)) == ["d", "empty"]
    assert os.listdir(mount.p("d/e/f")) == []
    assert stat.S_IMODE(os.stat(mount.p("d")).st_mode) == 0o750


def test_rename_files_and_directories(mount):
    os.makedirs(mount.p("src/sub"))
    for rel, body in [("src/a", b"A"), ("src/sub/b", b"B"), ("target", b"old")]:
        with open(mount.p(rel), "wb") as f:
            f.write(body)
    mount.sync()  # everything uploaded: renames now have objects to move
    ino = os.stat(mount.p("src/a")).st_ino
    os.rename(mount.p("src/a"), mount.p("src/a2"))
    assert os.stat(mount.p("src/a2")).st_ino == ino  # stable across rename
    os.rename(mount.p("src"), mount.p("dst"))
    assert sorted(os.listdir(mount.p("dst"))) == ["a2", "sub"]
    with open(mount.p("new"), "wb") as f:
        f.write(b"replacement")
    os.replace(mount.p("new"), mount.p("target"))
    assert open(mount.p("target"), "rb").read() == b"replacement"
    with open(mount.p("other"), "wb") as f:
        f.write(b"o")
    with pytest.raises(OSError) as exc:
        renameat2(mount.p("other"), mount.p("target"), RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    assert errno_of(os.rename, mount.p("dst"), mount.p("dst/sub/inside")) == errno.EINVAL
    os.mkdir(mount.p("emptydir"))
    assert errno_of(os.rename, mount.p("dst"), mount.p("target")) == errno.ENOTDIR
    assert errno_of(os.rename, mount.p("target"), mount.p("emptydir")) == errno.EISDIR
    mount.umount()
    assert mount.objects() == {"dst/a2": b"A", "dst/sub/b": b"B", "target": b"replacement",
                               "other": b"o", "emptydir/": b"", "dst/": b"",
                               "dst/sub/": b""}
    mount.mount()
    assert open(mount.p("dst/sub/b"), "rb").read() == b"B"


def test_attributes_survive_remount(mount):
    p = mount.p("attrs")
    with open(p, "w") as f:
        f.write("content")
    os.chmod(p, 0o604)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    before = os.stat(p)
    os.symlink("attrs", mount.p("link"))
    os.mkfifo(mount.p("fifo"), 0o640)
    mount.umount()
    md = mount.head("attrs")
    assert int(md["mode"]) == stat.S_IFREG | 0o604
    assert (md["uid"], md["gid"]) == ("1234", "5678")
    assert parse_time_ns(md["mtime"]) == 1_700_000_000_987_654_321
    assert mount.objects()["link"] == b"attrs"
    assert stat.S_ISLNK(int(mount.head("link")["mode"]))
    assert stat.S_ISFIFO(int(mount.head("fifo")["mode"]))
    # a fresh cache directory: everything must come back from the bucket alone
    mount.cache_dir += "-fresh"
    mount.mount()
    after = os.stat(p)
    assert stat.S_IMODE(after.st_mode) == 0o604
    assert (after.st_uid, after.st_gid) == (1234, 5678)
    assert after.st_mtime_ns == before.st_mtime_ns == 1_700_000_000_987_654_321
    assert os.readlink(mount.p("link")) == "attrs"
    assert stat.S_ISFIFO(os.lstat(mount.p("fifo")).st_mode)
    assert stat.S_IMODE(os.lstat(mount.p("fifo")).st_mode) == 0o640


def test_utime_now_and_omit(file_mount):
    p = file_mount.p("t")
    open(p, "w").close()
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    t0 = time.time_ns()
    os.utime(p)  # UTIME_NOW for both
    st = os.stat(p)
    assert st.st_mtime_ns >= t0 - 1_000_000_000 and st.st_atime_ns >= t0 - 1_000_000_000


def test_xattrs(mount):
    p = mount.p("x")
    open(p, "w").close()
    os.setxattr(p, "user.color", b"blue")
    assert os.getxattr(p, "user.color") == b"blue"
    assert "user.color" in os.listxattr(p)
    assert errno_of(os.setxattr, p, "user.huge", b"v" * 3000) == errno.E2BIG
    assert errno_of(os.getxattr, p, "user.none") == errno.ENODATA
    os.setxattr(p, "user.gone", b"1")
    os.removexattr(p, "user.gone")
    assert os.getxattr(p, "user.s3fuse.state") in (b"dirty", b"uploading", b"synced")
    mount.sync()
    assert os.getxattr(p, "user.s3fuse.state") == b"synced"
    mount.umount()
    mount.cache_dir += "-fresh"
    mount.mount()
    assert os.getxattr(p, "user.color") == b"blue"
    assert "user.gone" not in os.listxattr(p)


def test_statfs_and_fsync(file_mount):
    st = os.statvfs(file_mount.path)
    assert st.f_namemax == 255 and st.f_bavail > 0
    fd = os.open(file_mount.p("durable"), os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"x" * 1000)
    os.fsync(fd)
    os.close(fd)
    assert os.path.getsize(file_mount.p("durable")) == 1000


def test_long_names(file_mount):
    assert errno_of(open, file_mount.p("n" * 256), "w") == errno.ENAMETOOLONG
    with open(file_mount.p("n" * 255), "w") as f:
        f.write("ok")
    assert os.listdir(file_mount.path) == ["n" * 255]


LOCKER = r"""
import fcntl, sys, time
f = open(sys.argv[1], "r+")
kind = sys.argv[2]
try:
    if kind == "flock":
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", flush=True)
except OSError:
    print("busy", flush=True)
"""


@pytest.mark.parametrize("kind", ["flock", "fcntl"])
def test_locks_between_processes(file_mount, kind):
    p = file_mount.p("lockfile")
    with open(p, "w") as f:
        f.write("x")
    with open(p, "r+") as holder:
        if kind == "flock":
            fcntl.flock(holder, fcntl.LOCK_EX)
        else:
            fcntl.lockf(holder, fcntl.LOCK_EX)
        out = subprocess.run([sys.executable, "-c", LOCKER, p, kind], capture_output=True,
                             text=True, timeout=30)
        assert out.stdout.strip() == "busy"
    out = subprocess.run([sys.executable, "-c", LOCKER, p, kind], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "locked"


def test_objects_written_by_other_tools(unmounted):
    unmounted.put("plain.txt", b"from another tool")
    unmounted.put("deep/implicit/dir/file.csv", b"a,b\n")
    unmounted.put("marked/", b"")
    unmounted.put("fsx.txt", b"fsx", {"file-permissions": "0100600", "file-owner": "7",
                                      "file-group": "8"})
    unmounted.put("tagged.txt", b"t", {"project": "apollo"})
    unmounted.mount()
    assert sorted(os.listdir(unmounted.path)) == ["deep", "fsx.txt", "marked", "plain.txt",
                                                   "tagged.txt"]
    st = os.stat(unmounted.p("plain.txt"))
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_size == len(b"from another tool")
    assert open(unmounted.p("deep/implicit/dir/file.csv"), "rb").read() == b"a,b\n"
    assert os.path.isdir(unmounted.p("marked"))
    st = os.stat(unmounted.p("fsx.txt"))
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (7, 8)
    with open(unmounted.p("tagged.txt"), "a") as f:
        f.write("+")
    unmounted.umount()
    md = unmounted.head("tagged.txt")
    assert md["project"] == "apollo"  # foreign metadata kept on rewrite
    assert unmounted.objects()["tagged.txt"] == b"t+"


def test_setgid_directory_passes_its_group_on(file_mount):
    d = file_mount.p("shared")
    os.mkdir(d)
    os.chown(d, 0, 4321)
    os.chmod(d, 0o2775)
    with open(os.path.join(d, "f"), "w") as f:
        f.write("x")
    os.mkdir(os.path.join(d, "sub"))
    assert os.stat(os.path.join(d, "f")).st_gid == 4321
    sub = os.stat(os.path.join(d, "sub"))
    assert sub.st_gid == 4321 and sub.st_mode & stat.S_ISGID


def test_paths_too_long_for_s3_are_kept_local_and_listed(file_mount):
    deep = file_mount.path
    for i in range(6):
        deep = os.path.join(deep, f"{i}" * 200)
        os.mkdir(deep)
    with open(os.path.join(deep, "file"), "w") as f:
        f.write("still works")
    assert open(os.path.join(deep, "file")).read() == "still works"
    assert os.getxattr(os.path.join(deep, "file"), "user.s3fuse.state") == b"local-only"
    file_mount.sync()
    out = subprocess.run([sys.executable, "-m", "s3fuse.cli", "status", "--json",
                          file_mount.path], capture_output=True, text=True, timeout=30)
    listed = [e["path"] for e in json.loads(out.stdout)["not_exported"]]
    assert any(p.endswith("/file") for p in listed)
    keys = file_mount.objects()
    assert keys and all(len(k.encode()) <= 1024 for k in keys)
    assert not any(k.endswith("/file") for k in keys)


def test_hard_links_are_one_inode_and_an_object_per_name(mount):
    os.mkdir(mount.p("d"))
    with open(mount.p("a"), "wb") as f:
        f.write(b"shared bytes")
    os.link(mount.p("a"), mount.p("d/b"))
    os.link(mount.p("d/b"), mount.p("c"))
    a, b = os.stat(mount.p("a")), os.stat(mount.p("d/b"))
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 3
    with open(mount.p("c"), "ab") as f:  # a write through one name...
        f.write(b" + more")
    os.chmod(mount.p("d/b"), 0o600)  # ...and a chmod through another
    assert open(mount.p("a"), "rb").read() == b"shared bytes + more"
    assert stat.S_IMODE(os.stat(mount.p("a")).st_mode) == 0o600
    mount.remount()  # the same cache: still one inode with three names
    a, c = os.stat(mount.p("a")), os.stat(mount.p("c"))
    assert a.st_ino == c.st_ino and c.st_nlink == 3
    mount.umount()
    objects = mount.objects()
    assert {k: v for k, v in objects.items() if not k.endswith("/")} == {
        "a": b"shared bytes + more", "d/b": b"shared bytes + more",
        "c": b"shared bytes + more"}
    modes = {mount.head(k)["mode"] for k in ("a", "d/b", "c")}
    assert modes == {str(stat.S_IFREG | 0o600)}
    mount.mount()
    os.unlink(mount.p("a"))  # its first name: the others keep the inode
    os.rename(mount.p("c"), mount.p("d/c"))
    assert os.stat(mount.p("d/b")).st_nlink == 2
    with open(mount.p("d/c"), "ab") as f:
        f.write(b"!")
    mount.umount()
    objects = mount.objects()
    assert {k: v for k, v in objects.items() if not k.endswith("/")} == {
        "d/b": b"shared bytes + more!", "d/c": b"shared bytes + more!"}
