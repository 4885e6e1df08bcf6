"""Reading uncached data: pieces, read-ahead, and pieces that arrive too late.

On the in-memory store, with a store that records every ranged GET (and can hold
one back), so each case asserts which bytes were fetched, not only what was read.
"""

from __future__ import annotations

import os


import trio
import trio.testing
from core_rig import Rig

from s3fuse import fetch
from s3fuse.fetch import PIECE_BYTES, Fetcher
from s3fuse.journal import ROOT_INO
from s3fuse.store.faulty import FaultyStore

MIB = 1 << 20


def ranges(store: FaultyStore) -> list[tuple[int, int | None]]:
    """The range of every GET made so far."""
    return [detail for kind, _, detail in store.calls if kind == "get"]


def fetched(store: FaultyStore) -> int:
    return sum((e or 0) - s for s, e in ranges(store))


def body(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (n // 256)


def run(tmp_path, store, scenario, threads: bool = False):
    async def main():
        rig = Rig(tmp_path, store, threads=threads)
        try:
            async with trio.open_nursery() as nursery:
                rig.fs.fetcher.nursery = nursery
                await scenario(rig)
                nursery.cancel_scope.cancel()
        finally:
            rig.close()

    trio.run(main)


async def open_ro(rig: Rig, name: bytes) -> int:
    inode = await rig.fs.lookup(ROOT_INO, name)
    fh, _ = await rig.fs.open(inode.ino, os.O_RDONLY)
    return fh


def test_a_sequential_reader_is_served_in_pieces_fetched_ahead(tmp_path):
    store = FaultyStore()
    data = body(40 * MIB)
    store.put("big", data, {})

    async def scenario(rig: Rig):
        fh = await open_ro(rig, b"big")
        out = bytearray()
        while chunk := await rig.fs.read(fh, len(out), 128 * 1024):
            out += chunk
        assert bytes(out) == data
        # whole pieces, each byte once (read-ahead never fetches twice)
        assert len(ranges(store)) == 5 and fetched(store) == len(data)
        assert all(s % PIECE_BYTES == 0 for s, _ in ranges(store))
        assert rig.fs.get((await rig.fs.lookup(ROOT_INO, b"big")).ino).cached

    run(tmp_path, store, scenario)


def test_reads_of_bytes_fetched_ahead_take_the_short_path_and_the_file_settles(
        tmp_path, monkeypatch):
    """Once a streaming reader's read-ahead has landed, its reads cost a presence
    check, not the piece machinery (which made a 256 MiB read CPU-bound on the event
    loop); the piece that completes the file marks it whole, since no read may come
    through the long path after it."""
    store = FaultyStore()
    data = body(12 * PIECE_BYTES)  # longer than the read-ahead window
    store.put("big", data, {})
    slow_paths = []
    pieces = Fetcher._pieces

    async def counted(self, *args, **kwargs):
        slow_paths.append(args[1:])
        return await pieces(self, *args, **kwargs)

    monkeypatch.setattr(Fetcher, "_pieces", counted)
    # a window shorter than the file, as for a 256 MiB file with the real one
    monkeypatch.setattr(fetch, "MAX_WINDOW_BYTES", 2 * PIECE_BYTES)

    async def scenario(rig: Rig):
        fh = await open_ro(rig, b"big")
        out = bytearray()
        # (up to the last byte, not past it: a read at the end takes the long path,
        # which would settle the file whatever the pieces do)
        while len(out) < len(data):
            out += await rig.fs.read(fh, len(out), MIB)
            await trio.testing.wait_all_tasks_blocked()  # the read-ahead lands first
        assert bytes(out) == data
        assert len(ranges(store)) == 12 and fetched(store) == len(data)
        # (one read per piece moves the read-ahead on; 96 reads in all)
        assert len(slow_paths) <= 16, f"{len(slow_paths)} of {len(out) // MIB} reads"
        assert rig.fs.get((await rig.fs.lookup(ROOT_INO, b"big")).ino).cached

    run(tmp_path, store, scenario)


def test_a_random_read_fetches_only_the_blocks_it_touches(tmp_path):
    store = FaultyStore()
    data = body(40 * MIB)
    store.put("big", data, {})

    async def scenario(rig: Rig):
        fh = await open_ro(rig, b"big")
        at = 30 * MIB + 12345
        assert await rig.fs.read(fh, at, 4096) == data[at:at + 4096]
        assert fetched(store) <= 2 * MIB

    run(tmp_path, store, scenario)


def test_a_piece_that_arrives_after_an_outside_change_is_dropped(tmp_path):
    store = FaultyStore()
    old, new = body(10 * MIB, 1), body(10 * MIB, 2)
    store.put("f", old, {})

    async def scenario(rig: Rig):
        fh = await open_ro(rig, b"f")
        ino = (await rig.fs.lookup(ROOT_INO, b"f")).ino
        gate = store.hold("get", after=True)  # its bytes are old when they arrive
        got: list[bytes] = []

        async def reader():
            got.append(await rig.fs.read(fh, 0, 4096))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await trio.to_thread.run_sync(gate.entered.wait, 10)
            # meanwhile the object is replaced outside, and the mount adopts it
            store.unhold("get")
            store.put("f", new, {})
            rig.fs.reconciler.apply(ino, "f", store.head("f"), rig.fs.reconciler.stamp())
            gate.open()
        # nothing of the old version was cached, so no reader can have seen any of
        # it: the handle goes on with the new version (never a mix of the two)
        assert got == [new[:4096]]
        # the old bytes were not written into the cache of the new version
        fh2 = await open_ro(rig, b"f")
        assert await rig.fs.read(fh2, 0, len(new)) == new

    run(tmp_path, store, scenario, threads=True)


def test_a_piece_that_arrives_after_a_truncate_is_dropped(tmp_path):
    store = FaultyStore()
    store.put("f", body(10 * MIB), {})

    async def scenario(rig: Rig):
        from s3fuse.filesystem import SetAttrs

        fh = await open_ro(rig, b"f")
        ino = (await rig.fs.lookup(ROOT_INO, b"f")).ino
        gate = store.hold("get", after=True)  # its bytes are old when they arrive

        async def reader():
            await rig.fs.read(fh, 0, 4096)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await trio.to_thread.run_sync(gate.entered.wait, 10)
            store.unhold("get")
            await rig.fs.setattr(ino, SetAttrs(size=0))  # whole and local: empty
            wfh, _ = await rig.fs.open(ino, os.O_WRONLY)
            await rig.fs.write(wfh, 0, b"new")
            gate.open()
        assert rig.fs.get(ino).size == 3
        assert rig.cache.read(ino, 0, 1 << 20) == b"new"  # no old bytes after it

    run(tmp_path, store, scenario, threads=True)


def test_reads_a_little_out_of_order_still_count_as_sequential(tmp_path):
    """The kernel sends several reads of one reader at once; they may arrive swapped."""
    store = FaultyStore()
    data = body(40 * MIB)
    store.put("big", data, {})
    chunk = 128 * 1024

    async def scenario(rig: Rig):
        fh = await open_ro(rig, b"big")
        offsets = list(range(0, len(data), chunk))
        for i in range(0, len(offsets) - 1, 2):  # pairs swapped: 1, 0, 3, 2, ...
            offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
        for off in offsets:
            assert await rig.fs.read(fh, off, chunk) == data[off:off + chunk]
        assert len(ranges(store)) == 5 and fetched(store) == len(data)

    run(tmp_path, store, scenario)


def test_a_random_read_of_a_version_replaced_outside_reads_the_new_one(tmp_path):
    """The GET of a read elsewhere in the file (several runs at once) finds its
    version gone: the bucket's version is adopted and read, not an EIO (the failed
    GETs' error used to reach the caller wrapped in an exception group)."""
    store = FaultyStore()
    old, new = body(40 * MIB, 1), body(40 * MIB, 2)
    store.put("f", old, {})

    async def scenario(rig: Rig):
        fh = await open_ro(rig, b"f")
        store.put("f", new, {})  # replaced after the open, before any byte was read
        at = 30 * MIB + 3  # (not near the start: a read of the blocks it touches)
        assert await rig.fs.read(fh, at, 3 * MIB) == new[at:at + 3 * MIB]

    run(tmp_path, store, scenario)


def test_parallel_readers_have_up_to_ten_gets_in_flight(tmp_path):
    """A data loader's 8 workers, each reading its own file: 8 GETs at once (the old
    limit was 6), and a sequential reader keeps 10 in flight, as boto3 does."""
    store = FaultyStore()
    files = {b"f%d" % i: body(MIB, i) for i in range(8)}
    for name, data in files.items():
        store.put(name.decode(), data, {})
    store.put("big", body(20 * PIECE_BYTES), {})
    store.slow("get", 0.3)

    async def scenario(rig: Rig):
        async def read_one(name: bytes) -> None:
            fh = await open_ro(rig, name)
            assert await rig.fs.read(fh, 0, 2 * MIB) == files[name]

        async with trio.open_nursery() as nursery:
            for name in files:
                nursery.start_soon(read_one, name)
        assert store.most_active == 8
        store.most_active = 0
        fh = await open_ro(rig, b"big")
        offset = 0
        while offset < 12 * PIECE_BYTES:
            offset += len(await rig.fs.read(fh, offset, 1 * MIB))
        assert store.most_active == 10

    run(tmp_path, store, scenario, threads=True)
