"""fsck on the in-memory store: a real workload leaves nothing to report (checked at
every step, pending work included), and each kind of damage done on purpose behind
the journal's back is found; ``repair`` fixes what is safe and never drops data that
is pending upload.
"""

from __future__ import annotations

import json
import os
import stat
import struct

import pytest
import trio
import trio.testing
from fsck_helper import assert_journal_clean
from core_rig import WINDOW, Rig

from s3fuse import cli, fsck
from s3fuse.filesystem import SetAttrs
from s3fuse.cachelock import CacheLock
from s3fuse.journal import DIRTY_DATA, ROOT_INO, Inode, Journal
from s3fuse.store.memory import MemoryStore, drop

U64 = struct.Struct(">Q")


def drive(tmp_path, store: MemoryStore, scenario, flusher: bool = True):
    """Run ``scenario(rig)`` on a MockClock (with the flusher running), then close."""

    async def main():
        rig = Rig(tmp_path, store)
        rig.journal.set_meta(b"instance", b"test")
        try:
            if not flusher:
                await scenario(rig)
                return
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                await scenario(rig)
                nursery.cancel_scope.cancel()
        finally:
            rig.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def fsck_run(tmp_path, store, repair=False) -> fsck.Report:
    journal = Journal(str(tmp_path / "journal"))
    try:
        return fsck.check(journal, str(tmp_path), store, "", repair=repair)
    finally:
        journal.close()


def consistent(rig: Rig) -> fsck.Report:
    """Mid-scenario: only notes about queued work, no problem."""
    return assert_journal_clean(rig.journal, rig.tmp_path, rig.store, allow_pending=True)


def by_path(report: fsck.Report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in report.findings:
        out.setdefault(f.path or str(f.subject), set()).add(f.kind)
    return out


async def workload(rig: Rig) -> None:
    """Creates, writes, renames of files and directories (before and after upload),
    unlinks, an os.replace swap, objects listed from the bucket, an unlinked open file;
    the journal is checked after every step, then drained."""
    fs = rig.fs
    outside = await fs.lookup(ROOT_INO, b"outside")  # lists the root: pre-seeded objects
    consistent(rig)
    docs = await fs.mkdir(ROOT_INO, b"docs", 0o755, 1000, 1000)
    sub = await fs.mkdir(docs.ino, b"sub", 0o750, 1000, 1000)
    await rig.write_file(docs.ino, b"a.txt", b"alpha")
    await rig.write_file(sub.ino, b"b.txt", b"bravo" * 1000)
    top = await rig.write_file(ROOT_INO, b"top.txt", b"top")
    await fs.symlink(ROOT_INO, b"link", b"docs/a.txt", 1000, 1000)
    await fs.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o640, 0, 1000, 1000)
    await fs.setxattr(top, "user.color", b"blue")
    consistent(rig)
    await trio.sleep(WINDOW + 5)
    assert "docs/sub/b.txt" in rig.bucket()
    consistent(rig)

    # renames of uploaded objects: copy + delete ops, checked while pending
    await fs.rename(ROOT_INO, b"docs", ROOT_INO, b"papers")
    report = consistent(rig)
    assert "pending-op" in report.kinds()
    await fs.rename(sub.ino, b"b.txt", ROOT_INO, b"b-moved.txt")
    await fs.lookup(outside.ino, b"data.csv")
    await fs.rename(outside.ino, b"data.csv", docs.ino, b"data.csv")
    # tempfile + os.replace over an uploaded file
    await rig.write_file(ROOT_INO, b".tmp1", b"new top")
    await fs.rename(ROOT_INO, b".tmp1", ROOT_INO, b"top.txt")
    # unlink: never uploaded, uploaded, and one still open
    await rig.write_file(ROOT_INO, b"scratch", b"x")
    await fs.unlink(ROOT_INO, b"scratch")
    await fs.unlink(docs.ino, b"a.txt")
    fh, held = await fs.create(ROOT_INO, b"held", 0o644, 1000, 1000)
    await fs.write(fh, 0, b"held open")
    await fs.unlink(ROOT_INO, b"held")
    assert "unlinked-inode" in consistent(rig).kinds()
    await fs.release(fh)
    fs.forget([(held.ino, 1)])
    # mkdir + rmdir, and a directory emptied by a rename
    await fs.mkdir(ROOT_INO, b"empty", 0o755, 1000, 1000)
    await fs.rmdir(ROOT_INO, b"empty")
    b_moved = await fs.lookup(ROOT_INO, b"b-moved.txt")
    await fs.setattr(b_moved.ino, SetAttrs(size=7, mode=0o600))
    consistent(rig)
    await trio.sleep(1)
    consistent(rig)
    assert await rig.flusher.drain(60)
    fs.forget(list(fs.lookups.items()))  # as the kernel does at unmount
    assert_journal_clean(rig.journal, rig.tmp_path, rig.store)


def seeded_store() -> MemoryStore:
    store = MemoryStore()
    store.put("outside/data.csv", b"n,sq\n1,1\n", {})
    store.put("outside/keep.txt", b"keep", {"mode": str(stat.S_IFREG | 0o600)})
    store.put("readme", b"hello", {})
    return store


def test_a_real_workload_leaves_nothing_to_report(tmp_path):
    store = seeded_store()
    drive(tmp_path, store, workload)
    assert set(store.snapshot()) == {
        "papers/", "papers/sub/", "papers/data.csv", "outside/keep.txt", "b-moved.txt",
        "top.txt", "link", "fifo", "readme"}
    report = fsck_run(tmp_path, store)
    assert report.findings == [] and report.clean
    # a repair of a clean journal changes nothing
    assert fsck_run(tmp_path, store, repair=True).findings == []


def uploaded_tree(tmp_path, store: MemoryStore) -> None:
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 1000, 1000)
        await rig.write_file(d.ino, b"gone.txt", b"will vanish")
        await rig.write_file(d.ino, b"changed.txt", b"old bytes")
        await rig.write_file(d.ino, b"same.txt", b"untouched")
        e = await rig.fs.mkdir(ROOT_INO, b"e", 0o755, 1000, 1000)
        await rig.write_file(e.ino, b"only.txt", b"only")
        await rig.fs.mkdir(ROOT_INO, b"hollow", 0o755, 1000, 1000)
        assert await rig.flusher.drain(60)

    drive(tmp_path, store, scenario)
    assert fsck_run(tmp_path, store).findings == []


async def open_fh(rig: Rig, ino: int, flags: int) -> int:
    opened = await rig.fs.open(ino, flags)
    return opened[0] if isinstance(opened, tuple) else opened  # (fh, changed) since issue 4


async def read_all(rig: Rig, parent: int, name: bytes) -> bytes:
    inode = await rig.fs.lookup(parent, name)
    fh = await open_fh(rig, inode.ino, os.O_RDONLY)
    try:
        return await rig.fs.read(fh, 0, 1 << 20)
    finally:
        await rig.fs.release(fh)


def test_outside_deletes_and_changes_are_found_and_repaired(tmp_path):
    store = MemoryStore()
    uploaded_tree(tmp_path, store)
    store.delete("d/gone.txt")
    store.put("d/changed.txt", b"the bucket's new bytes", {"mode": str(stat.S_IFREG | 0o600)})
    store.delete("e/only.txt")  # e/ keeps its marker
    store.delete("hollow/")  # an empty directory whose marker vanished
    store.put("d/new.txt", b"new outside", {})

    report = fsck_run(tmp_path, store)
    assert not report.clean
    found = by_path(report)
    assert found["/d/gone.txt"] == {"deleted-outside"}
    assert found["/d/changed.txt"] == {"changed-outside"}
    assert found["/e/only.txt"] == {"deleted-outside"}
    assert found["/hollow"] == {"deleted-outside"}
    assert found["d/new.txt"] == {"new-outside"}
    assert "/d/same.txt" not in found and "/e" not in found
    assert not any(f.repaired for f in report.findings)
    changed_ino = next(f.subject for f in report.findings if f.path == "/d/changed.txt")
    assert os.path.exists(tmp_path / "data" / str(changed_ino))

    report = fsck_run(tmp_path, store, repair=True)
    assert report.clean and all(f.repaired for f in report.findings)
    assert not os.path.exists(tmp_path / "data" / str(changed_ino))
    journal = Journal(str(tmp_path / "journal"))
    with journal.read() as txn:
        changed = txn.get(changed_ino)
        assert changed.remote_etag == store.head("d/changed.txt").etag
        assert changed.size == len(b"the bucket's new bytes") and not changed.cached
        assert changed.mode == stat.S_IFREG | 0o600
        d_ino = txn.lookup(ROOT_INO, b"d")
        assert not txn.get(d_ino).listed  # re-listed on the next mount
        assert txn.lookup(ROOT_INO, b"hollow") is None
    journal.close()
    assert fsck_run(tmp_path, store).findings == []

    async def remount(rig: Rig):
        assert await read_all(rig, d_ino, b"changed.txt") == b"the bucket's new bytes"
        assert await read_all(rig, d_ino, b"new.txt") == b"new outside"
        assert await read_all(rig, d_ino, b"same.txt") == b"untouched"
        fh = await rig.fs.opendir(d_ino)
        names = [n for n, _, _ in rig.fs.readdir(fh, 0)]
        assert names == [b"changed.txt", b"new.txt", b"same.txt"]  # merged, no duplicate
        fh = await rig.fs.opendir(ROOT_INO)
        assert sorted(n for n, _, _ in rig.fs.readdir(fh, 0)) == [b"d", b"e"]
        assert rig.fs.get(ROOT_INO).nlink == 4
        assert await rig.flusher.drain(60)

    drive(tmp_path, store, remount)
    assert fsck_run(tmp_path, store).findings == []


def test_directory_gone_from_the_bucket_goes_with_its_files(tmp_path):
    store = MemoryStore()
    store.put("implicit/one", b"1", {})
    store.put("implicit/deep/two", b"2", {})
    store.put("stays", b"s", {})

    async def scenario(rig: Rig):
        imp = await rig.fs.lookup(ROOT_INO, b"implicit")
        deep = await rig.fs.lookup(imp.ino, b"deep")
        await rig.fs.lookup(deep.ino, b"two")
        assert rig.fs.get(ROOT_INO).nlink == 3

    drive(tmp_path, store, scenario, flusher=False)
    assert fsck_run(tmp_path, store).findings == []
    for key in ("implicit/one", "implicit/deep/two"):
        store.delete(key)
    found = by_path(fsck_run(tmp_path, store))
    assert found == {p: {"deleted-outside"} for p in
                     ("/implicit/one", "/implicit/deep/two", "/implicit/deep", "/implicit")}
    assert fsck_run(tmp_path, store, repair=True).clean
    journal = Journal(str(tmp_path / "journal"))
    with journal.read() as txn:
        assert [n for n, _ in txn.children(ROOT_INO)] == [b"stays"]
        assert txn.get(ROOT_INO).nlink == 2
    journal.close()
    assert fsck_run(tmp_path, store).findings == []


def test_pending_data_is_never_repaired_away(tmp_path):
    store = MemoryStore()
    uploaded_tree(tmp_path, store)

    async def change_locally(rig: Rig):
        d = await rig.fs.lookup(ROOT_INO, b"d")
        for name in (b"gone.txt", b"changed.txt", b"same.txt"):
            inode = await rig.fs.lookup(d.ino, name)
            fh = await open_fh(rig, inode.ino, os.O_WRONLY)
            await rig.fs.write(fh, 0, b"LOCAL")
            await rig.fs.release(fh)
        await rig.write_file(d.ino, b"fresh.txt", b"new here")
        # no drain: the daemon "stops" with all of it pending

    drive(tmp_path, store, change_locally, flusher=False)
    store.delete("d/gone.txt")
    store.put("d/changed.txt", b"theirs", {})
    store.put("d/fresh.txt", b"theirs too", {})

    report = fsck_run(tmp_path, store, repair=True)
    found = by_path(report)
    assert found["/d/gone.txt"] == {"pending-upload", "conflict"}
    assert found["/d/changed.txt"] == {"pending-upload", "conflict"}
    assert found["/d/fresh.txt"] == {"pending-upload", "conflict"}
    assert found["/d/same.txt"] == {"pending-upload"}
    assert not report.clean
    assert not any(f.repaired for f in report.findings)
    journal = Journal(str(tmp_path / "journal"))
    with journal.read() as txn:
        d = txn.lookup(ROOT_INO, b"d")
        for name in (b"gone.txt", b"changed.txt", b"same.txt", b"fresh.txt"):
            inode = txn.get(txn.lookup(d, name))
            assert inode.dirty & DIRTY_DATA and inode.cached
            assert os.path.getsize(tmp_path / "data" / str(inode.ino)) == inode.size
    journal.close()


def test_our_own_interrupted_upload_is_not_a_conflict(tmp_path):
    store = MemoryStore()
    uploaded_tree(tmp_path, store)

    async def change(rig: Rig):
        d = await rig.fs.lookup(ROOT_INO, b"d")
        inode = await rig.fs.lookup(d.ino, b"same.txt")
        fh = await open_fh(rig, inode.ino, os.O_WRONLY)
        await rig.fs.write(fh, 0, b"MINE")
        await rig.fs.release(fh)
        fresh = rig.fs.get(inode.ino)
        # the PUT landed, the daemon died before committing it
        store.put("d/same.txt", b"MINEouched", {"s3fuse-seq": f"test:{fresh.ino}:"
                                                              f"{fresh.change_seq}"})

    drive(tmp_path, store, change, flusher=False)
    report = fsck_run(tmp_path, store)
    assert by_path(report)["/d/same.txt"] == {"pending-upload"} and report.clean


def test_journal_damage_is_found_and_the_safe_part_repaired(tmp_path):
    store = MemoryStore()
    uploaded_tree(tmp_path, store)
    journal = Journal(str(tmp_path / "journal"))
    with journal.write() as txn:
        d = txn.lookup(ROOT_INO, b"d")
        e = txn.lookup(ROOT_INO, b"e")
        same = txn.lookup(d, b"same.txt")
        changed = txn.lookup(d, b"changed.txt")
        txn.link(d, b"ghost", 9999)  # names no inode
        txn.link(e, b"alias", same)  # a second entry for one inode
        d_inode = txn.get(d)
        d_inode.nlink = 7
        txn.put(d_inode)
        c = txn.get(changed)  # dirty flag, but not in the dirty set
        c.dirty = DIRTY_DATA
        txn.put(c)
        txn.mark_dirty(4242)  # dirty set entry of no inode
        lost = Inode(ino=5000, mode=stat.S_IFREG | 0o644, uid=0, gid=0, parent=4999,
                     name="lost", cached=True, size=3)
        txn.put(lost)  # reachable from nowhere
        moved = Inode(ino=5001, mode=stat.S_IFREG | 0o644, uid=0, gid=0, parent=d,
                      name="moved", remote_key="elsewhere", remote_etag="x")
        txn.put(moved)
        txn.link(d, b"moved", 5001)  # remote key is not its path's key
        txn.txn.put(b"next_ino", U64.pack(10), db=journal.db_meta)
    journal.close()
    for name, size in (("7777", 5), ("5000", 3)):
        (tmp_path / "data" / name).write_bytes(b"x" * size)  # 7777: no inode

    report = fsck_run(tmp_path, store)
    kinds = report.kinds()
    assert {"dangling-dirent", "dirent", "nlink", "dirty-set", "unreachable", "remote-key",
            "orphan-cache-file", "counter"} <= kinds
    assert not any(f.repaired for f in report.findings)

    report = fsck_run(tmp_path, store, repair=True)
    repaired = {f.kind for f in report.findings if f.repaired}
    assert {"dangling-dirent", "nlink", "dirty-set", "orphan-cache-file", "counter"} \
        <= repaired
    left = {f.kind for f in report.problems}
    assert left == {"dirent", "unreachable", "remote-key"}
    assert not (tmp_path / "data" / "7777").exists()
    assert (tmp_path / "data" / "5000").exists()  # the unreachable inode's data stays
    journal = Journal(str(tmp_path / "journal"))
    with journal.read() as txn:
        assert txn.lookup(d, b"ghost") is None
        assert txn.get(d).nlink == 2
        assert changed in txn.dirty_inos() and 4242 not in txn.dirty_inos()
        assert U64.unpack(txn.txn.get(b"next_ino", db=journal.db_meta))[0] == 5002
    journal.close()
    # what was repaired stays repaired; what was not is still reported
    again = fsck_run(tmp_path, store, repair=True)
    assert {f.kind for f in again.problems} == {"dirent", "unreachable", "remote-key"}


def test_cache_files_are_checked_against_the_journal(tmp_path):
    store = MemoryStore()
    uploaded_tree(tmp_path, store)
    journal = Journal(str(tmp_path / "journal"))
    with journal.read() as txn:
        d = txn.lookup(ROOT_INO, b"d")
        same = txn.get(txn.lookup(d, b"same.txt"))
        changed = txn.get(txn.lookup(d, b"changed.txt"))
    journal.close()
    assert same.cached and changed.cached
    os.truncate(tmp_path / "data" / str(same.ino), 2)
    os.unlink(tmp_path / "data" / str(changed.ino))
    found = by_path(fsck_run(tmp_path, store, repair=True))
    assert found["/d/same.txt"] == {"cache-size"}
    assert found["/d/changed.txt"] == {"cache-missing"}
    assert not (tmp_path / "data" / str(same.ino)).exists()
    assert fsck_run(tmp_path, store).findings == []

    async def reread(rig: Rig):
        assert await read_all(rig, d, b"same.txt") == b"untouched"
        assert await read_all(rig, d, b"changed.txt") == b"old bytes"

    drive(tmp_path, store, reread, flusher=False)


def test_replace_over_a_pending_rename_target_is_uploaded(tmp_path):
    """Regression (found by fsck: ``etag-unknown``): a file renamed over the target of
    a pending copy inherits the key with no ETag yet; the copy's ETag must reach it,
    or it waits for that ETag forever and is never uploaded."""
    store = MemoryStore()

    async def scenario(rig: Rig):
        # pump by hand: with that bug, Flusher.run spun without letting time pass
        async with trio.open_nursery() as nursery:
            rig.flusher._nursery = nursery
            await rig.write_file(ROOT_INO, b"notes", b"v1")
            await rig.flusher.pump(force=True)
            await trio.sleep(1)
            assert rig.bucket() == {"notes": b"v1"}
            await rig.fs.rename(ROOT_INO, b"notes", ROOT_INO, b"moved")  # copy op queued
            await rig.write_file(ROOT_INO, b".tmp", b"v2")
            await rig.fs.rename(ROOT_INO, b".tmp", ROOT_INO, b"moved")  # before the copy
            for _ in range(10):
                await rig.flusher.pump(force=True)
                await trio.sleep(1)
            rig.fs.forget(list(rig.fs.lookups.items()))
            report = fsck.check(rig.journal, str(tmp_path), store, "")
            assert "etag-unknown" not in report.kinds(), [str(f) for f in report.findings]
            assert rig.bucket() == {"moved": b"v2"}

    drive(tmp_path, store, scenario, flusher=False)


def test_fsck_without_the_bucket_checks_the_journal_alone(tmp_path):
    store = MemoryStore()
    uploaded_tree(tmp_path, store)
    store.delete("d/gone.txt")
    journal = Journal(str(tmp_path / "journal"))
    try:
        report = fsck.check(journal, str(tmp_path), None, "")
    finally:
        journal.close()
    assert report.findings == [] and not report.bucket_checked


# --- the command ---------------------------------------------------------------------

@pytest.fixture
def memory_source(tmp_path):
    """A cache directory with a journal for ``memory://fsck-cli`` (a shared bucket)."""
    name = "fsck-cli"
    drop(name)
    store = MemoryStore(name)
    uploaded_tree(tmp_path, store)
    journal = Journal(str(tmp_path / "journal"))
    journal.set_meta(b"source", f"memory://{name}".encode())
    journal.close()
    yield f"memory://{name}", store
    drop(name)


def test_command_exit_codes_and_output(tmp_path, memory_source, capsys):
    source, store = memory_source
    assert cli.main(["fsck", source, "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "s3fuse fsck: clean"
    store.delete("d/gone.txt")
    assert cli.main(["fsck", source, "--cache-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "deleted-outside" in out and "/d/gone.txt" in out
    assert cli.main(["fsck", source, "--cache-dir", str(tmp_path), "--repair", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clean"] and [f["kind"] for f in report["findings"]] == ["deleted-outside"]
    assert report["findings"][0]["repaired"] is True
    assert cli.main(["fsck", source, "--cache-dir", str(tmp_path)]) == 0


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured
    return lines[0]


def test_command_refuses_what_it_cannot_check(tmp_path, memory_source, capsys):
    source, _ = memory_source
    lock = CacheLock(str(tmp_path))  # as a running mount holds it
    try:
        assert cli.main(["fsck", source, "--cache-dir", str(tmp_path)]) == 2
        line = one_line_error(capsys)
        assert "in use" in line and f"pid {os.getpid()}" in line and "unmount" in line
    finally:
        lock.release()
    assert cli.main(["fsck", "memory://another", "--cache-dir", str(tmp_path)]) == 2
    assert "belongs to 'memory://fsck-cli'" in one_line_error(capsys)
    assert cli.main(["fsck", source, "--cache-dir", str(tmp_path / "nothing")]) == 2
    assert "no s3fuse journal" in one_line_error(capsys)
    assert not (tmp_path / "nothing").exists()
    assert cli.main(["fsck", "ftp://x", "--cache-dir", str(tmp_path)]) == 2
    assert "unknown source" in one_line_error(capsys)
