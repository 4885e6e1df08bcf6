"""Interleavings of the core, deterministic: the S3-wins rule under concurrency.

A writer on the mount (appends through an O_APPEND handle whose kernel-side offset is
the size it saw at open, and temp-file rewrites renamed over the path), the flusher,
the poller and close-to-open checks run as trio tasks on a MockClock, against the
in-memory store. An outside writer acts *between* store requests: before the n-th
request the mount makes, hypothesis decides whether it appends a line (a conditional
read-modify-write, as a pipeline would) or deletes the object. Hypothesis also draws
the writer's operations and pauses, and the seed of trio's scheduler, so a failure
shrinks to a short, replayable story; each one found is kept below as a named
regression test.

The rule checked: every acknowledged line is in the bucket or in a lost+found copy,
no write fails, and after a final drain and poll the mount shows the bucket.
"""

from __future__ import annotations

import errno
import os
import random
import time

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from core_rig import Rig

from s3fuse.errors import FsError
from s3fuse.journal import ROOT_INO
from s3fuse.store._body import md5_hex
from s3fuse.store.memory import MemoryStore, _Object

FILES = [b"f0", b"f1"]
WINDOW = 1.0


class OutsideStore(MemoryStore):
    """The mount's store; before its n-th request, the outside writer may act on the
    same bucket (``plan``: request number -> action)."""

    def __init__(self, plan: dict[int, tuple[str, int]], acked: list[tuple[str, bytes]]):
        super().__init__()
        self.plan = plan
        self.acked = acked
        self.requests = 0
        self.outside_lines = 0
        self.deleted: set[bytes] = set()  # lines of the versions the outside deleted

    def _request(self, kind: str) -> None:
        self.requests += 1
        action = self.plan.get(self.requests)
        if action is not None:
            self._outside(*action)
        super()._request(kind)

    def _outside(self, what: str, file_index: int) -> None:
        """(Called with the bucket's lock held, so it acts in one step: a conditional
        read-modify-write that cannot be refused.)"""
        key = FILES[file_index % len(FILES)].decode()
        objects = self._bucket.objects
        current = objects.get(key)
        if what == "append":
            self.outside_lines += 1
            token = f"out-{self.outside_lines}".encode()
            body = (current.body if current is not None else b"") + token + b"\n"
            objects[key] = _Object(body, {}, md5_hex(body), time.time_ns())
            self.acked.append((key, token))
        elif current is not None:
            self.deleted |= _lines(current.body)
            del objects[key]


def _lines(body: bytes) -> set[bytes]:
    return {line for line in body.split(b"\n") if line}


async def _read_all(rig: Rig, ino: int) -> bytes:
    fh, _ = await rig.fs.open(ino, os.O_RDONLY)
    try:
        size = rig.fs.get(ino).size
        return await rig.fs.read(fh, 0, size) if size else b""
    finally:
        await rig.fs.release(fh)


async def _open_path(rig: Rig, name: bytes, flags: int) -> tuple[int, object]:
    """open(name, flags) as the kernel does it: a lookup, then an open (the path is
    looked up again once on ESTALE), or, with O_CREAT, a create."""
    for _ in range(2):
        try:
            inode = await rig.fs.lookup(ROOT_INO, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT or not flags & os.O_CREAT:
                raise
            fh, inode = await rig.fs.create(ROOT_INO, name, 0o644, 1000, 1000,
                                            append=bool(flags & os.O_APPEND))
            rig.fs.forget([(inode.ino, 1)])
            return fh, inode
        try:
            fh, _ = await rig.fs.open(inode.ino, flags & ~os.O_CREAT)
            return fh, inode
        except FsError as exc:
            if exc.errno != errno.ESTALE:
                raise
        finally:
            rig.fs.forget([(inode.ino, 1)])
    raise FsError(errno.ESTALE, "stale twice")


async def _read_path(rig: Rig, name: bytes) -> bytes:
    """The file's bytes, as a program reads them (b"" if it does not exist). A read
    may answer ESTALE when the bucket deleted the file after the open and none of
    its bytes were cached (there is nothing left to read); the program tries again."""
    for _ in range(3):
        try:
            fh, inode = await _open_path(rig, name, os.O_RDONLY)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return b""
        try:
            size = rig.fs.get(inode.ino).size
            return await rig.fs.read(fh, 0, size) if size else b""
        except FsError as exc:
            if exc.errno != errno.ESTALE:
                raise
        finally:
            await rig.fs.release(fh)
    raise FsError(errno.ESTALE, "stale three times")


async def _writer(rig: Rig, ops: list[tuple[str, int, float]],
                  acked: list[tuple[str, bytes]], errors: list[str],
                  rewrites: list[tuple[str, set[bytes], int]],
                  unlinks: list[tuple[str, set[bytes], int]]) -> None:
    for n, (kind, file_index, pause) in enumerate(ops):
        name = FILES[file_index % len(FILES)]
        token = f"m-{n}".encode()
        try:
            if kind == "append":
                fh, inode = await _open_path(rig, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                # the kernel's offset for O_APPEND: the size it saw when it opened
                offset = rig.fs.get(inode.ino).size
                await trio.sleep(pause)
                await rig.fs.write(fh, offset, token + b"\n")
                await rig.fs.release(fh)
            elif kind == "unlink":  # read it (what the user throws away), unlink it
                old = await _read_path(rig, name)
                try:
                    await rig.fs.unlink(ROOT_INO, name)
                except FsError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                unlinks.append((name.decode(), _lines(old), len(acked)))
                await trio.sleep(pause)
                continue
            else:  # rewrite: read, write old + line to a temp file, rename over
                old = await _read_path(rig, name)
                tmp = b".tmp-" + token
                fh, tmp_inode = await rig.fs.create(ROOT_INO, tmp, 0o644, 1000, 1000)
                await rig.fs.write(fh, 0, old + token + b"\n")
                await rig.fs.release(fh)
                rig.fs.forget([(tmp_inode.ino, 1)])
                await rig.fs.rename(ROOT_INO, tmp, ROOT_INO, name)
                # a rename over the path replaces what is there knowingly, as on a
                # local disk: what it did not read, and that was acknowledged before
                # it was done, may go (if the mount had taken it in meanwhile)
                rewrites.append((name.decode(), _lines(old), len(acked)))
        except Exception as exc:  # noqa: BLE001 - any failure is a finding
            errors.append(f"{kind} {name!r}: {exc!r}")
            continue
        acked.append((name.decode(), token))
        await trio.sleep(pause)


async def _poller(rig: Rig) -> None:
    while True:
        await trio.sleep(WINDOW)
        await rig.fs.poll_dir(ROOT_INO)


def run_story(ops: list[tuple[str, int, float]], plan: dict[int, tuple[str, int]],
              seed: int, tmp_path) -> None:
    acked: list[tuple[str, bytes]] = []
    errors: list[str] = []
    store = OutsideStore(plan, acked)
    rewrites: list[tuple[str, set[bytes], int]] = []  # (key, lines read, acked then)
    unlinks: list[tuple[str, set[bytes], int]] = []  # (key, lines read, acked then)

    async def main() -> None:
        rig = Rig(tmp_path, store)
        # what the server honours, as the mount's probe finds it: conditional PUT,
        # copy and DELETE, as on S3 and moto. (Where DELETE ignores If-Match, as on
        # RGW 16, a delete looks first, and an outside write between that HEAD and
        # the DELETE is lost: a limitation the README states.)
        rig.fs.remote.capabilities = store.probe("probe")
        rig.flusher.window_s = WINDOW
        rig.fs.metadata_ttl_s = WINDOW
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.flusher.run)
                nursery.start_soon(_poller, rig)
                await _writer(rig, ops, acked, errors, rewrites, unlinks)
                store.plan = {}  # the outside writer stops
                assert await rig.flusher.drain(600)
                await rig.fs.poll_dir(ROOT_INO)
                assert await rig.flusher.drain(600)
                nursery.cancel_scope.cancel()
            assert not errors, errors
            bucket = rig.bucket()
            kept: set[bytes] = set()
            for body in bucket.values():
                kept |= _lines(body)
            lf = rig.fs.inodes_under([b".s3fuse/lost+found"])
            for ino in lf:
                inode = rig.fs.get(ino)
                if inode.mode & 0o100000 and inode.nlink:
                    kept |= _lines(await _read_all(rig, ino))
            for pos, (key, token) in enumerate(acked):
                if token in kept or token in store.deleted:
                    continue  # (the outside deleted a version holding it: S3 wins)
                # the mount's own lines are always carried (a rewrite reads them);
                # an unlink throws away what it read, and, like a rename over the
                # path, what it did not read but the mount had taken in meanwhile
                replaced = token.startswith(b"out-") and any(
                    k == key and token not in read and pos < done
                    for k, read, done in rewrites + unlinks)
                thrown = any(k == key and token in read and pos < done
                             for k, read, done in unlinks)
                assert replaced or thrown, f"line {token!r} of {key} lost"
            # the mount shows the bucket
            for name in FILES:
                want = bucket.get(name.decode())
                try:
                    inode = await rig.fs.lookup(ROOT_INO, name)
                except Exception:  # noqa: BLE001
                    assert want is None, f"{name!r} missing on the mount"
                    continue
                assert await _read_all(rig, inode.ino) == want, f"{name!r} differs"
        finally:
            rig.close()

    trio._core._run._r.seed(seed)  # the scheduler's choices among runnable tasks
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


_ops = st.lists(st.tuples(st.sampled_from(["append", "append", "append", "rewrite",
                                           "unlink"]),
                          st.integers(0, 1),
                          st.sampled_from([0.0, 0.0, 0.3, 0.7, 1.2, 2.5])),
                min_size=1, max_size=16)
_plan = st.dictionaries(st.integers(1, 60),
                        st.tuples(st.sampled_from(["append", "append", "append", "delete"]),
                                  st.integers(0, 1)),
                        max_size=24)


@settings(max_examples=int(os.environ.get("S3FUSE_INTERLEAVINGS", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, plan=_plan, seed=st.integers(0, 2**32 - 1))
def test_interleavings_never_lose_a_version(ops, plan, seed, tmp_path_factory):
    run_story(ops, plan, seed, tmp_path_factory.mktemp("story"))


def test_random_stories(tmp_path_factory):
    """A few hundred fixed random stories (fast), beside hypothesis' search."""
    rng = random.Random(12)
    for _ in range(int(os.environ.get("S3FUSE_STORIES", "40"))):
        ops = [(rng.choice(["append", "append", "rewrite", "unlink"]), rng.randrange(2),
                rng.choice([0.0, 0.3, 1.2])) for _ in range(rng.randrange(1, 12))]
        plan = {rng.randrange(1, 120): (rng.choice(["append", "delete"]), rng.randrange(2))
                for _ in range(rng.randrange(0, 10))}
        run_story(ops, plan, rng.randrange(2**32), tmp_path_factory.mktemp("story"))


# --- shrunk failures, kept as regression tests ---------------------------------------


def test_an_append_lands_at_the_end_of_the_version_adopted_under_it(tmp_path):
    """The writer's kernel computed its O_APPEND offset from the size it saw at open;
    the bucket's newer version (adopted while the bytes were fetched for the write)
    is longer. The append must go to its end, not over the outside line (without
    the fix, ``out-3`` was overwritten and uploaded under the newer ETag)."""
    run_story([("append", 0, 0.0)],
              {1: ("append", 0), 2: ("append", 0), 3: ("append", 0)}, 0, tmp_path)


def test_an_append_to_a_file_deleted_outside_before_it_was_fetched(tmp_path):
    """The object went away while a writer's bytes were being fetched: the write
    lands on the bucket's state (nothing), it does not fail."""
    run_story([("append", 0, 0.0)],
              {1: ("append", 0), 2: ("append", 0), 3: ("delete", 0)}, 0, tmp_path)


def test_a_write_through_a_handle_opened_after_the_bucket_deleted_the_file_is_kept(tmp_path):
    """The poller removed the file (deleted outside) between the writer's lookup and
    its open: the open answers ESTALE and the writer looks the path up again; a write
    through a handle still on the removed inode would be kept in lost+found (before
    the fix it was dropped with the inode)."""
    run_story([("append", 0, 2.5), ("append", 0, 0.0)],
              {1: ("append", 1), 2: ("append", 0), 8: ("delete", 0)}, 2, tmp_path)


def test_a_version_deleted_while_a_writer_fetches_it_is_not_an_error(tmp_path):
    """The same story with another task order: the fetch for the write found its
    version gone; the write starts from the bucket's state, and never fails."""
    run_story([("append", 0, 2.5), ("append", 0, 0.0)],
              {1: ("append", 1), 2: ("append", 0), 8: ("delete", 0)}, 0, tmp_path)


def test_a_fetch_whose_version_the_poller_replaced_meanwhile_fetches_again(tmp_path):
    """The GET for a write failed (its version was gone) after the poller had already
    adopted the newer version: that is not a reason to give up (it was ESTALE)."""
    run_story([("append", 0, 0.0), ("append", 1, 2.5), ("append", 0, 0.0)],
              {1: ("append", 0), 4: ("append", 0), 13: ("append", 0)}, 1, tmp_path)


def test_a_reader_whose_file_the_bucket_deleted_before_its_open_finds_it_gone(tmp_path):
    """(A story the search found in the test's own kernel model: an open that meets
    a deletion answers ESTALE, and the path, looked up again, is gone: ENOENT.)"""
    run_story([("append", 0, 2.5), ("rewrite", 0, 0.0)],
              {2: ("append", 0), 8: ("delete", 0)}, 0, tmp_path)


def test_an_unlink_never_deletes_a_version_written_outside_after_the_mount_looked(
        tmp_path):
    """The mount's delete of an unlinked file is conditional on the version it knew:
    a line appended outside just before the DELETE stays in the bucket."""
    run_story([("append", 0, 0.0), ("append", 1, 1.2), ("append", 0, 0.0),
               ("append", 0, 2.5), ("unlink", 0, 0.3)],
              {1: ("append", 0), 3: ("append", 0), 21: ("append", 0)}, 0, tmp_path)
