"""Python workloads, run in a child process and timed inside it (``bench.py op ...``)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

# ======================================================================================
# Python workloads, run in a child process and timed inside it (``bench.py op ...``)
# ======================================================================================

def small_content(i: int, size: int) -> bytes:
    block = hashlib.sha256(str(i).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def tmp_content(i: int) -> bytes:
    return (f'{{"round": {i}, "pad": "' + "x" * 4000 + '"}\n').encode()


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
    else:
        print(f"unknown op {name}", file=sys.stderr)
        return 2
    print(json.dumps({"elapsed": time.perf_counter() - t0}))
    return 0

