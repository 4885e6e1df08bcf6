"""The views' bookkeeping (s3fuse/views.py) on the in-memory store, without a mount:
what each step costs in requests, that forgotten nodes go (memory stays bounded) and
come back without asking the bucket again, and that reads stay pinned. The behaviour
users see is tested through real mounts in tests/fuse/test_views.py."""

from __future__ import annotations

import errno
import os
import stat
import time

import pyfuse3
import pytest
import trio

from s3fuse import timeline
from s3fuse.cache import Cache
from s3fuse.errors import FsError
from s3fuse.filesystem import Defaults, Filesystem
from s3fuse.fuse_ops import FuseOps
from s3fuse.journal import Journal
from s3fuse.remote import Remote
from s3fuse.store.memory import MemoryStore
from s3fuse.views import VIEW_BASE

N = 40


def test_costs_forgetting_and_pinned_reads(tmp_path):
    store = MemoryStore()
    store.enable_versioning()
    for i in range(N):
        store.put(f"p/dir/f{i:03d}", b"old %d" % i, {"mode": str(stat.S_IFREG | 0o600)})
    store.put("p/dir/sub/deep", b"deep", {})
    time.sleep(0.01)
    when = timeline.format_when(time.time_ns())
    time.sleep(0.01)
    for i in range(N):
        store.put(f"p/dir/f{i:03d}", b"new", {})
    store.delete("p/dir/sub/deep")  # the directory "sub" is gone now, not then

    journal = Journal(str(tmp_path / "journal"))
    cache = Cache(str(tmp_path), 1 << 30)
    fs = Filesystem(journal, cache, Remote(store, inline=True), "p/", Defaults(0, 0))
    fs.init()
    ops = FuseOps(fs, 1.0)
    views = ops.views

    async def call(op, *args):
        handled, answer = await views.intercept(ops, op, args)
        assert handled, op
        return answer

    async def lookup_path(names):
        ino = pyfuse3.ROOT_INODE
        for name in names:
            ino = (await call("lookup", ino, name, None)).st_ino
        return ino

    async def main():
        fixed = len(views.nodes)
        before = dict(store.counts)
        dir_ino = await lookup_path([b".s3fuse", b"at", when.encode(), b"dir"])
        assert dir_ino >= VIEW_BASE
        fh = await call("opendir", dir_ino, None)
        entries = views.nodes[dir_ino].entries
        assert sorted(entries) == sorted([b"f%03d" % i for i in range(N)] + [b"sub"])
        await call("releasedir", fh)
        made = {k: store.counts[k] - before.get(k, 0) for k in store.counts
                if store.counts[k] != before.get(k, 0)}
        # the view's root and dir/ (one page each), "dir/" and "dir/sub/" checked for a
        # key that existed then (one page each), whether versioning is on
        assert made == {"list_versions": 4, "versioning": 1}, made
        heads = store.counts["head"]
        inos = []
        for i in range(N):
            a = await call("lookup", dir_ino, b"f%03d" % i, None)
            assert stat.S_IMODE(a.st_mode) == 0o600 and a.st_size == len(b"old %d" % i)
            inos.append(a.st_ino)
        assert store.counts["head"] - heads == N  # one HEAD per version
        fh = (await call("open", inos[7], os.O_RDONLY, None)).fh
        assert await call("read", fh, 0, 100) == b"old 7"
        store.put("p/dir/f007", b"newer still", {})
        assert await call("read", fh, 0, 100) == b"old 7"
        await call("release", fh)
        with pytest.raises(FsError) as info:
            await call("open", inos[7], os.O_WRONLY, None)
        assert info.value.errno == errno.EROFS
        # the kernel forgets the directory and its files: the view's root stays (the
        # kernel still holds it), then goes too; the live tree's inodes pass through
        rest = views.forget([(ino, 1) for ino in inos] + [(dir_ino, 1), (5, 1)])
        assert rest == [(5, 1)] and len(views.nodes) == fixed + 1
        assert dir_ino not in views.nodes and not any(i in views.nodes for i in inos)
        [top] = [i for i, n in views.nodes.items() if n.name == when.encode()]
        views.forget([(top, 1)])
        assert len(views.nodes) == fixed
        # looked up again: listed again, but no version's headers are read twice
        heads = store.counts["head"]
        dir_ino = await lookup_path([b".s3fuse", b"at", when.encode(), b"dir"])
        a = await call("lookup", dir_ino, b"f003", None)
        assert stat.S_IMODE(a.st_mode) == 0o600 and a.st_ino not in inos
        assert store.counts["head"] == heads
        with pytest.raises(FsError) as info:
            await call("lookup", dir_ino, b"nope", None)
        assert info.value.errno == errno.ENOENT

    try:
        trio.run(main)
    finally:
        cache.close_all()
        journal.close()
