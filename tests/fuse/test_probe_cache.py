"""The capability probe through real mounts on moto, its requests counted by a proxy:
it runs after the mount is up (uploads wait for it), a second mount of the same cache
directory uses the answer the first one found (no probe requests), and that answer
is dropped when the bucket's versioning changes or the record is not sound.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from counting_proxy import GatedProxy
from mounts import S3FUSE, make_mount, require_fuse

from s3fuse import capcache
from s3fuse.journal import Journal
from s3fuse.store.base import Capabilities

pytestmark = pytest.mark.fuse

#: the methods a probe uses to write its scratch object; a mount that takes the kept
#: answer makes none of them (only HEAD of the bucket and GET of its versioning)
WRITES = ("PUT", "POST", "DELETE")


def _conditional_put(data: bytes) -> bool:
    """A PUT with If-Match: the probe's third request (its scratch object is in the
    bucket by then)."""
    return data.startswith(b"PUT /") and b"\r\nif-match:" in data.lower()


class ProbeProxy(GatedProxy):
    """Holds the probe's conditional PUT while ``gate`` is clear; counts writes."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port, hold=_conditional_put)

    def writes(self) -> int:
        with self.count_lock:
            return sum(self.counts.get(m, 0) for m in WRITES)


@pytest.fixture
def counted(tmp_path, moto_endpoint, s3_bucket):
    require_fuse()
    proxy = ProbeProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    m = make_mount(tmp_path, f"s3://{s3_bucket}/data", proxy.url)
    try:
        yield m, proxy
    finally:
        proxy.gate.set()
        m.cleanup()
        proxy.stop()


def _status(m) -> dict:
    return json.loads(os.getxattr(m.path, "user.s3fuse.status"))


def _wait_known(m, timeout: float = 30) -> dict:
    """The capabilities in the status, once the probe (or its kept answer) is in."""
    deadline = time.monotonic() + timeout
    while True:
        caps = _status(m)["capabilities"]
        if not caps["pending"]:
            return caps
        assert time.monotonic() < deadline, "the probe did not answer"
        time.sleep(0.05)


def _kept(m) -> dict | None:
    """The kept probe answer in the (unmounted) mount's journal."""
    j = Journal(os.path.join(m.cache_dir, "journal"))
    try:
        raw = j.get_meta(capcache.KEY)
    finally:
        j.close()
    return json.loads(raw) if raw else None


def _put_kept(m, raw: bytes) -> None:
    j = Journal(os.path.join(m.cache_dir, "journal"))
    try:
        j.set_meta(capcache.KEY, raw)
    finally:
        j.close()


def _keys(m) -> list[str]:
    """Every key under the mount's prefix (the probe's scratch object too)."""
    store, prefix = m.store()
    try:
        return [o.key for o in store.list(prefix, None).objects]
    finally:
        store.close()


def _log(m) -> str:
    with open(os.path.join(m.cache_dir, "s3fuse.log"), errors="replace") as f:
        return f.read()


def test_mount_is_ready_before_the_probe_and_uploads_wait_for_it(counted):
    m, proxy = counted
    proxy.gate.clear()  # the probe hangs, its scratch object in the bucket
    m.mount(wait_probe=False)  # returns: the probe runs after the mount is up
    assert _status(m)["capabilities"]["pending"] is True
    deadline = time.monotonic() + 30
    while not any(".s3fuse-probe" in k for k in _keys(m)):
        assert time.monotonic() < deadline, "the probe made no scratch object"
        time.sleep(0.05)
    assert os.listdir(m.path) == []  # the mount does not show it
    with open(m.p("f"), "wb") as f:
        f.write(b"written while the probe waits")
    res = subprocess.run([S3FUSE, "sync", m.path, "--timeout", "2"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0  # gave up: the upload waits for the probe
    assert "f" not in m.objects()
    proxy.gate.set()
    caps = _wait_known(m)
    assert caps["conditional_put"] is True  # what moto honours
    m.sync()
    assert m.objects() == {"f": b"written while the probe waits"}
    m.umount()
    assert _kept(m)["versioning"] == "off"


def test_a_second_mount_makes_no_probe_requests(counted):
    m, proxy = counted
    m.mount()
    first = _wait_known(m)
    m.umount()
    assert proxy.writes() >= 4  # the first mount probed: its scratch object
    kept = _kept(m)
    assert kept is not None and kept["versioning"] == "off"

    before = proxy.writes()
    m.mount()
    assert _wait_known(m) == first
    assert proxy.writes() == before, "the second mount probed again"
    with open(m.p("g"), "wb") as f:
        f.write(b"g")
    m.sync()  # uploads go ahead with the kept answer
    assert m.objects() == {"g": b"g"}
    m.umount()
    assert "server capabilities as probed before" in _log(m)


def test_turning_versioning_on_makes_the_next_mount_probe_again(counted):
    m, proxy = counted
    m.mount()
    _wait_known(m)
    m.umount()
    store, _ = m.store()
    try:
        store.enable_versioning()
    finally:
        store.close()
    before = proxy.writes()
    m.mount()
    _wait_known(m)
    assert proxy.writes() > before, "the kept answer was used on a versioned bucket"
    m.umount()
    assert _kept(m)["versioning"] == "enabled"
    # the probe left no versions behind under the reserved name
    store, prefix = m.store()
    try:
        assert [v.key for v in store.list_versions(prefix + ".s3fuse/").versions] == []
    finally:
        store.close()


@pytest.mark.parametrize("raw", [
    b"\xff\x00 not json",
    b'{"format": 1}',
    b"[1, 2, 3]",
    # a sound record, for another endpoint and bucket
    capcache.encode("s3://elsewhere at http://127.0.0.1:1", Capabilities(
        True, True, True, versioning="off"), time.time()),
], ids=["garbage", "partial", "not-a-dict", "foreign"])
def test_a_corrupt_or_foreign_record_is_ignored(counted, raw):
    m, proxy = counted
    m.mount()
    _wait_known(m)
    m.umount()
    _put_kept(m, raw)
    before = proxy.writes()
    m.mount()
    caps = _wait_known(m)
    assert proxy.writes() > before, "a record that is not this bucket's was used"
    assert caps["conditional_put"] is True
    m.umount()
    kept = _kept(m)  # replaced by this mount's sound answer
    assert kept["where"] != "s3://elsewhere at http://127.0.0.1:1"
    assert capcache.decode(json.dumps(kept).encode(), kept["where"], time.time())
