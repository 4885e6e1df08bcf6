"""Cache files: write-back started early for large sequential writes."""

from __future__ import annotations

import os

from s3fuse import cache as cache_mod
from s3fuse.cache import WRITEBACK_KICK_BYTES, Cache

MiB = 1 << 20


def test_sequential_writes_start_write_back_every_kick_bytes(tmp_path, monkeypatch):
    started: list[tuple[int, int]] = []
    real = cache_mod._start_writeback
    assert real is not None  # glibc has sync_file_range

    def record(fd: int, offset: int, length: int) -> object:
        started.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(cache_mod, "_start_writeback", record)
    c = Cache(str(tmp_path), 1 << 30)
    c.create(7)
    block = os.urandom(MiB)
    total = 3 * WRITEBACK_KICK_BYTES + 5 * MiB
    for off in range(0, total, MiB):
        c.write(7, off, block)
    k = WRITEBACK_KICK_BYTES
    assert started == [(0, k), (k, k), (2 * k, k)]
    assert c.size(7) == total
    assert c.read(7, total - MiB, MiB) == block
    # a truncate below the last start, then writing again from there, starts again
    c.truncate(7, MiB)
    started.clear()
    for off in range(MiB, MiB + k, MiB):
        c.write(7, off, block)
    assert started == [(MiB, k)]
    # small files never start any
    started.clear()
    c.create(8)
    c.write(8, 0, b"x" * 4096)
    assert started == []
    c.close_all()


def test_an_empty_cache_file_is_made_on_first_use_and_a_leftover_one_is_emptied(tmp_path):
    c = Cache(str(tmp_path), 1 << 30)
    c.create(5)
    assert not os.path.exists(c.path(5)) and c.exists(5)
    assert c.read(5, 0, 10) == b"" and c.size(5) == 0  # made now, empty
    c.write(6, 0, b"old bytes")  # a file from before a restart ...
    c.close_all()
    c = Cache(str(tmp_path), 1 << 30)
    c.create(6)  # ... is emptied by create
    assert c.size(6) == 0
    c.create(7, 100)  # a sized one (a hole) is made at once
    assert os.path.getsize(c.path(7)) == 100
    c.close_all()
