"""Large files the way ML tools write them: a checkpoint written under a temporary
name, fsynced, then ``os.replace``d over the previous one. The bytes go up once: a
file renamed while its upload runs follows the rename server-side (a copy and a
delete), instead of being sent again under its new name."""

from __future__ import annotations

import os
import stat

import pytest
from counting_proxy import GatedProxy
from mounts import daemon_pid, make_mount, require_fuse, wait_dead

from s3fuse.metadata import parse_time_ns

pytestmark = pytest.mark.fuse

MiB = 1 << 20


@pytest.fixture
def gated(tmp_path, s3_target):
    """A mount of a new bucket on moto, and on Ceph RGW, through a GatedProxy (not
    mounted yet)."""
    require_fuse()
    proxy = GatedProxy(int(s3_target.endpoint.rsplit(":", 1)[1]))
    m = make_mount(tmp_path, f"s3://{s3_target.bucket}/data", proxy.url)
    try:
        yield m, proxy
    finally:
        proxy.gate.set()
        m.cleanup()
        proxy.stop()


def checkpoint_bytes(size: int, seed: int) -> bytes:
    block = os.urandom(1 << 16) if seed < 0 else bytes([seed % 251]) * (1 << 16)
    return (block * (size // len(block) + 1))[:size]


def write_fsynced(path: str, data: bytes, mode: int = 0o644) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        for i in range(0, len(data), 4 * MiB):
            f.write(data[i:i + 4 * MiB])
        f.flush()
        os.fsync(f.fileno())


def test_a_checkpoint_renamed_while_uploading_goes_up_once(gated):
    m, proxy = gated
    m.mount()
    old = b"previous checkpoint"
    with open(m.p("model.ckpt"), "wb") as f:
        f.write(old)
    m.sync()
    data = checkpoint_bytes(20 * MiB, -1)  # a multipart upload (8 MiB parts)
    proxy.gate.clear()
    sent0 = proxy.sent
    write_fsynced(m.p("model.ckpt.tmp"), data, 0o640)
    mtime_ns = os.stat(m.p("model.ckpt.tmp")).st_mtime_ns
    assert proxy.held.wait(30), "no upload started"  # (the flush window is 1 s)
    os.replace(m.p("model.ckpt.tmp"), m.p("model.ckpt"))
    proxy.gate.set()
    m.sync()
    assert m.objects() == {"model.ckpt": data}
    # the bytes went up once (the old code sent them again under the new name)
    assert proxy.sent - sent0 < 1.5 * len(data), "the bytes went up twice"
    md = m.head("model.ckpt")
    assert int(md["mode"]) == stat.S_IFREG | 0o640
    assert parse_time_ns(md["mtime"]) == mtime_ns
    assert os.listdir(m.path) == ["model.ckpt"]
    with open(m.p("model.ckpt"), "rb") as f:
        assert f.read() == data
    m.umount()


@pytest.mark.parametrize("point", ["after-copy", "before-delete"])
def test_a_kill_in_the_copy_after_such_a_rename_loses_nothing(gated, point):
    """The daemon dies between the landed upload's copy to the new name and the delete
    of the old one: the remount replays the op log; the bucket ends with the new name
    only, holding the bytes."""
    m, proxy = gated
    m.env = {"S3FUSE_TEST_FAULTS": f"crash@{point}"}
    m.mount()
    pid = daemon_pid(m)
    data = checkpoint_bytes(20 * MiB, 7)
    proxy.gate.clear()
    write_fsynced(m.p("model.ckpt.tmp"), data)
    assert proxy.held.wait(30), "no upload started"
    os.replace(m.p("model.ckpt.tmp"), m.p("model.ckpt"))
    proxy.gate.set()
    wait_dead(pid, 60)
    m.env = {}
    m.mount()  # cleans up the dead mount, replays the journal
    assert os.listdir(m.path) == ["model.ckpt"]
    m.sync()
    assert m.objects() == {"model.ckpt": data}
    # (read after the copy: moto ignores a copy's source condition, so there the
    # mount takes the copy's ETag from the bucket when the file is next opened, as
    # for any copy of a multipart object)
    with open(m.p("model.ckpt"), "rb") as f:
        assert f.read() == data
    m.umount()
