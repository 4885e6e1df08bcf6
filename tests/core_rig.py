"""The core on an in-memory store, without FUSE, for the unit tests: ``Rig`` (a
filesystem and its flusher in one cache directory), and the ways to drive one.

Shared by the test modules of tests/unit (which import it, never each other).
"""

from __future__ import annotations


import trio
import trio.testing
from fsck_helper import assert_journal_clean

from s3fuse.cache import Cache
from s3fuse.filesystem import Defaults, Filesystem
from s3fuse.flusher import Flusher
from s3fuse.journal import ROOT_INO, Journal
from s3fuse.remote import Remote
from s3fuse.store.memory import MemoryStore

WINDOW = 60.0


class Rig:
    """A filesystem + flusher over a MemoryStore, in one cache directory."""

    def __init__(self, tmp_path, store: MemoryStore | None = None, prefix: str = "",
                 threads: bool = False) -> None:
        """``threads``: store calls run in real worker threads (so that they really
        overlap), instead of inline."""
        self.tmp_path = tmp_path
        self.store = store if store is not None else MemoryStore()
        self.journal = Journal(str(tmp_path / "journal"))
        self.cache = Cache(str(tmp_path), 1 << 30, inline=not threads)
        remote = Remote(self.store) if threads else Remote(self.store, inline=True)
        self.fs = Filesystem(self.journal, self.cache, remote, prefix,
                             Defaults(uid=1000, gid=1000))
        self.fs.init()
        self.flusher = Flusher(self.fs.ns, self.fs.flusher_links(), WINDOW, instance_id="test")
        self.fs.flusher = self.flusher
        self.flusher.load()

    def close(self) -> None:
        self.cache.close_all()
        self.journal.close()

    def counts(self) -> dict[str, int]:
        c = self.store.counts
        return {k: c.get(k, 0) for k in ("put", "copy", "delete")}

    def bucket(self) -> dict[str, bytes]:
        return {k: v[0] for k, v in self.store.snapshot().items()}

    async def write_file(self, parent: int, name: bytes, data: bytes) -> int:
        fh, inode = await self.fs.create(parent, name, 0o644, 1000, 1000)
        await self.fs.write(fh, 0, data)
        await self.fs.release(fh)
        return inode.ino


def run(tmp_path, scenario, store: MemoryStore | None = None):
    """Run ``scenario(rig)`` with the flusher running, on a MockClock."""

    async def main():
        rig = Rig(tmp_path, store)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                await scenario(rig)
                nursery.cancel_scope.cancel()
            # as every mount test does: fsck finds the journal and the bucket in order
            # (work may still be pending, no kernel sends FORGET here, and tests that
            # play an outside writer leave objects the mount has not listed yet)
            assert_journal_clean(rig.journal, tmp_path, rig.store,
                                 allow=["unlinked-inode", "new-outside"], allow_pending=True)
        finally:
            rig.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def replayed(tmp_path, store: MemoryStore) -> Rig:
    """A Rig on the journal a "killed" Rig left in ``tmp_path``, after its flusher
    has replayed and drained everything pending (the caller closes it)."""
    rig = Rig(tmp_path, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.flusher.run)
        assert await rig.flusher.drain(30)
        nursery.cancel_scope.cancel()
    return rig


def drive(tmp_path, scenario, store: MemoryStore | None = None) -> MemoryStore:
    """Run ``scenario(rig)`` with the flusher running, drain, check with fsck."""
    store = store if store is not None else MemoryStore()

    async def main():
        rig = Rig(tmp_path, store)
        rig.journal.set_meta(b"instance", b"test")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                await scenario(rig)
                assert await rig.flusher.drain(60)
                nursery.cancel_scope.cancel()
            # (no kernel here sends FORGET: unlinked inodes keep their lookup counts)
            assert_journal_clean(rig.journal, tmp_path, store, allow=["unlinked-inode"])
        finally:
            rig.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return store


def delta(rig: Rig, before: dict[str, int]) -> dict[str, int]:
    after = rig.counts()
    return {k: after[k] - before[k] for k in after}


async def upload_in_flight(tmp_path, store, during, data: bytes = b"payload"):
    """Write ``f`` on a rig over ``store`` (a ``FaultyStore``), hold its upload in
    flight, run ``during(rig)``, let the upload go on, drain. Returns the rig's
    (bucket, request counts, flusher counts, store snapshot) at the end."""
    gate = store.hold("put")
    rig = Rig(tmp_path, store, threads=True)  # the upload really is in flight
    rig.flusher.window_s = 0.01
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.flusher.run)
            await rig.write_file(ROOT_INO, b"f", data)
            assert await trio.to_thread.run_sync(gate.entered.wait, 10)
            await during(rig)
            store.unhold("put")
            gate.open()
            assert await rig.flusher.drain(10)
            nursery.cancel_scope.cancel()
        return rig.bucket(), rig.counts(), dict(rig.flusher.counts), rig.store.snapshot()
    finally:
        rig.close()
