"""Memory backend specifics: request counts, fault injection, snapshots, shared names."""

from __future__ import annotations

import io

import pytest

from s3fuse.errors import PreconditionFailed, StoreError, TransientStoreError
from s3fuse.store import open_store
from s3fuse.store.base import Capabilities
from s3fuse.store.memory import MemoryStore, drop


@pytest.fixture
def shared_name(request):
    name = f"test-{request.node.name}"
    drop(name)
    yield name
    drop(name)


def test_counts_by_kind():
    s = MemoryStore()
    s.put("a", b"1", {})
    s.put("b/c", b"2", {})
    s.head("a")
    s.get("a")
    s.get_into("a", io.BytesIO(), 0, 1)
    s.copy("a", "z")
    s.delete("z")
    s.list("")
    assert s.counts == {"put": 2, "head": 1, "get": 2, "copy": 1, "delete": 1, "list": 1}


def test_injected_faults_fire_in_order_and_are_counted():
    s = MemoryStore()
    s.put("k", b"v", {})
    boom = TransientStoreError("injected")
    s.inject("get", boom, times=2)
    for _ in range(2):
        with pytest.raises(TransientStoreError):
            s.get("k")
    assert s.get("k") == b"v"
    assert s.counts["get"] == 3
    s.inject("put", PreconditionFailed("injected"))
    with pytest.raises(PreconditionFailed):
        s.put("k", b"other", {})
    assert s.snapshot() == {"k": (b"v", {})}  # the failed put changed nothing
    s.put("k", b"other", {})
    with pytest.raises(ValueError):
        s.inject("nonsense", boom)


def test_snapshot_is_a_copy():
    s = MemoryStore()
    s.put("dir/", b"", {"mode": "16877"})
    s.put("dir/f", b"data", {"mode": "33188"})
    snap = s.snapshot()
    assert snap == {"dir/": (b"", {"mode": "16877"}), "dir/f": (b"data", {"mode": "33188"})}
    snap["dir/f"][1]["mode"] = "0"
    assert s.head("dir/f").metadata == {"mode": "33188"}


def test_same_name_shares_state(shared_name):
    a = MemoryStore(shared_name)
    b, prefix = open_store(f"memory://{shared_name}/sub")
    assert prefix == "sub/"
    a.put("sub/k", b"v", {})
    assert b.get("sub/k") == b"v"
    assert b.counts is a.counts and a.counts["get"] == 1
    b.inject("head", TransientStoreError("x"))
    with pytest.raises(TransientStoreError):
        a.head("sub/k")
    assert MemoryStore().snapshot() == {}  # unnamed stores are private
    drop(shared_name)
    assert MemoryStore(shared_name).snapshot() == {}


def test_servers_that_ignore_conditions():
    s = MemoryStore(honour=Capabilities(False, False, False))
    assert s.probe("scratch") == Capabilities(False, False, False)
    e1 = s.put("k", b"1", {})
    s.put("k", b"2", {}, if_none_match=True)  # ignored, as such a server would
    s.put("k", b"3", {}, if_match=e1)
    s.copy("k", "c", src_if_match=e1)
    s.delete("k", if_match=e1)
    assert s.snapshot() == {"c": (b"3", {})}
    assert MemoryStore().probe("x") == Capabilities(True, True, True)


def test_bad_continuation_token():
    s = MemoryStore()
    s.put("a", b"", {})
    with pytest.raises(StoreError):
        s.list("", token="garbage")
