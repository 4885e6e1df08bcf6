"""A file renamed while its upload runs (a checkpoint written under a temporary name,
then ``os.replace``d): the bytes go up once, and the object follows the rename
server-side. The same through a real mount, with the requests counted, is in
tests/fuse/test_large_files.py."""

from __future__ import annotations

import trio
from core_rig import Rig, upload_in_flight

from s3fuse.journal import ROOT_INO
from s3fuse.store.faulty import FaultyStore


def test_a_file_renamed_while_uploading_is_copied_not_sent_again(tmp_path):
    async def during(rig: Rig):
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")

    bucket, counts, own, snap = trio.run(upload_in_flight, tmp_path, FaultyStore(), during)
    assert bucket == {"g": b"payload"}
    # one PUT of the bytes, then the copy and the delete of the old key (the old code
    # sent the bytes a second time: put 2)
    assert counts == {"put": 1, "copy": 1, "delete": 1}
    assert own["renamed_uploads"] == 1
    assert snap["g"][1]["mode"] == str(0o100644)


def test_a_rename_over_an_existing_file_while_uploading(tmp_path):
    """``os.replace(tmp, final)`` over the previous checkpoint: the copy replaces it."""
    store = FaultyStore()
    store.put("model.ckpt", b"previous", {})

    async def during(rig: Rig):
        await rig.fs.lookup(ROOT_INO, b"model.ckpt")
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"model.ckpt")

    bucket, counts, own, _ = trio.run(upload_in_flight, tmp_path, store, during, b"new")
    assert bucket == {"model.ckpt": b"new"}
    assert counts == {"put": 2, "copy": 1, "delete": 1}  # (one put was the seed)
    assert own["renamed_uploads"] == 1


def test_a_file_written_again_after_the_rename_goes_up_whole(tmp_path):
    """Changed after the rename: the upload in flight is not its version. If it
    lands before a flusher round sees that, it is deleted; either way the file is
    uploaded whole at its new key, and nothing is copied."""
    async def during(rig: Rig):
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
        ino = (await rig.fs.lookup(ROOT_INO, b"g")).ino
        fh, _ = await rig.fs.open(ino, 1)
        await rig.fs.write(fh, 7, b"+more")
        await rig.fs.release(fh)

    bucket, counts, own, _ = trio.run(upload_in_flight, tmp_path, FaultyStore(), during)
    assert bucket == {"g": b"payload+more"}
    assert counts in ({"put": 2, "copy": 0, "delete": 1}, {"put": 1, "copy": 0, "delete": 0})
    assert "renamed_uploads" not in own


def test_the_old_name_reused_while_uploading_gets_the_object_after_the_copy(tmp_path):
    async def during(rig: Rig):
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
        await rig.write_file(ROOT_INO, b"f", b"second")

    bucket, counts, own, _ = trio.run(upload_in_flight, tmp_path, FaultyStore(), during)
    assert bucket == {"g": b"payload", "f": b"second"}
    # the new f overwrites the landed object (If-Match) once it was copied: no delete
    assert counts == {"put": 2, "copy": 1, "delete": 0}
    assert own["renamed_uploads"] == 1


def test_an_upload_of_an_earlier_state_stops_once_the_file_was_renamed(tmp_path):
    """The checkpoint's pattern under a short window: an upload of a partial state
    runs when the writer finishes and renames. It stops (nothing lands at the old
    key) and the file goes up once, at its new key, without waiting for it."""
    async def during(rig: Rig):
        ino = (await rig.fs.lookup(ROOT_INO, b"f")).ino
        fh, _ = await rig.fs.open(ino, 1)
        await rig.fs.write(fh, 7, b" and the rest")
        await rig.fs.release(fh)
        await rig.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")
        await trio.sleep(0.3)  # (a flusher round sees it)

    bucket, counts, own, _ = trio.run(upload_in_flight, tmp_path, FaultyStore(), during)
    assert bucket == {"g": b"payload and the rest"}
    # the old code let it land at f, deleted it, then uploaded g: put 2, delete 1
    assert counts == {"put": 1, "copy": 0, "delete": 0}
    assert own["abandoned"] == 1


def test_an_upload_of_a_removed_file_stops(tmp_path):
    async def during(rig: Rig):
        await rig.fs.unlink(ROOT_INO, b"f")
        await trio.sleep(0.3)

    bucket, counts, own, _ = trio.run(upload_in_flight, tmp_path, FaultyStore(), during)
    assert bucket == {}
    assert counts == {"put": 0, "copy": 0, "delete": 0}  # (old: put 1, delete 1)
    assert own["abandoned"] == 1


def test_after_an_overtaken_upload_a_quiet_large_file_goes_from_its_cache_file(tmp_path):
    """The writer overtook the upload from the cache file (the window started it
    while the file was written), then stopped: the next upload reads the cache file
    again, with no copy of it made (the old code copied the whole file first)."""
    from s3fuse.flusher import LIVE_BODY_MIN_BYTES

    first = b"a" * LIVE_BODY_MIN_BYTES
    copies: list[int] = []

    async def during(rig: Rig):
        snapshot = rig.cache.snapshot
        rig.cache.snapshot = lambda ino, size: copies.append(size) or snapshot(ino, size)
        ino = (await rig.fs.lookup(ROOT_INO, b"f")).ino
        fh, _ = await rig.fs.open(ino, 1)
        await rig.fs.write(fh, len(first), b"the rest")
        await rig.fs.release(fh)
        await trio.sleep(0.3)  # quiet for more than a flusher tick

    bucket, counts, own, _ = trio.run(upload_in_flight, tmp_path, FaultyStore(), during,
                                      first)
    assert bucket == {"f": first + b"the rest"}
    assert own["body_changed"] == 1 and counts["put"] == 1
    assert copies == []
