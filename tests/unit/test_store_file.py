"""file:// backend specifics: key safety, symlinks, on-disk layout, crash leftovers,
hand-placed files, several stores on one root, key conflicts, pruning."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3fuse.errors import (
    InvalidKey,
    KeyConflict,
    NoSuchBucket,
    NoSuchKey,
    PreconditionFailed,
    StoreError,
)
from s3fuse.store.file import PRIVATE, XATTR_MARKER, XATTR_OBJ, FileStore
from s3fuse.store.memory import MemoryStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "bucket"
    path.mkdir()
    return path


@pytest.fixture
def store(root):
    s = FileStore(root)
    s.check()
    yield s
    s.close()


def tree(path: Path) -> list[str]:
    """Every entry below ``path`` (files, directories, symlinks), with file contents."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(path))
            if p.is_symlink():
                out.append(f"{rel} -> {os.readlink(p)}")
            elif p.is_file():
                out.append(f"{rel}: {p.read_bytes()[:64]!r}")
            else:
                out.append(rel + "/")
    return sorted(out)


def all_keys(store, prefix=""):
    page = store.list(prefix, None, max_keys=10_000)
    assert page.next_token is None
    return [o.key for o in page.objects]


# --- hostile keys -------------------------------------------------------------------------


HOSTILE = ["../x", "a/../../b", "..", "../", ".", "./x", "a/./b", "a/..", "/abs", "/",
           "a//b", "a//", "//", "", "x\0y", "s" * 256, "d/" + "é" * 128 + "/f",
           ".s3fuse-store", ".s3fuse-store/", ".s3fuse-store/x", ".s3fuse-store/tmp/x",
           ".s3fuse-store/lock"]


@pytest.mark.parametrize("key", HOSTILE, ids=repr)
def test_hostile_keys_are_refused_and_touch_nothing(store, tmp_path, key):
    (tmp_path / "outside.txt").write_bytes(b"keep")
    store.put("ok/file", b"ok", {})
    before = tree(tmp_path)
    body = tmp_path / "body"
    body.write_bytes(b"payload")
    before_with_body = tree(tmp_path)

    calls = [
        lambda: store.put(key, b"evil", {}),
        lambda: store.put(key, body, {}),
        lambda: store.put(key, b"", {}, if_none_match=True),
        lambda: store.head(key),
        lambda: store.get(key),
        lambda: store.get_into(key, io.BytesIO()),
        lambda: store.delete(key),
        lambda: store.copy("ok/file", key),
        lambda: store.copy(key, "ok/copy"),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            call()
    assert tree(tmp_path) == before_with_body
    body.unlink()
    assert tree(tmp_path) == before
    # A prefix nothing valid can start with lists as empty, and reveals no private file.
    page = store.list(key, None)
    assert page.objects == [] or all(o.key.startswith(key) and "/.s3fuse-store" not in
                                     "/" + o.key for o in page.objects)


def test_hostile_prefixes_list_nothing(store, root):
    store.put("a/b", b"x", {})
    for prefix in ("../", "/", ".s3fuse-store/", ".s3fuse-store/tmp/", "a//", "./a/"):
        page = store.list(prefix, None)
        assert (page.objects, page.prefixes) == ([], []), prefix
    assert store.list(".s3", "/").prefixes == []


def test_longest_segment_is_fine(store, root):
    key = "d/" + "n" * 255
    store.put(key, b"max", {})
    assert store.get(key) == b"max"
    key = "é" * 127 + "x"  # 255 bytes of UTF-8
    store.put(key, b"utf8", {})
    assert (root / key).read_bytes() == b"utf8"


# --- symlinks ---------------------------------------------------------------------------------


@pytest.fixture
def planted(root, tmp_path):
    """ROOT/evil -> a directory outside ROOT, ROOT/link -> a file outside ROOT."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.symlink(outside, root / "evil")
    os.symlink(outside / "secret", root / "link")
    return outside


def test_symlinked_directory_is_not_followed(store, planted, tmp_path):
    before = tree(planted)
    with pytest.raises(InvalidKey):
        store.put("evil/new", b"pwned", {})
    with pytest.raises(InvalidKey):
        store.put("evil/secret", b"pwned", {})
    with pytest.raises(InvalidKey):
        store.put("evil/sub/", b"", {})
    store.put("src", b"s", {})
    with pytest.raises(InvalidKey):
        store.copy("src", "evil/copied")
    with pytest.raises(NoSuchKey):
        store.head("evil/secret")
    with pytest.raises(NoSuchKey):
        store.get("evil/secret")
    with pytest.raises(NoSuchKey):
        store.copy("evil/secret", "stolen")
    store.delete("evil/secret")  # not an object here: nothing to delete
    assert tree(planted) == before
    assert store.list("evil/", None).objects == []


def test_symlinked_file_is_not_an_object(store, planted, root):
    with pytest.raises(NoSuchKey):
        store.get("link")
    with pytest.raises(InvalidKey):
        store.put("link", b"pwned", {})
    store.delete("link")
    assert (planted / "secret").read_bytes() == b"secret"
    assert (root / "link").is_symlink()
    page = store.list("", "/")
    assert (page.objects, page.prefixes) == ([], [])


def test_planted_private_dir_symlink_is_refused(tmp_path):
    root = tmp_path / "bucket2"
    root.mkdir()
    outside = tmp_path / "outside2"
    outside.mkdir()
    os.symlink(outside, root / PRIVATE)
    s = FileStore(root)
    with pytest.raises(StoreError):
        s.put("k", b"x", {})
    with pytest.raises(StoreError):
        s.check()
    assert list(outside.iterdir()) == []
    assert not (root / "k").exists()


# --- layout, atomicity, crash leftovers -------------------------------------------------------


def test_on_disk_layout(store, root):
    etag = store.put("lay/obj.txt", b"visible bytes", {"mode": "33188"})
    assert (root / "lay" / "obj.txt").read_bytes() == b"visible bytes"
    record = json.loads(os.getxattr(root / "lay" / "obj.txt", XATTR_OBJ))
    assert record["etag"] == etag == hashlib.md5(b"visible bytes").hexdigest()
    assert record["meta"] == {"mode": "33188"}

    store.put("folder/", b"", {"mode": "16877"})
    assert (root / "folder").is_dir()
    marker = json.loads(os.getxattr(root / "folder", XATTR_MARKER))
    assert marker["meta"] == {"mode": "16877"}
    assert sorted(p.name for p in root.iterdir()) == [PRIVATE, "folder", "lay"]


def test_marker_key_must_be_empty(store):
    with pytest.raises(InvalidKey):
        store.put("dir/", b"content", {})
    store.put("f", b"content", {})
    with pytest.raises(InvalidKey):
        store.copy("f", "dir/")


def test_crash_leftover_temp_is_invisible_and_reaped(store, root):
    tmp = root / PRIVATE / "tmp"
    (tmp / "0123abcd.tmp").write_bytes(b"half an object")
    old = tmp / "old.tmp"
    old.write_bytes(b"from a crash long ago")
    long_ago = time.time() - 3 * 24 * 3600
    os.utime(old, (long_ago, long_ago))
    assert all_keys(store) == []
    assert store.list("", "/").prefixes == []
    store.check()
    assert sorted(p.name for p in tmp.iterdir()) == ["0123abcd.tmp"]  # recent: may be live


def test_failed_puts_leave_nothing(store, root, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.put("x/y", tmp_path / "no-such-body", {})
    with pytest.raises(PreconditionFailed):
        store.put("new/deep/key", b"x", {}, if_match="0" * 32)
    assert sorted(p.name for p in root.iterdir()) == [PRIVATE]
    assert list((root / PRIVATE / "tmp").iterdir()) == []


def test_readers_never_see_a_partial_object(store, root):
    """A reader racing with writers sees one whole version or another."""
    versions = [bytes([i]) * (256 * 1024) for i in range(1, 6)]
    store.put("hot", versions[0], {})
    done = threading.Event()
    reads = []
    torn = []

    def reader():
        while not done.is_set():
            data = store.get("hot")
            reads.append(data[:1])
            if data not in versions:
                torn.append(data[:1] + data[-1:])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(4):
            for v in versions:
                store.put("hot", v, {})
    finally:
        done.set()
        t.join(30)
    assert reads and torn == []


# --- files placed by hand ---------------------------------------------------------------------


def test_hand_placed_files_are_objects(store, root):
    (root / "hand" / "sub").mkdir(parents=True)
    (root / "hand" / "sub" / "x.txt").write_bytes(b"by hand")
    (root / "top.csv").write_bytes(b"a,b\n")
    (root / "emptydir" / "deeper").mkdir(parents=True)  # no object: never a prefix

    page = store.list("", "/")
    assert [o.key for o in page.objects] == ["top.csv"]
    assert page.prefixes == ["hand/"]
    assert all_keys(store) == ["hand/sub/x.txt", "top.csv"]
    info = store.head("hand/sub/x.txt")
    assert (info.size, info.metadata) == (7, {})
    assert store.head("hand/sub/x.txt").etag == info.etag  # stable
    assert store.get("hand/sub/x.txt", 3) == b"hand"
    with pytest.raises(PreconditionFailed):
        store.put("hand/sub/x.txt", b"new", {}, if_none_match=True)
    store.put("hand/sub/x.txt", b"new", {"mode": "33188"}, if_match=info.etag)
    assert store.get("hand/sub/x.txt") == b"new"
    store.copy("top.csv", "copied.csv")
    assert store.get("copied.csv") == b"a,b\n"
    assert store.head("copied.csv").etag == store.head("copied.csv").etag


def test_edit_by_hand_changes_the_etag(store, root):
    e1 = store.put("doc", b"one", {"mode": "33188"})
    with open(root / "doc", "wb") as f:  # in place: the xattr stays, but is outdated
        f.write(b"changed by hand")
    info = store.head("doc")
    assert info.etag != e1
    assert info.metadata == {"mode": "33188"}
    with pytest.raises(PreconditionFailed):
        store.put("doc", b"lost update", {}, if_match=e1)
    assert (root / "doc").read_bytes() == b"changed by hand"


def test_empty_unmarked_directories_give_way(store, root):
    (root / "e").mkdir()
    (root / "f" / "g" / "h").mkdir(parents=True)
    store.put("e", b"file now", {})
    store.put("f", b"file too", {})
    assert store.get("e") == b"file now" and store.get("f") == b"file too"


# --- conflicts and pruning --------------------------------------------------------------------


def test_key_conflicts(store):
    store.put("a", b"file", {})
    with pytest.raises(KeyConflict):
        store.put("a/b", b"x", {})
    with pytest.raises(KeyConflict):
        store.put("a/b/c", b"x", {})
    with pytest.raises(KeyConflict):
        store.put("a/", b"", {})
    store.put("d/x", b"x", {})
    with pytest.raises(KeyConflict):
        store.put("d", b"x", {})
    with pytest.raises(KeyConflict):
        store.copy("a", "d")
    store.put("m/", b"", {})
    with pytest.raises(KeyConflict):
        store.put("m", b"x", {})  # "m/" exists as a marker
    assert store.get("a") == b"file" and store.get("d/x") == b"x"
    store.delete("a")
    store.put("a/b", b"now fine", {})
    assert store.get("a/b") == b"now fine"


def test_delete_prunes_empty_unmarked_directories(store, root):
    store.put("p/q/r", b"x", {})
    store.put("p/keep", b"k", {})
    store.delete("p/q/r")
    assert not (root / "p" / "q").exists() and (root / "p").is_dir()
    store.delete("p/keep")
    assert not (root / "p").exists()

    store.put("m/", b"", {})
    store.put("m/n/o", b"x", {})
    store.delete("m/n/o")
    assert (root / "m").is_dir() and not (root / "m" / "n").exists()
    assert store.list("", "/").prefixes == ["m/"]
    store.delete("m/")
    assert not (root / "m").exists()
    assert sorted(p.name for p in root.iterdir()) == [PRIVATE]


def test_marker_on_existing_directory(store, root):
    store.put("dir/file", b"x", {})
    with pytest.raises(NoSuchKey):
        store.head("dir/")
    store.put("dir/", b"", {"mode": "16832"}, if_none_match=True)
    assert store.head("dir/").metadata == {"mode": "16832"}
    store.delete("dir/")
    assert store.get("dir/file") == b"x"
    with pytest.raises(NoSuchKey):
        store.head("dir/")


# --- root problems, several stores on one root ------------------------------------------------


def test_check_missing_root(tmp_path):
    s = FileStore(tmp_path / "missing")
    with pytest.raises(NoSuchBucket) as e:
        s.check()
    assert "missing" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NoSuchBucket):
        s.head("k")
    (tmp_path / "plainfile").write_bytes(b"")
    with pytest.raises(NoSuchBucket):
        FileStore(tmp_path / "plainfile").check()


def test_two_stores_share_a_root(root):
    a, b = FileStore(root), FileStore(root)
    try:
        ea = a.put("shared/k", b"from a", {"by": "a"})
        assert b.get("shared/k", if_match=ea) == b"from a"
        b.put("shared/k", b"from b", {"by": "b"}, if_match=ea)
        assert a.head("shared/k").metadata == {"by": "b"}
        with pytest.raises(PreconditionFailed):
            a.put("shared/k", b"stale", {}, if_match=ea)

        wins = []

        def race(s, i):
            try:
                s.put("race", str(i).encode(), {}, if_none_match=True)
                wins.append(i)
            except PreconditionFailed:
                pass

        threads = [threading.Thread(target=race, args=(s, i))
                   for i, s in enumerate([a, b] * 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(wins) == 1
        assert a.get("race") == str(wins[0]).encode()
    finally:
        a.close()
        b.close()


KEYS = 300


def test_processes_on_one_root_never_both_create(root, tmp_path):
    """flock serialises separate processes: each key is created exactly once."""
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from s3fuse.errors import PreconditionFailed
        from s3fuse.store.file import FileStore
        s = FileStore({str(root)!r}, durable=False)
        deadline = time.monotonic() + 60
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range({KEYS}):
            try:
                s.put(f"k/{{i}}", sys.argv[1].encode(), {{}}, if_none_match=True)
                print(i)
            except PreconditionFailed:
                pass
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"p{n}"],
                              stdout=subprocess.PIPE, text=True) for n in range(4)]
    time.sleep(0.5)  # let them all get to the start line
    go.write_bytes(b"")
    won = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        won.append({int(line) for line in out.split()})
    assert sum(len(w) for w in won) == KEYS  # nobody created a key another one created
    assert set().union(*won) == set(range(KEYS))
    s = FileStore(root)
    for n, keys in enumerate(won):
        for i in keys:
            assert s.get(f"k/{i}") == f"p{n}".encode()


def test_bad_continuation_token(store):
    store.put("a", b"", {})
    with pytest.raises(StoreError):
        store.list("", token="garbage")


# --- listing against a model ------------------------------------------------------------------

_segment = st.text(alphabet="ab.-0é", min_size=1, max_size=3).filter(
    lambda s: s not in (".", ".."))
_key = st.builds(lambda segs, marker: "/".join(segs) + ("/" if marker else ""),
                 st.lists(_segment, min_size=1, max_size=3), st.booleans())


def _holdable(keys: set[str]) -> bool:
    """A directory tree cannot hold a file ``k`` next to anything under ``k/``."""
    return not any(other.startswith(k + "/") for k in keys if not k.endswith("/")
                   for other in keys)


@settings(max_examples=60, deadline=None)
@given(keys=st.sets(_key, min_size=0, max_size=12).filter(_holdable),
       prefix=st.sampled_from(["", "a", "a/", "a.", "b/a", "é/", "a/b/", "-"]),
       delimiter=st.sampled_from([None, "/", ".", "a/"]),
       max_keys=st.integers(1, 4))
def test_listing_matches_the_memory_model(keys, prefix, delimiter, max_keys):
    """Every paginated listing of the file store equals the in-memory one."""
    model = MemoryStore()
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(tmp, durable=False)
        for key in keys:
            body = b"" if key.endswith("/") else key.encode()
            model.put(key, body, {})
            store.put(key, body, {})
        got = []
        want = []
        for s, out in ((store, got), (model, want)):
            token = None
            for _ in range(100):
                page = s.list(prefix, delimiter, token, max_keys)
                out.append(([(o.key, o.size, o.etag) for o in page.objects],
                            page.prefixes, page.next_token is None))
                token = page.next_token
                if token is None:
                    break
        assert got == want
        store.close()


# --- versions -----------------------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying at a step of a versioned change."""


def crash_at(step):
    def hook(reached):
        if reached == step:
            raise Crash(step)
    return hook


def version_summary(store, prefix=""):
    page = store.list_versions(prefix, max_keys=10_000)
    assert page.next_token is None
    return [(v.key, v.version_id, v.is_latest, v.is_delete_marker, v.etag)
            for v in page.versions]


def kept_files(root):
    """Every file in the versions area (key files excluded)."""
    base = root / PRIVATE / "versions"
    return sorted(p.name for p in base.rglob("*") if p.is_file() and p.name != "key")


def test_versioning_is_off_by_default_and_remembered(root):
    first = FileStore(root)
    assert first.versioning() == "off"
    assert not (root / PRIVATE / "versioning").exists()
    first.enable_versioning()
    first.enable_versioning()  # idempotent
    assert (root / PRIVATE / "versioning").read_text() == "enabled\n"
    second = FileStore(root)  # another process on the same root
    assert second.versioning() == "enabled"
    second.put("k", b"one", {})
    second.put("k", b"two", {})
    assert [v[1] != "null" for v in version_summary(first)] == [True, True]
    first.close()
    second.close()


def test_versions_are_never_keys(store, root):
    store.enable_versioning()
    store.put("a/b", b"one", {"m": "1"})
    store.put("a/b", b"two", {"m": "2"})
    store.put("dir/", b"", {"mode": "16877"})
    store.put("dir/", b"", {"mode": "16832"})
    store.delete("dir/")
    store.put("gone", b"g", {})
    store.delete("gone")
    assert all_keys(store) == ["a/b"]
    assert store.list("", "/").prefixes == ["a/"] and store.list("", "/").objects == []
    assert len(kept_files(root)) == 6  # a/b: 1; dir/: 2 + marker; gone: 1 + marker
    assert sorted(p.name for p in root.iterdir()) == [PRIVATE, "a"]
    for key in (".s3fuse-store/versions", ".s3fuse-store/versions/x", PRIVATE + "/"):
        with pytest.raises(InvalidKey):
            store.get(key)
        with pytest.raises(InvalidKey):
            store.get(key, version_id="null")
    assert store.list_versions(PRIVATE).versions == []
    assert {v[0] for v in version_summary(store)} == {"a/b", "dir/", "gone"}
    # the old marker versions keep their metadata
    dir_versions = [v for v in store.list_versions("dir/").versions]
    assert [v.is_delete_marker for v in dir_versions] == [True, False, False]
    assert store.head("dir/", version_id=dir_versions[1].version_id).metadata == {
        "mode": "16832"}
    assert store.head("dir/", version_id=dir_versions[2].version_id).metadata == {
        "mode": "16877"}


@pytest.mark.parametrize("version_id", [
    "../../../etc/passwd", "..", ".", "", "key", "null/../x", "/etc/passwd",
    "0" * 20 + "../x", "00000000000000000000-null", "0" * 28 + "/", "0" * 29])
def test_hostile_version_ids_read_nothing(store, root, version_id):
    store.enable_versioning()
    store.put("k", b"one", {})
    store.put("k", b"two", {})
    with pytest.raises(NoSuchKey):
        store.get("k", version_id=version_id)
    with pytest.raises(NoSuchKey):
        store.head("k", version_id=version_id)
    with pytest.raises(NoSuchKey):
        store.copy("k", "copied", src_version_id=version_id)


def test_old_versions_survive_edits_of_the_live_file(store, root):
    """A kept version is the replaced inode itself; the next object is a new inode."""
    store.enable_versioning()
    store.put("k", b"one", {})
    old = store.list_versions("k").versions[0].version_id
    store.put("k", b"two", {})
    (root / "k").write_bytes(b"edited by hand")
    assert store.get("k", version_id=old) == b"one"
    versions = store.list_versions("k").versions
    # the hand-edited file is a version of its own ("null": the store did not write it)
    assert [(v.version_id == "null", v.is_latest) for v in versions] == [
        (True, True), (False, False)]


def test_crash_between_keeping_the_old_version_and_the_rename(store, root):
    store.enable_versioning()
    e1 = store.put("d/k", b"one", {"v": "1"})
    before = version_summary(store)
    store.fault_hook = crash_at("version-kept")
    with pytest.raises(Crash):
        store.put("d/k", b"two", {"v": "2"})
    assert len(kept_files(root)) == 1  # the old version, linked aside: the crash's trace
    # The store is as it was: the object, its listing, its versions (no duplicate).
    for s in (store, FileStore(root)):
        assert s.get("d/k") == b"one" and s.head("d/k").etag == e1
        assert all_keys(s) == ["d/k"]
        assert version_summary(s) == before
        assert s.get("d/k", version_id=before[0][1]) == b"one"
    assert list((root / PRIVATE / "tmp").iterdir()) == []
    # The next write goes through and leaves exactly one old version.
    store.fault_hook = None
    e2 = store.put("d/k", b"two", {"v": "2"})
    after = version_summary(store)
    assert [(v[4], v[2]) for v in after] == [(e2, True), (e1, False)]
    assert after[1][1] == before[0][1]
    assert len(kept_files(root)) == 1


def test_crash_between_the_delete_marker_and_the_unlink(store, root):
    store.enable_versioning()
    e1 = store.put("k", b"one", {})
    before = version_summary(store)
    store.fault_hook = crash_at("marker-placed")
    with pytest.raises(Crash):
        store.delete("k")
    assert len(kept_files(root)) == 2  # the linked object and the marker
    assert store.get("k") == b"one" and version_summary(store) == before
    store.fault_hook = None
    store.delete("k")  # the journal replays the delete
    after = version_summary(store)
    assert [(v[2], v[3], v[4]) for v in after] == [(True, True, ""), (False, False, e1)]
    assert len(kept_files(root)) == 2  # the leftover marker went
    with pytest.raises(NoSuchKey):
        store.head("k")


def test_crash_while_keeping_a_marker_version(store, root):
    store.enable_versioning()
    store.put("m/", b"", {"mode": "1"})
    before = version_summary(store)
    store.fault_hook = crash_at("version-kept")
    with pytest.raises(Crash):
        store.put("m/", b"", {"mode": "2"})
    assert store.head("m/").metadata == {"mode": "1"}
    assert version_summary(store) == before
    store.fault_hook = None
    store.put("m/", b"", {"mode": "2"})
    versions = store.list_versions("m/").versions
    assert [store.head("m/", version_id=v.version_id).metadata for v in versions] == [
        {"mode": "2"}, {"mode": "1"}]


def test_versions_of_keys_that_became_prefixes(store):
    """History may hold a key ``a`` and keys under ``a/`` at once (the live tree
    cannot): a file replaced by a directory keeps its versions."""
    store.enable_versioning()
    e1 = store.put("a", b"a file", {})
    store.delete("a")
    e2 = store.put("a/b", b"below", {})
    assert [(v.key, v.is_delete_marker, v.etag) for v in store.list_versions("a").versions] \
        == [("a", True, ""), ("a", False, e1), ("a/b", False, e2)]
    old = store.list_versions("a").versions[1].version_id
    assert store.get("a", version_id=old) == b"a file"


def test_version_ids_sort_by_time(store):
    store.enable_versioning()
    ids = []
    for i in range(5):
        store.put("k", str(i).encode(), {})
        ids.append(store.list_versions("k").versions[0].version_id)
    assert ids == sorted(ids) and len(set(ids)) == 5
