"""The ObjectStore contract (s3fuse/store/base.py) as test functions, shared by the
backends' test modules: tests/unit/test_store_contract.py runs it on the memory and
file stores, tests/s3/test_s3_contract.py on S3 (moto, and Ceph RGW where it is
installed). Each of those collects the ``test_*`` functions of this module with its
own fixtures (pytest resolves a fixture where a test is collected):

* ``store``: an empty store;
* ``many_keys``: how many keys the pagination test writes (fewer on S3, for speed);
* ``atomic_conditions``: whether concurrent conditional puts are serialised by the
  backend (moto checks and writes in two steps, so it is not);
* ``enable_versioning``: a function that turns versioning on for ``store``'s bucket;
* ``tick``: a function to call between a write and a delete whose order a version
  listing must show (moto keeps LastModified in whole seconds and lists versions and
  delete markers apart, so only the time orders them).

This module is not collected by itself (its name does not start with ``test_``).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import pytest

from s3fuse.errors import BodyChanged, NoSuchKey, PreconditionFailed


def collect_into(namespace: dict) -> None:
    """Put this module's test functions into a test module's ``namespace``."""
    for name, value in globals().items():
        if name.startswith("test_"):
            namespace[name] = value


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- helpers --------------------------------------------------------------------------------


def list_all(store, prefix, delimiter="/", max_keys=1000, max_pages=100):
    """Follow continuation tokens; return (entries in order, number of pages).

    An entry is ``("obj", key)`` or ``("pre", prefix)``.
    """
    entries, token, pages = [], None, 0
    while True:
        page = store.list(prefix, delimiter, token, max_keys)
        pages += 1
        assert len(page.objects) + len(page.prefixes) <= max_keys
        # Objects and prefixes of one page interleave in key order.
        merged = sorted([("obj", o.key) for o in page.objects]
                        + [("pre", p) for p in page.prefixes], key=lambda e: e[1])
        entries.extend(merged)
        token = page.next_token
        if token is None:
            return entries, pages
        assert pages < max_pages, "listing does not terminate"


def keys_of(entries, kind="obj"):
    return [name for k, name in entries if k == kind]


# --- objects ----------------------------------------------------------------------------------


def test_put_head_get_roundtrip(store):
    meta = {"mode": "33188", "uid": "1000", "mtime": "1700000000.5"}
    etag = store.put("dir/hello.txt", b"hello world", meta)
    assert etag == md5(b"hello world")

    info = store.head("dir/hello.txt")
    assert (info.key, info.size, info.etag, info.metadata) == (
        "dir/hello.txt", 11, etag, meta)
    assert abs(info.mtime_ns - time.time_ns()) < 600 * 10**9
    assert store.get("dir/hello.txt") == b"hello world"


def test_overwrite_replaces_body_and_metadata(store):
    store.put("k", b"first version", {"a": "1", "b": "2"})
    etag = store.put("k", b"second", {"c": "3"})
    info = store.head("k")
    assert (info.size, info.etag, info.metadata) == (6, etag, {"c": "3"})
    assert store.get("k") == b"second"


def test_missing_key(store):
    with pytest.raises(NoSuchKey):
        store.head("nope")
    with pytest.raises(NoSuchKey):
        store.get("nope")
    with pytest.raises(NoSuchKey):
        store.get_into("nope", io.BytesIO())
    with pytest.raises(NoSuchKey):
        store.get("nope", if_match=md5(b"x"))
    with pytest.raises(NoSuchKey):
        store.copy("nope", "dst")
    with pytest.raises(NoSuchKey):
        store.head("dst")


def test_empty_object(store):
    etag = store.put("empty", b"", {"mode": "33188"})
    assert etag == md5(b"")
    info = store.head("empty")
    assert (info.size, info.etag, info.metadata) == (0, md5(b""), {"mode": "33188"})
    assert store.get("empty") == b""
    assert store.get("empty", 0, 10) == b""
    assert store.get("empty", 5) == b""
    buf = io.BytesIO()
    assert store.get_into("empty", buf, 0, 100) == 0
    assert buf.getvalue() == b""


def test_ranged_get(store):
    data = bytes(range(256)) * 40  # 10240 bytes
    store.put("r", data, {})
    for start, end in [(0, None), (0, 1), (10, 20), (100, None), (10000, 10240),
                       (10000, 20000), (10239, None), (10240, None), (20000, None),
                       (20000, 30000), (5, 5), (7, 3)]:
        want = data[start:end] if end is None or end > start else b""
        assert store.get("r", start, end) == want, (start, end)

    buf = io.BytesIO()
    buf.write(b"xx")
    assert store.get_into("r", buf, 100, 200) == 100
    assert buf.getvalue() == b"xx" + data[100:200]
    buf = io.BytesIO()
    assert store.get_into("r", buf, 10200) == 40
    assert buf.getvalue() == data[10200:]
    assert store.get_into("r", io.BytesIO(), 50000, 60000) == 0


def test_get_pinned_to_etag(store):
    e1 = store.put("pin", b"version one", {})
    assert store.get("pin", if_match=e1) == b"version one"
    assert store.get("pin", 8, None, if_match=e1) == b"one"
    buf = io.BytesIO()
    assert store.get_into("pin", buf, if_match=e1) == 11

    e2 = store.put("pin", b"version two!", {})
    assert e2 != e1
    with pytest.raises(PreconditionFailed):
        store.get("pin", if_match=e1)
    with pytest.raises(PreconditionFailed):
        store.get("pin", 0, 4, if_match=e1)
    with pytest.raises(PreconditionFailed):
        store.get("pin", 100, 200, if_match=e1)  # past the end: the pin still counts
    with pytest.raises(PreconditionFailed):
        store.get_into("pin", io.BytesIO(), if_match=e1)
    assert store.get("pin", if_match=e2) == b"version two!"


def test_put_if_none_match(store):
    etag = store.put("once", b"one", {"a": "1"}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("once", b"two", {"a": "2"}, if_none_match=True)
    info = store.head("once")
    assert (info.etag, info.metadata) == (etag, {"a": "1"})
    assert store.get("once") == b"one"


def test_put_of_a_body_that_changed_while_read_stores_nothing(store, tmp_path):
    """``unchanged`` (a body another writer may change, as the mount's cache file) is
    asked after the last byte is read; False leaves the old object in place."""
    live = tmp_path / "live.bin"
    live.write_bytes(b"new bytes" * 1000)
    e1 = store.put("live", b"old", {"v": "1"})
    asked = []
    with pytest.raises(BodyChanged):
        store.put("live", str(live), {"v": "2"}, if_match=e1,
                  unchanged=lambda: asked.append(1) or False)
    assert asked
    info = store.head("live")
    assert (info.etag, info.metadata) == (e1, {"v": "1"}) and store.get("live") == b"old"
    store.put("live", str(live), {"v": "2"}, if_match=e1, unchanged=lambda: True)
    assert store.get("live") == b"new bytes" * 1000


def test_put_if_match(store):
    e1 = store.put("m", b"v1", {"v": "1"})
    e2 = store.put("m", b"v2", {"v": "2"}, if_match=e1)
    assert store.get("m") == b"v2"
    with pytest.raises(PreconditionFailed):
        store.put("m", b"v3", {"v": "3"}, if_match=e1)  # stale
    info = store.head("m")
    assert (info.etag, info.metadata) == (e2, {"v": "2"})
    assert store.get("m") == b"v2"
    # If-Match on a missing key fails the condition (S3 itself answers 404 here).
    with pytest.raises(PreconditionFailed):
        store.put("absent", b"x", {}, if_match=e1)
    with pytest.raises(NoSuchKey):
        store.head("absent")


def test_concurrent_create_has_one_winner(store, atomic_conditions):
    if not atomic_conditions:
        pytest.skip("this backend does not check conditions atomically")
    results = []
    lock = threading.Lock()

    def writer(i):
        try:
            store.put("race", f"writer {i}".encode(), {}, if_none_match=True)
            outcome = i
        except PreconditionFailed:
            outcome = None
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if r is not None]
    assert len(results) == 8 and len(winners) == 1
    assert store.get("race") == f"writer {winners[0]}".encode()


def test_body_from_path(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    assert store.put("big/file.bin", path, {"k": "v"}) == md5(data)
    assert store.put("big/file2.bin", str(path), {}) == md5(data)
    assert store.get("big/file.bin") == data
    assert store.get("big/file2.bin", 1000, 2000) == data[1000:2000]
    assert store.head("big/file.bin").size == len(data)

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert store.put("big/empty", empty, {}) == md5(b"")
    assert store.get("big/empty") == b""


def test_unicode_keys(store):
    keys = ["ünïcødé/文件.txt", "emoji/😀 smile.bin", "odd/sp ace+plus=&?#%.txt",
            "rtl/שלום"]
    for i, key in enumerate(keys):
        store.put(key, f"body {i}".encode(), {"i": str(i)})
    for i, key in enumerate(keys):
        assert store.get(key) == f"body {i}".encode()
        assert store.head(key).metadata == {"i": str(i)}
    entries, _ = list_all(store, "")
    assert keys_of(entries, "pre") == sorted(k.split("/")[0] + "/" for k in keys)
    entries, _ = list_all(store, "", None)
    assert keys_of(entries) == sorted(keys)
    entries, _ = list_all(store, "ünïcødé/")
    assert keys_of(entries) == ["ünïcødé/文件.txt"]
    store.delete("emoji/😀 smile.bin")
    with pytest.raises(NoSuchKey):
        store.head("emoji/😀 smile.bin")


# --- copy -------------------------------------------------------------------------------------


def test_copy_keeps_metadata(store):
    src_etag = store.put("src", b"copy me", {"mode": "33188", "x": "y"})
    etag = store.copy("src", "dst/copied", None)
    info = store.head("dst/copied")
    assert info.etag == etag
    assert (info.size, info.metadata) == (7, {"mode": "33188", "x": "y"})
    assert store.get("dst/copied") == b"copy me"
    assert store.head("src").etag == src_etag  # the source is untouched


def test_copy_replaces_metadata(store):
    store.put("src", b"data", {"mode": "33188", "x": "y"})
    store.copy("src", "dst", {"mode": "33261"})
    assert store.head("dst").metadata == {"mode": "33261"}
    assert store.get("dst") == b"data"
    # chmod in the bucket: copy an object onto itself with new metadata
    store.copy("src", "src", {"mode": "33216"})
    assert store.head("src").metadata == {"mode": "33216"}
    assert store.get("src") == b"data"


def test_copy_pinned_source(store):
    e1 = store.put("src", b"one", {})
    store.copy("src", "dst1", None, src_if_match=e1)
    assert store.get("dst1") == b"one"
    store.put("src", b"two", {})
    with pytest.raises(PreconditionFailed):
        store.copy("src", "dst2", None, src_if_match=e1)
    with pytest.raises(NoSuchKey):
        store.head("dst2")


def test_copy_overwrites_destination(store):
    store.put("a", b"from a", {"k": "a"})
    store.put("b", b"old b", {"k": "b"})
    store.copy("a", "b")
    assert store.get("b") == b"from a"
    assert store.head("b").metadata == {"k": "a"}


# --- delete -----------------------------------------------------------------------------------


def test_delete_is_idempotent(store):
    store.put("d/x", b"x", {})
    store.delete("d/x")
    with pytest.raises(NoSuchKey):
        store.head("d/x")
    store.delete("d/x")
    store.delete("never/existed")
    store.delete("never/existed", if_match=md5(b"whatever"))
    entries, _ = list_all(store, "", None)
    assert entries == []


def test_delete_if_match(store):
    caps = store.probe("probe/scratch")
    e1 = store.put("del", b"one", {})
    e2 = store.put("del", b"two", {})
    if caps.conditional_delete:
        with pytest.raises(PreconditionFailed):
            store.delete("del", if_match=e1)
        assert store.get("del") == b"two"
    store.delete("del", if_match=e2)
    with pytest.raises(NoSuchKey):
        store.head("del")
    with pytest.raises(NoSuchKey):
        store.head("probe/scratch")  # probe cleans up after itself


# --- listing ----------------------------------------------------------------------------------


TREE = {
    "top.txt": b"t",
    "dir/": b"",
    "dir/a": b"aa",
    "dir/sub/b": b"bbb",
    "dir/sub/c": b"cccc",
    "empty/": b"",
    "x/y/z": b"z",
}


def put_tree(store, tree=TREE):
    return {key: store.put(key, body, {"n": key}) for key, body in tree.items()}


def test_list_delimiter_prefixes_and_markers(store):
    put_tree(store)

    def ls(prefix):
        page = store.list(prefix, "/")
        assert page.next_token is None
        return [o.key for o in page.objects], page.prefixes

    assert ls("") == (["top.txt"], ["dir/", "empty/", "x/"])
    assert ls("dir/") == (["dir/", "dir/a"], ["dir/sub/"])  # the marker is an object here
    assert ls("dir/sub/") == (["dir/sub/b", "dir/sub/c"], [])
    assert ls("empty/") == (["empty/"], [])
    assert ls("x/") == ([], ["x/y/"])
    assert ls("di") == ([], ["dir/"])
    assert ls("dir/s") == ([], ["dir/sub/"])
    assert ls("to") == (["top.txt"], [])
    assert ls("nope/") == ([], [])
    assert ls("nope") == ([], [])


def test_list_recursive(store):
    etags = put_tree(store)
    page = store.list("", None)
    assert [o.key for o in page.objects] == sorted(TREE)
    assert page.prefixes == [] and page.next_token is None
    for o in page.objects:
        assert (o.size, o.etag, o.metadata) == (len(TREE[o.key]), etags[o.key], None)
    page = store.list("dir/", None)
    assert [o.key for o in page.objects] == ["dir/", "dir/a", "dir/sub/b", "dir/sub/c"]
    page = store.list("dir/sub", None)
    assert [o.key for o in page.objects] == ["dir/sub/b", "dir/sub/c"]


def test_list_order_is_utf8_byte_order(store):
    # No key is both an object and a prefix, which a directory tree cannot hold.
    keys = ["a.txt", "a/b", "a-c", "a0", "a!", "ab", "A", "z", "é", "\ue000", "😀",
            "a/b.c", "a/b-c", "a/bc/d", "a/b0"]
    for key in keys:
        store.put(key, b"", {})
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert expected.index("a.txt") < expected.index("a/b")  # "." < "/"
    entries, _ = list_all(store, "", None)
    assert keys_of(entries) == expected

    # One entry per page: objects and common prefixes interleave in byte order.
    entries, pages = list_all(store, "", "/", max_keys=1)
    flat = [name for _, name in entries]
    assert flat == sorted(flat, key=lambda k: k.encode("utf-8"))
    assert keys_of(entries, "pre") == ["a/"]
    assert keys_of(entries) == [k for k in expected if "/" not in k]
    assert pages == len(flat)

    entries, _ = list_all(store, "a/", "/", max_keys=2)
    assert entries == [("obj", "a/b"), ("obj", "a/b-c"), ("obj", "a/b.c"), ("obj", "a/b0"),
                       ("pre", "a/bc/")]


def test_list_pagination(store, many_keys):
    page_size = 1000 if many_keys >= 2000 else max(10, many_keys // 3)
    keys = [f"many/{i:05d}" for i in range(many_keys)]
    subdirs = [f"many/{i:05d}x/inner" for i in range(0, many_keys, max(1, many_keys // 5))]
    for key in keys + subdirs:
        store.put(key, key.encode(), {})

    entries, pages = list_all(store, "many/", None, max_keys=page_size)
    assert keys_of(entries) == sorted(keys + subdirs)
    assert pages == -(-(len(keys) + len(subdirs)) // page_size)

    entries, _ = list_all(store, "many/", "/", max_keys=page_size)
    assert keys_of(entries) == keys
    assert keys_of(entries, "pre") == [k.rsplit("/", 1)[0] + "/" for k in subdirs]


def test_list_pagination_never_repeats_a_prefix(store):
    tree = {f"d{i}/{name}": b"" for i in range(5) for name in ("x", "y", "z/deep")}
    tree.update({f"f{i}": b"" for i in range(3)})
    for key in tree:
        store.put(key, b"", {})
    expected = [("pre", f"d{i}/") for i in range(5)] + [("obj", f"f{i}") for i in range(3)]
    for size in (1, 2, 3, 7, 100):
        entries, _ = list_all(store, "", "/", max_keys=size)
        assert entries == expected, size


def test_list_marker_pages(store):
    store.put("m/", b"", {})
    for i in range(3):
        store.put(f"m/{i}", b"", {})
    entries, pages = list_all(store, "m/", "/", max_keys=1)
    assert entries == [("obj", "m/"), ("obj", "m/0"), ("obj", "m/1"), ("obj", "m/2")]
    assert pages == 4


def test_markers(store):
    etag = store.put("folder/", b"", {"mode": "16877"})
    assert etag == md5(b"")
    info = store.head("folder/")
    assert (info.size, info.etag, info.metadata) == (0, md5(b""), {"mode": "16877"})
    assert store.get("folder/") == b""
    with pytest.raises(PreconditionFailed):
        store.put("folder/", b"", {}, if_none_match=True)
    store.put("folder/inner", b"i", {})
    store.delete("folder/")
    with pytest.raises(NoSuchKey):
        store.head("folder/")
    assert store.list("", "/").prefixes == ["folder/"]  # still a prefix: it has a key
    store.delete("folder/inner")
    page = store.list("", "/")
    assert (page.objects, page.prefixes) == ([], [])


# --- versions ---------------------------------------------------------------------------------


def all_versions(store, prefix, max_keys=1000, max_pages=200):
    """Every version under ``prefix`` following tokens; return (versions, pages)."""
    versions, token, pages = [], None, 0
    while True:
        page = store.list_versions(prefix, token, max_keys)
        pages += 1
        assert len(page.versions) <= max_keys
        versions.extend(page.versions)
        token = page.next_token
        if token is None:
            return versions, pages
        assert pages < max_pages, "version listing does not terminate"


def summary(versions):
    """(key, is_latest, is_delete_marker, etag) of each version, in listing order."""
    return [(v.key, v.is_latest, v.is_delete_marker, v.etag) for v in versions]


def test_unversioned_bucket_has_one_null_version_per_key(store):
    assert store.versioning() == "off"
    store.put("a", b"first", {})
    e2 = store.put("a", b"second", {"v": "2"})
    eb = store.put("b/c", b"c", {})
    store.put("gone", b"x", {})
    store.delete("gone")
    versions, _ = all_versions(store, "")
    assert [(v.key, v.version_id, v.is_latest, v.is_delete_marker, v.etag, v.size)
            for v in versions] == [("a", "null", True, False, e2, 6),
                                   ("b/c", "null", True, False, eb, 1)]
    assert store.get("a", version_id="null") == b"second"
    assert store.head("a", version_id="null").metadata == {"v": "2"}


def test_overwrite_keeps_every_version_newest_first(store, enable_versioning):
    enable_versioning()
    assert store.versioning() == "enabled"
    bodies = [b"version one", b"version two!", b"three"]
    etags = [store.put("dir/k", body, {"n": str(i)}) for i, body in enumerate(bodies)]
    store.put("dir/other", b"o", {})
    store.put("dirt", b"not under dir/", {})
    versions, _ = all_versions(store, "dir/")
    assert [v.key for v in versions] == ["dir/k"] * 3 + ["dir/other"]
    mine = versions[:3]
    assert [v.etag for v in mine] == etags[::-1]
    assert [v.size for v in mine] == [len(b) for b in bodies[::-1]]
    assert [v.is_latest for v in versions] == [True, False, False, True]
    assert not any(v.is_delete_marker for v in versions)
    ids = {v.version_id for v in mine}
    assert len(ids) == 3 and "null" not in ids
    assert mine[0].mtime_ns >= mine[1].mtime_ns >= mine[2].mtime_ns
    for v, i in zip(mine, (2, 1, 0), strict=True):
        assert store.get("dir/k", version_id=v.version_id) == bodies[i]
        info = store.head("dir/k", version_id=v.version_id)
        assert (info.etag, info.size, info.metadata) == (etags[i], len(bodies[i]), {"n": str(i)})
    old = mine[2].version_id
    assert store.get("dir/k", 8, None, version_id=old) == b"one"
    assert store.get("dir/k", 100, 200, version_id=old) == b""
    buf = io.BytesIO()
    assert store.get_into("dir/k", buf, 0, 7, version_id=old) == 7
    assert buf.getvalue() == b"version"
    assert store.get("dir/k", version_id=old, if_match=etags[0]) == bodies[0]
    with pytest.raises(PreconditionFailed):
        store.get("dir/k", version_id=old, if_match=etags[1])
    assert store.get("dir/k") == b"three"  # the current object is the newest


def test_delete_leaves_a_marker_and_the_old_versions(store, enable_versioning, tick):
    enable_versioning()
    e1 = store.put("x", b"one", {})
    e2 = store.put("x", b"two", {})
    tick()
    store.delete("x")
    with pytest.raises(NoSuchKey):
        store.head("x")
    assert store.list("", None).objects == []
    versions, _ = all_versions(store, "")
    assert summary(versions) == [("x", True, True, ""), ("x", False, False, e2),
                                 ("x", False, False, e1)]
    marker = versions[0]
    assert marker.size == 0
    for read in (lambda: store.get("x", version_id=marker.version_id),
                 lambda: store.head("x", version_id=marker.version_id)):
        with pytest.raises(NoSuchKey):
            read()
    assert store.get("x", version_id=versions[2].version_id) == b"one"

    tick()
    e3 = store.put("x", b"three", {})
    versions, _ = all_versions(store, "")
    assert summary(versions) == [("x", True, False, e3), ("x", False, True, ""),
                                 ("x", False, False, e2), ("x", False, False, e1)]
    assert versions[1].version_id == marker.version_id


def test_a_prefix_whose_keys_are_all_deleted_is_not_listed(store, enable_versioning):
    """On a versioned bucket a removed directory stays removed: a delimited listing
    names no common prefix whose every key has a delete marker as latest version."""
    enable_versioning()
    for key in ("gone/a", "gone/sub/b", "kept/a", "kept/b", "top"):
        store.put(key, b"1", {})
    for key in ("gone/a", "gone/sub/b", "kept/a"):
        store.delete(key)
    assert list_all(store, "")[0] == [("pre", "kept/"), ("obj", "top")]
    assert list_all(store, "gone/")[0] == []


def test_versions_written_before_versioning_was_enabled(store, enable_versioning):
    e0 = store.put("k", b"from before", {"old": "1"})
    enable_versioning()
    e1 = store.put("k", b"after", {})
    versions, _ = all_versions(store, "k")
    assert [(v.version_id == "null", v.etag, v.is_latest) for v in versions] == [
        (False, e1, True), (True, e0, False)]
    assert store.get("k", version_id="null") == b"from before"
    assert store.head("k", version_id="null").metadata == {"old": "1"}


def test_missing_versions(store, enable_versioning):
    enable_versioning()
    store.put("a", b"a", {})
    store.put("b", b"b", {})
    other = store.list_versions("b").versions[0].version_id
    for call in (lambda: store.get("a", version_id=other),
                 lambda: store.head("a", version_id=other),
                 lambda: store.get_into("a", io.BytesIO(), version_id=other),
                 lambda: store.copy("a", "c", src_version_id=other),
                 lambda: store.get("nope", version_id=other),
                 lambda: store.get("a", version_id="null")):  # written after enabling
        with pytest.raises(NoSuchKey):
            call()
    with pytest.raises(NoSuchKey):
        store.head("c")


def test_copy_from_a_version(store, enable_versioning):
    enable_versioning()
    e1 = store.put("src", b"old bytes", {"m": "old"})
    store.put("src", b"new bytes!", {"m": "new"})
    v1 = store.list_versions("src").versions[1].version_id
    assert store.copy("src", "dst", src_version_id=v1) == e1
    info = store.head("dst")
    assert (info.etag, info.metadata) == (e1, {"m": "old"})
    assert store.get("dst") == b"old bytes"
    store.copy("src", "dst2", {"m": "replaced"}, src_version_id=v1)
    assert store.head("dst2").metadata == {"m": "replaced"}
    assert store.get("dst2") == b"old bytes"
    store.copy("src", "src", src_version_id=v1, src_if_match=e1)  # a restore in place
    assert store.get("src") == b"old bytes" and store.head("src").metadata == {"m": "old"}
    versions, _ = all_versions(store, "src")
    assert [v.etag for v in versions] == [e1, md5(b"new bytes!"), e1]
    assert store.get("src", version_id=v1) == b"old bytes"  # still there, unchanged


def test_version_listing_pagination(store, enable_versioning, tick):
    enable_versioning()
    expected = []
    for key, writes, deleted in (("p/a", 5, False), ("p/b", 1, False), ("p/c", 3, True),
                                 ("p/d/e", 2, False)):
        etags = [store.put(key, f"{key} {i}".encode(), {}) for i in range(writes)]
        if deleted:
            tick()
            store.delete(key)
            expected.append((key, True, True, ""))
        expected += [(key, i == writes - 1 and not deleted, False, e)
                     for i, e in reversed(list(enumerate(etags)))]
    store.put("q", b"outside the prefix", {})
    full, pages = all_versions(store, "p/")
    assert summary(full) == expected and pages == 1
    for size in (1, 2, 3, 4, 7):
        versions, pages = all_versions(store, "p/", max_keys=size)
        assert [(v.key, v.version_id) for v in versions] == [
            (v.key, v.version_id) for v in full], size
        assert pages == -(-len(full) // size), size


def all_version_entries(store, prefix, delimiter, max_keys=1000, max_pages=200):
    """Versions and common prefixes of one level, in page order, following tokens:
    ``("v", key, version_id)`` and ``("pre", prefix)``; and the number of pages."""
    entries, token, pages = [], None, 0
    while True:
        page = store.list_versions(prefix, token, max_keys, delimiter=delimiter)
        pages += 1
        # (moto may add a common prefix to a full page: not counted here)
        assert len(page.versions) <= max_keys and len(page.prefixes) <= max_keys
        entries += [("v", v.key, v.version_id) for v in page.versions]
        entries += [("pre", p) for p in page.prefixes]
        token = page.next_token
        if token is None:
            return entries, pages
        assert pages < max_pages, "version listing does not terminate"


def test_version_listing_with_a_delimiter(store, enable_versioning, tick):
    enable_versioning()
    store.put("w/a.txt", b"1", {})
    store.put("w/a.txt", b"2", {})
    store.put("w/a/deep/x", b"x", {})
    store.put("w/b/", b"", {})  # a directory marker
    store.put("w/gone/y", b"y", {})
    tick()
    store.delete("w/gone/y")  # only a marker is current: still a common prefix
    store.put("w/z", b"z", {})
    store.put("wx/outside", b"o", {})
    page = store.list_versions("w/", delimiter="/")
    assert page.next_token is None
    assert page.prefixes == ["w/a/", "w/b/", "w/gone/"]
    assert [(v.key, v.is_latest) for v in page.versions] == [
        ("w/a.txt", True), ("w/a.txt", False), ("w/z", True)]
    assert [v.etag for v in page.versions[:2]] == [md5(b"2"), md5(b"1")]
    inner = store.list_versions("w/b/", delimiter="/")
    assert [v.key for v in inner.versions] == ["w/b/"] and inner.prefixes == []
    top = store.list_versions("", delimiter="/")
    assert (top.prefixes, top.versions) == (["w/", "wx/"], [])
    # no delimiter: the whole subtree, as before
    assert {v.key for v in store.list_versions("w/").versions} == {
        "w/a.txt", "w/a/deep/x", "w/b/", "w/gone/y", "w/z"}
    full, pages = all_version_entries(store, "w/", "/")
    assert pages == 1
    # pages of any size neither lose nor repeat a version or a prefix
    for size in (1, 2, 3, 4):
        entries, pages = all_version_entries(store, "w/", "/", max_keys=size)
        assert sorted(entries) == sorted(full), size
        assert len(entries) == len(full) == 6, size
        assert pages <= 6, size


def test_copy_version_and_delete_one_version(store, enable_versioning, tick):
    enable_versioning()
    bucket = getattr(store, "bucket", "")  # S3: this bucket; the others ignore it
    e1 = store.put("src", b"pinned", {"m": "1"})
    v1 = store.list_versions("src").versions[0].version_id
    made = store.copy_version(bucket, "src", v1, "dst", 6, if_none_match=True)
    assert made.etag == e1 and store.get("dst") == b"pinned"
    versions, _ = all_versions(store, "dst")
    first = versions[0].version_id
    # the copy's version id, or where the server does not say (Ceph RGW 16), its time
    assert made.version_id == first or (made.version_id is None
                                        and made.mtime_ns == versions[0].mtime_ns)
    assert store.head("dst").metadata == {"m": "1"}
    tick()
    store.delete("dst")
    tick()
    # a copy over a delete marker is allowed (the key does not exist): the one a fork
    # makes over a change in its DEST, and removes again by its version id
    store.copy_version(bucket, "src", v1, "dst", 6, if_none_match=True)
    again = all_versions(store, "dst")[0][0].version_id
    assert again != first and store.get("dst") == b"pinned"
    store.delete("dst", version_id=again)
    with pytest.raises(NoSuchKey):
        store.head("dst")
    versions, _ = all_versions(store, "dst")
    assert [(v.is_delete_marker, v.is_latest) for v in versions] == [(True, True),
                                                                     (False, False)]
    store.delete("dst", version_id=versions[0].version_id)  # the marker: the copy is back
    assert store.get("dst") == b"pinned"
    assert [v.version_id for v in all_versions(store, "dst")[0]] == [first]
    store.delete("dst", version_id=first)
    with pytest.raises(NoSuchKey):
        store.head("dst")
    assert all_versions(store, "dst")[0] == []
    assert store.get("src") == b"pinned"
