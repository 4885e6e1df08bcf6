"""Python workloads, run in a child process and timed inside it (``bench.py op ...``)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

def small_content(i: int, size: int) -> bytes:
    block = hashlib.sha256(str(i).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def tmp_content(i: int) -> bytes:
    return (f'{{"round": {i}, "pad": "' + "x" * 4000 + '"}\n').encode()


def ckpt_chunks(chunk: bytes, total: int):
    """The checkpoint's chunks: ``chunk`` with its number in its first 8 bytes, until
    ``total`` bytes (every chunk differs, the bytes stay incompressible)."""
    n = 0
    while n * len(chunk) < total:
        piece = n.to_bytes(8, "big") + chunk[8:]
        yield piece[:total - n * len(chunk)]
        n += 1


def ckpt_sha256(chunk: bytes, total: int) -> str:
    h = hashlib.sha256()
    for piece in ckpt_chunks(chunk, total):
        h.update(piece)
    return h.hexdigest()


def dataset_content(i: int) -> bytes:
    """The 1 MiB of file ``i`` of the dataset: a 32-byte digest of ``i``, repeated."""
    head = hashlib.sha256(b"sample %d" % i).digest()
    return head * 32768


def parallel_read(paths: list[str], readers: int) -> None:
    """Read every file fully with ``readers`` threads; check each against its content."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i_path: tuple[int, str]) -> None:
        i, path = i_path
        with open(path, "rb") as f:
            data = f.read()
        if data != dataset_content(i):
            raise SystemExit(f"{path}: wrong content ({len(data)} bytes)")
    with ThreadPoolExecutor(readers) as ex:
        list(ex.map(one, enumerate(paths)))


def dataset_name(i: int) -> str:
    return f"shard{i // 100:03d}/sample{i:05d}.bin"


def op_main(argv: list[str]) -> int:
    name, args = argv[0], argv[1:]
    t0 = time.perf_counter()
    if name == "sqlite":
        import sqlite3
        db, tx, rows = args[0], int(args[1]), int(args[2])
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, tx INTEGER, v TEXT)")
        for i in range(tx):
            with conn:
                conn.executemany("INSERT INTO t (tx, v) VALUES (?, ?)",
                                 [(i, f"row {i}.{j} " + "x" * 100) for j in range(rows)])
        conn.close()
    elif name == "tmpreplace":
        import tempfile
        d, rounds = args[0], int(args[1])
        target = os.path.join(d, "config.json")
        for i in range(rounds):
            with tempfile.NamedTemporaryFile(dir=d, prefix=".config-", delete=False) as f:
                f.write(tmp_content(i))
                f.flush()
                os.fsync(f.fileno())
            os.replace(f.name, target)
    elif name == "smallfiles":
        d, n, size = args[0], int(args[1]), int(args[2])
        for i in range(n):
            with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
                f.write(small_content(i, size))
    elif name == "touch":
        d, n = args[0], int(args[1])
        for i in range(n):
            os.close(os.open(os.path.join(d, f"e{i:05d}"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    elif name == "ckpt":
        # a training job's checkpoint: chunks, fsync, then os.replace over the last one
        d, chunk_file, total = args[0], args[1], int(args[2])
        with open(chunk_file, "rb") as f:
            chunk = f.read()
        t0 = time.perf_counter()  # (reading the input is not the job's)
        tmp, final = os.path.join(d, "model.ckpt.tmp"), os.path.join(d, "model.ckpt")
        with open(tmp, "wb") as f:
            for piece in ckpt_chunks(chunk, total):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    elif name == "dataset":
        d, n = args[0], int(args[1])
        for i in range(n):
            path = os.path.join(d, dataset_name(i))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(dataset_content(i))
    elif name == "parread":
        d, n, readers = args[0], int(args[1]), int(args[2])
        parallel_read([os.path.join(d, dataset_name(i)) for i in range(n)], readers)
    elif name == "hub":
        # huggingface_hub's download: blobs/<etag>.incomplete in 10 MiB chunks, renamed
        # to blobs/<etag>, snapshots/<rev>/<name> a relative symlink to it
        d, src = args[0], args[1]
        blob = os.path.join(d, "blobs", "0123abcd")
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(src, "rb") as inp, open(blob + ".incomplete", "wb") as out:
            while piece := inp.read(10 << 20):
                out.write(piece)
        os.replace(blob + ".incomplete", blob)
        snap = os.path.join(d, "snapshots", "rev1")
        os.makedirs(snap, exist_ok=True)
        os.symlink("../../blobs/0123abcd", os.path.join(snap, "model.safetensors"))
    else:
        print(f"unknown op {name}", file=sys.stderr)
        return 2
    print(json.dumps({"elapsed": time.perf_counter() - t0}))
    return 0

