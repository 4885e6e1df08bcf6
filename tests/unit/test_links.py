"""Hard links in the core: one inode, one object per name, updated together.

On the in-memory store with trio's MockClock, so every case asserts what reached the
bucket and how many requests it took, then runs fsck over the journal and the bucket.
The same behaviours are exercised through a real mount in tests/fuse/test_links.py.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio
import trio.testing
from fsck_helper import assert_journal_clean
from core_rig import WINDOW, Rig, delta, drive, replayed

from s3fuse.errors import FsError
from s3fuse.filesystem import SetAttrs
from s3fuse.journal import ROOT_INO
from s3fuse.store.memory import MemoryStore


async def settle(rig: Rig) -> None:
    await trio.sleep(WINDOW + 5)


async def read(rig: Rig, parent: int, name: bytes) -> bytes:
    inode = await rig.fs.lookup(parent, name)
    fh, _ = await rig.fs.open(inode.ino, os.O_RDONLY)
    try:
        return await rig.fs.read(fh, 0, 1 << 20)
    finally:
        await rig.fs.release(fh)


async def write(rig: Rig, ino: int, data: bytes) -> None:
    fh, _ = await rig.fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await rig.fs.write(fh, 0, data)
    await rig.fs.release(fh)


def test_each_name_is_an_object_with_the_same_bytes_and_attributes(tmp_path):
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 1000, 1000)
        ino = await rig.write_file(ROOT_INO, b"a", b"payload")
        linked = await rig.fs.link(ino, d.ino, b"b")
        assert linked.ino == ino and linked.nlink == 2
        assert (await rig.fs.lookup(d.ino, b"b")).ino == ino
        await settle(rig)
        snap = rig.store.snapshot()
        assert snap["a"][0] == snap["d/b"][0] == b"payload"
        assert snap["a"][1]["mode"] == snap["d/b"][1]["mode"]
        # one write through the inode reaches every name
        before = rig.counts()
        await write(rig, ino, b"second")
        await settle(rig)
        assert delta(rig, before) == {"put": 2, "copy": 0, "delete": 0}
        assert rig.bucket() == {"a": b"second", "d/": b"", "d/b": b"second"}
        # so does an attribute change: a metadata rewrite of each object
        before = rig.counts()
        await rig.fs.setattr(ino, SetAttrs(mode=0o600))
        await settle(rig)
        assert delta(rig, before) == {"put": 0, "copy": 2, "delete": 0}
        snap = rig.store.snapshot()
        assert snap["a"][1]["mode"] == snap["d/b"][1]["mode"] == str(stat.S_IFREG | 0o600)

    drive(tmp_path, scenario)


@pytest.mark.parametrize("which", [b"a", b"b"])
def test_unlink_of_one_name_deletes_only_its_object(tmp_path, which):
    other = b"b" if which == b"a" else b"a"

    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"a", b"data")
        await rig.fs.link(ino, ROOT_INO, b"b")
        await settle(rig)
        before = rig.counts()
        await rig.fs.unlink(ROOT_INO, which)
        assert rig.fs.get(ino).nlink == 1
        await settle(rig)
        # the unlink also moved ctime: the name left gets it in a metadata rewrite
        assert delta(rig, before) == {"put": 0, "copy": 1, "delete": 1}
        assert rig.bucket() == {other.decode(): b"data"}
        # the inode lives on under the other name, and uploads there
        before = rig.counts()
        await write(rig, ino, b"after")
        await settle(rig)
        assert delta(rig, before) == {"put": 1, "copy": 0, "delete": 0}
        assert rig.bucket() == {other.decode(): b"after"}
        assert await read(rig, ROOT_INO, other) == b"after"

    drive(tmp_path, scenario)


def test_unlink_of_every_name_leaves_nothing(tmp_path):
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"a", b"data")
        await rig.fs.link(ino, ROOT_INO, b"b")
        await rig.fs.link(ino, ROOT_INO, b"c")
        await settle(rig)
        assert set(rig.bucket()) == {"a", "b", "c"}
        for name in (b"b", b"a", b"c"):
            await rig.fs.unlink(ROOT_INO, name)
        await settle(rig)
        assert rig.bucket() == {}

    drive(tmp_path, scenario)


def test_link_and_unlink_inside_one_window_cost_nothing_extra(tmp_path):
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"a", b"data")
        await rig.fs.link(ino, ROOT_INO, b"tmp")
        await rig.fs.unlink(ROOT_INO, b"a")  # git's "link, then unlink the old name"
        await settle(rig)
        assert rig.counts() == {"put": 1, "copy": 0, "delete": 0}
        assert rig.bucket() == {"tmp": b"data"}

    drive(tmp_path, scenario)


def test_rename_of_a_linked_name_moves_only_that_object(tmp_path):
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 1000, 1000)
        ino = await rig.write_file(ROOT_INO, b"a", b"data")
        await rig.fs.link(ino, ROOT_INO, b"b")
        await settle(rig)
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"b", d.ino, b"moved")
        await settle(rig)
        assert delta(rig, before) == {"put": 0, "copy": 1, "delete": 1}
        assert rig.bucket() == {"a": b"data", "d/": b"", "d/moved": b"data"}
        assert (await rig.fs.lookup(d.ino, b"moved")).ino == ino
        # rename onto another name of the same file does nothing (POSIX)
        await rig.fs.rename(ROOT_INO, b"a", d.ino, b"moved")
        assert rig.fs.get(ino).nlink == 2
        assert (await rig.fs.lookup(ROOT_INO, b"a")).ino == ino

    drive(tmp_path, scenario)


def test_rename_over_a_linked_name_replaces_that_name_only(tmp_path):
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"a", b"old")
        await rig.fs.link(ino, ROOT_INO, b"b")
        new = await rig.write_file(ROOT_INO, b"new", b"replacement")
        await settle(rig)
        await rig.fs.rename(ROOT_INO, b"new", ROOT_INO, b"a")
        assert rig.fs.get(ino).nlink == 1
        assert (await rig.fs.lookup(ROOT_INO, b"a")).ino == new
        await settle(rig)
        assert rig.bucket() == {"a": b"replacement", "b": b"old"}
        assert await read(rig, ROOT_INO, b"b") == b"old"

    drive(tmp_path, scenario)


def test_directory_rename_moves_every_name_below_it(tmp_path):
    async def scenario(rig: Rig):
        src = await rig.fs.mkdir(ROOT_INO, b"src", 0o755, 1000, 1000)
        ino = await rig.write_file(src.ino, b"one", b"1")
        await rig.fs.link(ino, src.ino, b"two")
        await rig.fs.link(ino, ROOT_INO, b"outside")
        await settle(rig)
        await rig.fs.rename(ROOT_INO, b"src", ROOT_INO, b"dst")
        await settle(rig)
        assert rig.bucket() == {"dst/": b"", "dst/one": b"1", "dst/two": b"1",
                                "outside": b"1"}
        await write(rig, ino, b"2")
        await settle(rig)
        assert rig.bucket() == {"dst/": b"", "dst/one": b"2", "dst/two": b"2",
                                "outside": b"2"}

    drive(tmp_path, scenario)


def test_linking_a_file_known_only_from_the_bucket(tmp_path):
    store = MemoryStore()
    store.put("remote.bin", b"R" * 5000, {})

    async def scenario(rig: Rig):
        f = await rig.fs.lookup(ROOT_INO, b"remote.bin")
        assert not f.cached
        await rig.fs.link(f.ino, ROOT_INO, b"copy.bin")
        # the original name goes before the new one is uploaded: the bytes must
        # still be there for it
        await rig.fs.unlink(ROOT_INO, b"remote.bin")
        await settle(rig)
        assert rig.bucket() == {"copy.bin": b"R" * 5000}

    drive(tmp_path, scenario, store)


def test_link_errors(tmp_path):
    async def scenario(rig: Rig):
        d = await rig.fs.mkdir(ROOT_INO, b"d", 0o755, 1000, 1000)
        ino = await rig.write_file(ROOT_INO, b"f", b"x")
        await rig.write_file(ROOT_INO, b"g", b"y")
        cases = [((d.ino, ROOT_INO, b"dlink"), errno.EPERM),
                 ((ino, ROOT_INO, b"g"), errno.EEXIST),
                 ((ino, ino, b"under-a-file"), errno.ENOTDIR),
                 ((ino, ROOT_INO, b"n" * 256), errno.ENAMETOOLONG)]
        for args, want in cases:
            with pytest.raises(FsError) as exc:
                await rig.fs.link(*args)
            assert exc.value.errno == want, args
        gone = await rig.fs.mkdir(ROOT_INO, b"gone", 0o755, 1000, 1000)
        await rig.fs.rmdir(ROOT_INO, b"gone")
        with pytest.raises(FsError) as exc:
            await rig.fs.link(ino, gone.ino, b"x")
        assert exc.value.errno == errno.ENOENT
        assert rig.fs.get(ino).nlink == 1

    drive(tmp_path, scenario)


def test_outside_change_of_one_name_splits_it_off(tmp_path):
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"a", b"ours")
        await rig.fs.link(ino, ROOT_INO, b"b")
        await settle(rig)
        rig.store.put("b", b"theirs", {})
        await rig.fs.poll_dir(ROOT_INO)
        assert rig.fs.get(ino).nlink == 1
        b = await rig.fs.lookup(ROOT_INO, b"b")
        assert b.ino != ino
        assert await read(rig, ROOT_INO, b"b") == b"theirs"
        assert await read(rig, ROOT_INO, b"a") == b"ours"
        # the primary name deleted outside: the file keeps its other name
        await rig.fs.link(ino, ROOT_INO, b"c")
        await settle(rig)
        rig.store.delete("a")
        await rig.fs.poll_dir(ROOT_INO)
        with pytest.raises(FsError):
            await rig.fs.lookup(ROOT_INO, b"a")
        assert rig.fs.get(ino).nlink == 1
        await write(rig, ino, b"ours again")
        await settle(rig)
        assert rig.bucket() == {"b": b"theirs", "c": b"ours again"}

    drive(tmp_path, scenario)


def test_links_survive_a_crash_and_are_uploaded_on_replay(tmp_path):
    store = MemoryStore()

    async def before_crash():
        rig = Rig(tmp_path, store)
        ino = await rig.write_file(ROOT_INO, b"a", b"data")
        await rig.fs.link(ino, ROOT_INO, b"b")
        rig.close()  # no drain: as if killed

    async def after_restart():
        rig = await replayed(tmp_path, store)
        assert rig.bucket() == {"a": b"data", "b": b"data"}
        a = await rig.fs.lookup(ROOT_INO, b"a")
        assert (await rig.fs.lookup(ROOT_INO, b"b")).ino == a.ino and a.nlink == 2
        assert_journal_clean(rig.journal, tmp_path, store)
        rig.close()

    trio.run(before_crash, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(after_restart, clock=trio.testing.MockClock(autojump_threshold=0))


def test_first_name_removed_while_the_next_names_copy_is_pending(tmp_path):
    """The promoted record takes over the pending copy: reads of the evicted file
    still find its bytes at the copy's source until the copy has run."""

    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"a", b"bytes")
        await rig.fs.link(ino, ROOT_INO, b"b")
        await settle(rig)
        await rig.fs.rename(ROOT_INO, b"b", ROOT_INO, b"c")  # a copy b -> c, pending
        await rig.fs.unlink(ROOT_INO, b"a")  # c's record becomes the inode's own
        assert rig.flusher.pending_copy_source(ino) == ("b", rig.store.head("b").etag)
        # evicted (one name left, clean): the next read goes to the bucket
        with rig.journal.write() as txn:
            inode = txn.get(ino)
            inode.cached = False
            txn.put(inode)
        rig.cache.remove(ino)
        assert await read(rig, ROOT_INO, b"c") == b"bytes"
        await settle(rig)
        assert rig.bucket() == {"c": b"bytes"}
        assert rig.fs.get(ino).remote_etag == rig.store.head("c").etag

    drive(tmp_path, scenario)
