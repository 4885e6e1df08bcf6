"""The filesystem core and the flusher on the in-memory store, with trio's MockClock.

These assert request counts, the point of the aggregation window: what reaches the
bucket, and how many requests it took. The same behaviours are exercised through a
real mount in tests/fuse.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time

import pytest
import trio
import trio.testing
from core_rig import WINDOW, Rig, replayed, run, upload_in_flight

from s3fuse.errors import FsError
from s3fuse.filesystem import SetAttrs
from s3fuse.journal import ROOT_INO, Inode, Journal
from s3fuse.store.faulty import FaultyStore
from s3fuse.store.memory import MemoryStore

def test_hundred_writes_in_one_window_make_one_put(tmp_path):
    async def scenario(rig: Rig):
        fh, inode = await rig.fs.create(ROOT_INO, b"log.txt", 0o640, 1000, 1000)
        for i in range(100):
            await rig.fs.write(fh, i * 10, b"%010d" % i)
            await trio.sleep(0.2)  # 20 s of writing, always inside the window
        await rig.fs.release(fh)
        assert rig.counts()["put"] == 0
        await trio.sleep(WINDOW + 5)
        assert rig.counts() == {"put": 1, "copy": 0, "delete": 0}
        body, md = rig.store.snapshot()["log.txt"]
        assert body == b"".join(b"%010d" % i for i in range(100))
        assert int(md["mode"]) == stat.S_IFREG | 0o640
        assert md["uid"] == "1000"
        await trio.sleep(WINDOW * 3)
        assert rig.counts()["put"] == 1  # nothing left to upload

    run(tmp_path, scenario)


def test_writes_to_a_dirty_file_commit_nothing_and_a_crash_loses_no_byte(tmp_path):
    """After the first, writes to a dirty file only defer its record (no LMDB commit);
    the size is seen at once; fsync writes it; a crash that loses the deferred record
    still uploads every byte (replay takes the cache file's length)."""
    store = MemoryStore()
    commits = []

    async def before_crash():
        rig = Rig(tmp_path, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            await writes(rig)
            nursery.cancel_scope.cancel()
        rig.journal.deferred.clear()  # the "crash" loses the deferred record
        rig.close()

    async def writes(rig: Rig):
        real_write = rig.journal.write
        rig.journal.write = lambda: commits.append(1) or real_write()
        fh, inode = await rig.fs.create(ROOT_INO, b"f", 0o644, 1000, 1000)
        await rig.fs.write(fh, 0, b"a" * 10)
        before = len(commits)
        for i in range(1, 50):
            await rig.fs.write(fh, i * 10, bytes([97 + i % 26]) * 10)
        assert len(commits) == before  # 49 writes, no transaction
        assert rig.fs.get(inode.ino).size == 500
        await rig.fs.fsync(fh)
        assert not rig.journal.deferred
        await rig.fs.write(fh, 500, b"z" * 100)
        assert rig.fs.get(inode.ino).size == 600
        await rig.fs.release(fh)
        assert rig.journal.deferred  # the last write's record: lost in the crash

    async def after_restart():
        rig = await replayed(tmp_path, store)
        want = b"".join(bytes([97 + i % 26]) * 10 for i in range(50)) + b"z" * 100
        assert rig.bucket() == {"f": want}
        rig.close()

    trio.run(before_crash, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(after_restart, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_upload_writes_deferred_records_first(tmp_path):
    """The object's s3fuse-seq tag is never ahead of the journal on disk (else a
    crash right after the PUT would take our own object for an outside change)."""
    async def scenario(rig: Rig):
        fh, inode = await rig.fs.create(ROOT_INO, b"f", 0o644, 1000, 1000)
        await rig.fs.write(fh, 0, b"a")
        await rig.fs.write(fh, 1, b"b")  # deferred
        await rig.fs.release(fh)
        assert inode.ino in rig.journal.deferred
        seen = []
        real_put = rig.store.put

        def put(key, body, md, **kw):
            with rig.journal.env.begin() as raw:
                rec = Inode.decode(raw.get(inode.ino.to_bytes(8, "big"),
                                           db=rig.journal.db_inodes))
            seen.append((md["s3fuse-seq"], rec.change_seq))
            return real_put(key, body, md, **kw)

        rig.store.put = put
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"f": b"ab"}
        [(tag, on_disk)] = seen
        assert tag.endswith(f":{on_disk}")

    run(tmp_path, scenario)


def test_a_large_file_goes_up_from_its_cache_file_unless_written_meanwhile(tmp_path):
    """No snapshot copy of a large file: the store checks that the cache file did not
    change while it was read. A write during the upload voids it (nothing stored),
    and the next upload, from a snapshot, carries the new bytes."""
    from s3fuse.flusher import LIVE_BODY_MIN_BYTES

    async def scenario(rig: Rig):
        size = LIVE_BODY_MIN_BYTES + 4096
        fh, inode = await rig.fs.create(ROOT_INO, b"big", 0o644, 1000, 1000)
        await rig.fs.write(fh, 0, b"a" * size)
        snapshots = []
        real_snapshot, real_ahead = rig.cache.snapshot, rig.cache.snapshot_ahead
        rig.cache.snapshot = lambda ino, n: snapshots.append(ino) or real_snapshot(ino, n)
        rig.cache.snapshot_ahead = lambda ino, n: snapshots.append(ino) or real_ahead(ino, n)
        real_put = rig.store.put
        bodies = []

        def put(key, body, md, **kw):
            bodies.append(body)
            if len(bodies) == 1:  # a write lands while the first upload reads the file
                rig.cache.write(inode.ino, 0, b"b")
                rig.flusher.note_change(inode.ino)  # (as a write through the mount)
            return real_put(key, body, md, **kw)

        rig.store.put = put
        await trio.sleep(WINDOW + 5)
        assert rig.flusher.counts["body_changed"] == 1
        assert bodies[0] == rig.cache.path(inode.ino) and snapshots == [inode.ino]
        assert rig.flusher.counts["snapshot_ahead"] == 1  # (copied off the event loop)
        assert rig.bucket() == {"big": b"b" + b"a" * (size - 1)}
        # a later change goes up from the cache file again
        await rig.fs.write(fh, 0, b"c")
        await rig.fs.release(fh)
        await trio.sleep(WINDOW + 5)
        assert bodies[-1] == rig.cache.path(inode.ino) and snapshots == [inode.ino]
        assert rig.bucket() == {"big": b"c" + b"a" * (size - 1)}
        assert rig.cache.size(inode.ino) == size  # (the cache file is not removed)

    run(tmp_path, scenario)


def test_the_poller_lists_directories_touched_lately_and_those_of_open_files(tmp_path):
    async def scenario(rig: Rig):
        rig.store.put("d/old", b"1", {})
        d = await rig.fs.lookup(ROOT_INO, b"d")
        rig.fs.releasedir(await rig.fs.opendir(d.ino))
        made = await rig.fs.mkdir(ROOT_INO, b"made", 0o755, 1000, 1000)
        rig.fs.releasedir(await rig.fs.opendir(made.ino))
        assert set(rig.fs.dirs_to_poll(used_within_s=60)) == {ROOT_INO, d.ino, made.ino}
        old = await rig.fs.lookup(d.ino, b"old")
        f, _ = await rig.fs.open(old.ino, os.O_RDONLY)
        for ino in rig.fs.discovery._dir_used:  # as if last touched 61 s ago
            rig.fs.discovery._dir_used[ino] -= 61
        assert rig.fs.dirs_to_poll(used_within_s=60) == [d.ino]  # it holds an open file
        await rig.fs.release(f)
        assert rig.fs.dirs_to_poll(used_within_s=60) == []

    run(tmp_path, scenario)


def test_an_unlinked_inode_loses_its_cache_file_before_its_journal_record(tmp_path):
    """So that a kill between the two leaves an unlinked inode (dropped at the next
    start), never a cache file of no inode (fsck: orphan-cache-file)."""
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"f", b"data")
        in_journal = []
        real_remove = rig.cache.remove

        def remove(i):
            with rig.journal.env.begin() as raw:
                in_journal.append(raw.get(i.to_bytes(8, "big"), db=rig.journal.db_inodes)
                                  is not None)
            real_remove(i)

        rig.cache.remove = remove
        await rig.fs.unlink(ROOT_INO, b"f")
        rig.fs.forget([(ino, rig.fs.lookups.get(ino, 0))])  # the kernel's last forget
        assert in_journal == [True]
        assert not rig.cache.exists(ino)
        with rig.journal.read() as txn:
            assert txn.get(ino) is None

    run(tmp_path, scenario)


def test_busy_writer_is_uploaded_within_one_window_of_first_change(tmp_path):
    async def scenario(rig: Rig):
        fh, _ = await rig.fs.create(ROOT_INO, b"busy", 0o644, 0, 0)
        start = trio.current_time()
        while rig.counts()["put"] == 0:
            await rig.fs.write(fh, 0, b"x")
            await trio.sleep(1)  # never quiet for a whole window
            assert trio.current_time() - start < WINDOW + 5, "never uploaded"
        await rig.fs.release(fh)

    run(tmp_path, scenario)


def test_tempfile_and_replace_is_one_put_no_copy(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"model.bin", b"v1")
        await trio.sleep(WINDOW + 5)
        assert rig.counts() == {"put": 1, "copy": 0, "delete": 0}
        for round_ in range(5):
            await rig.write_file(ROOT_INO, b".tmp1234", b"v%d" % (round_ + 2))
            await rig.fs.rename(ROOT_INO, b".tmp1234", ROOT_INO, b"model.bin")
            await trio.sleep(1)
        await trio.sleep(WINDOW + 5)
        assert rig.counts() == {"put": 2, "copy": 0, "delete": 0}
        assert rig.bucket() == {"model.bin": b"v6"}

    run(tmp_path, scenario)


def test_rename_of_uploaded_file_is_one_copy_and_one_delete(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"a.txt", b"hello")
        await trio.sleep(WINDOW + 5)
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"a.txt", ROOT_INO, b"b.txt")
        await trio.sleep(WINDOW + 5)
        after = rig.counts()
        assert {k: after[k] - before[k] for k in after} == {"put": 0, "copy": 1, "delete": 1}
        assert rig.bucket() == {"b.txt": b"hello"}

    run(tmp_path, scenario)


def test_directory_rename_moves_every_object(tmp_path):
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"src", 0o755, 0, 0)
        sub = await rig.fs.mkdir(d.ino, b"sub", 0o755, 0, 0)
        await rig.write_file(d.ino, b"one", b"1")
        await rig.write_file(sub.ino, b"two", b"2")
        await trio.sleep(WINDOW + 5)
        assert set(rig.bucket()) == {"src/", "src/sub/", "src/one", "src/sub/two"}
        await rig.fs.rename(ROOT_INO, b"src", ROOT_INO, b"dst")
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"dst/": b"", "dst/sub/": b"", "dst/one": b"1",
                                "dst/sub/two": b"2"}

    run(tmp_path, scenario)


def test_created_and_removed_inside_window_never_reaches_bucket(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"scratch", b"temporary")
        await rig.fs.unlink(ROOT_INO, b"scratch")
        d = await rig.fs.mkdir(ROOT_INO, b"tmpdir", 0o755, 0, 0)
        await rig.write_file(d.ino, b"x", b"y")
        await rig.fs.rename(d.ino, b"x", ROOT_INO, b"kept")
        await rig.fs.rmdir(ROOT_INO, b"tmpdir")
        await trio.sleep(WINDOW * 2)
        assert rig.counts() == {"put": 1, "copy": 0, "delete": 0}
        assert rig.bucket() == {"kept": b"y"}

    run(tmp_path, scenario)


def test_unlink_of_uploaded_file_deletes_it_and_keeps_the_directory(tmp_path):
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"dir", 0o755, 0, 0)
        await rig.write_file(d.ino, b"f", b"data")
        await trio.sleep(WINDOW + 5)
        await rig.fs.unlink(d.ino, b"f")
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"dir/": b""}

    run(tmp_path, scenario)


def test_outside_objects_are_listed_with_their_attributes(tmp_path):
    store = MemoryStore()
    store.put("plain.txt", b"no attributes", {})
    store.put("dir/script.sh", b"#!/bin/sh\n", {"mode": str(stat.S_IFREG | 0o755),
                                                "uid": "42", "mtime": "1700000000.5"})
    store.put("link", b"plain.txt", {"mode": str(stat.S_IFLNK | 0o777)})
    store.put("implicit/deep/file", b"x", {})

    async def scenario(rig: Rig):
        plain = await rig.fs.lookup(ROOT_INO, b"plain.txt")
        assert plain.mode == stat.S_IFREG | 0o644 and plain.uid == 1000
        assert plain.size == len(b"no attributes")
        d = await rig.fs.lookup(ROOT_INO, b"dir")
        assert stat.S_ISDIR(d.mode)
        script = await rig.fs.lookup(d.ino, b"script.sh")
        assert script.mode == stat.S_IFREG | 0o755 and script.uid == 42
        assert script.mtime_ns == 1_700_000_000_500_000_000
        link = await rig.fs.lookup(ROOT_INO, b"link")
        assert stat.S_ISLNK(link.mode)
        assert await rig.fs.readlink(link.ino) == b"plain.txt"
        fh, _ = await rig.fs.open(plain.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 3, 100) == b"attributes"
        imp = await rig.fs.lookup(ROOT_INO, b"implicit")
        deep = await rig.fs.lookup(imp.ino, b"deep")
        assert (await rig.fs.lookup(deep.ino, b"file")).size == 1

    run(tmp_path, scenario, store)


def test_hostile_keys_are_skipped(tmp_path):
    store = MemoryStore()
    for key in ("../x", "a/../../b", "/abs", "a//b", ".", "./y", "n" * 300, "ok",
                "both", "both/inner"):
        store.put(key, b"z", {})

    async def scenario(rig: Rig):
        fh = await rig.fs.opendir(ROOT_INO)
        names = sorted(name for name, _, _ in rig.fs.readdir(fh, 0))
        assert names == [b"a", b"both", b"ok"]
        both = await rig.fs.lookup(ROOT_INO, b"both")
        assert stat.S_ISDIR(both.mode)  # the directory wins
        a = await rig.fs.lookup(ROOT_INO, b"a")
        fh2 = await rig.fs.opendir(a.ino)
        assert list(rig.fs.readdir(fh2, 0)) == []
        assert "both" in rig.fs.skipped_keys and "n" * 300 in rig.fs.skipped_keys

    run(tmp_path, scenario, store)


def test_errno_cases(tmp_path):
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
        await rig.write_file(d.ino, b"f", b"1")
        with pytest.raises(FsError) as e:
            await rig.fs.rmdir(ROOT_INO, b"d")
        assert e.value.errno == errno.ENOTEMPTY
        with pytest.raises(FsError) as e:
            await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(FsError) as e:
            await rig.fs.rename(ROOT_INO, b"d", d.ino, b"inside")
        assert e.value.errno == errno.EINVAL
        with pytest.raises(FsError) as e:
            await rig.fs.lookup(ROOT_INO, b"x" * 256)
        assert e.value.errno == errno.ENAMETOOLONG
        await rig.write_file(ROOT_INO, b"g", b"2")
        with pytest.raises(FsError) as e:
            await rig.fs.rename(ROOT_INO, b"g", d.ino, b"f", flags=1)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(FsError) as e:
            await rig.fs.rename(ROOT_INO, b"g", ROOT_INO, b"d")
        assert e.value.errno == errno.EISDIR

    run(tmp_path, scenario)


def test_truncate_and_sparse_write(tmp_path):
    async def scenario(rig: Rig):
        fh, inode = await rig.fs.create(ROOT_INO, b"sparse", 0o644, 0, 0)
        await rig.fs.write(fh, 1 << 20, b"end")
        assert await rig.fs.read(fh, 0, 4) == b"\0\0\0\0"
        await rig.fs.setattr(inode.ino, SetAttrs(size=10))
        assert rig.fs.get(inode.ino).size == 10
        await rig.fs.setattr(inode.ino, SetAttrs(size=20))
        assert await rig.fs.read(fh, 0, 100) == b"\0" * 20
        await rig.fs.release(fh)
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"sparse": b"\0" * 20}

    run(tmp_path, scenario)


def test_journal_replays_pending_work_after_a_crash(tmp_path):
    store = MemoryStore()

    async def before_crash():
        rig = Rig(tmp_path, store)
        await rig.write_file(ROOT_INO, b"uploaded", b"old")
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            await trio.sleep(WINDOW + 5)
            nursery.cancel_scope.cancel()
        assert rig.bucket() == {"uploaded": b"old"}
        # pending work at the moment of the "crash": a rename and a new file
        await rig.fs.rename(ROOT_INO, b"uploaded", ROOT_INO, b"moved")
        await rig.write_file(ROOT_INO, b"new", b"fresh")
        rig.close()  # no drain: as if killed

    async def after_restart():
        rig = await replayed(tmp_path, store)
        assert rig.bucket() == {"moved": b"old", "new": b"fresh"}
        rig.close()

    trio.run(before_crash, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(after_restart, clock=trio.testing.MockClock(autojump_threshold=0))


def test_outside_change_is_not_overwritten(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"shared", b"ours v1")
        await trio.sleep(WINDOW + 5)
        inode = await rig.fs.lookup(ROOT_INO, b"shared")
        fh, _ = await rig.fs.open(inode.ino, os.O_WRONLY)  # opened before the change
        rig.store.put("shared", b"theirs", {})
        await rig.fs.write(fh, 0, b"ours v2")
        await rig.fs.release(fh)
        await trio.sleep(WINDOW + 5)
        # S3 wins at the path ...
        assert rig.bucket() == {"shared": b"theirs"}
        at_path = await rig.fs.lookup(ROOT_INO, b"shared")
        assert at_path.ino != inode.ino and at_path.size == len(b"theirs")
        fh, _ = await rig.fs.open(at_path.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"theirs"
        # ... and ours is kept whole, locally, in lost+found
        s3 = await rig.fs.lookup(ROOT_INO, b".s3fuse")
        lf = await rig.fs.lookup(s3.ino, b"lost+found")
        [(name, kept, _)] = list(rig.fs.readdir(await rig.fs.opendir(lf.ino), 0))
        assert name.startswith(b"shared.conflict-") and kept.ino == inode.ino
        fh, _ = await rig.fs.open(kept.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"ours v2"
        assert rig.fs.sync_state(kept) == "conflict"
        assert rig.fs.reconciler.conflicts[-1]["path"] == "shared"
        await trio.sleep(WINDOW * 2)
        assert rig.bucket() == {"shared": b"theirs"}  # lost+found is never uploaded

    run(tmp_path, scenario)


def test_open_sees_outside_changes_and_deletes(tmp_path):
    async def scenario(rig: Rig):
        rig.fs.metadata_ttl_s = 0.0
        await rig.write_file(ROOT_INO, b"doc", b"version one")
        await rig.write_file(ROOT_INO, b"gone", b"bye")
        await trio.sleep(WINDOW + 5)
        gone = await rig.fs.lookup(ROOT_INO, b"gone")  # (the kernel's entry, kept)
        rig.store.put("doc", b"version two, longer", {"mode": str(stat.S_IFREG | 0o600)})
        rig.store.delete("gone")
        doc = await rig.fs.lookup(ROOT_INO, b"doc")
        fh, changed = await rig.fs.open(doc.ino, os.O_RDONLY)
        assert changed
        assert await rig.fs.read(fh, 0, 100) == b"version two, longer"
        assert stat.S_IMODE(rig.fs.get(doc.ino).mode) == 0o600
        with pytest.raises(FsError) as e:
            await rig.fs.open(gone.ino, os.O_RDONLY)
        assert e.value.errno == errno.ESTALE  # the kernel then looks the path up again
        with pytest.raises(FsError):
            await rig.fs.lookup(ROOT_INO, b"gone")

    run(tmp_path, scenario)


def test_a_lookup_sees_a_name_deleted_or_created_outside_after_the_ttl(tmp_path):
    """Close-to-open for names: a lookup checks the directory's listing (one LIST per
    directory per TTL, shared) once the name's state is older than the TTL."""
    async def scenario(rig: Rig):
        rig.fs.metadata_ttl_s = 1.0
        await rig.write_file(ROOT_INO, b"gone", b"bye")
        await trio.sleep(WINDOW + 5)
        await rig.fs.lookup(ROOT_INO, b"gone")
        with pytest.raises(FsError):
            await rig.fs.lookup(ROOT_INO, b"new")
        rig.store.delete("gone")
        rig.store.put("new", b"hello", {})
        # within the TTL the mount answers from what it knows, without a request
        before = dict(rig.store.counts)
        await rig.fs.lookup(ROOT_INO, b"gone")
        with pytest.raises(FsError):
            await rig.fs.lookup(ROOT_INO, b"new")
        assert dict(rig.store.counts) == before
        await trio.sleep(1.5)
        with pytest.raises(FsError) as e:
            await rig.fs.lookup(ROOT_INO, b"gone")
        assert e.value.errno == errno.ENOENT
        assert (await rig.fs.lookup(ROOT_INO, b"new")).size == 5
        lists = rig.store.counts["list"] - before.get("list", 0)
        assert lists <= 2, lists

    run(tmp_path, scenario)


def test_poll_shows_new_changed_and_deleted_objects(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"kept", b"k")
        await rig.write_file(ROOT_INO, b"edited", b"e1")
        await rig.write_file(ROOT_INO, b"removed", b"r")
        await rig.write_file(ROOT_INO, b"dirty", b"d1")
        await trio.sleep(WINDOW + 5)
        rig.store.put("new.txt", b"from outside", {})
        rig.store.put("newdir/inner", b"x", {})
        rig.store.put("edited", b"e2-outside", {})
        rig.store.delete("removed")
        dirty = await rig.fs.lookup(ROOT_INO, b"dirty")
        fh, _ = await rig.fs.open(dirty.ino, os.O_WRONLY)
        await rig.fs.write(fh, 0, b"d2")
        await rig.fs.release(fh)
        rig.store.delete("dirty")  # deleted outside while dirty here
        await rig.fs.poll_dir(ROOT_INO)
        names = sorted(n for n, _, _ in rig.fs.readdir(await rig.fs.opendir(ROOT_INO), 0))
        assert names == [b"dirty", b"edited", b"kept", b"new.txt", b"newdir"]
        edited = await rig.fs.lookup(ROOT_INO, b"edited")
        fh, _ = await rig.fs.open(edited.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"e2-outside"
        await trio.sleep(WINDOW + 5)
        # the dirty file deleted outside: kept in lost+found, gone from its path
        assert "dirty" not in rig.bucket()
        assert [c["path"] for c in rig.fs.reconciler.conflicts] == ["dirty"]
        assert rig.fs.reconciler.conflicts[0]["reason"] == "deleted in the bucket"

    run(tmp_path, scenario)


async def _in_flight(tmp_path, store: FaultyStore, during):
    """Start an upload of ``f``, run ``during(rig)`` while it is in flight, finish."""
    return (await upload_in_flight(tmp_path, store, during))[0]


def test_rename_while_uploading_ends_at_the_new_name(tmp_path):
    async def during(rig: Rig):
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")

    assert trio.run(_in_flight, tmp_path, FaultyStore(), during) == {"g": b"payload"}


def test_unlink_while_uploading_leaves_nothing(tmp_path):
    async def during(rig: Rig):
        await rig.fs.unlink(ROOT_INO, b"f")

    assert trio.run(_in_flight, tmp_path, FaultyStore(), during) == {}


def test_new_file_at_the_name_while_old_upload_in_flight(tmp_path):
    async def during(rig: Rig):
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
        await rig.write_file(ROOT_INO, b"f", b"second")

    assert trio.run(_in_flight, tmp_path, FaultyStore(), during) == {"g": b"payload",
                                                                     "f": b"second"}


def test_writers_wait_for_uploads_when_dirty_data_exceeds_the_cache(tmp_path):
    async def scenario(rig: Rig):
        rig.flusher.dirty_limit_bytes = 1 << 20
        start = trio.current_time()
        for i in range(10):
            await rig.write_file(ROOT_INO, b"f%d" % i, b"z" * (300 << 10))
            assert rig.flusher.dirty_total_bytes <= (1 << 20) + (300 << 10)
        # uploads were forced long before the window would have sent them
        assert trio.current_time() - start < WINDOW
        assert rig.counts()["put"] >= 6
        assert await rig.flusher.drain(30)
        assert len(rig.bucket()) == 10

    run(tmp_path, scenario)


def test_an_upload_that_landed_before_a_crash_is_adopted_not_a_conflict(tmp_path):
    store = MemoryStore()

    async def crash_after_put():
        rig = Rig(tmp_path, store)
        await rig.write_file(ROOT_INO, b"a", b"v1")
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            assert await rig.flusher.drain(30)
            nursery.cancel_scope.cancel()
        fh, _ = await rig.fs.open((await rig.fs.lookup(ROOT_INO, b"a")).ino, os.O_WRONLY)
        await rig.fs.write(fh, 0, b"v2")
        await rig.fs.release(fh)
        rig.flusher._commit = lambda *a: None  # the PUT lands, the journal never learns
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            await rig.flusher.pump(force=True)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert rig.bucket() == {"a": b"v2"}
        rig.close()

    async def replay():
        rig = Rig(tmp_path, store)
        puts = rig.counts()["put"]
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            assert await rig.flusher.drain(30)
            nursery.cancel_scope.cancel()
        assert not rig.flusher.errors
        assert rig.counts()["put"] == puts + 1  # the refused retry, then adopted
        assert rig.bucket() == {"a": b"v2"}
        with rig.journal.read() as txn:
            assert txn.dirty_inos() == []
        rig.close()

    trio.run(crash_after_put, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(replay, clock=trio.testing.MockClock(autojump_threshold=0))


def test_poll_never_removes_a_file_whose_upload_committed_after_the_listing(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"fresh", b"data")
        original = rig.fs.discovery._list_dir

        async def list_then_upload(ino, prefix):
            result = await original(ino, prefix)  # taken before "fresh" is uploaded
            assert await rig.flusher.drain(30)  # ... whose upload commits right after
            return result

        rig.fs.discovery._list_dir = list_then_upload
        await rig.fs.poll_dir(ROOT_INO)
        assert (await rig.fs.lookup(ROOT_INO, b"fresh")).size == 4
        assert rig.bucket() == {"fresh": b"data"}

    run(tmp_path, scenario)


def test_a_full_cache_disk_answers_enospc_not_eio(tmp_path, monkeypatch):
    """LMDB reports a failed commit on a full disk as its own DiskError; the request
    that made the change must get ENOSPC, as from a full local disk."""
    import lmdb

    from s3fuse.errors import to_errno

    journal = Journal(str(tmp_path / "journal"))
    real_begin = journal.env.begin

    class FullTxn:
        def __init__(self, txn):
            self._txn = txn

        def __getattr__(self, name):
            return getattr(self._txn, name)

        def commit(self):
            self._txn.abort()
            raise lmdb.DiskError("mdb_txn_commit", 28)

    monkeypatch.setattr(journal, "env", type("Env", (), {
        "begin": staticmethod(lambda write=False: FullTxn(real_begin(write=write))
                              if write else real_begin()),
        "sync": journal.env.sync, "close": journal.env.close}))
    with pytest.raises(OSError) as exc, journal.write() as txn:
        txn.put_meta(b"k", b"v")
    assert exc.value.errno == errno.ENOSPC and to_errno(exc.value) == errno.ENOSPC
    assert journal.get_meta(b"k") is None  # nothing half-written
    journal.close()


def slow_ops_store() -> FaultyStore:
    """Copies and deletes take a while (as on a real server), and their order is traced."""
    store = FaultyStore()
    store.slow("copy", 0.02)
    store.slow("delete", 0.02)
    return store


def run_threaded(tmp_path, store: MemoryStore, scenario) -> None:
    """Like ``run``, on the real clock, with store calls in real worker threads (so
    that they really overlap) and a 10 ms window."""

    async def main():
        rig = Rig(tmp_path, store, threads=True)
        rig.flusher.window_s = 0.01
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                await scenario(rig)
                nursery.cancel_scope.cancel()
        finally:
            rig.close()

    trio.run(main)


def test_a_snapshot_is_copied_off_the_event_loop_and_holds_only_its_writers(tmp_path):
    """A large file that goes up from a snapshot (between 8 and 16 MiB it always does)
    is copied in a worker thread (``Flusher._snapshot_ahead``): the mount goes on
    serving meanwhile, a write to that file waits for the copy, and the object holds
    the file as it was when the copy began; the write goes up next."""
    import threading

    from s3fuse.cache import SNAPSHOT_INLINE_BYTES

    async def scenario(rig: Rig):
        size = SNAPSHOT_INLINE_BYTES + 4096
        started, release = threading.Event(), threading.Event()
        real_copy = rig.cache._copy_own

        def held_copy(ino, n, dst):  # (in the worker thread)
            started.set()
            assert release.wait(30), "the test never let the copy go on"
            real_copy(ino, n, dst)

        rig.cache._copy_own = held_copy
        first_bytes = []
        real_put = rig.store.put

        def put(key, body, md, **kw):
            if key == "big" and isinstance(body, str):  # (a snapshot file, not bytes)
                with open(body, "rb") as f:
                    first_bytes.append(f.read(1))
            return real_put(key, body, md, **kw)

        rig.store.put = put
        fh, inode = await rig.fs.create(ROOT_INO, b"big", 0o644, 1000, 1000)
        await rig.fs.write(fh, 0, b"a" * size)
        with trio.fail_after(10):
            for _ in range(1000):
                if started.is_set():
                    break
                await trio.sleep(0.01)
        wrote = trio.Event()

        async def write_b():
            await rig.fs.write(fh, 0, b"b")
            wrote.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_b)
            # the mount is not stopped by the copy: another file is made and written
            with trio.fail_after(5):
                await rig.write_file(ROOT_INO, b"other", b"served meanwhile")
            await trio.sleep(0.3)
            assert not wrote.is_set(), "a write to the file did not wait for its copy"
            release.set()
            with trio.fail_after(10):
                await wrote.wait()
        await rig.fs.release(fh)
        with trio.fail_after(20):
            while rig.bucket().get("big", b"")[:1] != b"b":  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert first_bytes[0] == b"a", "the first upload did not hold the file as it was"
        assert rig.flusher.counts["snapshot_ahead"] >= 1
        assert rig.bucket()["big"] == b"b" + b"a" * (size - 1)
        assert rig.bucket()["other"] == b"served meanwhile"

    run_threaded(tmp_path, MemoryStore(), scenario)


def test_a_snapshot_copied_off_the_loop_is_dropped_if_the_file_changed_meanwhile(tmp_path):
    """A change that does not wait for the copy (a write already past the wait, a
    truncate) voids the snapshot made off the loop: the upload takes one on the loop,
    so the object never holds bytes the file no longer has."""
    from s3fuse.cache import SNAPSHOT_INLINE_BYTES

    async def scenario(rig: Rig):
        size = SNAPSHOT_INLINE_BYTES + 4096
        fh, inode = await rig.fs.create(ROOT_INO, b"big", 0o644, 1000, 1000)
        await rig.fs.write(fh, 0, b"a" * size)
        await rig.fs.release(fh)
        real_copy = rig.cache._copy_own

        def copy_then_change(ino, n, dst):  # the change lands while it copies
            real_copy(ino, n, dst)
            rig.cache.write(ino, 0, b"z")  # (same size: only the generation tells)

        rig.cache._copy_own = copy_then_change
        await trio.sleep(WINDOW + 5)
        assert rig.flusher.counts["snapshot_ahead"] == 0
        assert rig.bucket() == {"big": b"z" + b"a" * (size - 1)}

    run(tmp_path, scenario)


def test_op_log_runs_ops_on_distinct_keys_in_parallel_and_in_order(tmp_path):
    store = slow_ops_store()

    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"src", 0o755, 0, 0)
        for i in range(40):
            await rig.write_file(d.ino, b"f%02d" % i, b"%d" % i)
        assert await rig.flusher.drain(30)
        await rig.fs.rename(ROOT_INO, b"src", ROOT_INO, b"dst")
        # and a chain on one key: each rename must wait for the one before
        await rig.write_file(ROOT_INO, b"x", b"chain")
        assert await rig.flusher.drain(30)
        for a, b in ((b"x", b"y"), (b"y", b"z")):
            await rig.fs.rename(ROOT_INO, a, ROOT_INO, b)
        assert await rig.flusher.drain(60)

    run_threaded(tmp_path, store, scenario)
    assert store.most_active > 1, "ops never overlapped"
    bucket = {k: v[0] for k, v in store.snapshot().items()}
    assert bucket == {"dst/": b"", "z": b"chain", **{f"dst/f{i:02d}": b"%d" % i
                                                     for i in range(40)}}
    # each object's delete began only after the copy away from it had ended
    for name in [f"src/f{i:02d}" for i in range(40)] + ["x", "y"]:
        events = [(pos, what, op) for pos, (what, op, key) in enumerate(store.trace)
                  if key == name]
        copies = [pos for pos, what, op in events if op == "copy" and what == "end"]
        deletes = [pos for pos, what, op in events if op == "delete" and what == "begin"]
        assert copies and deletes and max(copies) < min(deletes), name


def test_bucket_work_runs_one_at_a_time_while_requests_come_then_all_at_once(tmp_path):
    """Worker threads take the CPU and the GIL the request handlers need: while FUSE
    requests keep coming, ops and uploads run one at a time; after the requests stop
    (or for a drain) they run in parallel again."""
    from s3fuse.flusher import BUSY_S

    store = slow_ops_store()

    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
        for i in range(30):
            await rig.write_file(d.ino, b"f%02d" % i, b"%d" % i)
        assert await rig.flusher.drain(30)
        store.most_active = 0
        for i in range(15):  # an rm -rf: a request every few milliseconds
            rig.fs.last_request_at = trio.current_time()
            await rig.fs.unlink(d.ino, b"f%02d" % i)
            await trio.sleep(0.005)
        finished = rig.flusher.ops_finished
        for _ in range(60):  # 0.3 s more of requests
            rig.fs.last_request_at = trio.current_time()
            await trio.sleep(0.005)
        assert rig.flusher.ops_finished - finished >= 3  # deletes went on ...
        assert store.most_active == 1  # ... one at a time
        await trio.sleep(BUSY_S)  # the requests stopped
        for i in range(15, 30):
            await rig.fs.unlink(d.ino, b"f%02d" % i)
        assert await rig.flusher.drain(30)
        assert store.most_active > 1

    run_threaded(tmp_path, store, scenario)
    assert {k for k in store.snapshot() if k.startswith("d/f")} == set()


def test_listing_makes_no_head_and_lookup_loads_the_attributes(tmp_path):
    store = MemoryStore()
    for i in range(50):
        store.put(f"d/f{i:03d}", b"x" * i, {"mode": str(stat.S_IFREG | 0o600), "uid": "7"})
    store.put("d/sub/inner", b"", {})
    store.put("d/sub/", b"", {"mode": str(stat.S_IFDIR | 0o700)})
    store.put("d/ln", b"f001", {"mode": str(stat.S_IFLNK | 0o777)})

    async def scenario(rig: Rig):
        d = await rig.fs.lookup(ROOT_INO, b"d")
        heads = rig.store.counts["head"]
        entries = list(rig.fs.readdir(await rig.fs.opendir(d.ino), 0))
        assert len(entries) == 52
        assert rig.store.counts["head"] == heads, "a listing HEADs nothing"
        by_name = {n: i for n, i, _ in entries}
        # from the listing alone: size and type of directories, defaults, not loaded
        assert not by_name[b"f010"].meta_loaded and by_name[b"f010"].size == 10
        assert by_name[b"f010"].mode == stat.S_IFREG | 0o644
        assert stat.S_ISDIR(by_name[b"sub"].mode) and not by_name[b"sub"].meta_loaded
        # a lookup, a getattr, an open load the real attributes first
        f = await rig.fs.lookup(d.ino, b"f010")
        assert f.meta_loaded and f.mode == stat.S_IFREG | 0o600 and f.uid == 7
        sub = await rig.fs.lookup(d.ino, b"sub")
        assert sub.mode == stat.S_IFDIR | 0o700 and sub.remote_key == "d/sub/"
        ln = await rig.fs.stat(by_name[b"ln"].ino)
        assert stat.S_ISLNK(ln.mode)
        assert await rig.fs.readlink(ln.ino) == b"f001"
        fh, _ = await rig.fs.open(by_name[b"f020"].ino, os.O_RDONLY)
        assert stat.S_IMODE(rig.fs.get(by_name[b"f020"].ino).mode) == 0o600
        await rig.fs.release(fh)

    run(tmp_path, scenario, store)


def test_lookups_after_readdir_prefetch_the_following_entries(tmp_path):
    store = MemoryStore()
    for i in range(100):
        store.put(f"f{i:03d}", b"", {"mode": str(stat.S_IFREG | 0o640)})

    async def scenario(rig: Rig):
        heads = rig.store.counts["head"]
        names = [n for n, _, _ in rig.fs.readdir(await rig.fs.opendir(ROOT_INO), 0)]
        for name in names:  # what ls -l does: one lookup per entry, in this order
            inode = await rig.fs.lookup(ROOT_INO, name)
            assert inode.mode == stat.S_IFREG | 0o640
        assert rig.store.counts["head"] - heads == 100, "one HEAD per entry, no more"

    run(tmp_path, scenario, store)


def test_lookup_of_an_entry_changed_or_deleted_since_the_listing(tmp_path):
    store = MemoryStore()
    store.put("a", b"old", {})
    store.put("b", b"bye", {})

    async def scenario(rig: Rig):
        list(rig.fs.readdir(await rig.fs.opendir(ROOT_INO), 0))
        rig.store.put("a", b"new and longer", {"mode": str(stat.S_IFREG | 0o600)})
        rig.store.delete("b")
        a = await rig.fs.lookup(ROOT_INO, b"a")
        assert a.size == len(b"new and longer") and stat.S_IMODE(a.mode) == 0o600
        fh, _ = await rig.fs.open(a.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"new and longer"
        await rig.fs.release(fh)
        with pytest.raises(FsError) as e:
            await rig.fs.lookup(ROOT_INO, b"b")
        assert e.value.errno == errno.ENOENT

    run(tmp_path, scenario, store)


def test_rename_of_a_listed_directory_keeps_the_attributes_of_its_subdirectories(tmp_path):
    store = MemoryStore()
    store.put("top/", b"", {"mode": str(stat.S_IFDIR | 0o750)})
    store.put("top/sub/", b"", {"mode": str(stat.S_IFDIR | 0o700), "uid": "5"})
    store.put("top/sub/file", b"data", {"mode": str(stat.S_IFREG | 0o600)})

    async def scenario(rig: Rig):
        await rig.fs.rename(ROOT_INO, b"top", ROOT_INO, b"moved")
        await trio.sleep(WINDOW + 5)
        snap = rig.store.snapshot()
        assert sorted(snap) == ["moved/", "moved/sub/", "moved/sub/file"]
        assert int(snap["moved/sub/"][1]["mode"]) == stat.S_IFDIR | 0o700
        assert snap["moved/sub/"][1]["uid"] == "5"
        assert int(snap["moved/"][1]["mode"]) == stat.S_IFDIR | 0o750
        assert int(snap["moved/sub/file"][1]["mode"]) == stat.S_IFREG | 0o600

    run(tmp_path, scenario, store)


def test_a_sequential_cold_read_grows_its_read_ahead(tmp_path):
    store = MemoryStore()
    body = bytes(range(256)) * (64 << 12)  # 64 MiB
    store.put("big", body, {})

    async def scenario(rig: Rig):
        big = await rig.fs.lookup(ROOT_INO, b"big")
        fh, _ = await rig.fs.open(big.ino, os.O_RDONLY)
        gets = rig.store.counts["get"]
        chunks = [await rig.fs.read(fh, off, 128 << 10) for off in range(0, len(body), 128 << 10)]
        assert b"".join(chunks) == body
        # 8, 16, 32, then 64 MiB windows in pieces of a quarter window: not one GET
        # per 4 MiB (16) plus the window overlaps, as a fixed 8 MiB window makes
        assert rig.store.counts["get"] - gets <= 14
        assert rig.fs.get(big.ino).cached
        await rig.fs.release(fh)

    run(tmp_path, scenario, store)


def test_a_single_lookup_after_readdir_prefetches_little(tmp_path):
    store = MemoryStore()
    for i in range(100):
        store.put(f"f{i:03d}", b"", {})

    async def scenario(rig: Rig):
        list(rig.fs.readdir(await rig.fs.opendir(ROOT_INO), 0))
        heads = rig.store.counts["head"]
        for _ in range(10):  # the same entry again and again (its TTL expiring)
            await rig.fs.lookup(ROOT_INO, b"f050")
        assert rig.store.counts["head"] - heads <= 5, "no scan ahead without a walk"

    run(tmp_path, scenario, store)


def test_killed_between_a_create_and_its_cache_file(tmp_path):
    """The create's journal commit comes before its (empty) cache file: a kill in
    between leaves a dirty empty file whose cache file is missing. Replay uploads it
    empty; nothing is reported lost."""
    from fsck_helper import assert_journal_clean

    store = MemoryStore()

    async def before_crash():
        rig = Rig(tmp_path, store)
        ino = await rig.write_file(ROOT_INO, b"empty", b"")
        rig.cache.remove(ino)  # as if the kill came before the cache file
        rig.close()

    async def after_restart():
        rig = await replayed(tmp_path, store)
        assert rig.bucket() == {"empty": b""}
        assert_journal_clean(rig.journal, tmp_path, store, allow=["unlinked-inode"])
        rig.close()

    trio.run(before_crash, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(after_restart, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("outside", ["changed", "deleted"])
def test_writes_through_a_handle_after_the_bucket_replaced_the_file_are_kept(tmp_path,
                                                                             outside):
    """The poller adopts an outside change while a writer holds the clean file open
    (its handle keeps the old version, as with a replace on a local disk); what the
    writer then writes was acknowledged, so at its last close it goes to lost+found."""

    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"report", b"v1")
        await trio.sleep(WINDOW + 5)
        fh, _ = await rig.fs.open(ino, os.O_RDWR)
        if outside == "changed":
            rig.store.put("report", b"their v2", {})
        else:
            rig.store.delete("report")
        await rig.fs.poll_dir(ROOT_INO)  # adopted while the file is clean and open
        await rig.fs.write(fh, 0, b"our v2")
        await rig.fs.release(fh)
        await trio.sleep(WINDOW + 5)
        lf = await rig.fs.lookup(ROOT_INO, b".s3fuse")
        lf = await rig.fs.lookup(lf.ino, b"lost+found")
        names = [n for n, _, _ in rig.fs.readdir(await rig.fs.opendir(lf.ino), 0)]
        assert len(names) == 1 and names[0].startswith(b"report.conflict-")
        kept = await rig.fs.lookup(lf.ino, names[0])
        kfh, _ = await rig.fs.open(kept.ino, os.O_RDONLY)
        assert await rig.fs.read(kfh, 0, 100) == b"our v2"
        assert [c["path"] for c in rig.fs.reconciler.conflicts] == ["report"]
        want = {"report": b"their v2"} if outside == "changed" else {}
        assert rig.bucket() == want

    run(tmp_path, scenario)


def test_a_handle_kept_on_a_replaced_file_and_only_read_leaves_nothing(tmp_path):
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"doc", b"v1")
        await trio.sleep(WINDOW + 5)
        fh, _ = await rig.fs.open(ino, os.O_RDONLY)
        rig.store.put("doc", b"v2", {})
        await rig.fs.poll_dir(ROOT_INO)
        assert await rig.fs.read(fh, 0, 10) == b"v1"
        await rig.fs.release(fh)
        assert rig.fs.reconciler.conflicts == []
        assert rig.fs.get(ino).nlink == 0

    run(tmp_path, scenario)


def test_an_unexpected_exception_in_an_upload_or_op_is_retried_not_fatal(tmp_path):
    store = FaultyStore()  # the first PUT and COPY raise what no store should raise
    store.inject("put", RuntimeError("surprise in put"))
    store.inject("copy", RuntimeError("surprise in copy"))

    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"a", b"data")
        assert await rig.flusher.drain(120)
        await rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
        assert await rig.flusher.drain(120)
        assert rig.bucket() == {"b": b"data"}
        assert [e.operation for e in rig.flusher.errors] == ["upload", "copy"]

    run(tmp_path, scenario, store)


def test_opens_in_one_directory_are_revalidated_by_one_list(tmp_path):
    """Close-to-open checks of many files in one directory cost one LIST, not one
    HEAD each; a file the listing shows changed is still HEADed and refreshed."""

    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"src", 0o755, 0, 0)
        inos = [await rig.write_file(d.ino, b"f%02d" % i, b"v1") for i in range(20)]
        await trio.sleep(WINDOW + 5)
        rig.fs.reconciler.known_at.clear()  # every file's check is older than the TTL
        before = dict(rig.store.counts)
        for ino in inos:
            fh, changed = await rig.fs.open(ino, os.O_RDONLY)
            assert not changed
            await rig.fs.release(fh)
        used = {k: rig.store.counts.get(k, 0) - before.get(k, 0) for k in ("list", "head")}
        assert used == {"list": 1, "head": 0}
        # changed outside: the listing shows it, a HEAD confirms, the open sees it
        rig.store.put("src/f03", b"v2 from outside", {})
        rig.fs.reconciler.known_at.clear()
        rig.fs.discovery._dir_etags.clear()
        fh, changed = await rig.fs.open(inos[3], os.O_RDONLY)
        assert changed and await rig.fs.read(fh, 0, 100) == b"v2 from outside"
        fh, changed = await rig.fs.open(inos[4], os.O_RDONLY)  # same listing: no HEAD
        assert not changed

    run(tmp_path, scenario)


def test_a_rename_copy_the_server_could_not_pin_drops_the_clean_bytes(tmp_path):
    """A server that ignores a copy's source condition may copy a newer version than
    the one the mount has cached (written outside between the rename and its copy):
    the renamed file then shows the copy's bytes, never a mix of the two."""
    from s3fuse.store.base import Capabilities

    store = MemoryStore(honour=Capabilities(conditional_put=True, conditional_copy=False,
                                            conditional_delete=True))

    async def scenario(rig: Rig):
        rig.fs.remote.capabilities = store.honour
        await rig.write_file(ROOT_INO, b"a", b"ours, cached")
        await trio.sleep(WINDOW + 5)
        await rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
        store.put("a", b"theirs, written outside after the rename", {})
        assert await rig.flusher.drain(30)
        b = await rig.fs.lookup(ROOT_INO, b"b")
        fh, _ = await rig.fs.open(b.ino, os.O_RDONLY)
        got = await rig.fs.read(fh, 0, 100)
        await rig.fs.release(fh)
        # what the bucket holds at b, and the mount shows the same
        assert got == rig.bucket()["b"] == b"theirs, written outside after the rename"
        assert rig.bucket()["a"] == b"theirs, written outside after the rename"

    run(tmp_path, scenario, store)


def test_readdir_from_position_0_takes_a_fresh_snapshot(tmp_path):
    """rewinddir: a pass from position 0 sees names added and removed since opendir;
    inside one pass the positions are the snapshot's, so a change skips nothing."""

    async def scenario(rig: Rig):
        for name in (b"a", b"b", b"c"):
            await rig.write_file(ROOT_INO, name, b"")
        fh = await rig.fs.opendir(ROOT_INO)

        def names(start: int) -> list[tuple[bytes, int]]:
            return [(n, pos) for n, _, pos in rig.fs.readdir(fh, start)]

        assert names(0) == [(b"a", 1), (b"b", 2), (b"c", 3)]
        await rig.write_file(ROOT_INO, b"aa", b"")
        await rig.fs.unlink(ROOT_INO, b"c")
        assert names(1) == [(b"b", 2)]  # the same pass: its snapshot, less what went
        assert names(0) == [(b"a", 1), (b"aa", 2), (b"b", 3)]  # a new pass
        await rig.write_file(ROOT_INO, b"0", b"")
        assert names(2) == [(b"b", 3)]  # resumed: nothing skipped, nothing repeated
        rig.fs.releasedir(fh)

    run(tmp_path, scenario)


def test_a_rename_during_a_metadata_rewrite_keeps_the_file(tmp_path):
    """A chmod's metadata-only rewrite (a copy of the object onto itself) was in
    flight when the file was renamed: the rename's copy was pinned to the ETag before
    the rewrite, failed, and a file whose bytes were not cached was left with neither
    bytes nor an object (found while reviewing RENAME_EXCHANGE)."""
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"f", b"the bytes")
        await trio.sleep(WINDOW + 5)
        ino = (await rig.fs.lookup(ROOT_INO, b"f")).ino
        rig.cache.remove(ino)  # evicted: not cached any more
        with rig.journal.write() as txn:
            inode = txn.get(ino)
            inode.cached = False
            txn.put(inode)
        gate = trio.Event()
        entered = trio.Event()
        real_copy = rig.fs.remote.copy

        async def copy(src, dst, metadata=None, **kw):
            if src == dst:  # the metadata rewrite: held until the rename is done
                entered.set()
                await gate.wait()
            return await real_copy(src, dst, metadata, **kw)

        rig.fs.remote.copy = copy
        await rig.fs.setattr(ino, SetAttrs(mode=0o600))
        await entered.wait()
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
        gate.set()
        assert await rig.flusher.drain(60)
        assert rig.bucket() == {"g": b"the bytes"}
        fh, _ = await rig.fs.open(ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"the bytes"
        await rig.fs.release(fh)

    run(tmp_path, scenario, NewEtagOnRewrite())


class NewEtagOnRewrite(MemoryStore):
    """A copy of an object onto itself gets a new ETag, as S3 gives a multipart
    object rewritten by CopyObject (the memory store keeps it, as S3 does for a
    single-part one)."""

    def copy(self, src_key, dst_key, metadata=None, *, src_if_match=None):
        etag = super().copy(src_key, dst_key, metadata, src_if_match=src_if_match)
        if src_key != dst_key:
            return etag
        with self._bucket.lock:
            obj = self._bucket.objects[dst_key]
            new = dataclasses.replace(obj, etag=obj.etag + "-2")
            self._bucket.objects[dst_key] = new
        return new.etag


def test_a_renamed_file_whose_version_was_replaced_before_its_copy_goes(tmp_path):
    """Renamed, not cached, and its object rewritten outside before the rename's copy
    ran: that version is nowhere any more, so the new name goes (S3 wins); the old
    name shows the bucket's version. (Before: an entry with neither bytes nor an
    object, whose reads failed.)"""
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"f", b"ours")
        await trio.sleep(WINDOW + 5)
        rig.cache.remove(ino)
        with rig.journal.write() as txn:
            inode = txn.get(ino)
            inode.cached = False
            txn.put(inode)
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
        rig.store.put("f", b"theirs", {})  # before the copy runs
        assert await rig.flusher.drain(60)
        with pytest.raises(FsError):
            await rig.fs.lookup(ROOT_INO, b"g")
        await rig.fs.poll_dir(ROOT_INO)
        f = await rig.fs.lookup(ROOT_INO, b"f")
        fh, _ = await rig.fs.open(f.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"theirs"
        await rig.fs.release(fh)
        assert rig.bucket() == {"f": b"theirs"}

    run(tmp_path, scenario)


def test_pending_age_stays_finite_and_true_through_failed_drains_and_replay(
        tmp_path, monkeypatch):
    """A drain that gives up, or a writer waiting for room, marks files 'due now'; the
    age of the oldest change stays the real one (it used to become Infinity), and a
    replayed change is as old as its last write, not as the new mount."""
    import json

    from s3fuse.errors import TransientStoreError

    store = MemoryStore()

    async def outage(rig: Rig):
        await rig.write_file(ROOT_INO, b"kept", b"data")
        await trio.sleep(5)
        store.inject("put", TransientStoreError("PUT kept: cannot reach the bucket"),
                     times=1000)
        assert not await rig.flusher.drain(3.0)
        st = rig.flusher.pending()
        assert 8 - 0.5 <= st["oldest_pending_age_s"] <= 8 + 0.5, st
        assert st["dirty_files"] == 1 and rig.flusher.errors, st
        assert st["last_error"]["transient"] is True
        json.dumps(st, allow_nan=False)  # raises on Infinity or NaN

    run(tmp_path, outage, store)

    real_time = time.time
    monkeypatch.setattr("s3fuse.flusher.time.time", lambda: real_time() + 3600)

    async def replay():
        rig = Rig(tmp_path, store)
        try:
            age = rig.flusher.pending()["oldest_pending_age_s"]
            assert 3600 <= age < 3600 + 60, age
        finally:
            rig.close()

    trio.run(replay, clock=trio.testing.MockClock(autojump_threshold=0))


def test_versioning_turned_on_while_mounted_makes_the_mount_probe_again(tmp_path):
    """Ceph RGW 16 refuses every If-Match PUT once the bucket's versioning is on. A
    refusal while the bucket holds exactly the ETag the condition named is no conflict:
    the mount probes again and uploads with the fallback (HEAD, then a plain PUT) at
    once, and still keeps an outside change (S3 wins) afterwards."""
    store = MemoryStore(refuse_if_match_when_versioned=True)

    async def scenario(rig: Rig):
        rig.fs.remote.capabilities = store.probe("probe")
        assert rig.fs.remote.capabilities.conditional_put
        ino = await rig.write_file(ROOT_INO, b"f", b"one")
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"f": b"one"}
        store.enable_versioning()
        fh, _ = await rig.fs.open(ino, os.O_WRONLY)
        await rig.fs.write(fh, 0, b"two")
        await rig.fs.release(fh)
        await trio.sleep(WINDOW + 5)  # one window, no backoff
        assert rig.bucket() == {"f": b"two"}
        assert rig.fs.reconciler.conflicts == []
        assert not rig.fs.remote.capabilities.conditional_put
        assert not rig.flusher.errors
        # the fallback still sees an outside change before it uploads
        fh, _ = await rig.fs.open(ino, os.O_WRONLY)  # opened before the change
        store.put("f", b"theirs", {})
        await rig.fs.write(fh, 0, b"ours")
        await rig.fs.release(fh)
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"f": b"theirs"}
        assert rig.fs.reconciler.conflicts[-1]["path"] == "f"

    run(tmp_path, scenario, store)


def test_types_from_listing_a_symlink_found_by_its_headers_gets_a_new_inode(tmp_path):
    """With ``types_from_listing``, readdir calls small objects regular files (no
    HEAD); a lookup reads the headers, and a symlink or FIFO among them takes its
    name with a new inode, the old one (which the kernel may hold as a regular file)
    leaving the path: an open of it answers ESTALE, so the kernel looks again."""
    store = MemoryStore()
    for i in range(20):
        store.put(f"d/f{i:03d}", b"x" * i, {"mode": str(stat.S_IFREG | 0o640)})
    store.put("d/ln", b"f001", {"mode": str(stat.S_IFLNK | 0o777)})
    store.put("d/fifo", b"", {"mode": str(stat.S_IFIFO | 0o620), "uid": "5"})

    async def scenario(rig: Rig):
        rig.fs.discovery.types_from_listing = True
        d = await rig.fs.lookup(ROOT_INO, b"d")
        heads = rig.store.counts["head"]
        shown: dict[bytes, tuple[int, bool]] = {}

        def reply(name: bytes, inode, type_known: bool, _next: int) -> bool:
            shown[name] = (inode.ino, type_known)
            return True

        rig.fs.reply_entries(await rig.fs.opendir(d.ino), 0, reply)
        assert all(known for _, known in shown.values())
        assert rig.store.counts["head"] == heads, "readdir HEADs nothing"
        old_ln, old_fifo = shown[b"ln"][0], shown[b"fifo"][0]
        assert stat.S_ISREG(rig.fs.get(old_ln).mode)
        f = await rig.fs.lookup(d.ino, b"f003")
        assert f.ino == shown[b"f003"][0] and f.mode == stat.S_IFREG | 0o640
        ln = await rig.fs.lookup(d.ino, b"ln")
        assert stat.S_ISLNK(ln.mode) and ln.ino != old_ln
        assert await rig.fs.readlink(ln.ino) == b"f001"
        fifo = await rig.fs.lookup(d.ino, b"fifo")
        assert fifo.mode == stat.S_IFIFO | 0o620 and fifo.uid == 5 and fifo.ino != old_fifo
        # the old inode keeps its type for the kernel, left its path, and opens ESTALE
        old = await rig.fs.stat(old_ln)
        assert stat.S_ISREG(old.mode) and old.nlink == 0
        with pytest.raises(FsError) as exc:
            await rig.fs.open(old_ln, os.O_RDONLY)
        assert exc.value.errno == errno.ESTALE
        # loaded once: a lookup again asks nothing, and the names are those of the bucket
        again = rig.store.counts["head"]
        assert (await rig.fs.lookup(d.ino, b"ln")).ino == ln.ino
        assert rig.store.counts["head"] == again
        names = sorted(n for n, _, _ in rig.fs.readdir(await rig.fs.opendir(d.ino), 0))
        assert names == sorted([f"f{i:03d}".encode() for i in range(20)] + [b"ln", b"fifo"])
        rig.fs.forget([(old_ln, 1), (old_fifo, 1)])
        with rig.journal.read() as txn:
            assert txn.get(old_ln) is None, "the old inode goes with its last lookup"

    run(tmp_path, scenario, store)


def test_types_from_listing_an_exchange_meets_a_symlink_it_had_listed_as_a_file(tmp_path):
    """RENAME_EXCHANGE of a name whose headers were never read: the exchange moves it
    by a server-side copy, and its headers, read at its new name, make it a symlink
    there (the kernel, which had it as a file, drops an inode whose type changes)."""
    store = MemoryStore()
    store.put("ln", b"target", {"mode": str(stat.S_IFLNK | 0o777)})
    store.put("f", b"data", {"mode": str(stat.S_IFREG | 0o600)})

    async def scenario(rig: Rig):
        rig.fs.discovery.types_from_listing = True
        assert len(list(rig.fs.readdir(await rig.fs.opendir(ROOT_INO), 0))) == 2
        await rig.fs.exchange(ROOT_INO, b"ln", ROOT_INO, b"f")
        f = await rig.fs.lookup(ROOT_INO, b"f")
        assert stat.S_ISLNK(f.mode)
        assert await rig.fs.readlink(f.ino) == b"target"
        ln = await rig.fs.lookup(ROOT_INO, b"ln")
        assert ln.mode == stat.S_IFREG | 0o600
        fh, _ = await rig.fs.open(ln.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 10) == b"data"
        await rig.fs.release(fh)
        assert await rig.flusher.drain(60)
        assert store.get("f") == b"target" and store.head("f").metadata["mode"] == str(
            stat.S_IFLNK | 0o777)
        assert store.get("ln") == b"data"

    run(tmp_path, scenario, store)


def test_a_slow_walk_after_readdir_is_not_prefetched_past_the_ttl(tmp_path):
    """``ls -l`` on a loaded host: lookups come every 50 ms. The HEADs run ahead of
    them, but not so far ahead that an entry's attributes are older than the
    metadata TTL when its lookup comes: else each lookup checks it again (one LIST of
    the directory per TTL; on moto, a 5,000-entry directory's LIST took longer than
    the TTL, so a cold ls -l listed it ten times)."""
    store = MemoryStore()
    for i in range(300):
        store.put(f"f{i:03d}", b"", {"mode": str(stat.S_IFREG | 0o640)})

    async def scenario(rig: Rig):
        names = [n for n, _, _ in rig.fs.readdir(await rig.fs.opendir(ROOT_INO), 0)]
        heads, lists = rig.store.counts["head"], rig.store.counts.get("list", 0)
        for name in names:
            inode = await rig.fs.lookup(ROOT_INO, name)
            assert inode.mode == stat.S_IFREG | 0o640
            await trio.sleep(0.05)
        assert rig.store.counts["head"] - heads == 300, "one HEAD per entry, no more"
        assert rig.store.counts.get("list", 0) - lists <= 1, "lookups checked again"

    run(tmp_path, scenario, store)
