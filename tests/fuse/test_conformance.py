"""Conformance: every operation on the mount, against a plain local directory.

Each check is a function of a ``Site``: a fresh directory (on local disk, or on the
mount) and a way to remount it. It returns observations, ``{name: value}``, where a
value is an outcome (``"ok"`` or an errno name), a mode, an owner, a relation between
two timestamps (``"same"``, ``"later"``, ``"earlier"``)... never an absolute time or
an inode number, so the two sites can be compared. Permission checks run their steps
as root and as unprivileged users (forked children with setuid/setgid; the mount has
``--allow-other`` and the kernel checks modes: ``default_permissions``).

Every check runs on the reference (a directory on the local disk that holds the
test's temporary files) and on the mount, on the ``file://`` store and on S3 (moto),
and the observations must be equal, except the ones listed in ``DIVERGENCES``, and
each of those must really differ: the table is honest both ways.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import linux_aio
import pytest
from mounts import Mount, require_fuse
from users import run_as

pytestmark = [pytest.mark.fuse]

# --- the one table of divergences ------------------------------------------------------
#: "check:observation" -> why the mount differs from a local disk there. A key may end
#: in "@file" or "@s3" when only that backend differs. The reason starts with what kind
#: of divergence it is:
#:   S3:     the bucket makes the local behaviour impossible (or absurdly costly);
#:   FUSE:   the kernel's FUSE client or pyfuse3 3.5 (no fallocate, lseek, tmpfile
#:           handlers; no writeback cache) decide it, not s3fuse;
#:   CHOICE: allowed by SPEC.md or README.md, deliberately;
#:   BUG:    s3fuse could behave like the local disk and should (see the reason).
_FALLOCATE = ("FUSE: pyfuse3 3.5 has no fallocate handler, so the kernel answers "
              "EOPNOTSUPP (posix_fallocate still works: glibc emulates it by writing)")
_SEEK = ("FUSE: pyfuse3 3.5 has no lseek handler, so the kernel's generic SEEK_DATA/"
         "SEEK_HOLE treat the whole file as data with one hole at EOF (POSIX allows it)")
DIVERGENCES: dict[str, str] = {
    "errno_open:o_tmpfile": "FUSE: pyfuse3 3.5 has no tmpfile handler: EOPNOTSUPP, "
                            "which callers of O_TMPFILE already handle",
    "rename_flags:whiteout": (
        "CHOICE: RENAME_WHITEOUT (overlayfs's, for an upper layer) is not implemented "
        "and answers EINVAL, as renameat2(2) says a filesystem without it does; a local "
        "disk leaves a 0/0 character device at the old name"),
    "rename_flags:after_whiteout": "CHOICE: follows from rename_flags:whiteout",
    "errno_names:non_utf8_name": "S3: keys are UTF-8, so a name that is not is EINVAL",
    "errno_names:listing": "S3: follows from errno_names:non_utf8_name",
    "time_file_data:read_after_change.atime": (
        "S3: reads never move atime, as with noatime (FUSE leaves atime to the server): "
        "an atime the bucket keeps costs a metadata rewrite, a copy of the object, after "
        "reads (relatime could still be kept in the journal alone)"),
    "time_file_data:mmap_write_then_utime.mtime": (
        "FUSE: without the writeback cache a page written through a mapping reaches "
        "s3fuse as a write at writeback time, after the utime, and moves mtime again"),
    "link_remount:fresh_cache.one_inode": (
        "S3: each name is an object of its own (SPEC §1: plain objects, no manifest), so "
        "a mount with a fresh cache (or another host) sees separate files; the journal "
        "keeps them one inode across remounts with the same cache"),
    "link_remount:fresh_cache.nlink": "S3: follows from link_remount:fresh_cache.one_inode",
    "link_remount:fresh_cache.shared_data": (
        "S3: follows from link_remount:fresh_cache.one_inode"),
    "xattrs:trusted_as_root": "CHOICE: README: only user.* xattrs are stored",
    "xattrs:value_3000_bytes": "S3: user metadata is limited to 2 KiB in all (E2BIG)",
    "special_files_remount:fifo_io_times": (
        "FUSE: the kernel marks FUSE inodes S_NOCMTIME, so pipe I/O on a FIFO never "
        "reaches s3fuse and does not move its times"),
    "special_files_remount:fresh_cache.busy_dir_times": (
        "CHOICE: README: directory times that change because of their entries are not "
        "re-uploaded, so a fresh cache shows the marker's times (a marker PUT per "
        "changed directory and window would keep them)"),
    "data_o_direct:unaligned_write": (
        "FUSE: O_DIRECT needs no alignment without a block device below (more lenient)"),
    "data_fallocate:mode0_extend": _FALLOCATE,
    "data_fallocate:size_after_mode0": _FALLOCATE,
    "data_fallocate:keep_size": _FALLOCATE,
    "data_fallocate:size_after_keep_size": _FALLOCATE,
    "data_fallocate:punch_hole": _FALLOCATE,
    "data_fallocate:zero_range": _FALLOCATE,
    "data_fallocate:content": _FALLOCATE,
    "data_sparse:seek_hole_0": _SEEK,
    "data_sparse:seek_data_in_hole": _SEEK,
    "data_sparse:seek_data_in_tail_hole": _SEEK,
    "data_sparse:seek_hole_after_grow": _SEEK,
}

# --- users ------------------------------------------------------------------------------
GROUP_G = 1500  # a group A and B share
USERS = {
    "A": (1001, 1001, [1001, GROUP_G]),
    "B": (1002, 1002, [1002, GROUP_G]),
    "C": (1003, 1003, [1003]),
}
UID = {name: spec[0] for name, spec in USERS.items()}
GID_C = 1003
TICK_S = 0.02  # longer than any timestamp granularity of the local disk
CHILD_TIMEOUT_S = 60

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
FALLOC_FL_ZERO_RANGE = 0x10


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check_rc(rc: int) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int],
              follow: bool = True) -> None:
    """utimensat(2) with (seconds, nanoseconds) pairs; nanoseconds may be UTIME_NOW
    or UTIME_OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check_rc(_libc.utimensat(AT_FDCWD, os.fsencode(path), times,
                              0 if follow else AT_SYMLINK_NOFOLLOW))


def renameat2(src: str, dst: str, flags: int) -> None:
    _check_rc(_libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                              flags))


class _Dirent(ctypes.Structure):  # struct dirent (dirent64) of glibc on 64-bit Linux
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.opendir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.readdir.restype = ctypes.POINTER(_Dirent)
_libc.rewinddir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]


class DirStream:
    """opendir(3)/readdir(3)/rewinddir(3)/closedir(3), which Python does not offer."""

    def __init__(self, path: str) -> None:
        self.d = _libc.opendir(os.fsencode(path))
        if not self.d:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)

    def read(self, limit: int | None = None) -> list[str]:
        """Up to ``limit`` names (all that are left if None), "." and ".." left out."""
        names: list[str] = []
        while limit is None or len(names) < limit:
            ent = _libc.readdir(self.d)
            if not ent:
                break
            name = os.fsdecode(ent.contents.d_name)
            if name not in (".", ".."):
                names.append(name)
        return names

    def rewind(self) -> None:
        _libc.rewinddir(self.d)

    def close(self) -> None:
        _libc.closedir(self.d)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check_rc(_libc.fallocate(fd, mode, offset, length))


# --- observation helpers ---------------------------------------------------------------
def outcome(fn: Callable, *args, **kwargs) -> str:
    """"ok", or the errno name the call failed with."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return "ok"


def open_close(path: str, flags: int, mode: int = 0o644) -> None:
    os.close(os.open(path, flags, mode))


def make(path: str, data: bytes = b"", mode: int = 0o644, owner: tuple[int, int] | None = None
         ) -> str:
    with open(path, "wb") as f:
        f.write(data)
    if owner is not None:
        os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def make_dir(path: str, mode: int = 0o755, owner: tuple[int, int] | None = None) -> str:
    os.mkdir(path)
    if owner is not None:
        os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def kind(mode: int) -> str:
    for name, test in (("dir", stat.S_ISDIR), ("file", stat.S_ISREG), ("symlink", stat.S_ISLNK),
                       ("fifo", stat.S_ISFIFO), ("socket", stat.S_ISSOCK),
                       ("chardev", stat.S_ISCHR), ("blockdev", stat.S_ISBLK)):
        if test(mode):
            return name
    return f"type {stat.S_IFMT(mode):o}"


def describe(path: str) -> object:
    """Type, permission bits, owner, size and device of a path (not followed)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    size = st.st_size if not stat.S_ISDIR(st.st_mode) else "dir"
    return (kind(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, size,
            (os.major(st.st_rdev), os.minor(st.st_rdev)))


def perm(path: str) -> object:
    try:
        return oct(stat.S_IMODE(os.lstat(path).st_mode))
    except OSError as exc:
        return errno.errorcode[exc.errno]


def times(path: str) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def relation(before: int, after: int) -> str:
    return "same" if after == before else ("later" if after > before else "earlier")


def changes(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    """How mtime and ctime moved: "mtime later, ctime later" and so on."""
    return f"mtime {relation(before[1], after[1])}, ctime {relation(before[2], after[2])}"


def tick() -> None:
    time.sleep(TICK_S)


def within(t: int, start: int, end: int) -> bool:
    """``t`` was taken between two wall-clock readings (coarse clocks lag a little)."""
    return start - 20_000_000 <= t <= end + 1_000_000


# --- sites ------------------------------------------------------------------------------
@dataclass
class Site:
    """Where a check runs: ``root`` is a fresh directory (mode 0777) for it alone."""

    name: str  # "local" or "mount"
    root: str
    mount: Mount | None = None

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def remount(self, fresh_cache: bool = False) -> None:
        """Unmount and mount again: with the same cache directory (the journal), or
        with a fresh one (everything rebuilt from the bucket). Local disk: nothing."""
        if self.mount is None:
            return
        self.mount.umount()
        if fresh_cache:
            self.mount.cache_dir += "-fresh"
        self.mount.mount()

    def sync(self) -> None:
        """Upload everything pending now (``s3fuse sync``). Local disk: nothing."""
        if self.mount is not None:
            self.mount.sync()


def as_user(user: str, fn: Callable, *args) -> object:
    """Run ``fn(*args)`` in a forked child with the user's uid, gid and groups;
    returns what it returned (it must pickle)."""
    return run_as(USERS[user], user, fn, *args)


# --- the checks -------------------------------------------------------------------------
CHECKS: dict[str, Callable[[Site], dict]] = {}


def check(fn: Callable[[Site], dict]) -> Callable[[Site], dict]:
    CHECKS[fn.__name__] = fn
    return fn


# errors ---------------------------------------------------------------------------------
@check
def errno_open(s: Site) -> dict:
    f = make(s.p("f"), b"data")
    make_dir(s.p("dir"))
    os.symlink("f", s.p("lnk"))
    os.symlink("nowhere", s.p("dangling"))
    os.symlink("loop", s.p("loop"))
    o: dict[str, object] = {}
    o["missing"] = outcome(open_close, s.p("missing"), os.O_RDONLY)
    o["creat_in_missing_dir"] = outcome(open_close, s.p("nodir", "x"), os.O_CREAT | os.O_WRONLY)
    o["through_file"] = outcome(open_close, s.p("f", "x"), os.O_RDONLY)
    o["creat_through_file"] = outcome(open_close, s.p("f", "x"), os.O_CREAT | os.O_WRONLY)
    o["o_directory_on_file"] = outcome(open_close, f, os.O_RDONLY | os.O_DIRECTORY)
    o["o_directory_on_symlink_to_file"] = outcome(open_close, s.p("lnk"),
                                                  os.O_RDONLY | os.O_DIRECTORY)
    o["dir_rdonly"] = outcome(open_close, s.p("dir"), os.O_RDONLY)
    o["dir_wronly"] = outcome(open_close, s.p("dir"), os.O_WRONLY)
    o["dir_rdwr"] = outcome(open_close, s.p("dir"), os.O_RDWR)
    o["dir_creat"] = outcome(open_close, s.p("dir"), os.O_CREAT | os.O_WRONLY)
    o["excl_on_file"] = outcome(open_close, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    o["excl_on_dir"] = outcome(open_close, s.p("dir"), os.O_CREAT | os.O_EXCL | os.O_RDONLY)
    o["excl_on_dangling_symlink"] = outcome(open_close, s.p("dangling"),
                                            os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    o["creat_through_dangling_symlink"] = outcome(open_close, s.p("dangling"),
                                                  os.O_CREAT | os.O_WRONLY)
    o["dangling_target_made"] = describe(s.p("nowhere"))
    o["nofollow_on_symlink"] = outcome(open_close, s.p("lnk"), os.O_RDONLY | os.O_NOFOLLOW)
    o["path_nofollow_on_symlink"] = outcome(open_close, s.p("lnk"),
                                            os.O_PATH | os.O_NOFOLLOW)
    o["symlink_loop"] = outcome(open_close, s.p("loop"), os.O_RDONLY)
    o["creat_directory_flags"] = outcome(open_close, s.p("cd"),
                                         os.O_CREAT | os.O_DIRECTORY | os.O_RDONLY)
    o["rdonly_trunc"] = outcome(open_close, f, os.O_RDONLY | os.O_TRUNC)
    o["size_after_rdonly_trunc"] = os.path.getsize(f)
    o["o_tmpfile"] = outcome(open_close, s.p("dir"), os.O_TMPFILE | os.O_WRONLY, 0o600)
    o["creat_mode_kept"] = (open_close(s.p("m"), os.O_CREAT | os.O_WRONLY, 0o751),
                            perm(s.p("m")))[1]
    o["creat_existing_keeps_mode"] = (open_close(s.p("m"), os.O_CREAT | os.O_WRONLY, 0o600),
                                      perm(s.p("m")))[1]
    return o


@check
def errno_mkdir_rmdir(s: Site) -> dict:
    make(s.p("f"))
    make_dir(s.p("d"))
    make_dir(s.p("full"))
    make(s.p("full", "x"))
    os.symlink("nowhere", s.p("dangling"))
    os.symlink("d", s.p("dlink"))
    o: dict[str, object] = {}
    o["mkdir_on_file"] = outcome(os.mkdir, s.p("f"))
    o["mkdir_on_dir"] = outcome(os.mkdir, s.p("d"))
    o["mkdir_on_dangling_symlink"] = outcome(os.mkdir, s.p("dangling"))
    o["mkdir_missing_parent"] = outcome(os.mkdir, s.p("nope", "x"))
    o["mkdir_parent_is_file"] = outcome(os.mkdir, s.p("f", "x"))
    o["mkdir_dot"] = outcome(os.mkdir, s.p("d", "."))
    o["mkdir_trailing_slash"] = outcome(os.mkdir, s.p("t") + "/")
    o["mkdir_mode"] = (os.mkdir(s.p("m"), 0o705), perm(s.p("m")))[1]
    o["rmdir_nonempty"] = outcome(os.rmdir, s.p("full"))
    o["rmdir_file"] = outcome(os.rmdir, s.p("f"))
    o["rmdir_missing"] = outcome(os.rmdir, s.p("missing"))
    o["rmdir_dot"] = outcome(os.rmdir, s.p("d", "."))
    o["rmdir_dotdot"] = outcome(os.rmdir, s.p("d", ".."))
    o["rmdir_symlink_to_dir"] = outcome(os.rmdir, s.p("dlink"))
    o["rmdir_through_file"] = outcome(os.rmdir, s.p("f", "x"))
    o["rmdir_trailing_slash"] = outcome(os.rmdir, s.p("t") + "/")
    o["rmdir_empty"] = outcome(os.rmdir, s.p("d"))
    o["gone_after_rmdir"] = describe(s.p("d"))
    return o


@check
def errno_unlink(s: Site) -> dict:
    make(s.p("f"), b"x")
    make_dir(s.p("d"))
    os.symlink("f", s.p("lnk"))
    os.symlink("nowhere", s.p("dangling"))
    o: dict[str, object] = {}
    o["unlink_dir"] = outcome(os.unlink, s.p("d"))
    o["unlink_missing"] = outcome(os.unlink, s.p("missing"))
    o["unlink_through_file"] = outcome(os.unlink, s.p("f", "x"))
    o["unlink_trailing_slash_on_file"] = outcome(os.unlink, s.p("f") + "/")
    o["unlink_symlink"] = outcome(os.unlink, s.p("lnk"))
    o["target_after_unlink_symlink"] = describe(s.p("f"))
    o["unlink_dangling"] = outcome(os.unlink, s.p("dangling"))
    o["unlink_file"] = outcome(os.unlink, s.p("f"))
    o["unlink_again"] = outcome(os.unlink, s.p("f"))
    o["listing"] = sorted(os.listdir(s.root))
    return o


@check
def errno_rename(s: Site) -> dict:
    for n in ("f", "g", "h", "x1", "x2"):
        make(s.p(n), n.encode())
    for n in ("a", "a/b", "a/b/c", "empty", "full", "other"):
        make_dir(s.p(n))
    make(s.p("full", "x"))
    os.symlink("f", s.p("lnk"))
    o: dict[str, object] = {}
    o["missing_source"] = outcome(os.rename, s.p("missing"), s.p("z"))
    o["missing_target_dir"] = outcome(os.rename, s.p("f"), s.p("nodir", "z"))
    o["source_through_file"] = outcome(os.rename, s.p("f", "x"), s.p("z"))
    o["target_through_file"] = outcome(os.rename, s.p("g"), s.p("f", "x"))
    o["dir_into_itself"] = outcome(os.rename, s.p("a"), s.p("a", "inside"))
    o["dir_into_descendant"] = outcome(os.rename, s.p("a"), s.p("a", "b", "c", "inside"))
    o["dir_onto_own_child"] = outcome(os.rename, s.p("a"), s.p("a", "b"))
    o["dir_onto_file"] = outcome(os.rename, s.p("empty"), s.p("f"))
    o["file_onto_dir"] = outcome(os.rename, s.p("f"), s.p("empty"))
    o["dir_onto_nonempty_dir"] = outcome(os.rename, s.p("empty"), s.p("full"))
    o["file_trailing_slash"] = outcome(os.rename, s.p("f") + "/", s.p("z"))
    o["dot"] = outcome(os.rename, s.p("a", "."), s.p("z"))
    o["onto_itself"] = outcome(os.rename, s.p("f"), s.p("f"))
    o["file_over_file"] = outcome(os.rename, s.p("g"), s.p("h"))
    o["content_after_replace"] = open(s.p("h"), "rb").read()
    o["file_over_symlink"] = outcome(os.rename, s.p("h"), s.p("lnk"))
    o["replaced_symlink"] = describe(s.p("lnk"))
    o["noreplace_existing"] = outcome(renameat2, s.p("x1"), s.p("f"), RENAME_NOREPLACE)
    o["noreplace_new"] = outcome(renameat2, s.p("x1"), s.p("x3"), RENAME_NOREPLACE)
    o["exchange"] = outcome(renameat2, s.p("x2"), s.p("f"), RENAME_EXCHANGE)
    o["after_exchange"] = (open(s.p("x2"), "rb").read(), open(s.p("f"), "rb").read())
    o["exchange_missing"] = outcome(renameat2, s.p("x2"), s.p("missing"), RENAME_EXCHANGE)
    o["file_across_dirs"] = outcome(os.rename, s.p("x3"), s.p("other", "x3"))
    o["dir_across_dirs"] = outcome(os.rename, s.p("a", "b"), s.p("other", "b"))
    o["moved_dir_contents"] = sorted(os.listdir(s.p("other", "b")))
    o["dir_onto_empty_dir"] = outcome(os.rename, s.p("empty"), s.p("other", "b", "c"))
    o["listing"] = sorted(os.listdir(s.root))
    return o


def tree_of(root: str) -> dict[str, object]:
    """Relative path -> bytes (files) or "dir" (directories), everything below ``root``."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = "dir"
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as h:
                out[os.path.normpath(os.path.join(rel, f))] = h.read()
    return dict(sorted(out.items()))


@check
def rename_exchange(s: Site) -> dict:
    """RENAME_EXCHANGE of two files, two directories (a name in common, names only
    one has, a subdirectory), a file with a directory in another directory; then the
    tree after a remount, and as the bucket holds it (a fresh cache, after a sync)."""
    make(s.p("f"), b"file f")
    make(s.p("g"), b"file g, longer")
    for rel in ("d", "d/sub", "e", "e/only_e", "p", "q", "q/inner"):
        make_dir(s.p(rel))
    for rel in ("d/common", "d/only_d", "d/sub/deep", "e/common", "p/h", "q/inner/x"):
        make(s.p(rel), rel.encode())
    os.link(s.p("f"), s.p("f2"))
    s.sync()  # uploaded and clean: in the bucket, the exchange is server-side work
    tick()
    o: dict[str, object] = {}
    before = {n: times(s.p(n)) for n in ("f", "g", "d", "e", "p")}
    root_before = times(s.root)
    o["files"] = outcome(renameat2, s.p("f"), s.p("g"), RENAME_EXCHANGE)
    o["files_times"] = (changes(before["f"], times(s.p("g"))),
                        changes(before["g"], times(s.p("f"))))
    o["files_parent_times"] = changes(root_before, times(s.root))
    o["files_content"] = (open(s.p("f"), "rb").read(), open(s.p("g"), "rb").read(),
                          os.lstat(s.p("g")).st_ino == os.lstat(s.p("f2")).st_ino)
    o["dirs"] = outcome(renameat2, s.p("d"), s.p("e"), RENAME_EXCHANGE)
    o["dirs_times"] = (changes(before["d"], times(s.p("e"))),
                       changes(before["e"], times(s.p("d"))))
    o["dirs_listing"] = (sorted(os.listdir(s.p("d"))), sorted(os.listdir(s.p("e"))))
    nlink = (os.lstat(s.root).st_nlink, os.lstat(s.p("p")).st_nlink)
    o["file_with_dir"] = outcome(renameat2, s.p("p", "h"), s.p("q"), RENAME_EXCHANGE)
    o["file_with_dir_kinds"] = (describe(s.p("q")), describe(s.p("p", "h")))
    o["file_with_dir_nlink"] = (os.lstat(s.root).st_nlink - nlink[0],
                                os.lstat(s.p("p")).st_nlink - nlink[1])
    o["file_with_dir_dotdot"] = os.lstat(s.p("p", "h", "..")).st_ino == \
        os.lstat(s.p("p")).st_ino
    o["hard_links_of_one_file"] = outcome(renameat2, s.p("g"), s.p("f2"), RENAME_EXCHANGE)
    o["dir_with_own_child"] = outcome(renameat2, s.p("d"), s.p("d", "only_e"),
                                      RENAME_EXCHANGE)
    o["child_with_own_dir"] = outcome(renameat2, s.p("d", "only_e"), s.p("d"),
                                      RENAME_EXCHANGE)
    o["with_noreplace"] = outcome(renameat2, s.p("f"), s.p("g"),
                                  RENAME_EXCHANGE | RENAME_NOREPLACE)
    o["tree"] = tree_of(s.root)
    s.sync()
    s.remount()
    o["tree_after_remount"] = tree_of(s.root)
    s.remount(fresh_cache=True)  # what the bucket holds
    o["tree_from_the_bucket"] = tree_of(s.root)
    return o


@check
def rename_flags(s: Site) -> dict:
    """Flags the mount does not implement answer EINVAL, and change nothing."""
    make(s.p("a"), b"a")
    o: dict[str, object] = {}
    o["whiteout"] = outcome(renameat2, s.p("a"), s.p("b"), RENAME_WHITEOUT)
    o["after_whiteout"] = (describe(s.p("a")), describe(s.p("b")))
    o["unknown_flag"] = outcome(renameat2, s.p("a"), s.p("c"), 1 << 7)
    o["after_unknown_flag"] = os.path.lexists(s.p("c"))
    return o


@check
def errno_symlink(s: Site) -> dict:
    make(s.p("f"), b"target")
    make_dir(s.p("d"))
    o: dict[str, object] = {}
    o["over_file"] = outcome(os.symlink, "x", s.p("f"))
    o["over_dir"] = outcome(os.symlink, "x", s.p("d"))
    o["in_missing_dir"] = outcome(os.symlink, "x", s.p("nodir", "l"))
    o["empty_target"] = outcome(os.symlink, "", s.p("empty"))
    o["readlink_file"] = outcome(os.readlink, s.p("f"))
    o["readlink_dir"] = outcome(os.readlink, s.p("d"))
    o["readlink_missing"] = outcome(os.readlink, s.p("missing"))
    long_target = "t" * 4095
    o["target_4095"] = outcome(os.symlink, long_target, s.p("long"))
    o["readlink_4095"] = os.readlink(s.p("long")) == long_target
    o["lstat_size_4095"] = os.lstat(s.p("long")).st_size
    o["target_4096"] = outcome(os.symlink, "t" * 4096, s.p("toolong"))
    os.symlink("nowhere", s.p("dangling"))
    o["stat_dangling"] = outcome(os.stat, s.p("dangling"))
    o["lstat_dangling"] = describe(s.p("dangling"))
    o["symlink_mode"] = perm(s.p("dangling"))
    # 40 links are followed in one lookup; the 41st is ELOOP
    for chain, depth in (("c40_", 40), ("c41_", 41)):
        for i in range(depth):
            os.symlink(f"{chain}{i + 1}" if i + 1 < depth else "f", s.p(f"{chain}{i}"))
        o[f"chain_{depth}"] = outcome(os.stat, s.p(f"{chain}0"))
    os.symlink("self", s.p("self"))
    o["self_loop_stat"] = outcome(os.stat, s.p("self"))
    os.symlink("d/../f", s.p("dotdot"))
    o["through_dotdot"] = open(s.p("dotdot"), "rb").read()
    os.symlink("d", s.p("dl"))
    o["dir_symlink_trailing_slash"] = describe(s.p("dl") + "/")
    return o


@check
def errno_names(s: Site) -> dict:
    o: dict[str, object] = {}
    n255, n256 = "n" * 255, "n" * 256
    euro85, euro86 = "\u20ac" * 85, "\u20ac" * 86  # 255 and 258 bytes of UTF-8
    make(s.p("f"))
    for label, name in (("255", n255), ("256", n256), ("utf8_255", euro85),
                        ("utf8_258", euro86)):
        o[f"creat_{label}"] = outcome(open_close, s.p(name), os.O_CREAT | os.O_WRONLY)
        o[f"stat_{label}"] = outcome(os.stat, s.p(name))
        o[f"mkdir_{label}"] = outcome(os.mkdir, s.p("D" + name[1:]))
        o[f"symlink_{label}"] = outcome(os.symlink, "f", s.p("L" + name[1:]))
        o[f"rename_to_{label}"] = outcome(os.rename, s.p("f"), s.p("R" + name[1:]))
        if o[f"rename_to_{label}"] == "ok":
            os.rename(s.p("R" + name[1:]), s.p("f"))
        o[f"unlink_{label}"] = outcome(os.unlink, s.p(name))
    o["component_1100_bytes"] = outcome(os.stat, s.p("x" * 1100, "y"))
    o["path_over_4096"] = outcome(os.stat, s.p("/".join(["d" * 200] * 21)))
    o["non_utf8_name"] = outcome(open_close, os.fsencode(s.root) + b"/bad\xff",
                                 os.O_CREAT | os.O_WRONLY)
    o["listing"] = sorted(os.listdir(s.root))
    return o


@check
def errno_fd(s: Site) -> dict:
    f = make(s.p("f"), b"0123456789")
    make_dir(s.p("d"))
    o: dict[str, object] = {}
    ro = os.open(f, os.O_RDONLY)
    wo = os.open(f, os.O_WRONLY)
    dfd = os.open(s.p("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        o["read_on_wronly"] = outcome(os.read, wo, 4)
        o["write_on_rdonly"] = outcome(os.write, ro, b"x")
        o["pwrite_on_rdonly"] = outcome(os.pwrite, ro, b"x", 0)
        o["ftruncate_on_rdonly"] = outcome(os.ftruncate, ro, 0)
        o["fallocate_on_rdonly"] = outcome(fallocate, ro, 0, 0, 100)
        o["copy_to_rdonly"] = outcome(os.copy_file_range, wo, ro, 4) \
            if hasattr(os, "copy_file_range") else "n/a"
        o["read_on_dir"] = outcome(os.read, dfd, 4)
        o["ftruncate_on_dir"] = outcome(os.ftruncate, dfd, 0)
        o["listdir_on_file_fd"] = outcome(os.listdir, ro)
        o["pread_negative"] = outcome(os.pread, ro, 4, -1)
        o["lseek_bad_whence"] = outcome(os.lseek, ro, 0, 42)
        o["lseek_negative"] = outcome(os.lseek, ro, -5, os.SEEK_SET)
        o["fchmod_ro_fd"] = outcome(os.fchmod, ro, 0o640)
    finally:
        os.close(ro)
        os.close(wo)
        os.close(dfd)
    for label, fn, args in (("read", os.read, (4,)), ("write", os.write, (b"x",)),
                            ("fstat", os.fstat, ()), ("fsync", os.fsync, ()),
                            ("fchmod", os.fchmod, (0o600,)), ("close", os.close, ()),
                            ("ftruncate", os.ftruncate, (0,))):
        o[f"{label}_closed"] = outcome(fn, ro, *args)
    o["content"] = open(f, "rb").read()
    return o


@check
def errno_truncate(s: Site) -> dict:
    f = make(s.p("f"), b"0123456789")
    make_dir(s.p("d"))
    os.symlink("f", s.p("lnk"))
    os.mkfifo(s.p("fifo"))
    o: dict[str, object] = {}
    o["dir"] = outcome(os.truncate, s.p("d"), 0)
    o["negative"] = outcome(os.truncate, f, -1)
    o["missing"] = outcome(os.truncate, s.p("missing"), 0)
    o["through_file"] = outcome(os.truncate, s.p("f", "x"), 0)
    o["fifo"] = outcome(os.truncate, s.p("fifo"), 0)
    o["through_symlink"] = outcome(os.truncate, s.p("lnk"), 4)
    o["target_after"] = open(f, "rb").read()
    o["grow"] = outcome(os.truncate, f, 8)
    o["after_grow"] = open(f, "rb").read()
    return o


@check
def dir_listing(s: Site) -> dict:
    make(s.p("f"), b"x")
    make_dir(s.p("d1"))
    make_dir(s.p("d2"))
    os.symlink("f", s.p("l"))
    os.mkfifo(s.p("p"))
    o: dict[str, object] = {}
    with os.scandir(s.root) as it:
        entries = {e.name: (e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False),
                            e.is_symlink(), e.inode() == os.lstat(e.path).st_ino)
                   for e in it}
    o["entries"] = sorted(entries.items())
    o["dir_nlink"] = os.lstat(s.root).st_nlink
    o["empty_dir_nlink"] = os.lstat(s.p("d1")).st_nlink
    o["file_nlink"] = os.lstat(s.p("f")).st_nlink
    o["dot_is_dir"] = os.lstat(s.p("d1", ".")).st_ino == os.lstat(s.p("d1")).st_ino
    o["dotdot_is_parent"] = os.lstat(s.p("d1", "..")).st_ino == os.lstat(s.root).st_ino
    o["namemax"] = os.statvfs(s.root).f_namemax
    return o


@check
def dir_rewinddir(s: Site) -> dict:
    """rewinddir(3) sees names added and removed since opendir; within one pass every
    name neither added nor removed meanwhile comes exactly once."""
    old = [f"old{i:03d}" for i in range(300)]  # several FUSE readdir replies
    for n in old:
        make(s.p(n))
    make_dir(s.p("olddir"))
    o: dict[str, object] = {}
    d = DirStream(s.root)
    try:
        first = d.read()
        o["first_pass"] = sorted(first)
        for i in range(200):
            make(s.p(f"new{i:03d}"))
        make_dir(s.p("newdir"))
        for n in old[:50]:
            os.unlink(s.p(n))
        os.rmdir(s.p("olddir"))
        d.rewind()
        o["after_rewind"] = sorted(d.read())
        # a pass with changes in the middle of it
        d.rewind()
        part = d.read(100)
        for n in old[50:60] + [f"new{i:03d}" for i in range(10)]:
            os.unlink(s.p(n))
        for i in range(20):
            make(s.p(f"mid{i:02d}"))
        rest = d.read()
        seen = part + rest
        untouched = set(old[60:]) | {f"new{i:03d}" for i in range(10, 200)} | {"newdir"}
        o["mid_pass_untouched_once"] = all(seen.count(n) == 1 for n in untouched)
        o["mid_pass_no_repeats"] = len(seen) == len(set(seen))
        d.rewind()
        o["after_second_rewind"] = sorted(d.read())
    finally:
        d.close()
    return o


# permissions ----------------------------------------------------------------------------
def _access_steps(root: str) -> dict:
    """What the calling user may do with the files _perm_access_setup made."""
    o: dict[str, object] = {}
    for name in ("f640", "f604", "f000", "f070", "x700", "x644"):
        p = os.path.join(root, name)
        o[f"{name}_access"] = "".join(c if os.access(p, m) else "-" for c, m in
                                      (("r", os.R_OK), ("w", os.W_OK), ("x", os.X_OK)))
        o[f"{name}_open_r"] = outcome(open_close, p, os.O_RDONLY)
        o[f"{name}_open_w"] = outcome(open_close, p, os.O_WRONLY)
    for d in ("d750", "d711", "d555", "d300", "d000"):
        p = os.path.join(root, d)
        o[f"{d}_list"] = outcome(os.listdir, p)
        o[f"{d}_stat_child"] = outcome(os.stat, os.path.join(p, "in"))
        o[f"{d}_read_child"] = outcome(lambda q: open(q, "rb").read(), os.path.join(p, "in"))
        new = os.path.join(p, f"new-{os.getuid()}")
        o[f"{d}_create"] = outcome(open_close, new, os.O_CREAT | os.O_WRONLY)
        o[f"{d}_unlink_child"] = outcome(os.unlink, new)
    o["exec_search_root"] = os.access(root, os.X_OK)
    return o


@check
def perm_access(s: Site) -> dict:
    a = (UID["A"], GROUP_G)
    for name, mode in (("f640", 0o640), ("f604", 0o604), ("f000", 0o000), ("f070", 0o070),
                       ("x700", 0o700), ("x644", 0o644)):
        make(s.p(name), b"secret", mode, owner=a)
    for d, mode in (("d750", 0o750), ("d711", 0o711), ("d555", 0o555), ("d300", 0o300),
                    ("d000", 0o000)):
        make_dir(s.p(d), 0o755)
        make(s.p(d, "in"), b"in", 0o644, owner=a)
        os.chown(s.p(d), *a)
        os.chmod(s.p(d), mode)
    o = {f"root.{k}": v for k, v in _access_steps(s.root).items()}
    for user in ("A", "B", "C"):
        o.update({f"{user}.{k}": v for k, v in as_user(user, _access_steps, s.root).items()})
    return o


def _attr_steps_a(root: str) -> dict:
    f, g = os.path.join(root, "f"), os.path.join(root, "g")
    o: dict[str, object] = {}
    o["chmod_own"] = outcome(os.chmod, f, 0o600)
    o["mode_after_chmod_own"] = perm(f)
    o["chmod_setgid_in_group"] = outcome(os.chmod, f, 0o2755)
    o["mode_setgid_in_group"] = perm(f)
    o["chmod_setgid_not_in_group"] = outcome(os.chmod, os.path.join(root, "c_group"), 0o2755)
    o["mode_setgid_not_in_group"] = perm(os.path.join(root, "c_group"))
    o["chmod_dir_setgid_not_in_group"] = outcome(os.chmod, os.path.join(root, "c_dir"), 0o2775)
    o["mode_dir_setgid_not_in_group"] = perm(os.path.join(root, "c_dir"))
    os.chmod(f, 0o644)
    o["utime_explicit_own"] = outcome(os.utime, f, ns=(10**18, 10**18 + 5))
    o["chown_to_other_user"] = outcome(os.chown, f, UID["B"], -1)
    o["chown_to_self"] = outcome(os.chown, f, UID["A"], -1)
    o["chgrp_to_member_group"] = outcome(os.chown, f, -1, 1001)
    o["gid_after_chgrp"] = os.stat(f).st_gid
    o["chgrp_to_foreign_group"] = outcome(os.chown, f, -1, GID_C)
    o["chgrp_back"] = outcome(os.chown, f, -1, GROUP_G)
    o["chown_noop"] = outcome(os.chown, f, -1, -1)
    o["chmod_g_as_owner"] = outcome(os.chmod, g, 0o666)
    return o


def _attr_steps_b(root: str) -> dict:
    f, g = os.path.join(root, "f"), os.path.join(root, "g")
    o: dict[str, object] = {}
    o["chmod_other_file"] = outcome(os.chmod, f, 0o777)
    o["chmod_other_writable_file"] = outcome(os.chmod, g, 0o777)
    o["utime_explicit_other_writable"] = outcome(os.utime, g, ns=(10**18, 10**18))
    o["utime_now_other_writable"] = outcome(os.utime, g)
    o["utime_now_other_readonly"] = outcome(os.utime, f)
    o["utimensat_now_omit_other_writable"] = outcome(utimensat, g, (0, UTIME_NOW),
                                                     (0, UTIME_OMIT))
    o["utimensat_omit_omit_other"] = outcome(utimensat, f, (0, UTIME_OMIT), (0, UTIME_OMIT))
    o["utimensat_now_now_other_writable"] = outcome(utimensat, g, (0, UTIME_NOW),
                                                    (0, UTIME_NOW))
    o["chown_other_file_to_self"] = outcome(os.chown, f, UID["B"], -1)
    o["chgrp_other_file"] = outcome(os.chown, f, -1, GROUP_G)
    o["chown_noop_other_file"] = outcome(os.chown, f, -1, -1)
    return o


@check
def perm_attr_changes(s: Site) -> dict:
    a = (UID["A"], GROUP_G)
    make(s.p("f"), b"f", 0o644, owner=a)
    make(s.p("g"), b"g", 0o666, owner=a)
    make(s.p("c_group"), b"c", 0o755, owner=(UID["A"], GID_C))
    make_dir(s.p("c_dir"), 0o755, owner=(UID["A"], GID_C))
    os.symlink("f", s.p("lnk"))
    o = {f"A.{k}": v for k, v in as_user("A", _attr_steps_a, s.root).items()}
    o.update({f"B.{k}": v for k, v in as_user("B", _attr_steps_b, s.root).items()})
    o["owner_after"] = describe(s.p("f"))
    o["root_chown_other"] = outcome(os.chown, s.p("f"), UID["B"], GID_C)
    o["owner_after_root_chown"] = describe(s.p("f"))
    o["root_chmod_other"] = outcome(os.chmod, s.p("f"), 0o4711)
    o["root_lchown_symlink"] = outcome(os.chown, s.p("lnk"), UID["C"], GID_C,
                                       follow_symlinks=False)
    o["symlink_owner"] = describe(s.p("lnk"))
    o["target_owner_after_lchown"] = describe(s.p("f"))
    o["root_utime_other"] = outcome(os.utime, s.p("f"), ns=(5, 7))
    o["times_after_root_utime"] = times(s.p("f"))[:2]
    return o


_KILL_FILES = {  # name: (mode, who writes or changes it, how)
    "w_other": (0o6775, "B", "write"),
    "w_owner": (0o6775, "A", "write"),
    "w_root": (0o6775, "root", "write"),
    "w_sgid_no_gx": (0o2664, "B", "write"),
    "w_suid_only": (0o4777, "B", "write"),
    "t_other": (0o6775, "B", "truncate"),
    "ft_other": (0o6775, "B", "ftruncate"),
    "t_root": (0o6775, "root", "truncate"),
    "c_root_chown": (0o6775, "root", "chown"),
    "c_root_noop": (0o6775, "root", "chown_noop"),
    "c_owner_chgrp": (0o6775, "A", "chgrp"),
    "c_root_chown_dir": (0o2775, "root", "chown"),
    "c_chmod_keeps": (0o6775, "A", "chmod_keep"),
}


def _kill_steps(root: str, who: str) -> dict:
    o: dict[str, object] = {}
    for name, (_, user, how) in _KILL_FILES.items():
        if user != who:
            continue
        p = os.path.join(root, name)
        if how == "write":
            o[name] = outcome(lambda q: open(q, "r+b").write(b"W"), p)
        elif how == "truncate":
            o[name] = outcome(os.truncate, p, 1)
        elif how == "ftruncate":
            fd = os.open(p, os.O_WRONLY)
            o[name] = outcome(os.ftruncate, fd, 1)
            os.close(fd)
        elif how == "chown":
            o[name] = outcome(os.chown, p, UID["B"], -1)
        elif how == "chown_noop":
            o[name] = outcome(os.chown, p, -1, -1)
        elif how == "chgrp":
            o[name] = outcome(os.chown, p, -1, 1001)
        elif how == "chmod_keep":
            o[name] = outcome(os.chmod, p, 0o6775)
    return o


@check
def perm_setid_cleared(s: Site) -> dict:
    """S_ISUID/S_ISGID go away when a file is written or changes owner (as on Linux)."""
    for name, (mode, _, _) in _KILL_FILES.items():
        if name.endswith("_dir"):
            make_dir(s.p(name), 0o777, owner=(UID["A"], GROUP_G))
        else:
            make(s.p(name), b"data", 0o666, owner=(UID["A"], GROUP_G))
        os.chmod(s.p(name), mode)
    o: dict[str, object] = {}
    for who in ("A", "B"):
        o.update({f"{who}.{k}": v for k, v in as_user(who, _kill_steps, s.root, who).items()})
    o.update({f"root.{k}": v for k, v in _kill_steps(s.root, "root").items()})
    for name in _KILL_FILES:
        o[f"mode.{name}"] = perm(s.p(name))
    return o


def _setgid_steps(root: str, who: str) -> dict:
    sg = os.path.join(root, "sg")
    o: dict[str, object] = {}
    made = {
        "file": lambda p: open_close(p, os.O_CREAT | os.O_WRONLY, 0o2755),
        "dir": lambda p: os.mkdir(p, 0o755),
        "fifo": lambda p: os.mkfifo(p, 0o644),
        "symlink": lambda p: os.symlink("x", p),
    }
    for label, fn in made.items():
        p = os.path.join(sg, f"{who}-{label}")
        o[f"make_{label}"] = outcome(fn, p)
        o[label] = describe(p)
    sub = os.path.join(sg, f"{who}-dir", "deeper")
    o["file_in_subdir"] = outcome(open_close, sub, os.O_CREAT | os.O_WRONLY, 0o644)
    o["in_subdir"] = describe(sub)
    return o


@check
def perm_setgid_dir(s: Site) -> dict:
    make_dir(s.p("sg"), 0o2777, owner=(0, GROUP_G))
    o: dict[str, object] = {"sg": describe(s.p("sg"))}
    o.update({f"root.{k}": v for k, v in _setgid_steps(s.root, "root").items()})
    for who in ("A", "C"):
        o.update({f"{who}.{k}": v for k, v in as_user(who, _setgid_steps, s.root, who).items()})
    # a directory without the bit passes nothing on
    make_dir(s.p("plain"), 0o777, owner=(0, GROUP_G))
    o["plain_dir_child"] = as_user("C", lambda p: (open_close(p, os.O_CREAT | os.O_WRONLY),
                                                   describe(p))[1], s.p("plain", "c"))
    return o


def _sticky_steps_b(root: str) -> dict:
    o: dict[str, object] = {}
    st, ns = os.path.join(root, "st"), os.path.join(root, "ns")
    o["unlink_others"] = outcome(os.unlink, os.path.join(st, "a"))
    o["rename_others"] = outcome(os.rename, os.path.join(st, "a"), os.path.join(st, "x"))
    o["rename_own_over_others"] = outcome(os.rename, os.path.join(st, "b"),
                                          os.path.join(st, "a2"))
    o["rmdir_others"] = outcome(os.rmdir, os.path.join(st, "adir"))
    o["rename_others_out"] = outcome(os.rename, os.path.join(st, "a"), os.path.join(ns, "a"))
    o["open_creat_others_writable"] = outcome(open_close, os.path.join(st, "a3"),
                                              os.O_CREAT | os.O_WRONLY)
    o["write_others_writable"] = outcome(lambda p: open(p, "r+b").write(b"B"),
                                         os.path.join(st, "a3"))
    o["unlink_own"] = outcome(os.unlink, os.path.join(st, "b"))
    o["unlink_others_no_sticky"] = outcome(os.unlink, os.path.join(ns, "a"))
    return o


@check
def perm_sticky(s: Site) -> dict:
    make_dir(s.p("st"), 0o1777, owner=(UID["C"], GID_C))
    make_dir(s.p("ns"), 0o777, owner=(UID["C"], GID_C))

    def a_steps(root: str) -> None:
        for n in ("a", "a2"):
            make(os.path.join(root, "st", n), b"A")
        make(os.path.join(root, "st", "a3"), b"A", 0o666)
        os.mkdir(os.path.join(root, "st", "adir"))
        make(os.path.join(root, "ns", "a"), b"A")

    as_user("A", a_steps, s.root)
    as_user("B", lambda root: make(os.path.join(root, "st", "b"), b"B"), s.root)
    o = {f"B.{k}": v for k, v in as_user("B", _sticky_steps_b, s.root).items()}
    o["C.dir_owner_unlinks"] = as_user("C", outcome, os.unlink, s.p("st", "a"))
    o["A.rmdir_own"] = as_user("A", outcome, os.rmdir, s.p("st", "adir"))
    o["root.unlink"] = outcome(os.unlink, s.p("st", "a2"))
    o["listing"] = sorted(os.listdir(s.p("st")))
    return o


def _dir_write_steps_b(root: str) -> dict:
    o: dict[str, object] = {}
    dw, bd = os.path.join(root, "dw"), os.path.join(root, "bd")
    o["create"] = outcome(open_close, os.path.join(dw, "new"), os.O_CREAT | os.O_WRONLY)
    o["mkdir"] = outcome(os.mkdir, os.path.join(dw, "newdir"))
    o["symlink"] = outcome(os.symlink, "x", os.path.join(dw, "sl"))
    o["mkfifo"] = outcome(os.mkfifo, os.path.join(dw, "fifo"))
    o["unlink"] = outcome(os.unlink, os.path.join(dw, "f"))
    o["rmdir"] = outcome(os.rmdir, os.path.join(dw, "sub"))
    o["rename_out"] = outcome(os.rename, os.path.join(dw, "f"), os.path.join(bd, "f"))
    o["rename_in"] = outcome(os.rename, os.path.join(bd, "b"), os.path.join(dw, "b"))
    o["rename_within"] = outcome(os.rename, os.path.join(dw, "f"), os.path.join(dw, "g"))
    o["write_existing"] = outcome(lambda p: open(p, "r+b").write(b"B"), os.path.join(dw, "w"))
    o["truncate_writable"] = outcome(os.truncate, os.path.join(dw, "w"), 1)
    o["truncate_readonly"] = outcome(os.truncate, os.path.join(dw, "f"), 0)
    o["rename_readonly_dir_same_parent"] = outcome(os.rename, os.path.join(bd, "asub"),
                                                   os.path.join(bd, "asub2"))
    o["rename_readonly_dir_new_parent"] = outcome(os.rename, os.path.join(bd, "asub2"),
                                                  os.path.join(bd, "x", "asub"))
    o["listing_dw"] = sorted(os.listdir(dw))
    o["listing_bd"] = sorted(os.listdir(bd))
    return o


@check
def perm_dir_write(s: Site) -> dict:
    a = (UID["A"], GROUP_G)
    make_dir(s.p("dw"), 0o755, owner=a)
    make(s.p("dw", "f"), b"A", owner=a)
    make(s.p("dw", "w"), b"A", 0o666, owner=a)
    make_dir(s.p("dw", "sub"), 0o777, owner=a)
    make_dir(s.p("bd"), 0o777, owner=(UID["B"], 1002))
    make(s.p("bd", "b"), b"B", owner=(UID["B"], 1002))
    make_dir(s.p("bd", "x"), 0o777, owner=(UID["B"], 1002))
    make_dir(s.p("bd", "asub"), 0o755, owner=a)
    o = {f"B.{k}": v for k, v in as_user("B", _dir_write_steps_b, s.root).items()}
    o["root.create"] = outcome(open_close, s.p("dw", "root"), os.O_CREAT | os.O_WRONLY)
    o["root.rename_out"] = outcome(os.rename, s.p("dw", "f"), s.p("bd", "rf"))
    return o


@check
def perm_mknod_and_root(s: Site) -> dict:
    make_dir(s.p("open"), 0o777)
    make(s.p("f000"), b"zero", 0o000, owner=(UID["A"], GROUP_G))
    make(s.p("f444"), b"ro", 0o444, owner=(UID["A"], GROUP_G))
    make(s.p("f644"), b"rw", 0o644)
    make_dir(s.p("d000"), 0o755)
    make(s.p("d000", "in"), b"in")
    os.chmod(s.p("d000"), 0o000)
    make_dir(s.p("d555"), 0o555, owner=(UID["A"], GROUP_G))

    def b_steps(root: str) -> dict:
        d = os.path.join(root, "open")
        return {
            "mknod_chr": outcome(os.mknod, os.path.join(d, "chr"), stat.S_IFCHR | 0o600,
                                 os.makedev(1, 3)),
            "mknod_blk": outcome(os.mknod, os.path.join(d, "blk"), stat.S_IFBLK | 0o600,
                                 os.makedev(7, 0)),
            "mkfifo": outcome(os.mkfifo, os.path.join(d, "fifo"), 0o640),
            "mknod_reg": outcome(os.mknod, os.path.join(d, "reg"), stat.S_IFREG | 0o640),
            "fifo": describe(os.path.join(d, "fifo")),
            "reg": describe(os.path.join(d, "reg")),
        }

    o = {f"B.{k}": v for k, v in as_user("B", b_steps, s.root).items()}
    o["root.mknod_chr"] = outcome(os.mknod, s.p("open", "chr"), stat.S_IFCHR | 0o600,
                                  os.makedev(1, 3))
    o["root.read_000"] = outcome(lambda p: open(p, "rb").read(), s.p("f000"))
    o["root.write_444"] = outcome(lambda p: open(p, "r+b").write(b"R"), s.p("f444"))
    o["root.access_x_644"] = os.access(s.p("f644"), os.X_OK)
    o["root.list_000_dir"] = outcome(os.listdir, s.p("d000"))
    o["root.read_in_000_dir"] = outcome(lambda p: open(p, "rb").read(), s.p("d000", "in"))
    o["root.create_in_555_dir"] = outcome(open_close, s.p("d555", "r"), os.O_CREAT | os.O_WRONLY)
    o["root.chmod_others"] = outcome(os.chmod, s.p("f444"), 0o440)
    os.chmod(s.p("d000"), 0o755)
    return o


# timestamps -----------------------------------------------------------------------------
@check
def time_file_data(s: Site) -> dict:
    f = make(s.p("f"), b"0123456789")
    make(s.p("empty"))
    make(s.p("src"), b"source bytes")
    o: dict[str, object] = {}

    def step(label: str, path: str, fn: Callable[[], object]) -> None:
        tick()
        before = times(path)
        fn()
        o[label] = changes(before, times(path))

    def write(path: str, data: bytes, off: int = 0) -> None:
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, data, off)
        os.close(fd)

    step("write", f, lambda: write(f, b"ab", 3))
    step("write_empty", f, lambda: write(f, b"", 3))
    step("read", f, lambda: open(f, "rb").read())
    step("truncate_shrink", f, lambda: os.truncate(f, 8))
    step("truncate_grow", f, lambda: os.truncate(f, 12))
    step("truncate_same_size", f, lambda: os.truncate(f, 12))

    def ftrunc(size: int) -> None:
        fd = os.open(f, os.O_WRONLY)
        os.ftruncate(fd, size)
        os.close(fd)

    step("ftruncate_shrink", f, lambda: ftrunc(6))
    step("ftruncate_same_size", f, lambda: ftrunc(6))
    step("o_trunc_nonempty", f, lambda: open_close(f, os.O_WRONLY | os.O_TRUNC))
    step("o_trunc_empty", s.p("empty"), lambda: open_close(s.p("empty"),
                                                           os.O_WRONLY | os.O_TRUNC))
    step("open_rdwr_close", f, lambda: open_close(f, os.O_RDWR))

    def append() -> None:
        with open(f, "ab") as h:
            h.write(b"more")

    step("append", f, append)

    def mmap_write() -> None:
        with open(f, "r+b") as h, mmap.mmap(h.fileno(), 0) as m:
            m[0:2] = b"MM"
            m.flush()

    step("mmap_write", f, mmap_write)

    def copy_range() -> None:
        src = os.open(s.p("src"), os.O_RDONLY)
        dst = os.open(f, os.O_WRONLY)
        try:
            os.copy_file_range(src, dst, 6, 0, 1)
        finally:
            os.close(src)
            os.close(dst)

    step("copy_file_range_dst", f, copy_range)

    # relatime: the first read after a change moves atime
    tick()
    before = times(f)
    open(f, "rb").read()
    o["read_after_change.atime"] = relation(before[0], times(f)[0])

    # cp -p and tar set times after writing; a page written through a mapping
    # before that must not move mtime again when it is written back later
    with open(f, "r+b") as h, mmap.mmap(h.fileno(), 0) as m:
        m[0:1] = b"Z"
        os.utime(f, ns=(7_000_000_000, 9_000_000_000))
        m.flush()
    o["mmap_write_then_utime.mtime"] = times(f)[1]
    fd = os.open(f, os.O_WRONLY)
    try:
        os.pwrite(fd, b"Y", 0)
        os.utime(fd, ns=(7_000_000_000, 9_000_000_000))
        os.fsync(fd)
    finally:
        os.close(fd)
    o["write_then_futimens.mtime"] = times(f)[1]
    return o


@check
def time_attributes(s: Site) -> dict:
    f = make(s.p("f"), b"data")
    make_dir(s.p("d"))
    make_dir(s.p("other"))
    os.symlink("f", s.p("lnk"))
    o: dict[str, object] = {}

    def step(label: str, path: str, fn: Callable[[], object], after: str | None = None
             ) -> None:
        tick()
        before = times(path)
        o[f"{label}_outcome"] = outcome(fn)
        o[label] = changes(before, times(after or path))

    step("chmod", f, lambda: os.chmod(f, 0o600))
    step("chmod_same_mode", f, lambda: os.chmod(f, 0o600))
    step("chown", f, lambda: os.chown(f, UID["A"], GROUP_G))
    step("chown_same_owner", f, lambda: os.chown(f, UID["A"], GROUP_G))
    step("chown_noop", f, lambda: os.chown(f, -1, -1))
    step("utime_explicit", f, lambda: os.utime(f, ns=(1, 2)))
    step("setxattr", f, lambda: os.setxattr(f, "user.k", b"v"))
    step("removexattr", f, lambda: os.removexattr(f, "user.k"))
    step("rename", f, lambda: os.rename(f, s.p("f2")), s.p("f2"))
    step("rename_across_dirs", s.p("f2"), lambda: os.rename(s.p("f2"), s.p("other", "f")),
         s.p("other", "f"))
    step("rename_dir", s.p("d"), lambda: os.rename(s.p("d"), s.p("d2")), s.p("d2"))
    step("rename_dir_across", s.p("d2"), lambda: os.rename(s.p("d2"), s.p("other", "d")),
         s.p("other", "d"))
    step("chmod_dir", s.p("other", "d"), lambda: os.chmod(s.p("other", "d"), 0o700))
    step("lchown_symlink", s.p("lnk"),
         lambda: os.chown(s.p("lnk"), UID["B"], -1, follow_symlinks=False))
    # the inode of an open file that loses its last name
    g = make(s.p("g"), b"gone")
    fd = os.open(g, os.O_RDONLY)
    try:
        tick()
        before = os.fstat(fd)
        os.unlink(g)
        after = os.fstat(fd)
        o["unlink_open_file"] = changes(
            (0, before.st_mtime_ns, before.st_ctime_ns), (0, after.st_mtime_ns,
                                                          after.st_ctime_ns))
        o["unlink_open_file_nlink"] = after.st_nlink
        o["unlinked_still_readable"] = os.pread(fd, 10, 0)
    finally:
        os.close(fd)
    # a rename over an open file: the displaced inode loses its name
    make(s.p("victim"), b"old")
    make(s.p("winner"), b"new")
    fd = os.open(s.p("victim"), os.O_RDONLY)
    try:
        tick()
        before = os.fstat(fd)
        os.rename(s.p("winner"), s.p("victim"))
        after = os.fstat(fd)
        o["displaced_by_rename"] = changes((0, before.st_mtime_ns, before.st_ctime_ns),
                                           (0, after.st_mtime_ns, after.st_ctime_ns))
        o["displaced_nlink"] = after.st_nlink
        o["displaced_content"] = os.pread(fd, 10, 0)
    finally:
        os.close(fd)
    return o


@check
def time_parent_dirs(s: Site) -> dict:
    """Directory mtime and ctime move when an entry comes, goes or is renamed."""
    for d in ("p", "q", "quiet"):
        make_dir(s.p(d))
    make(s.p("p", "existing"), b"x")
    make(s.p("p", "victim"), b"v")
    make(s.p("q", "x"), b"x")
    make_dir(s.p("p", "subdir"))
    make(s.p("quiet", "file"), b"q")
    o: dict[str, object] = {}

    def step(label: str, dirs: tuple[str, ...], fn: Callable[[], object]) -> None:
        tick()
        before = [times(s.p(d)) for d in dirs]
        o[f"{label}_outcome"] = outcome(fn)
        for d, b in zip(dirs, before, strict=True):
            o[f"{label}.{d}"] = changes(b, times(s.p(d)))

    step("create", ("p",), lambda: open_close(s.p("p", "new"), os.O_CREAT | os.O_WRONLY))
    step("open_creat_existing", ("p",),
         lambda: open_close(s.p("p", "new"), os.O_CREAT | os.O_WRONLY))
    step("mkdir", ("p",), lambda: os.mkdir(s.p("p", "nd")))
    step("rmdir", ("p",), lambda: os.rmdir(s.p("p", "nd")))
    step("unlink", ("p",), lambda: os.unlink(s.p("p", "new")))
    step("symlink", ("p",), lambda: os.symlink("x", s.p("p", "sl")))
    step("mkfifo", ("p",), lambda: os.mkfifo(s.p("p", "fifo")))
    step("rename_within", ("p",), lambda: os.rename(s.p("p", "sl"), s.p("p", "sl2")))
    step("rename_over", ("p",), lambda: os.rename(s.p("p", "fifo"), s.p("p", "victim")))
    step("rename_across", ("p", "q"), lambda: os.rename(s.p("p", "sl2"), s.p("q", "sl")))
    step("rename_dir_across", ("p", "q"), lambda: os.rename(s.p("p", "subdir"),
                                                            s.p("q", "subdir")))
    step("rename_noop_same_name", ("q",), lambda: os.rename(s.p("q", "x"), s.p("q", "x")))
    step("write_child", ("quiet",),
         lambda: open(s.p("quiet", "file"), "r+b").write(b"Q"))
    step("chmod_child", ("quiet",), lambda: os.chmod(s.p("quiet", "file"), 0o600))
    step("utime_child", ("quiet",), lambda: os.utime(s.p("quiet", "file")))
    step("failed_create", ("quiet",),
         lambda: open_close(s.p("quiet", "file"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    step("failed_unlink", ("quiet",), lambda: os.unlink(s.p("quiet", "missing")))
    o["nlink.p"] = os.lstat(s.p("p")).st_nlink
    o["nlink.q"] = os.lstat(s.p("q")).st_nlink
    return o


@check
def time_new_entries(s: Site) -> dict:
    o: dict[str, object] = {}
    t0 = time.time_ns()
    open_close(s.p("f"), os.O_CREAT | os.O_WRONLY)
    os.mkdir(s.p("d"))
    os.symlink("f", s.p("l"))
    os.mkfifo(s.p("p"))
    t1 = time.time_ns()
    for n in ("f", "d", "l", "p"):
        a, m, c = times(s.p(n))
        o[f"{n}.all_equal"] = a == m == c
        o[f"{n}.within_call"] = all(within(t, t0, t1) for t in (a, m, c))
    return o


@check
def time_utimensat(s: Site) -> dict:
    o: dict[str, object] = {}
    f = make(s.p("f"), b"x")
    make_dir(s.p("d"))
    os.symlink("f", s.p("lnk"))
    explicit_a, explicit_m = (1_500_000_000, 123_456_789), (1_600_000_000, 987_654_321)

    def ns(t: tuple[int, int]) -> int:
        return t[0] * 1_000_000_000 + t[1]

    def step(label: str, path: str, atime: tuple[int, int], mtime: tuple[int, int],
             follow: bool = True) -> None:
        os.utime(path, ns=(10**18, 10**18), follow_symlinks=follow)
        tick()
        before = times(path)
        t0 = time.time_ns()
        o[f"{label}_outcome"] = outcome(utimensat, path, atime, mtime, follow)
        t1 = time.time_ns()
        after = times(path)
        for i, (field, want) in enumerate((("atime", atime), ("mtime", mtime))):
            got = after[i]
            if want[1] == UTIME_OMIT:
                o[f"{label}.{field}"] = "unchanged" if got == before[i] else "changed"
            elif want[1] == UTIME_NOW:
                o[f"{label}.{field}"] = "now" if within(got, t0, t1) else "not now"
            else:
                o[f"{label}.{field}"] = "as set" if got == ns(want) else "not as set"
        o[f"{label}.ctime"] = relation(before[2], after[2])

    step("now_now", f, (0, UTIME_NOW), (0, UTIME_NOW))
    step("omit_explicit", f, (0, UTIME_OMIT), explicit_m)
    step("explicit_omit", f, explicit_a, (0, UTIME_OMIT))
    step("omit_omit", f, (0, UTIME_OMIT), (0, UTIME_OMIT))
    step("now_explicit", f, (0, UTIME_NOW), explicit_m)
    step("explicit_explicit", f, explicit_a, explicit_m)
    step("dir_explicit", s.p("d"), explicit_a, explicit_m)
    step("dir_now", s.p("d"), (0, UTIME_NOW), (0, UTIME_NOW))
    os.utime(f, ns=(5, 5))
    step("symlink_nofollow", s.p("lnk"), explicit_a, explicit_m, follow=False)
    o["target_after_symlink_utime"] = times(f)[:2]
    o["invalid_nsec"] = outcome(utimensat, f, (0, 1_000_000_000), (0, 0))
    o["negative_nsec"] = outcome(utimensat, f, (0, -1), (0, 0))
    fd = os.open(f, os.O_RDONLY)
    try:
        o["futimens"] = outcome(os.utime, fd, ns=(3, 4_000_000_005))
    finally:
        os.close(fd)
    o["after_futimens"] = times(f)[:2]
    return o


@check
def xattrs(s: Site) -> dict:
    f = make(s.p("f"), b"x", 0o644, owner=(UID["A"], GROUP_G))
    w = make(s.p("w"), b"x", 0o666, owner=(UID["A"], GROUP_G))
    make_dir(s.p("d"))
    os.symlink("f", s.p("lnk"))
    o: dict[str, object] = {}
    o["set"] = outcome(os.setxattr, f, "user.colour", b"blue")
    o["get"] = os.getxattr(f, "user.colour")
    o["get_missing"] = outcome(os.getxattr, f, "user.missing")
    o["create_existing"] = outcome(os.setxattr, f, "user.colour", b"red", os.XATTR_CREATE)
    o["replace_missing"] = outcome(os.setxattr, f, "user.other", b"x", os.XATTR_REPLACE)
    o["replace_existing"] = outcome(os.setxattr, f, "user.colour", b"green", os.XATTR_REPLACE)
    o["empty_value"] = outcome(os.setxattr, f, "user.empty", b"")
    o["binary_value"] = outcome(os.setxattr, f, "user.bin", bytes(range(256)))
    o["list"] = sorted(os.listxattr(f))
    o["values"] = (os.getxattr(f, "user.colour"), os.getxattr(f, "user.empty"),
                   os.getxattr(f, "user.bin") == bytes(range(256)))
    o["remove"] = outcome(os.removexattr, f, "user.bin")
    o["remove_missing"] = outcome(os.removexattr, f, "user.bin")
    o["on_dir"] = outcome(os.setxattr, s.p("d"), "user.d", b"1")
    o["on_symlink_itself"] = outcome(os.setxattr, s.p("lnk"), "user.l", b"1",
                                     follow_symlinks=False)
    o["through_symlink"] = outcome(os.getxattr, s.p("lnk"), "user.colour")
    o["value_1000_bytes"] = outcome(os.setxattr, s.p("d"), "user.big", b"v" * 1000)
    o["value_3000_bytes"] = outcome(os.setxattr, s.p("d"), "user.huge", b"v" * 3000)
    o["name_256_bytes"] = outcome(os.setxattr, s.p("d"), "user." + "n" * 251, b"1")
    o["trusted_as_root"] = outcome(os.setxattr, s.p("d"), "trusted.t", b"1")
    o["unknown_namespace"] = outcome(os.setxattr, s.p("d"), "bogus.t", b"1")

    def b_steps(root: str) -> dict:
        return {
            "set_readonly_others": outcome(os.setxattr, os.path.join(root, "f"), "user.b",
                                           b"1"),
            "set_writable_others": outcome(os.setxattr, os.path.join(root, "w"), "user.b",
                                           b"1"),
            "get_others": outcome(os.getxattr, os.path.join(root, "f"), "user.colour"),
            "remove_readonly_others": outcome(os.removexattr, os.path.join(root, "f"),
                                              "user.colour"),
        }

    o.update({f"B.{k}": v for k, v in as_user("B", b_steps, s.root).items()})
    o["list_w"] = sorted(os.listxattr(w))
    return o


@check
def attributes_after_sync(s: Site) -> dict:
    """Changes made after a file or directory reached the bucket survive a mount with
    a fresh cache directory (everything rebuilt from the bucket)."""
    make(s.p("f"), b"0123456789")
    make(s.p("g"), b"g")
    make_dir(s.p("d"))
    make(s.p("d", "inner"), b"i")
    make_dir(s.p("e"))
    make_dir(s.p("full"))
    make(s.p("full", "x"), b"x")
    make(s.p("suid"), b"#!/bin/sh\n", 0o755)
    make_dir(s.p("sticky"))
    os.symlink("f", s.p("lnk"))
    os.mkfifo(s.p("fifo"))
    make(s.p("fresh"), b"written just before the sync")
    before_sync = times(s.p("fresh"))
    s.sync()
    o: dict[str, object] = {"sync_keeps_times": changes(before_sync, times(s.p("fresh")))}
    os.chmod(s.p("suid"), 0o4755)
    os.chmod(s.p("sticky"), 0o1777)
    os.chmod(s.p("f"), 0o640)
    os.chown(s.p("f"), UID["A"], GROUP_G)
    os.chmod(s.p("d"), 0o710)
    os.chown(s.p("d"), UID["B"], GROUP_G)
    os.chmod(s.p("e"), 0o2770)
    os.chown(s.p("lnk"), UID["C"], GID_C, follow_symlinks=False)
    os.chmod(s.p("fifo"), 0o600)
    os.truncate(s.p("g"), 5000)
    os.setxattr(s.p("f"), "user.after", b"sync")
    os.rename(s.p("d"), s.p("d2"))
    for n in ("f", "g", "d2", "e", "lnk", "fifo", "suid", "sticky"):
        os.utime(s.p(n), ns=(1_000_000_001 * 3, 1_000_000_001 * 4), follow_symlinks=False)

    def snapshot() -> dict:
        out: dict[str, object] = {}
        for n in ("f", "g", "d2", "e", "lnk", "fifo", "d2/inner", "suid", "sticky"):
            out[n] = describe(s.p(n))
            out[f"{n}.times"] = times(s.p(n))[:2]
        out["xattr"] = os.getxattr(s.p("f"), "user.after")
        out["listing"] = sorted(os.listdir(s.root))
        return out

    before = snapshot()
    # (inner's times are the clock's: compared only with themselves)
    o.update({f"before.{k}": v for k, v in before.items() if k != "d2/inner.times"})
    s.remount(fresh_cache=True)
    # directories nobody has looked into yet: their entries are still only in the bucket
    o["fresh_cache.rmdir_nonempty_unlisted"] = outcome(os.rmdir, s.p("full"))
    o["fresh_cache.rename_over_nonempty_unlisted"] = outcome(os.rename, s.p("e"), s.p("full"))
    o["fresh_cache.unlisted_contents"] = sorted(os.listdir(s.p("full")))
    after = snapshot()
    o.update({f"fresh_cache.{k}": "as before" if after[k] == v else after[k]
              for k, v in before.items()})
    return o


@check
def data_open_unlinked(s: Site) -> dict:
    o: dict[str, object] = {}
    f = make(s.p("f"), b"before")
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        o["write"] = os.pwrite(fd, b"after unlink", 3)
        o["ftruncate"] = outcome(os.ftruncate, fd, 10)
        o["read"] = os.pread(fd, 100, 0)
        o["fstat"] = (os.fstat(fd).st_size, os.fstat(fd).st_nlink)
        o["fchmod"] = outcome(os.fchmod, fd, 0o600)
        o["listing"] = os.listdir(s.root)
    finally:
        os.close(fd)
    # an open file renamed: the handle follows the inode
    g = make(s.p("g"), b"g-data")
    make_dir(s.p("sub"))
    fd = os.open(g, os.O_RDWR)
    try:
        os.rename(g, s.p("sub", "h"))
        os.pwrite(fd, b"G", 0)
    finally:
        os.close(fd)
    o["renamed_open_file"] = open(s.p("sub", "h"), "rb").read()
    return o


# special files, attributes across remount ----------------------------------------------
STAMPS = {  # name: (atime_ns, mtime_ns)
    "ns": (1_111_111_111_123_456_789, 1_234_567_890_987_654_321),
    "pre1970": (-1, -1_500_000_001),
    "epoch": (0, 0),
    "y2100": (4_102_444_800_000_000_001, 4_102_444_800_999_999_999),
}


def _special_snapshot(s: Site) -> dict:
    o: dict[str, object] = {}
    with os.scandir(s.root) as it:
        o["listing"] = sorted((e.name, e.is_file(follow_symlinks=False),
                               e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it)
    for name in ("fifo", "sock", "chr", "blk", "file", "dir", "lnk", "owned"):
        o[name] = describe(s.p(name))
    for name in ("fifo", "sock", "chr", "blk"):
        o[f"{name}.mtime_kept"] = times(s.p(name))[1] == 1_700_000_000_000_000_007
    for name, (a, m) in STAMPS.items():
        for kind_ in ("file", "dir", "lnk"):
            got = times(s.p(f"t_{kind_}_{name}"))
            o[f"times.{kind_}.{name}"] = ("atime ok" if got[0] == a else f"atime {got[0]}",
                                          "mtime ok" if got[1] == m else f"mtime {got[1]}")
    o["symlink_target"] = os.readlink(s.p("lnk"))
    o["file_content"] = open(s.p("file"), "rb").read()
    o["busy_dir_times"] = times(s.p("busy"))[1:]
    return o


def _fifo_roundtrip(path: str) -> object:
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(w, b"through the pipe")
            return os.read(r, 100)
        finally:
            os.close(w)
    finally:
        os.close(r)


@check
def special_files_remount(s: Site) -> dict:
    """FIFOs, sockets, device nodes and times with nanoseconds (also before 1970)
    survive an unmount, with the same cache directory and with a fresh one."""
    os.mkfifo(s.p("fifo"), 0o640)
    os.mknod(s.p("chr"), stat.S_IFCHR | 0o620, os.makedev(1, 3))
    os.mknod(s.p("blk"), stat.S_IFBLK | 0o660, os.makedev(259, 65537 & 0xfffff))
    make(s.p("file"), b"plain", 0o604)
    make_dir(s.p("dir"), 0o751)
    os.symlink("file", s.p("lnk"))
    make(s.p("owned"), b"o", 0o640, owner=(UID["A"], GROUP_G))
    o: dict[str, object] = {}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        o["bind"] = outcome(sock.bind, s.p("sock"))
        sock.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            o["connect"] = outcome(client.connect, s.p("sock"))
            if o["connect"] == "ok":
                conn, _ = sock.accept()
                client.sendall(b"hello")
                o["socket_roundtrip"] = conn.recv(10)
                conn.close()
        finally:
            client.close()
    finally:
        sock.close()
    os.chmod(s.p("sock"), 0o750)
    os.mkfifo(s.p("pipe"))
    tick()
    before = times(s.p("pipe"))
    o["fifo_roundtrip"] = _fifo_roundtrip(s.p("pipe"))
    o["fifo_io_times"] = changes(before, times(s.p("pipe")))
    for name in ("fifo", "sock", "chr", "blk"):
        os.utime(s.p(name), ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_007))
    for name, stamp in STAMPS.items():
        make(s.p(f"t_file_{name}"), b"t")
        make_dir(s.p(f"t_dir_{name}"))
        os.symlink("file", s.p(f"t_lnk_{name}"))
        for kind_ in ("file", "dir", "lnk"):
            os.utime(s.p(f"t_{kind_}_{name}"), ns=stamp, follow_symlinks=False)
    # a directory whose entries change after its marker reached the bucket
    make_dir(s.p("busy"))
    s.sync()
    tick()
    make(s.p("busy", "x"))
    before = _special_snapshot(s)
    ctimes = {n: os.lstat(s.p(n)).st_ctime_ns for n in ("fifo", "chr", "file", "dir", "lnk")}
    o.update({f"before.{k}": v for k, v in before.items() if k != "busy_dir_times"})
    for label, fresh in (("same_cache", False), ("fresh_cache", True)):
        s.remount(fresh_cache=fresh)
        after = _special_snapshot(s)
        o.update({f"{label}.{k}": ("as before" if after[k] == v else after[k])
                  for k, v in before.items()})
        o[f"{label}.ctime_kept"] = sorted(n for n, c in ctimes.items()
                                          if os.lstat(s.p(n)).st_ctime_ns == c)
    return o


# data paths -----------------------------------------------------------------------------
@check
def data_mmap(s: Site) -> dict:
    o: dict[str, object] = {}
    f = make(s.p("f"), bytes(range(256)) * 48)  # 3 pages
    with open(f, "r+b") as h, mmap.mmap(h.fileno(), 0) as m:
        m[4090:4100] = b"ACROSSPAGE"
        o["read_before_msync"] = os.pread(h.fileno(), 10, 4090)
        with open(f, "rb") as other:
            other.seek(4090)
            o["other_fd_before_msync"] = other.read(10)
        m.flush()
        os.pwrite(h.fileno(), b"PW", 0)
        o["map_sees_pwrite"] = m[0:2]
        h.truncate(3 * 4096 + 100)
        o["size_after_grow"] = os.fstat(h.fileno()).st_size
    with open(f, "r+b") as h, mmap.mmap(h.fileno(), 0) as m:
        m[-4:] = b"TAIL"
        m.flush()
    with open(f, "r+b") as h, mmap.mmap(h.fileno(), 4096, offset=4096) as m:
        m[0:4] = b"PAG2"
    data = open(f, "rb").read()
    o["size"] = len(data)
    o["bytes"] = (data[:4], data[4090:4100], data[4096:4100], data[-8:])
    # a private mapping never reaches the file
    with open(f, "r+b") as h, mmap.mmap(h.fileno(), 0, flags=mmap.MAP_PRIVATE) as m:
        m[0:4] = b"PRIV"
    o["private_kept_out"] = open(f, "rb").read(4)
    return o


def _aligned(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size)  # page aligned, as O_DIRECT wants


@check
def data_o_direct(s: Site) -> dict:
    o: dict[str, object] = {}
    f = make(s.p("f"), b"\x01" * 16384)
    try:
        fd = os.open(f, os.O_RDWR | os.O_DIRECT)
    except OSError as exc:
        return {"open": errno.errorcode[exc.errno]}
    o["open"] = "ok"
    try:
        buf = _aligned(8192)
        buf[:] = b"D" * 8192
        o["aligned_write"] = outcome(os.pwrite, fd, memoryview(buf)[:4096], 4096)
        rbuf = _aligned(8192)
        o["aligned_read"] = os.preadv(fd, [memoryview(rbuf)], 0)
        o["aligned_read_bytes"] = (rbuf[0:2], rbuf[4096:4098], rbuf[8190:8192])
        o["read_past_eof"] = os.preadv(fd, [memoryview(rbuf)], 16384 - 4096)
        o["append_aligned"] = outcome(os.pwrite, fd, memoryview(buf)[:4096], 16384)
        o["size"] = os.fstat(fd).st_size
        o["unaligned_write"] = outcome(os.pwrite, fd, b"u" * 10, 3)
    finally:
        os.close(fd)
    with open(f, "rb") as h:
        data = h.read()
    o["content"] = (len(data), data[4095:4097], data[8191:8193], data[-1:])
    return o


@check
def data_direct_and_buffered(s: Site) -> dict:
    """Direct and buffered I/O interleaved on two descriptors of one file: each sees
    the other's writes at once (also an asynchronous direct write, and after a
    reopen). The stress test is tests/fuse/test_direct_io.py."""
    f = make(s.p("f"), b"\x01" * 65536)
    o: dict[str, object] = {}
    try:
        direct = os.open(f, os.O_RDWR | os.O_DIRECT)
    except OSError as exc:
        return {"open": errno.errorcode[exc.errno]}
    buffered = os.open(f, os.O_RDWR)
    buf = _aligned(16384)
    try:
        o["buffered_first"] = os.pread(buffered, 65536, 0) == b"\x01" * 65536  # cached
        buf[:] = b"D" * 16384
        os.pwrite(direct, buf, 16384)
        o["buffered_after_direct_write"] = os.pread(buffered, 65536, 0).count(b"D")
        os.pwrite(buffered, b"B" * 8192, 20480)
        rbuf = _aligned(65536)
        os.preadv(direct, [memoryview(rbuf)], 0)
        o["direct_after_buffered_write"] = (rbuf[:].count(b"B"), rbuf[:].count(b"D"))
        if linux_aio.available():
            aio = linux_aio.AioContext()
            try:
                buf[:] = b"A" * 16384
                o["aio_write"] = aio.pwrite(direct, buf, 0)
                o["buffered_after_aio_write"] = os.pread(buffered, 65536, 0)[:32768]
            finally:
                aio.close()
    finally:
        os.close(direct)
        os.close(buffered)
    with open(f, "rb") as h:
        o["reopened"] = h.read()
    return o


@check
def data_fallocate(s: Site) -> dict:
    o: dict[str, object] = {}
    f = make(s.p("f"), b"a" * 10000)
    fd = os.open(f, os.O_RDWR)
    try:
        o["mode0_extend"] = outcome(fallocate, fd, 0, 8192, 8192)
        o["size_after_mode0"] = os.fstat(fd).st_size
        o["keep_size"] = outcome(fallocate, fd, FALLOC_FL_KEEP_SIZE, 0, 65536)
        o["size_after_keep_size"] = os.fstat(fd).st_size
        o["punch_hole"] = outcome(fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                  100, 200)
        o["zero_range"] = outcome(fallocate, fd, FALLOC_FL_ZERO_RANGE, 5000, 100)
        o["posix_fallocate"] = outcome(os.posix_fallocate, fd, 20000, 1000)
        o["size_after_posix_fallocate"] = os.fstat(fd).st_size
        o["invalid_len"] = outcome(fallocate, fd, 0, 0, 0)
        o["content"] = (os.pread(fd, 4, 98), os.pread(fd, 4, 298), os.pread(fd, 4, 5098),
                        os.pread(fd, 4, 9998), os.pread(fd, 4, 20996))
    finally:
        os.close(fd)
    return o


@check
def data_copy_file_range(s: Site) -> dict:
    o: dict[str, object] = {}
    src = make(s.p("src"), bytes(range(256)) * 40)
    make_dir(s.p("sub"))
    dst = make(s.p("sub", "dst"), b"-" * 100)
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
    try:
        o["copy"] = os.copy_file_range(sfd, dfd, 5000, 10, 50)
        o["copy_past_eof"] = os.copy_file_range(sfd, dfd, 100, 20000, 0)
        o["copy_into_hole"] = os.copy_file_range(sfd, dfd, 10, 0, 9000)
        o["overlap_same_file"] = outcome(os.copy_file_range, dfd, dfd, 100, 0, 50)
        o["same_file_apart"] = outcome(os.copy_file_range, dfd, dfd, 10, 0, 9500)
        o["size"] = os.fstat(dfd).st_size
        data = os.pread(dfd, 20000, 0)
        o["content"] = (data[:50], data[50:5050] == (bytes(range(256)) * 40)[10:5010],
                        data[5050:9000].count(0), data[9000:9010], data[9500:9510])
        os.lseek(sfd, 0, os.SEEK_SET)
        os.lseek(dfd, 0, os.SEEK_SET)
        o["copy_with_fd_offsets"] = os.copy_file_range(sfd, dfd, 7)
        o["offsets_after"] = (os.lseek(sfd, 0, os.SEEK_CUR), os.lseek(dfd, 0, os.SEEK_CUR))
    finally:
        os.close(sfd)
        os.close(dfd)
    return o


@check
def data_sparse(s: Site) -> dict:
    o: dict[str, object] = {}
    mib = 1 << 20
    f = s.p("f")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"D" * mib, 0)
        os.pwrite(fd, b"E" * 4096, 3 * mib)
        o["size"] = os.fstat(fd).st_size
        o["hole_reads_zero"] = os.pread(fd, 4096, 2 * mib) == bytes(4096)

        def seek(off: int, whence: int) -> object:
            try:
                return os.lseek(fd, off, whence)
            except OSError as exc:
                return errno.errorcode[exc.errno]

        o["seek_data_0"] = seek(0, os.SEEK_DATA)
        o["seek_hole_0"] = seek(0, os.SEEK_HOLE)
        o["seek_data_in_hole"] = seek(mib + 10, os.SEEK_DATA)
        o["seek_hole_in_last_data"] = seek(3 * mib + 10, os.SEEK_HOLE)
        o["seek_data_past_eof"] = seek(3 * mib + 4096 + 1, os.SEEK_DATA)
        o["seek_hole_past_eof"] = seek(3 * mib + 4096 + 1, os.SEEK_HOLE)
        os.ftruncate(fd, 5 * mib)
        o["seek_data_in_tail_hole"] = seek(4 * mib, os.SEEK_DATA)
        o["seek_hole_after_grow"] = seek(3 * mib, os.SEEK_HOLE)
    finally:
        os.close(fd)
    return o


@check
def data_append_and_eof(s: Site) -> dict:
    o: dict[str, object] = {}
    f = make(s.p("f"), b"start")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"+a")
        o["pwrite_with_o_append"] = os.pwrite(fd, b"+p", 0)
        o["offset_after"] = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    o["content"] = open(f, "rb").read()
    fd = os.open(f, os.O_RDWR)
    try:
        o["read_past_eof"] = os.pread(fd, 10, 100)
        o["write_far"] = os.pwrite(fd, b"far", 70000)
        o["size"] = os.fstat(fd).st_size
        o["gap_zero"] = os.pread(fd, 60000, 9) == bytes(60000)
        o["seek_end"] = os.lseek(fd, -3, os.SEEK_END)
        o["read_at_end"] = os.read(fd, 10)
    finally:
        os.close(fd)
    return o


# hard links ---------------------------------------------------------------------------
@check
def link_names_one_inode(s: Site) -> dict:
    f = make(s.p("f"), b"one inode")
    make_dir(s.p("d"))
    make_dir(s.p("other"))
    o: dict[str, object] = {}

    def view() -> dict:
        names = [n for n in ("f", "g", "h", "other/f2") if os.path.lexists(s.p(n))]
        inos = {os.lstat(s.p(n)).st_ino for n in names}
        return {"names": names, "one_inode": len(inos) == 1,
                "nlink": [os.lstat(s.p(n)).st_nlink for n in names],
                "modes": [perm(s.p(n)) for n in names],
                "contents": [open(s.p(n), "rb").read() for n in names]}

    tick()
    before = times(f)
    pbefore = times(s.root)
    o["link"] = outcome(os.link, f, s.p("g"))
    o["link_times"] = changes(before, times(f))
    o["link_parent_times"] = changes(pbefore, times(s.root))
    o["after_link"] = view()
    o["link_across_dirs"] = outcome(os.link, s.p("g"), s.p("other", "f2"))
    o["after_second_link"] = view()
    os.chmod(s.p("g"), 0o600)
    o["after_chmod_via_g"] = view()
    with open(s.p("other", "f2"), "ab") as h:
        h.write(b" + more")
    o["after_write_via_f2"] = view()
    o["rename_g_to_h"] = outcome(os.rename, s.p("g"), s.p("h"))
    o["after_rename"] = view()
    o["rename_onto_own_link"] = outcome(os.rename, s.p("h"), s.p("f"))
    o["after_rename_onto_link"] = view()
    tick()
    before = times(s.p("h"))
    o["unlink_f"] = outcome(os.unlink, f)
    o["unlink_times_other_name"] = changes(before, times(s.p("h")))
    o["after_unlink"] = view()
    o["link_exists"] = outcome(os.link, s.p("h"), s.p("other", "f2"))
    o["link_missing"] = outcome(os.link, s.p("missing"), s.p("z"))
    o["link_dir"] = outcome(os.link, s.p("d"), s.p("dl"))
    o["link_into_missing_dir"] = outcome(os.link, s.p("h"), s.p("nodir", "z"))
    o["link_name_256"] = outcome(os.link, s.p("h"), s.p("n" * 256))
    os.symlink("h", s.p("sym"))
    o["link_symlink_itself"] = outcome(os.link, s.p("sym"), s.p("sym2"), follow_symlinks=False)
    o["symlink_link"] = describe(s.p("sym2"))
    o["symlink_nlink"] = os.lstat(s.p("sym")).st_nlink
    return o


@check
def link_permissions(s: Site) -> dict:
    make(s.p("a600"), b"A", 0o600, owner=(UID["A"], GROUP_G))
    make(s.p("b644"), b"B", 0o644, owner=(UID["B"], 1002))
    make_dir(s.p("ro"), 0o755, owner=(UID["A"], GROUP_G))

    def b_steps(root: str) -> dict:
        return {
            # fs.protected_hardlinks decides this one, on both sides alike
            "link_unreadable_others": outcome(os.link, os.path.join(root, "a600"),
                                              os.path.join(root, "b1")),
            "link_own_into_readonly_dir": outcome(os.link, os.path.join(root, "b644"),
                                                  os.path.join(root, "ro", "b2")),
            "link_own": outcome(os.link, os.path.join(root, "b644"),
                                os.path.join(root, "b3")),
        }

    o = {f"B.{k}": v for k, v in as_user("B", b_steps, s.root).items()}
    o["A.link_own"] = as_user("A", outcome, os.link, s.p("a600"), s.p("a2"))
    o["nlink"] = os.lstat(s.p("a600")).st_nlink
    return o


@check
def link_remount(s: Site) -> dict:
    make(s.p("f"), b"linked")
    make_dir(s.p("sub"))
    os.link(s.p("f"), s.p("sub", "g"))
    o: dict[str, object] = {}
    for label, fresh in (("same_cache", False), ("fresh_cache", True)):
        s.remount(fresh_cache=fresh)
        a, b = os.lstat(s.p("f")), os.lstat(s.p("sub", "g"))
        o[f"{label}.one_inode"] = a.st_ino == b.st_ino
        o[f"{label}.nlink"] = (a.st_nlink, b.st_nlink)
        with open(s.p("f"), "ab") as h:
            h.write(label.encode())
        o[f"{label}.shared_data"] = open(s.p("sub", "g"), "rb").read()
    return o


# --- running them -----------------------------------------------------------------------
@dataclass
class Pair:
    local_root: str
    mount: Mount
    backend: str

    def sites(self, name: str) -> tuple[Site, Site]:
        out = []
        for site_name, root in (("local", self.local_root), ("mount", self.mount.path)):
            d = os.path.join(root, name)
            os.mkdir(d)
            os.chmod(d, 0o777)
            out.append(Site(site_name, d, self.mount if site_name == "mount" else None))
        return out[0], out[1]


@pytest.fixture(scope="module", params=["file", "s3"])
def pair(request, tmp_path_factory):
    """A mount with --allow-other and a local reference directory, both reachable by
    every user (the usual temporary directory is private to root)."""
    require_fuse()
    base = tempfile.mkdtemp(prefix="s3fuse-conformance-")
    os.chmod(base, 0o755)
    local_root = os.path.join(base, "ref")
    mountpoint = os.path.join(base, "mnt")
    for d in (local_root, mountpoint):
        os.mkdir(d)
        os.chmod(d, 0o755)
    cache = str(tmp_path_factory.mktemp("conformance-cache") / "cache")
    if request.param == "file":
        bucket = tmp_path_factory.mktemp("conformance-bucket")
        m = Mount(source=f"file://{bucket}", path=mountpoint, cache_dir=cache)
    else:
        import boto3

        endpoint = request.getfixturevalue("moto_endpoint")
        name = f"s3fuse-conf-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=name)
        client.close()
        m = Mount(source=f"s3://{name}/conf", path=mountpoint, cache_dir=cache,
                  endpoint=endpoint)
    m.extra_args = ["--allow-other"]
    m.mount()
    try:
        yield Pair(local_root, m, request.param)
        m.umount()
    finally:
        m.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def expected_divergences(check_name: str, backend: str) -> set[str]:
    out = set()
    for key in DIVERGENCES:
        name, _, where = key.partition("@")
        if name.split(":", 1)[0] == check_name and where in ("", backend):
            out.add(name)
    return out


def compare(check_name: str, local: dict, mounted: dict, backend: str) -> None:
    observed = {f"{check_name}:{k}" for k in sorted(set(local) | set(mounted))
                if local.get(k, "<absent>") != mounted.get(k, "<absent>")}
    expected = expected_divergences(check_name, backend)
    unexpected = sorted(observed - expected)
    missing = sorted(expected - observed)
    lines = []
    for key in unexpected:
        k = key.split(":", 1)[1]
        lines.append(f"  {key}: local={local.get(k, '<absent>')!r} "
                     f"mount={mounted.get(k, '<absent>')!r}")
    for key in missing:
        k = key.split(":", 1)[1]
        lines.append(f"  {key}: listed in DIVERGENCES but both gave {local.get(k)!r}")
    assert not lines, f"{backend}: the mount differs from a local disk where the table " \
                      f"does not say so, or not where it does:\n" + "\n".join(lines)


def run_check(pair: Pair, name: str, fn: Callable[[Site], dict]) -> None:
    local_site, mount_site = pair.sites(name)
    old_umask = os.umask(0o022)
    try:
        local = fn(local_site)
        mounted = fn(mount_site)
    finally:
        os.umask(old_umask)
    compare(name, local, mounted, pair.backend)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CHECKS))
def test_conformance(pair, name):
    run_check(pair, name, CHECKS[name])


def test_divergence_table_names_real_checks():
    """Every entry of the table names a check and an observation that exists."""
    names = set(CHECKS)
    for key, reason in DIVERGENCES.items():
        check_name = key.split(":", 1)[0]
        assert check_name in names, f"{key}: no such check"
        assert ":" in key and reason.strip(), f"{key}: needs an observation and a reason"
        assert key.partition("@")[2] in ("", "file", "s3"), f"{key}: unknown backend"
