"""The time-travel building blocks (s3fuse/timeline.py) against the in-memory store;
the commands and views that use them are tested through real mounts."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3fuse.errors import S3FuseError, UsageError
from s3fuse.store.memory import MemoryStore
from s3fuse.timeline import (Pinned, Snapshot, VersioningOff, check_snapshot_name,
                             current_at, format_when, iter_versions, parse_when, pin_tree,
                             require_versioning, snapshot_key)


@given(st.integers(min_value=0, max_value=4_000_000_000 * 10**9))
def test_time_format_round_trips(ns):
    assert parse_when(format_when(ns)) == ns


def test_time_format_examples():
    assert parse_when("2026-12-01T14:30:00Z") == 1_796_135_400 * 10**9
    assert format_when(1_796_135_400 * 10**9 + 5 * 10**8) == "2026-12-01T14:30:00.5Z"
    for bad in ("2026-12-01 14:30:00", "2026-12-01T14:30:00+01:00", "2026-13-01T00:00:00Z",
                "yesterday", ""):
        with pytest.raises(UsageError):
            parse_when(bad)


def test_snapshot_names():
    assert check_snapshot_name("before-rm_1.2") == "before-rm_1.2"
    for bad in ("", ".hidden", "-x", "a/b", "x" * 101, "..", "sp ace"):
        with pytest.raises(UsageError):
            check_snapshot_name(bad)
    assert snapshot_key("ws/", "s1") == "ws/.s3fuse/snapshots/s1.json"
    assert snapshot_key("", "s1") == ".s3fuse/snapshots/s1.json"


def _tick() -> int:
    """A time strictly between two writes of the memory store (its clock is time_ns)."""
    time.sleep(0.002)
    t = time.time_ns()
    time.sleep(0.002)
    return t


def test_current_at_follows_writes_and_deletes():
    s = MemoryStore()
    s.enable_versioning()
    t0 = _tick()
    s.put("ws/a", b"a1", {})
    s.put("ws/b", b"b1", {})
    t1 = _tick()
    s.put("ws/a", b"a2", {})
    s.delete("ws/b")
    t2 = _tick()
    s.put("ws/b", b"b3", {})
    t3 = _tick()

    def at(t):
        return {k: s.get(k, version_id=v.version_id)
                for k, v in current_at(iter_versions(s, "ws/"), t).items()}

    assert at(t0) == {}
    assert at(t1) == {"ws/a": b"a1", "ws/b": b"b1"}
    assert at(t2) == {"ws/a": b"a2"}
    assert at(t3) == {"ws/a": b"a2", "ws/b": b"b3"}


def test_pin_tree_leaves_out_records_and_round_trips():
    s = MemoryStore()
    s.enable_versioning()
    s.put("ws/a", b"a1", {})
    s.put("ws/d/c", b"c1", {})
    s.put("ws/.s3fuse/snapshots/old.json", b"{}", {})
    s.put("other", b"x", {})
    pinned = pin_tree(s, "ws/", time.time_ns())
    assert sorted(p.key for p in pinned) == ["a", "d/c"]
    snap = Snapshot("s1", 1_796_135_400 * 10**9, "bucket", "ws/", pinned)
    back = Snapshot.decode(snap.encode())
    assert back == Snapshot("s1", snap.created_ns, "bucket", "ws/",
                            sorted(pinned, key=lambda p: p.key))
    with pytest.raises(S3FuseError):
        Snapshot.decode(b'{"format": "something-else/9"}')
    with pytest.raises(S3FuseError):
        Snapshot.decode(b"not json")
    assert isinstance(back.objects[0], Pinned)


def test_require_versioning_says_how():
    s = MemoryStore()
    with pytest.raises(VersioningOff, match="s3fuse versioning enable"):
        require_versioning(s, "snapshot")
    s.enable_versioning()
    require_versioning(s, "snapshot")


def test_lifecycle_warning_names_the_rule_that_expires_pinned_versions():
    from s3fuse.snapshots import lifecycle_warning

    class Rules(MemoryStore):
        rules: list = []

        def lifecycle_rules(self):
            return self.rules

    s = Rules("lifecycle-warning")
    assert lifecycle_warning(s, "ws/", 3) is None
    s.rules = [{"ID": "markers", "Status": "Enabled", "Filter": {"Prefix": ""},
                "Expiration": {"ExpiredObjectDeleteMarker": True}},
               {"ID": "other", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1}},
               {"ID": "off", "Status": "Disabled", "Prefix": "",
                "Expiration": {"Days": 1}}]
    assert lifecycle_warning(s, "ws/", 3) is None
    s.rules.append({"ID": "old", "Status": "Enabled",
                    "Filter": {"And": {"Prefix": "ws/a", "Tags": []}},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 30}})
    text = lifecycle_warning(s, "ws/", 3)
    assert text is not None and "old" in text and "30 days" in text and "\n" not in text
    s.rules = [{"ID": "gone", "Status": "Enabled", "Prefix": "", "Expiration": {"Days": 9}}]
    assert "expires objects" in lifecycle_warning(s, "ws/", 3)
