"""RENAME_EXCHANGE in the core: one journal transaction, and the bucket follows.

On the in-memory store with trio's MockClock: each case asserts what reached the
bucket, how many requests it took (two clean files trade keys with one server-side
copy and one PUT of the local side; dirty files are just uploaded under their new
keys; no object of s3fuse's own ever appears), then runs fsck over the journal and
the bucket. The same behaviours are exercised through a real mount in
tests/fuse/test_ops.py and tests/crash/test_crash_points.py.
"""

from __future__ import annotations

import errno
import stat

import pytest
import trio
import trio.testing
from fsck_helper import assert_journal_clean
from core_rig import WINDOW, Rig, delta, drive, replayed

from s3fuse.errors import FsError
from s3fuse.rename import RENAME_EXCHANGE, RENAME_NOREPLACE
from s3fuse.oplog import record
from s3fuse.journal import DIRTY_DATA, ROOT_INO
from s3fuse.store.faulty import FaultyStore
from s3fuse.store.memory import MemoryStore

RENAME_WHITEOUT = 4


async def read_all(rig: Rig, parent: int, name: bytes) -> bytes:
    inode = await rig.fs.lookup(parent, name)
    fh, _ = await rig.fs.open(inode.ino, 0)
    try:
        return await rig.fs.read(fh, 0, 1 << 20)
    finally:
        await rig.fs.release(fh)


def ops(rig: Rig) -> list[dict]:
    """The pending ops, as the journal stores them."""
    with rig.journal.read() as txn:
        return [record(op) for _, op in txn.ops()]


def test_two_clean_files_trade_keys_with_one_copy_and_one_put(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"a", b"the longer one, A")
        await rig.write_file(ROOT_INO, b"b", b"short B")
        await trio.sleep(WINDOW + 5)
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
        # the copy will overwrite the local side's old object: the journal (and that
        # side's cache file) are on disk before it can run
        assert not rig.journal.unsynced
        # the mount sees the swap at once, before any request
        assert await read_all(rig, ROOT_INO, b"a") == b"short B"
        assert await read_all(rig, ROOT_INO, b"b") == b"the longer one, A"
        # the larger side is copied server-side, pinned; the smaller (cached) side
        # goes up from local bytes after the copy has read its old key
        assert [(o["op"], o["src"], o["dst"]) for o in ops(rig)] == [("copy", "a", "b")]
        await trio.sleep(WINDOW + 5)
        assert delta(rig, before) == {"put": 1, "copy": 1, "delete": 0}
        assert rig.bucket() == {"a": b"short B", "b": b"the longer one, A"}

    drive(tmp_path, scenario)


def test_two_uncached_clean_files_fetch_the_smaller_one_first(tmp_path):
    store = MemoryStore()
    store.put("big", b"B" * 5000, {})
    store.put("small", b"s" * 10, {})

    async def scenario(rig: Rig):
        gets = store.counts.get("get", 0)
        await rig.fs.rename(ROOT_INO, b"big", ROOT_INO, b"small", RENAME_EXCHANGE)
        assert store.counts.get("get", 0) == gets + 1  # the small one, once
        assert [(o["op"], o["src"], o["dst"]) for o in ops(rig)] == [
            ("copy", "big", "small")]
        await trio.sleep(WINDOW + 5)
        assert rig.counts() == {"put": 2 + 1, "copy": 1, "delete": 0}  # (2 set-up puts)
        assert rig.bucket() == {"big": b"s" * 10, "small": b"B" * 5000}
        assert await read_all(rig, ROOT_INO, b"small") == b"B" * 5000

    drive(tmp_path, scenario, store)


def test_a_dirty_file_with_a_clean_one_is_its_own_upload_and_one_copy(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"old", b"uploaded")
        await trio.sleep(WINDOW + 5)
        await rig.write_file(ROOT_INO, b"new", b"written just now")
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"new", ROOT_INO, b"old", RENAME_EXCHANGE)
        await trio.sleep(WINDOW + 5)
        # the dirty file's upload (due anyway) is the only PUT
        assert delta(rig, before) == {"put": 1, "copy": 1, "delete": 0}
        assert rig.bucket() == {"old": b"written just now", "new": b"uploaded"}

    drive(tmp_path, scenario)


def test_two_dirty_files_need_no_op_at_all(tmp_path):
    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"a", b"AAA")
        await trio.sleep(WINDOW + 5)
        inode = await rig.fs.lookup(ROOT_INO, b"a")
        fh, _ = await rig.fs.open(inode.ino, 1)
        await rig.fs.write(fh, 0, b"aaa")  # dirty again, with an object
        await rig.fs.release(fh)
        await rig.write_file(ROOT_INO, b"b", b"BBB")  # dirty, no object yet
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
        assert ops(rig) == []
        assert rig.journal.unsynced  # nothing overwritten by an op: no forced sync
        await trio.sleep(WINDOW + 5)
        assert delta(rig, before) == {"put": 2, "copy": 0, "delete": 0}
        assert rig.bucket() == {"a": b"BBB", "b": b"aaa"}

    drive(tmp_path, scenario)


async def make_tree(rig: Rig, parent: int, name: bytes, files: dict[str, bytes]) -> int:
    """A directory with ``files`` ({"sub/name": bytes}) below it; returns its ino."""
    top = (await rig.fs.mkdir(parent, name, 0o755, 1000, 1000)).ino
    for rel, body in files.items():
        d = top
        *dirs, leaf = rel.split("/")
        for part in dirs:
            try:
                d = (await rig.fs.lookup(d, part.encode())).ino
            except FsError:
                d = (await rig.fs.mkdir(d, part.encode(), 0o755, 1000, 1000)).ino
        await rig.write_file(d, leaf.encode(), body)
    return top


def test_two_directories_trade_their_trees(tmp_path):
    left = {"common": b"left common, longer", "only-left": b"L", "sub/deep": b"left deep",
            "same-name-other-kind": b"a file on the left"}
    right = {"common": b"right common", "only-right": b"R", "sub/deep": b"right deep!",
             "sub/more": b"more", "same-name-other-kind/x": b"a dir on the right"}

    async def scenario(rig: Rig):
        await make_tree(rig, ROOT_INO, b"left", left)
        await make_tree(rig, ROOT_INO, b"right", right)
        await trio.sleep(WINDOW + 5)
        before = rig.counts()
        markers = {"left/": b"", "right/": b"", "left/sub/": b"", "right/sub/": b""}
        assert rig.bucket() == {**{"left/" + k: v for k, v in left.items()},
                                **{"right/" + k: v for k, v in right.items()},
                                **markers, "right/same-name-other-kind/": b""}
        await rig.fs.rename(ROOT_INO, b"left", ROOT_INO, b"right", RENAME_EXCHANGE)
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {**{"right/" + k: v for k, v in left.items()},
                                **{"left/" + k: v for k, v in right.items()},
                                **markers, "left/same-name-other-kind/": b""}
        # file pairs (common, sub/deep): a copy and a PUT each; marker pairs (the two
        # tops, the two sub/): rewritten in place, a PUT each; the 4 files without a
        # partner move by copy and delete; the file that meets a directory, and the
        # marker of that directory, by delete and PUT
        assert delta(rig, before) == {"put": 2 + 4 + 1 + 1, "copy": 2 + 4,
                                      "delete": 4 + 1 + 1}
        right_ino = (await rig.fs.lookup(ROOT_INO, b"right")).ino
        assert await read_all(rig, right_ino, b"only-left") == b"L"

    drive(tmp_path, scenario)


def test_a_file_and_a_directory_trade_places(tmp_path):
    async def scenario(rig: Rig):
        d = await make_tree(rig, ROOT_INO, b"d", {"inner": b"in the dir"})
        sub = await rig.fs.mkdir(ROOT_INO, b"sub", 0o755, 1000, 1000)
        await rig.write_file(sub.ino, b"f", b"a file")
        await trio.sleep(WINDOW + 5)
        nlink_root, nlink_sub = rig.fs.get(ROOT_INO).nlink, rig.fs.get(sub.ino).nlink
        await rig.fs.rename(ROOT_INO, b"d", sub.ino, b"f", RENAME_EXCHANGE)
        # the directory moved from the root into sub: one subdirectory link moves too
        assert rig.fs.get(ROOT_INO).nlink == nlink_root - 1
        assert rig.fs.get(sub.ino).nlink == nlink_sub + 1
        assert rig.fs.get(d).parent == sub.ino
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"d": b"a file", "sub/": b"", "sub/f/": b"",
                                "sub/f/inner": b"in the dir"}
        assert stat.S_ISREG((await rig.fs.lookup(ROOT_INO, b"d")).mode)

    drive(tmp_path, scenario)


def test_empty_directories_trade_their_markers(tmp_path):
    async def scenario(rig: Rig):
        await rig.fs.mkdir(ROOT_INO, b"x", 0o700, 1000, 1000)
        await rig.fs.mkdir(ROOT_INO, b"y", 0o755, 1000, 1000)
        await trio.sleep(WINDOW + 5)
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"x", ROOT_INO, b"y", RENAME_EXCHANGE)
        await trio.sleep(WINDOW + 5)
        # each marker is rewritten in place with the other's attributes
        assert delta(rig, before) == {"put": 2, "copy": 0, "delete": 0}
        snap = rig.store.snapshot()
        assert stat.S_IMODE(int(snap["y/"][1]["mode"])) == 0o700
        assert stat.S_IMODE(int(snap["x/"][1]["mode"])) == 0o755

    drive(tmp_path, scenario)


def test_errors_change_nothing(tmp_path):
    async def scenario(rig: Rig):
        d = await make_tree(rig, ROOT_INO, b"d", {"sub/f": b"f"})
        await rig.write_file(ROOT_INO, b"g", b"g")
        sub = (await rig.fs.lookup(d, b"sub")).ino
        await trio.sleep(WINDOW + 5)
        before_bucket, before_counts = rig.bucket(), rig.counts()
        cases = [
            ((ROOT_INO, b"g", ROOT_INO, b"missing", RENAME_EXCHANGE), errno.ENOENT),
            ((ROOT_INO, b"missing", ROOT_INO, b"g", RENAME_EXCHANGE), errno.ENOENT),
            ((ROOT_INO, b"d", sub, b"f", RENAME_EXCHANGE), errno.EINVAL),  # into itself
            ((sub, b"f", ROOT_INO, b"d", RENAME_EXCHANGE), errno.EINVAL),
            ((ROOT_INO, b"g", ROOT_INO, b"d", RENAME_EXCHANGE | RENAME_NOREPLACE),
             errno.EINVAL),
            ((ROOT_INO, b"g", ROOT_INO, b"h", RENAME_WHITEOUT), errno.EINVAL),
            ((ROOT_INO, b"g", ROOT_INO, b"h", 1 << 7), errno.EINVAL),
        ]
        for args, err in cases:
            with pytest.raises(FsError) as exc:
                await rig.fs.rename(*args)
            assert exc.value.errno == err, args
        with rig.journal.read() as txn:
            assert sorted(n for n, _ in txn.children(ROOT_INO)) == [b"d", b"g"]
        assert ops(rig) == []
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == before_bucket and rig.counts() == before_counts

    drive(tmp_path, scenario)


def test_two_names_of_one_file_exchange_to_nothing(tmp_path):
    async def scenario(rig: Rig):
        ino = await rig.write_file(ROOT_INO, b"one", b"shared")
        await rig.fs.link(ino, ROOT_INO, b"two")
        await trio.sleep(WINDOW + 5)
        before = rig.counts()
        await rig.fs.rename(ROOT_INO, b"one", ROOT_INO, b"two", RENAME_EXCHANGE)
        await trio.sleep(WINDOW + 5)
        assert rig.counts() == before
        assert rig.bucket() == {"one": b"shared", "two": b"shared"}

    drive(tmp_path, scenario)


def test_exchange_after_a_rename_whose_copy_is_pending(tmp_path):
    """The copied side's own object is still coming from a pending copy: the ops run
    in order, and every ETag lands where it belongs."""

    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"src", b"first, uploaded")
        await rig.write_file(ROOT_INO, b"other", b"second")
        await trio.sleep(WINDOW + 5)
        await rig.fs.rename(ROOT_INO, b"src", ROOT_INO, b"moved")
        await rig.fs.rename(ROOT_INO, b"moved", ROOT_INO, b"other", RENAME_EXCHANGE)
        await trio.sleep(WINDOW + 5)
        assert rig.bucket() == {"moved": b"second", "other": b"first, uploaded"}

    drive(tmp_path, scenario)


def test_exchange_while_an_upload_is_in_flight(tmp_path):
    store = FaultyStore()

    async def main():
        rig = Rig(tmp_path, store, threads=True)  # the upload really is in flight
        rig.journal.set_meta(b"instance", b"test")
        rig.flusher.window_s = 0.01
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                await rig.write_file(ROOT_INO, b"g", b"clean one")
                assert await rig.flusher.drain(10)
                gate = store.hold("put")
                await rig.write_file(ROOT_INO, b"f", b"in flight")
                assert await trio.to_thread.run_sync(gate.entered.wait, 10)
                await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g", RENAME_EXCHANGE)
                gate.open()
                assert await rig.flusher.drain(10)
                nursery.cancel_scope.cancel()
            assert rig.bucket() == {"f": b"clean one", "g": b"in flight"}
            assert_journal_clean(rig.journal, tmp_path, store)
        finally:
            rig.close()

    trio.run(main)


def test_a_crash_after_the_exchange_replays_to_the_swapped_bucket(tmp_path):
    store = MemoryStore()

    async def before_crash():
        rig = Rig(tmp_path, store)
        rig.journal.set_meta(b"instance", b"test")
        await make_tree(rig, ROOT_INO, b"d", {"x": b"dx", "y": b"dy"})
        await make_tree(rig, ROOT_INO, b"e", {"x": b"ex, longer"})
        await rig.write_file(ROOT_INO, b"f", b"f clean")
        await rig.write_file(ROOT_INO, b"g", b"g clean, longer")
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            assert await rig.flusher.drain(60)
            nursery.cancel_scope.cancel()
        await rig.fs.rename(ROOT_INO, b"d", ROOT_INO, b"e", RENAME_EXCHANGE)
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g", RENAME_EXCHANGE)
        with rig.journal.read() as txn:
            dirty = txn.dirty_inos()
        assert any(rig.fs.get(i).dirty & DIRTY_DATA for i in dirty)
        rig.close()  # no drain: as if killed

    async def after_restart():
        rig = await replayed(tmp_path, store)
        try:
            assert rig.bucket() == {"d/": b"", "e/": b"", "e/x": b"dx", "e/y": b"dy",
                                    "d/x": b"ex, longer",
                                    "g": b"f clean", "f": b"g clean, longer"}
            assert_journal_clean(rig.journal, tmp_path, store)
        finally:
            rig.close()

    trio.run(before_crash, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(after_restart, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_file_and_a_directory_trade_places_on_a_store_of_paths(tmp_path):
    """On ``file://`` a key ``K`` and keys under ``K/`` cannot coexist: the file's old
    object is deleted first and the file uploaded once the directory has moved away,
    so the two moves never wait on each other."""
    from s3fuse.store.file import FileStore

    root = tmp_path / "bucket"
    root.mkdir()
    store = FileStore(str(root), durable=False)

    async def main():
        rig = Rig(tmp_path / "mount", store)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                left = await make_tree(rig, ROOT_INO, b"left", {"x": b"file x",
                                                               "y/inner": b"in y"})
                await make_tree(rig, ROOT_INO, b"right", {"x/inner": b"in x",
                                                          "y": b"file y"})
                await rig.write_file(ROOT_INO, b"f", b"top file")
                await make_tree(rig, ROOT_INO, b"d", {"sub/g": b"g"})
                assert await rig.flusher.drain(60)
                await rig.fs.rename(ROOT_INO, b"left", ROOT_INO, b"right",
                                    RENAME_EXCHANGE)
                await rig.fs.rename(ROOT_INO, b"d", ROOT_INO, b"f", RENAME_EXCHANGE)
                assert rig.fs.get(left).name == "right"
                assert await rig.flusher.drain(120)
                assert not rig.flusher.errors or all(
                    e.operation in ("put", "copy") for e in rig.flusher.errors)
                nursery.cancel_scope.cancel()
            objects = {o.key: store.get(o.key)
                       for o in store.list("", None).objects if not o.key.endswith("/")}
            assert objects == {"right/x": b"file x", "right/y/inner": b"in y",
                               "left/x/inner": b"in x", "left/y": b"file y",
                               "d": b"top file", "f/sub/g": b"g"}
        finally:
            rig.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_fuse_adapter_passes_on_flags_it_does_not_know_for_the_core_to_refuse(tmp_path):
    import pyfuse3

    from s3fuse.fuse_ops import FuseOps

    async def scenario(rig: Rig):
        await rig.write_file(ROOT_INO, b"a", b"A")
        await rig.write_file(ROOT_INO, b"b", b"B")
        ops = FuseOps(rig.fs, 1.0)
        for flags in (RENAME_WHITEOUT, 1 << 7, RENAME_WHITEOUT | pyfuse3.RENAME_EXCHANGE):
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await ops.rename(ROOT_INO, b"a", ROOT_INO, b"c", flags, None)
            assert exc.value.errno == errno.EINVAL
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.rename(ROOT_INO, b"a", ROOT_INO, b"b", pyfuse3.RENAME_NOREPLACE, None)
        assert exc.value.errno == errno.EEXIST
        await ops.rename(ROOT_INO, b"a", ROOT_INO, b"b", pyfuse3.RENAME_EXCHANGE, None)
        assert await read_all(rig, ROOT_INO, b"a") == b"B"

    drive(tmp_path, scenario)
