"""A fork's DEST in use before the fork has finished (``forkstore.ForkedStore``), on
the in-memory store: listings merge the keys not copied yet page by page (hypothesis:
any pins, any part copied, any page size, with and without a delimiter, equal the
listing of the finished fork); HEADs and reads of a pending key come from its pinned
source version; a change to one copies it into DEST first; a finished record makes
the store a pass-through. And the fork's sweep: a copy it made over a delete in DEST
is removed again. The real mounts are in tests/fuse/test_forklive.py."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3fuse import forkstore
from s3fuse.errors import NoSuchKey, PreconditionFailed, UsageError
from s3fuse.fork import Side, fork
from s3fuse.forkstore import FORK_RECORD, ForkedStore, ForkRecord, encode_record
from s3fuse.snapshots import pinned
from s3fuse.store import Copied
from s3fuse.store.file import FileStore
from s3fuse.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def new_store(kind: str = "memory", root: Path | None = None):
    if kind == "file":
        assert root is not None
        root = root / uuid.uuid4().hex
        root.mkdir()
        store = FileStore(root, durable=False)
    else:
        store = MemoryStore(f"forkstore-{uuid.uuid4().hex}")
    store.enable_versioning()
    return store


@pytest.fixture(params=["memory", "file"])
def backend(request, tmp_path):
    """A function making a new versioned store of each backend (a fork within one
    file:// store is what a file:// DEST's mount would see)."""
    return lambda: new_store(request.param, tmp_path)


def make(keys: list[str], copied: set[str], through: str | None, *,
         store=None) -> tuple[MemoryStore, ForkedStore, Clock, dict]:
    """Source ``ws/`` holding ``keys`` (then changed, so the pins are old versions),
    DEST ``new/`` holding the ``copied`` ones and the record."""
    store = store or new_store()
    for k in keys:
        store.put("ws/" + k, f"old {k}".encode() * (1 + len(k) % 3), {"mode": "33188"})
    pins = pinned(store, "ws/", at_ns=max(v.mtime_ns for v in
                                          store.list_versions("ws/").versions))
    for k in keys:
        store.put("ws/" + k, b"changed after the fork's point", {})
    for k in copied:
        store.copy_version("", "ws/" + k, pins[k].version_id, "new/" + k, pins[k].size)
    body = encode_record("b", "ws/", {"at": "T"}, list(pins.values()), created_ns=1,
                         finished_ns=None, copied_through=through)
    store.put("new/" + FORK_RECORD, body, {})
    clock = Clock()
    return store, ForkedStore(store, store, "ws/", "new/", ForkRecord.decode(body),
                              clock=clock), clock, pins


def listing(store, prefix: str, delimiter: str | None, max_keys: int):
    objects, prefixes, token = [], [], None
    for _ in range(10_000):
        page = store.list(prefix, delimiter, token, max_keys)
        objects += [(o.key, o.size, o.etag) for o in page.objects]
        prefixes += page.prefixes
        token = page.next_token
        if token is None:
            return objects, prefixes
    raise AssertionError("the listing never ended")


KEY = st.text(alphabet="ab/", min_size=1, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.lists(KEY, min_size=1, max_size=25, unique=True), data=st.data())
def test_listings_merge_the_pending_keys_into_every_page(keys, data) -> None:
    keys.sort()
    cut = data.draw(st.integers(0, len(keys)), "copied_through index")
    copied = set(keys[:cut]) | set(data.draw(st.lists(st.sampled_from(keys)), "copied after"))
    through = keys[cut - 1] if cut else None
    _store, forked, _clock, pins = make(keys, copied, through)
    full = MemoryStore()
    for k in keys:
        full.put("new/" + k, b"x" * pins[k].size, {})
    full.put("new/" + FORK_RECORD, b"{}", {})
    prefix = data.draw(st.sampled_from(["new/", "new/a", "new/a/", "new/b/a"]), "prefix")
    delimiter = data.draw(st.sampled_from(["/", None]), "delimiter")
    page_size = data.draw(st.integers(1, 7), "page size")
    got_objects, got_prefixes = listing(forked, prefix, delimiter, page_size)
    want_objects, want_prefixes = listing(full, prefix, delimiter, 1000)
    assert [k for k, _s, _e in got_objects] == [k for k, _s, _e in want_objects]
    assert got_prefixes == want_prefixes
    for key, size, etag in got_objects:  # the pinned size and ETag, copied or not
        rel = key[len("new/"):]
        if key == "new/" + FORK_RECORD:
            continue
        assert (size, etag) == (pins[rel].size, pins[rel].etag)


def test_heads_and_reads_of_a_pending_key_come_from_the_pinned_version(backend) -> None:
    store, forked, _clock, pins = make(["a/x", "a/y", "b"], {"a/x"}, "a/x", store=backend())
    for rel in ("a/y", "b"):
        info = forked.head("new/" + rel)
        assert (info.key, info.size, info.etag) == ("new/" + rel, pins[rel].size,
                                                    pins[rel].etag)
        assert info.metadata == {"mode": "33188"} and info.mtime_ns == pins[rel].mtime_ns
        body = store.get("ws/" + rel, version_id=pins[rel].version_id)
        assert forked.get("new/" + rel) == body
        assert forked.get("new/" + rel, 2, 5, if_match=pins[rel].etag) == body[2:5]
        out = io.BytesIO()
        assert forked.get_into("new/" + rel, out, 1) == len(body) - 1
        assert out.getvalue() == body[1:]
        with pytest.raises(PreconditionFailed):
            forked.get("new/" + rel, if_match="0" * 32)
    if isinstance(store, MemoryStore):
        heads = store.counts["head"]
        forked.head("new/b")
        assert store.counts["head"] == heads + 1  # DEST's; the source's HEAD is cached
    for missing in ("new/zzz", "new/a/x-not-pinned"):
        with pytest.raises(NoSuchKey):
            forked.head(missing)
        with pytest.raises(NoSuchKey):
            forked.get(missing)
    assert [o.key for o in store.list("new/", None).objects] == [
        "new/" + FORK_RECORD, "new/a/x"]  # no bytes went to DEST for reading


def test_a_change_to_a_pending_key_copies_it_into_dest_first(backend) -> None:
    store, forked, _clock, pins = make(["p", "q", "r", "s"], set(), None, store=backend())
    # a conditional upload of new bytes over the pinned version (the mount's flusher)
    forked.put("new/p", b"mine", {}, if_match=pins["p"].etag)
    assert store.get("new/p") == b"mine"
    assert [v.etag for v in store.list_versions("new/p").versions][1] == pins["p"].etag
    # a rename: copy from it, then delete it (conditional, as the op log does)
    forked.copy("new/q", "new/q2", None, src_if_match=pins["q"].etag)
    forked.delete("new/q", if_match=pins["q"].etag)
    assert store.get("new/q2") == store.get("ws/q", version_id=pins["q"].version_id)
    # a delete
    forked.delete("new/r")
    for gone in ("new/q", "new/r"):
        with pytest.raises(NoSuchKey):
            forked.head(gone)  # deleted here: not pending again, though DEST lacks it
    objects, _ = listing(forked, "new/", None, 2)
    assert [k for k, _s, _e in objects if "/.s3fuse/" not in k] == [
        "new/p", "new/q2", "new/s"]
    # a later mount (a remount) knows what this one changed: "q" and "r" stay deleted
    again = ForkedStore(store, store, "ws/", "new/",
                        ForkRecord.decode(store.get("new/" + FORK_RECORD)))
    assert {k for k, _s, _e in listing(again, "new/", "/", 1000)[0]} >= {"new/q", "new/r"}
    again.load_changed()  # (wrap_if_forking calls it)
    assert listing(again, "new/", "/", 1000) == listing(forked, "new/", "/", 1000)
    for gone in ("new/q", "new/r"):
        with pytest.raises(NoSuchKey):
            again.head(gone)
    assert [k for k, _s, _e in listing(again, "new/", None, 3)[0] if "/.s3fuse/" not in k
            ] == ["new/p", "new/q2", "new/s"]
    # a stale pin is refused as the bucket would refuse it
    with pytest.raises(PreconditionFailed):
        forked.put("new/s", b"x", {}, if_match="0" * 32)
    # the fork copied it meanwhile: materialising finds it, and the change goes on top
    store2, forked2, _c, pins2 = make(["k"], set(), None, store=backend())
    store2.copy_version("", "ws/k", pins2["k"].version_id, "new/k", pins2["k"].size)
    forked2.put("new/k", b"v2", {}, if_match=pins2["k"].etag)
    assert len(store2.list_versions("new/k").versions) == 2


def test_a_finished_record_makes_it_a_pass_through(backend) -> None:
    store, forked, clock, pins = make(["a", "b"], set(), None, store=backend())
    assert forked.get("new/a") and not forked.finished
    record = json.loads(store.get("new/" + FORK_RECORD))
    record["finished"] = "2026-12-01T00:00:00Z"
    store.put("new/" + FORK_RECORD, json.dumps(record).encode(), {})
    assert forked.get("new/b")  # the record is not read again before REFRESH_S
    clock.now += forkstore.REFRESH_S
    assert forked.finished
    with pytest.raises(NoSuchKey):
        forked.get("new/a")
    assert listing(forked, "new/", "/", 1) == ([], ["new/.s3fuse/"])
    assert forkstore.fork_status(forked) == {"copied": 2, "total": 2, "finished": True}


def test_progress_is_read_again_lazily() -> None:
    store, forked, clock, pins = make(["a", "b", "c"], set(), None)
    assert forkstore.fork_status(forked) == {"copied": 0, "total": 3, "finished": False}
    for k in ("a", "b"):
        store.copy_version("", "ws/" + k, pins[k].version_id, "new/" + k, pins[k].size)
    store.put("new/" + FORK_RECORD, encode_record(
        "b", "ws/", {"at": "T"}, list(pins.values()), created_ns=1, finished_ns=None,
        copied_through="b"), {})
    store.delete("new/a")  # after copied_through: DEST's answer counts
    clock.now += forkstore.REFRESH_S
    with pytest.raises(NoSuchKey):
        forked.head("new/a")
    assert forkstore.fork_status(forked) == {"copied": 2, "total": 3, "finished": False}
    assert forked.head("new/c").etag == pins["c"].etag


def test_wrap_if_forking_only_for_an_unfinished_record() -> None:
    store, _forked, _clock, _pins = make(["a"], set(), None)
    assert isinstance(forkstore.wrap_if_forking(store, "new/", "memory://x/new"),
                      ForkedStore)
    assert forkstore.wrap_if_forking(store, "ws/", "memory://x/ws") is store
    store.put("other/" + FORK_RECORD, b"not json", {})
    assert forkstore.wrap_if_forking(store, "other/", "memory://x/other") is store


class NamelessCopies(MemoryStore):
    """Copies that do not name the version they made (Ceph RGW 16), only its time."""

    def copy_version(self, *args, **kwargs):
        made = super().copy_version(*args, **kwargs)
        dst = args[3]
        mtime = [v for v in self.list_versions(dst).versions if v.key == dst][0].mtime_ns
        return Copied(made.etag, None, mtime)


def test_the_sweep_finds_copies_by_their_time_where_the_server_names_no_version() -> None:
    store = NamelessCopies(f"forkstore-{uuid.uuid4().hex}")
    store.enable_versioning()
    test_the_fork_removes_its_copy_made_over_a_delete_in_dest(lambda: store)


def test_the_fork_removes_its_copy_made_over_a_delete_in_dest(backend) -> None:
    """The mount deleted a pending key (after copying it in); the fork's later copy
    passes If-None-Match over the delete marker, and the sweep takes it away."""
    store = backend()
    for k in ("a", "b", "c"):
        store.put("ws/" + k, k.encode(), {})
    pins = pinned(store, "ws/", at_ns=max(v.mtime_ns for v in
                                          store.list_versions("ws/").versions))
    source, dest = Side(store, "b", "ws/", "memory://b/ws"), Side(store, "b", "new/", "m")
    body = encode_record("b", "ws/", {"at": "T"}, list(pins.values()), created_ns=1,
                         finished_ns=None, copied_through=None)
    store.put("new/" + FORK_RECORD, body, {})  # as if a first run stopped at once
    forked = ForkedStore(store, store, "ws/", "new/", ForkRecord.decode(body))
    forked.delete("new/b")  # materialised, then deleted
    forked.put("new/c", b"mine", {}, if_match=pins["c"].etag)
    assert len(forkstore.changed_keys(store, "new/")) == 2
    store.put("new/.s3fuse/fork.json", body, {})
    # a fresh run would see "new/b" as had; a run that listed DEST before the delete
    # did not: stage it by forgetting the versions' listing (resume sees nothing)
    import s3fuse.fork as fork_module

    real = fork_module._dest_keys
    fork_module._dest_keys = lambda d: set()
    try:
        report = fork(source, dest, {"at": "T"}, pins, jobs=1)
    finally:
        fork_module._dest_keys = real
    assert report.swept == 1 and report.present == 1  # c: If-None-Match refused it
    with pytest.raises(NoSuchKey):
        store.head("new/b")
    assert store.get("new/c") == b"mine" and store.get("new/a") == b"a"
    assert json.loads(store.get("new/" + FORK_RECORD))["finished"]
    assert json.loads(store.get("new/" + FORK_RECORD))["copied_through"] == "c"
    assert not forkstore.changed_keys(store, "new/")  # the mount's notes went with it


def test_a_change_to_a_pending_key_of_1000_bytes_is_noted_for_a_remount(backend) -> None:
    """The note of a changed key is named by a hash, so a key of any valid length (here
    1,000 bytes of UTF-8, components under 255 bytes) has one, and a remount reads
    the key back from it."""
    long = "/".join(["\u00e9" * 100] * 4) + "/" + "a" * 196
    assert len(long.encode()) == 1000
    store, forked, _clock, pins = make([long, "z"], set(), None, store=backend())
    forked.delete("new/" + long)  # materialised (a note), then deleted
    notes = forkstore.changed_keys(store, "new/")
    assert notes == [forkstore.changed_key("new/", long)]
    assert len(notes[0].encode()) < 200
    store.put("new/" + forkstore.CHANGED_DIR + "0" * 64, b"z", {})  # not a note of "z"
    again = ForkedStore(store, store, "ws/", "new/",
                        ForkRecord.decode(store.get("new/" + FORK_RECORD)))
    again.load_changed()
    with pytest.raises(NoSuchKey):
        again.head("new/" + long)  # deleted by the first mount: not pending again
    assert again.head("new/z").etag == pins["z"].etag  # still pending


def test_a_dest_with_history_only_is_refused_after_its_record_went_up(backend) -> None:
    store = backend()
    store.put("ws/a", b"a", {})
    pins = pinned(store, "ws/", at_ns=store.list_versions("ws/").versions[0].mtime_ns)
    store.put("new/old", b"x", {})
    store.delete("new/old")  # no current object, but history the sweep must not see
    source, dest = Side(store, "b", "ws/", "memory://b/ws"), Side(store, "b", "new/", "m")
    with pytest.raises(UsageError, match="not empty"):
        fork(source, dest, {"at": "T"}, pins)
    with pytest.raises(NoSuchKey):
        store.head("new/" + FORK_RECORD)
    assert forkstore.wrap_if_forking(store, "new/", "memory://b/new") is store


def test_reads_from_another_bucket_under_the_same_prefix() -> None:
    """s3://A/ws forked into s3://B/ws: the source key is DEST's own key, in another
    store; a read of a pending key must go there, not back to DEST."""
    source = new_store()
    source.put("ws/k", b"pinned bytes", {})
    pins = pinned(source, "ws/", at_ns=source.list_versions("ws/").versions[0].mtime_ns)
    source.put("ws/k", b"changed since", {})
    dest = new_store()
    body = encode_record("A", "ws/", {"at": "T"}, list(pins.values()), created_ns=1,
                         finished_ns=None, copied_through=None)
    dest.put("ws/" + FORK_RECORD, body, {})
    forked = ForkedStore(dest, source, "ws/", "ws/", ForkRecord.decode(body))
    assert forked.get("ws/k") == b"pinned bytes"
    assert forked.get("ws/k", 7, if_match=pins["k"].etag) == b"bytes"
    assert forked.head("ws/k").size == len(b"pinned bytes")


def test_a_record_that_went_away_makes_it_a_pass_through() -> None:
    store, forked, clock, _pins = make(["a"], set(), None)
    assert forked.get("new/a")
    store.delete("new/" + FORK_RECORD)
    clock.now += forkstore.REFRESH_S
    with pytest.raises(NoSuchKey):
        forked.get("new/a")
    assert forked.finished
