"""File-operation exerciser: one file, a long random sequence of operations.

Writes, reads, truncates, writes through a shared mapping, fallocate, appends,
copy_file_range within the file, fsync and close/reopen, all on one file of the mount,
with a shadow copy in memory. After every operation the file's size and every byte
must equal the shadow. The mount keeps uploading the file meanwhile (the flush window
is one second, and a file that keeps changing is uploaded at least once a window);
at the end ``s3fuse sync`` must leave exactly the shadow's bytes in the bucket, and
so must the unmount.

The file grows to a little over the cache's 1 MiB block, so writes, truncates and
mappings cross block edges as well as page edges.

``S3FUSE_EXERCISER_OPS`` sets the number of operations (CI: 6,000 per backend);
``S3FUSE_EXERCISER_SEED`` replays one sequence (a failure prints its seed).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import time
from collections import Counter, deque

import pytest

pytestmark = [pytest.mark.fuse]

OPS_DEFAULT = 6_000
BLOCK = 1 << 20  # s3fuse.cache.BLOCK_BYTES
PAGE = mmap.PAGESIZE
MAX_SIZE = BLOCK + 256 * 1024
NAME = "exercised.bin"

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Exerciser:
    """Applies random operations to ``path`` and to ``shadow`` alike."""

    WEIGHTS = {"write": 30, "read": 14, "truncate": 10, "mmap_write": 12, "fallocate": 8,
               "reopen": 8, "append": 6, "copy_range": 6, "fsync": 3, "reopen_trunc": 1}

    def __init__(self, path: str, seed: int) -> None:
        self.path = path
        self.rng = random.Random(seed)
        self.pool = self.rng.randbytes(MAX_SIZE + 65536)
        self.shadow = bytearray()
        self.fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # per kind, operation and check
        self.unsupported: Counter[str] = Counter()
        self.log: deque[str] = deque(maxlen=25)
        names = list(self.WEIGHTS)
        self._names, self._weights = names, [self.WEIGHTS[n] for n in names]

    # --- choosing offsets and lengths -------------------------------------------------------
    def offset(self, limit: int) -> int:
        """Anywhere up to ``limit``, often right at a page or block edge."""
        limit = max(0, min(limit, MAX_SIZE - 1))
        r = self.rng.random()
        if r < 0.2:
            edge = self.rng.choice([BLOCK, PAGE * self.rng.randint(1, limit // PAGE + 1)])
            return max(0, min(limit, edge + self.rng.randint(-3, 3)))
        return self.rng.randint(0, limit)

    def length(self, at: int) -> int:
        r = self.rng.random()
        n = (self.rng.randint(1, 64) if r < 0.4 else self.rng.randint(1, 2 * PAGE)
             if r < 0.85 else self.rng.randint(1, 200_000))
        return max(1, min(n, MAX_SIZE - at))

    def data(self, n: int) -> bytes:
        start = self.rng.randint(0, len(self.pool) - n)
        return self.pool[start:start + n]

    # --- the shadow -----------------------------------------------------------------------
    def put(self, off: int, data: bytes) -> None:
        if off > len(self.shadow):
            self.shadow.extend(bytes(off - len(self.shadow)))
        self.shadow[off:off + len(data)] = data

    def resize(self, size: int) -> None:
        if size < len(self.shadow):
            del self.shadow[size:]
        else:
            self.shadow.extend(bytes(size - len(self.shadow)))

    # --- the operations ---------------------------------------------------------------------
    def op_write(self) -> str:
        off = self.offset(len(self.shadow) + 70_000)
        data = self.data(self.length(off))
        assert os.pwrite(self.fd, data, off) == len(data)
        self.put(off, data)
        return f"pwrite({off}, {len(data)})"

    def op_read(self) -> str:
        off = self.offset(len(self.shadow) + 100)
        n = self.length(off)
        got = os.pread(self.fd, n, off)
        want = bytes(self.shadow[off:off + n])
        assert got == want, f"pread({off}, {n}) returned {len(got)} bytes that differ " \
                            f"from the shadow's {len(want)} at {first_diff(got, want)}"
        return f"pread({off}, {n})"

    def op_truncate(self) -> str:
        size = self.offset(MAX_SIZE) if self.rng.random() < 0.5 else \
            self.offset(len(self.shadow))
        os.ftruncate(self.fd, size)
        self.resize(size)
        return f"ftruncate({size})"

    def op_mmap_write(self) -> str:
        size = len(self.shadow)
        if size == 0:
            return self.op_write()
        off = self.offset(size - 1)
        data = self.data(min(self.length(off), size - off))
        msync = self.rng.random() < 0.5
        with mmap.mmap(self.fd, size) as m:
            m[off:off + len(data)] = data
            if msync:
                m.flush()
        self.put(off, data)
        return f"mmap write({off}, {len(data)}{', msync' if msync else ''})"

    def op_fallocate(self) -> str:
        off = self.offset(len(self.shadow) + 70_000)
        n = self.length(off)
        mode = self.rng.choice([0, 0, FALLOC_FL_KEEP_SIZE,
                                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                FALLOC_FL_ZERO_RANGE, "posix"])
        label = f"fallocate(mode={mode}, {off}, {n})"
        try:
            if mode == "posix":
                os.posix_fallocate(self.fd, off, n)
            else:
                fallocate(self.fd, mode, off, n)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            # not implemented (pyfuse3 has no fallocate handler): nothing may change
            self.unsupported[f"fallocate mode {mode}"] += 1
            return label + " -> EOPNOTSUPP"
        size = len(self.shadow)
        if mode in (0, "posix", FALLOC_FL_ZERO_RANGE) and off + n > size:
            self.resize(off + n)
        if mode in (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE):
            end = min(off + n, len(self.shadow))
            if end > off:
                self.shadow[off:end] = bytes(end - off)
        return label

    def op_append(self) -> str:
        if len(self.shadow) >= MAX_SIZE:
            return self.op_truncate()
        data = self.data(self.length(len(self.shadow)))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND writes at the end whatever the offset
            assert os.write(fd, data) == len(data)
        finally:
            os.close(fd)
        self.shadow.extend(data)
        return f"append({len(data)})"

    def op_copy_range(self) -> str:
        size = len(self.shadow)
        if size < 2:
            return self.op_write()
        src = self.rng.randint(0, size - 1)
        n = self.rng.randint(1, min(size - src, 100_000))
        # copy_file_range within one file must not overlap
        candidates = [d for d in (self.rng.randint(0, max(0, src - n)),
                                  self.rng.randint(src + n, min(MAX_SIZE - n, size + 4096))
                                  if src + n <= min(MAX_SIZE - n, size + 4096) else -1)
                      if d >= 0 and (d + n <= src or d >= src + n)]
        if not candidates:
            return self.op_read()
        dst = self.rng.choice(candidates)
        done = 0
        while done < n:
            got = os.copy_file_range(self.fd, self.fd, n - done, src + done, dst + done)
            assert got > 0, f"copy_file_range made no progress at {done} of {n}"
            done += got
        self.put(dst, bytes(self.shadow[src:src + n]))
        return f"copy_file_range({src} -> {dst}, {n})"

    def op_fsync(self) -> str:
        os.fsync(self.fd)
        return "fsync"

    def op_reopen(self) -> str:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)
        return "close + open"

    def op_reopen_trunc(self) -> str:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_TRUNC)
        self.shadow.clear()
        return "close + open(O_TRUNC)"

    # --- running --------------------------------------------------------------------------
    def verify(self) -> None:
        size = os.fstat(self.fd).st_size
        assert size == len(self.shadow), f"size {size}, shadow {len(self.shadow)}"
        got = os.pread(self.fd, size + 1, 0)
        if got != self.shadow:
            raise AssertionError(f"content differs from the shadow at "
                                 f"{first_diff(got, bytes(self.shadow))} "
                                 f"(read {len(got)} bytes, shadow {len(self.shadow)})")

    def step(self, i: int) -> None:
        name = self.rng.choices(self._names, self._weights)[0]
        self.counts[name] += 1
        started = time.perf_counter()
        self.log.append(f"#{i} " + getattr(self, f"op_{name}")())
        self.verify()
        self.seconds[name] += time.perf_counter() - started

    def close(self) -> None:
        os.close(self.fd)


def first_diff(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            return next(j for j in range(i, min(i + 4096, n)) if a[j] != b[j])
    return n


@pytest.mark.timeout(3600)
def test_exerciser(mount):
    ops = int(os.environ.get("S3FUSE_EXERCISER_OPS", OPS_DEFAULT))
    seed = int(os.environ.get("S3FUSE_EXERCISER_SEED", random.randrange(1 << 32)))
    ex = Exerciser(mount.p(NAME), seed)
    started = time.monotonic()
    try:
        for i in range(ops):
            try:
                ex.step(i)
            except AssertionError as exc:
                raise AssertionError(
                    f"after operation {i} (S3FUSE_EXERCISER_SEED={seed}): {exc}\n"
                    f"last operations:\n  " + "\n  ".join(ex.log)) from None
    finally:
        ex.close()
    elapsed = time.monotonic() - started
    shadow = bytes(ex.shadow)
    mount.sync()
    objects = mount.objects()
    assert NAME in objects, f"{NAME} is not in the bucket after sync (seed {seed})"
    assert objects[NAME] == shadow, (
        f"the bucket holds {len(objects[NAME])} bytes that differ from the shadow "
        f"({len(shadow)}) at {first_diff(objects[NAME], shadow)} (seed {seed})")
    mount.umount()
    assert mount.objects()[NAME] == shadow
    per_op = {k: f"{n} x {1000 * ex.seconds[k] / n:.2f} ms"
              for k, n in sorted(ex.counts.items())}
    print(f"\nexerciser: {ops} operations in {elapsed:.1f}s "
          f"({ops / elapsed:.0f}/s, seed {seed}), final size {len(shadow)}; {per_op}; "
          f"not supported: {dict(ex.unsupported)}")
