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
    # the copy is a HEAD and a COPY, as the S3 store makes it (test_s3_store.py)
    assert s.counts == {"put": 2, "head": 2, "get": 2, "copy": 1, "delete": 1, "list": 1}


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


# --- versions -------------------------------------------------------------------------------


def test_versioned_requests_are_counted():
    s = MemoryStore()
    s.enable_versioning()
    s.put("a", b"1", {})
    s.put("a", b"2", {})
    old = s.list_versions("a").versions[1].version_id
    s.head("a", version_id=old)
    s.get("a", version_id=old)
    s.get_into("a", io.BytesIO(), version_id=old)
    s.copy("a", "b", src_version_id=old)
    s.versioning()
    # (the copy of the version: a HEAD of it, then the COPY)
    assert s.counts == {"put": 2, "list_versions": 1, "head": 2, "get": 2, "copy": 1,
                        "versioning": 1}
    s.inject("list_versions", TransientStoreError("injected"))
    with pytest.raises(TransientStoreError):
        s.list_versions("")
    assert s.counts["list_versions"] == 2


def test_suspended_versioning_replaces_the_null_version():
    s = MemoryStore()
    s.put("k", b"null one", {})
    s.suspend_versioning()
    assert s.versioning() == "off"  # S3: never enabled stays "off"
    s.enable_versioning()
    s.put("k", b"versioned", {})
    s.suspend_versioning()
    assert s.versioning() == "suspended"
    s.put("k", b"null two", {})  # replaces the null version, keeps the versioned one
    s.put("k", b"null three", {})
    versions = s.list_versions("k").versions
    assert [(v.version_id == "null", v.size) for v in versions] == [(True, 10), (False, 9)]
    assert s.get("k", version_id="null") == b"null three"
    s.delete("k")  # a null delete marker replaces the null version
    versions = s.list_versions("k").versions
    assert [(v.version_id, v.is_delete_marker) for v in versions][0] == ("null", True)
    assert len(versions) == 2


def test_a_server_that_refuses_if_match_when_versioned(shared_name):
    """Ceph RGW 16 staged: every If-Match PUT is refused once versioning is on, and
    the probe says so for that bucket only."""
    s = MemoryStore(shared_name, refuse_if_match_when_versioned=True)
    assert s.probe("probe").conditional_put
    e1 = s.put("k", b"1", {})
    e2 = s.put("k", b"2", {}, if_match=e1)
    s.enable_versioning()
    assert not s.probe("probe").conditional_put
    with pytest.raises(PreconditionFailed):
        s.put("k", b"3", {}, if_match=e2)
    assert s.get("k") == b"2"
    assert MemoryStore().probe("probe").conditional_put  # another bucket
