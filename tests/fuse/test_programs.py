"""Real programs on a real mount: git, tar, SQLite, tempfile swaps, cp -a / rm -rf.

Each test runs the program the way a user would, checks what the program itself
reports (``git fsck``, ``diff -r``, ``PRAGMA integrity_check``), then checks the bucket
directly (plain objects under the expected keys, nothing temporary left behind) and
that everything is still right after an unmount and a fresh mount.

The cheap ones run on both backends (``mount``); the heavy ones on the file store
only (``file_mount``).
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from programs import TIMEOUT, assert_fsck_clean, git_env, git_init, run

pytestmark = pytest.mark.fuse


def tree_listing(root: str) -> dict[str, tuple[str, int, str | None, int | None]]:
    """relative path -> (kind, permission bits, symlink target, size) for ``root``'s tree,
    symlinks not followed."""
    out: dict[str, tuple[str, int, str | None, int | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(full), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None, None)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), None, st.st_size)
            else:
                out[rel] = (f"other-{stat.S_IFMT(st.st_mode):o}", stat.S_IMODE(st.st_mode),
                            None, None)
    return out


def diff_trees(a: str, b: str) -> None:
    """``diff -r`` (symlinks compared as links) finds no difference, and modes and
    symlink targets agree."""
    res = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True,
                         text=True, timeout=TIMEOUT, check=False)
    assert res.returncode == 0, f"diff -r {a} {b}:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"
    la, lb = tree_listing(a), tree_listing(b)
    assert la.keys() == lb.keys()
    mismatched = {k: (la[k], lb[k]) for k in la if la[k] != lb[k]}
    assert not mismatched, f"modes/targets/sizes differ: {dict(list(mismatched.items())[:10])}"


def snapshot(root: str) -> dict[str, bytes]:
    """relative path -> bytes of every regular file (and symlink target) under root."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if name in dirnames and not os.path.islink(full):
                continue
            if os.path.islink(full):
                out[rel] = os.fsencode(os.readlink(full))
            else:
                with open(full, "rb") as f:
                    out[rel] = f.read()
    return out


def assert_bucket_mirrors(objects: dict[str, bytes], snap: dict[str, bytes]) -> None:
    """The bucket holds exactly the mount's files (directory markers aside), byte for
    byte: nothing missing, nothing stale, nothing temporary."""
    keys = {k: v for k, v in objects.items() if not k.endswith("/")}
    missing = sorted(snap.keys() - keys.keys())
    extra = sorted(keys.keys() - snap.keys())
    assert not missing and not extra, f"missing in bucket: {missing[:20]}; " \
                                      f"not on the mount: {extra[:20]}"
    differ = sorted(k for k in snap if snap[k] != keys[k])
    assert not differ, f"bucket bytes differ for {differ[:20]}"


# --- git ------------------------------------------------------------------------------


def test_git_init_commit_fsck_clone_remount(mount, tmp_path: Path) -> None:
    env = git_env(tmp_path)
    repo = mount.p("repo")
    git_init(repo, env)

    files: dict[str, bytes] = {}
    for i in range(50):
        rel = f"src/pkg{i % 5}/sub{i % 3}/file{i:02d}.txt"
        files[rel] = (f"file {i}\n" * (i + 1)).encode()
    files["README.md"] = b"# a repository on s3fuse\n"
    files["bin/run.sh"] = b"#!/bin/sh\necho hello\n"
    for rel, data in files.items():
        full = os.path.join(repo, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    os.chmod(os.path.join(repo, "bin/run.sh"), 0o755)

    run(["git", "add", "-A"], cwd=repo, env=env)
    run(["git", "commit", "-q", "-m", "initial import on s3fuse"], cwd=repo, env=env)
    head = run(["git", "rev-parse", "HEAD"], cwd=repo, env=env).strip()
    tracked = run(["git", "ls-files"], cwd=repo, env=env).split()
    assert sorted(tracked) == sorted(files)
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env) == ""
    assert_fsck_clean(repo, env)

    # A local clone hard-links the object files into the new repository.
    clone = mount.p("clone")
    run(["git", "clone", "-q", repo, clone], cwd=mount.path, env=env)
    log = run(["git", "log", "--format=%H %s"], cwd=clone, env=env)
    assert log.strip() == f"{head} initial import on s3fuse"
    for rel, data in files.items():
        with open(os.path.join(clone, rel), "rb") as f:
            assert f.read() == data, rel
    assert os.stat(os.path.join(clone, "bin/run.sh")).st_mode & 0o111
    assert_fsck_clean(clone, env)
    # repack: loose objects become a pack and are deleted, refs get packed
    run(["git", "gc", "-q"], cwd=repo, env=env)
    assert_fsck_clean(repo, env)

    snap = snapshot(mount.path)
    mount.umount()
    objects = mount.objects()
    assert_bucket_mirrors(objects, snap)
    for name in ("repo", "clone"):
        assert f"{name}/.git/HEAD" in objects
        assert any(k.startswith(f"{name}/.git/objects/") for k in objects), \
            f"no {name}/.git/objects/ keys in the bucket"
        for rel, data in files.items():
            assert objects.get(f"{name}/{rel}") == data, f"{name}/{rel}"
    assert objects.get("repo/.git/refs/heads/main", b"").strip() == head.encode() or \
        head.encode() in objects.get("repo/.git/packed-refs", b"")
    assert not [k for k in objects if k.endswith(".lock")], "lock files left in the bucket"
    assert any(k.startswith("repo/.git/objects/pack/pack-") and k.endswith(".pack")
               for k in objects)

    mount.mount()
    for name in ("repo", "clone"):
        path = mount.p(name)
        assert run(["git", "status", "--porcelain"], cwd=path, env=env) == ""
        assert run(["git", "rev-parse", "HEAD"], cwd=path, env=env).strip() == head
        assert_fsck_clean(path, env)
    # and work goes on: a second commit, fetched by the clone
    with open(os.path.join(repo, "README.md"), "ab") as f:
        f.write(b"second line\n")
    run(["git", "commit", "-q", "-am", "second commit"], cwd=repo, env=env)
    run(["git", "pull", "-q", "--ff-only"], cwd=clone, env=env)
    assert run(["git", "rev-parse", "HEAD"], cwd=clone, env=env) == \
        run(["git", "rev-parse", "HEAD"], cwd=repo, env=env)
    assert_fsck_clean(clone, env)


# --- tar ------------------------------------------------------------------------------


def build_source_tree(root: Path) -> None:
    """A few hundred files in nested dirs, symlinks, assorted modes and a 3 MiB file."""
    rng = random.Random(1234)
    root.mkdir()
    for d in range(6):
        for s in range(5):
            sub = root / f"dir{d}" / f"sub{s}"
            sub.mkdir(parents=True)
            for f in range(10):
                p = sub / f"f{f}.dat"
                p.write_bytes(rng.randbytes(rng.randrange(0, 9000)))
                p.chmod(rng.choice([0o644, 0o600, 0o755, 0o640, 0o400]))
    (root / "dir0" / "sub0" / "empty.txt").write_bytes(b"")
    (root / "empty-dir" / "deeper").mkdir(parents=True)
    (root / "private").mkdir(mode=0o700)
    (root / "private").chmod(0o700)
    (root / "private" / "key").write_bytes(b"not really a key\n")
    (root / "private" / "key").chmod(0o600)
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\nexit 0\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 17))
    os.symlink("dir0/sub0/f0.dat", root / "link-to-file")
    os.symlink("dir1", root / "link-to-dir")
    os.symlink("../../big.bin", root / "dir2" / "sub2" / "up-link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.symlink("tool", root / "bin" / "tool-alias")
    (root / "dir3").chmod(0o750)


def test_tar_extract_matches_local_and_survives_remount(file_mount,
                                                        tmp_path: Path) -> None:
    m = file_mount
    src = tmp_path / "src"
    build_source_tree(src)
    tarball = tmp_path / "src.tar"
    run(["tar", "cf", str(tarball), "-C", str(src), "."])

    local = tmp_path / "local"
    local.mkdir()
    run(["tar", "xf", str(tarball), "-C", str(local)])
    onmount = m.p("extracted")
    os.mkdir(onmount)
    run(["tar", "xf", str(tarball), "-C", onmount])

    nfiles = sum(1 for v in tree_listing(str(local)).values() if v[0] == "file")
    assert nfiles > 300
    diff_trees(str(local), onmount)
    assert os.readlink(os.path.join(onmount, "dangling")) == "/nonexistent/target"
    assert stat.S_IMODE(os.stat(os.path.join(onmount, "private", "key")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(onmount, "bin", "tool")).st_mode) == 0o755
    # the archive's mtimes were applied to regular files
    for rel in ("big.bin", "bin/tool", "dir0/sub0/f0.dat"):
        assert int(os.stat(os.path.join(onmount, rel)).st_mtime) == \
            int(os.stat(local / rel).st_mtime), rel

    snap = snapshot(m.path)
    m.umount()
    objects = m.objects()
    assert_bucket_mirrors(objects, snap)
    assert "extracted/empty-dir/deeper/" in objects   # an empty directory's marker
    with open(local / "big.bin", "rb") as f:
        assert objects["extracted/big.bin"] == f.read()
    assert objects["extracted/dir0/sub0/f0.dat"] == (local / "dir0/sub0/f0.dat").read_bytes()
    m.mount()
    diff_trees(str(local), onmount)
    for rel in ("big.bin", "bin/tool", "dir0/sub0/f0.dat"):
        assert int(os.stat(os.path.join(onmount, rel)).st_mtime) == \
            int(os.stat(local / rel).st_mtime), rel


# --- SQLite ---------------------------------------------------------------------------


def _fill(db: str, journal_mode: str) -> None:
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        mode = con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
        assert mode == journal_mode.lower()
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        con.execute("CREATE INDEX t_name ON t(name)")
        con.execute("BEGIN")
        con.executemany("INSERT INTO t (id, name, blob) VALUES (?, ?, ?)",
                        [(i, f"name-{i}", os.urandom(200)) for i in range(2000)])
        con.execute("COMMIT")
        # a transaction that is rolled back leaves no trace
        con.execute("BEGIN")
        con.executemany("INSERT INTO t (id, name, blob) VALUES (?, ?, ?)",
                        [(i, f"gone-{i}", os.urandom(200)) for i in range(2000, 3000)])
        con.execute("DELETE FROM t WHERE id < 100")
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 2900
        con.execute("ROLLBACK")
        con.execute("BEGIN")
        con.execute("UPDATE t SET name = 'updated' WHERE id % 10 = 0")
        con.executemany("INSERT INTO t (id, name, blob) VALUES (?, ?, ?)",
                        [(i, f"name-{i}", os.urandom(200)) for i in range(3000, 3500)])
        con.execute("COMMIT")
        # a second connection sees the committed data (in WAL mode: through the -shm)
        other = sqlite3.connect(db, timeout=10)
        try:
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 2500
        finally:
            other.close()
        _check(con, journal_mode)
    finally:
        con.close()


def _check(con: sqlite3.Connection, journal_mode: str) -> None:
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 2500
    assert con.execute("SELECT count(*) FROM t WHERE name LIKE 'gone-%'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM t WHERE name = 'updated'").fetchone()[0] == 200
    assert con.execute("SELECT min(id), max(id) FROM t").fetchone() == (0, 3499)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode.lower()


def test_sqlite_rollback_journal_and_wal(mount) -> None:
    os.mkdir(mount.p("db"))
    dbs = {"DELETE": mount.p("db/rollback.sqlite"), "WAL": mount.p("db/wal.sqlite")}
    for mode, path in dbs.items():
        _fill(path, mode)
    leftovers = [n for n in os.listdir(mount.p("db")) if n.endswith(("-journal", "-wal",
                                                                        "-shm"))]
    assert leftovers == []

    mount.umount()
    keys = {k for k in mount.objects() if k.startswith("db/")}
    assert {"db/rollback.sqlite", "db/wal.sqlite"} <= keys
    assert not [k for k in keys if k.endswith(("-journal", "-wal", "-shm"))], keys

    mount.mount()
    for mode, path in dbs.items():
        con = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            _check(con, mode)
            # and it is still writable after the remount
            con.execute("INSERT INTO t (id, name) VALUES (10000, 'after remount')")
            assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 2501
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            con.close()


# --- tempfile + os.replace ------------------------------------------------------------

READER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
first = os.pread(fd, 1 << 20, 0)
sys.stdout.write("opened\n"); sys.stdout.flush()
sys.stdin.readline()          # the parent swaps the file meanwhile
again = os.pread(fd, 1 << 20, 0)
sys.stdout.write(("same\n" if again == first else "changed\n")); sys.stdout.flush()
sys.stdout.write(again.decode() + "\n")
"""


def _content(i: int) -> bytes:
    return (f"generation {i:03d}\n" * (1 + i % 7)).encode()


def test_tempfile_replace_swaps(mount) -> None:
    final = mount.p("state.txt")
    held: list[tuple[int, bytes]] = []   # (fd opened on an old generation, its bytes)
    reader: subprocess.Popen | None = None
    reader_saw: bytes | None = None
    try:
        for i in range(100):
            with tempfile.NamedTemporaryFile(dir=mount.path, delete=False,
                                             prefix="tmp-state-") as tmp:
                tmp.write(_content(i))
                tmp.flush()
                os.fsync(tmp.fileno())
                os.replace(tmp.name, final)
            assert not os.path.exists(tmp.name)
            with open(final, "rb") as f:
                assert f.read() == _content(i)
            if i in (10, 50, 98):
                fd = os.open(final, os.O_RDONLY)
                assert os.pread(fd, 1 << 20, 0) == _content(i)
                held.append((fd, _content(i)))
            if i == 30:
                # another process opens generation 30 and reads it again after swaps
                reader = subprocess.Popen([sys.executable, "-c", READER, final],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True)
                assert reader.stdout is not None
                assert reader.stdout.readline() == "opened\n"
                reader_saw = _content(i)
            if i == 60 and reader is not None:
                out, _ = reader.communicate("go\n", timeout=30)
                assert reader.returncode == 0
                status, _, text = out.partition("\n")
                assert status == "same", out
                assert text[:-1].encode() == reader_saw
                reader = None
            # the fds opened on older generations still read their own bytes
            for fd, data in held:
                assert os.pread(fd, 1 << 20, 0) == data
        names = os.listdir(mount.path)
        assert names == ["state.txt"], names

        mount.sync()
        # still readable after the newer generations reached the bucket
        for fd, data in held:
            assert os.pread(fd, 1 << 20, 0) == data
        assert mount.objects() == {"state.txt": _content(99)}
    finally:
        for fd, _ in held:
            os.close(fd)
        if reader is not None:
            reader.kill()
            reader.wait(timeout=10)

    mount.umount()
    assert mount.objects() == {"state.txt": _content(99)}
    mount.mount()
    with open(final, "rb") as f:
        assert f.read() == _content(99)


# --- cp -a / rm -rf -------------------------------------------------------------------


def test_cp_a_tree_then_rm_rf(mount, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    rng = random.Random(99)
    for d in ("a", "a/b", "a/b/c", "d", "e/f"):
        (src / d).mkdir(parents=True)
    expected: dict[str, bytes] = {}
    for d in ("a", "a/b", "a/b/c", "d", "e/f", "."):
        for n in range(4):
            rel = os.path.normpath(f"{d}/file{n}.bin")
            data = rng.randbytes(rng.randrange(0, 20000))
            (src / rel).write_bytes(data)
            expected[rel] = data
    (src / "a/b/c/run").write_bytes(b"#!/bin/sh\n")
    (src / "a/b/c/run").chmod(0o750)
    expected["a/b/c/run"] = b"#!/bin/sh\n"
    os.symlink("a/b/c/run", src / "run-link")
    (src / "empty").mkdir()

    # local -> mount, then mount -> mount
    run(["cp", "-a", str(src), mount.p("tree")])
    run(["cp", "-a", mount.p("tree"), mount.p("tree2")])
    diff_trees(str(src), mount.p("tree"))
    diff_trees(str(src), mount.p("tree2"))

    mount.sync()
    objects = mount.objects()
    for top in ("tree", "tree2"):
        for rel, data in expected.items():
            assert objects.get(f"{top}/{rel}") == data, f"{top}/{rel}"
        assert f"{top}/run-link" in objects
        assert f"{top}/empty/" in objects   # the empty directory's marker

    run(["rm", "-rf", mount.p("tree"), mount.p("tree2")])
    assert os.listdir(mount.path) == []
    mount.sync()
    left = [k for k in mount.objects() if k.startswith(("tree/", "tree2/"))
            or k in ("tree", "tree2")]
    assert left == [], left
    mount.umount()
    left = [k for k in mount.objects() if k.startswith(("tree", "tree2"))]
    assert left == [], left
