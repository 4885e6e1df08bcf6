"""The workloads: prepare, the timed command, and the checks of the result."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchlib.common import HERE, MiB, StepFailed, run
from benchlib.inputs import Inputs
from benchlib.ops import small_content, tmp_content
from benchlib.systems import System

# ======================================================================================
# Workloads
# ======================================================================================

class Workload:
    key = ""
    title = ""
    cold = False       # drop caches before the timed part
    remount = False    # ... and remount S3 systems with an empty cache directory
    writes = True      # catch up afterwards and count those requests

    def __init__(self, inp: Inputs) -> None:
        self.inp = inp
        self.sizes = inp.sizes

    def dir(self, s: System) -> Path:
        return s.root / "bench" / self.key

    def prefix(self) -> str:
        return f"bench/{self.key}/"

    def prepare(self, s: System) -> None:
        self.dir(s).mkdir(parents=True, exist_ok=True)

    def command(self, s: System) -> tuple[list[str], Path | None, bool]:
        """(argv, cwd, self_timed)"""
        raise NotImplementedError

    def verify(self, s: System) -> None:
        pass

    def verify_bucket(self, s: System) -> None:
        pass


def op_cmd(*args: object) -> list[str]:
    return [sys.executable, str(HERE / "bench.py"), "op", *map(str, args)]


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise StepFailed(msg)


def bucket_files(s: System, prefix: str) -> list[str]:
    return [k for k in s.ctx.keys(s.bucket, prefix) if not k.endswith("/")]


class CpTree(Workload):
    key = "cptree"

    @property
    def title(self) -> str:
        return f"cp -r of a {self.sizes.tree_files}-file tree"

    def prepare(self, s: System) -> None:
        self.dir(s).mkdir(parents=True, exist_ok=True)

    def command(self, s):
        return ["cp", "-r", str(self.inp.tree), str(self.dir(s) / "tree")], None, False

    def verify(self, s):
        run(["diff", "-r", "-q", str(self.inp.tree), str(self.dir(s) / "tree")], 600)

    def verify_bucket(self, s):
        n = len(bucket_files(s, self.prefix()))
        expect(n == self.sizes.tree_files, f"bucket has {n} files, expected "
                                           f"{self.sizes.tree_files}")


class GitCommit(Workload):
    key = "gitcommit"

    @property
    def title(self) -> str:
        return f"git init+add+commit, {self.sizes.tree_files} files"

    def prepare(self, s):
        self.dir(s).mkdir(parents=True, exist_ok=True)
        run(["cp", "-r", str(self.inp.tree), str(self.dir(s) / "work")], 600)
        if s.s3:
            s.catch_up(600)

    def command(self, s):
        script = "git init -q && git add -A && git commit -q -m bench"
        return ["sh", "-c", script], self.dir(s) / "work", False

    def verify(self, s):
        w = self.dir(s) / "work"
        env = s.ctx.env
        run(["git", "fsck", "--full", "--no-progress"], 600, cwd=w, env=env)
        _, out = run(["git", "ls-files"], 120, cwd=w, env=env)
        n = len(out.splitlines())
        expect(n == self.sizes.tree_files, f"git ls-files lists {n} files")
        _, st = run(["git", "status", "--porcelain"], 300, cwd=w, env=env)
        expect(st.strip() == "", f"git status not clean: {st[:200]}")


class GitClone(Workload):
    key = "gitclone"
    title = "git clone of a local repository"

    def command(self, s):
        return ["git", "clone", "-q", str(self.inp.repo), "clone"], self.dir(s), False

    def verify(self, s):
        c = self.dir(s) / "clone"
        env = s.ctx.env
        run(["git", "fsck", "--full", "--no-progress"], 600, cwd=c, env=env)
        run(["diff", "-r", "-q", "--exclude=.git", str(self.inp.repo), str(c)], 600)


class Untar(Workload):
    key = "untar"

    @property
    def title(self) -> str:
        return "tar xzf of a Python sdist"

    def command(self, s):
        return ["tar", "xzf", str(self.inp.sdist)], self.dir(s), False

    def verify(self, s):
        run(["diff", "-r", "-q", str(self.inp.sdist_tree), str(self.dir(s))], 600)


class Sqlite(Workload):
    key = "sqlite"

    @property
    def title(self) -> str:
        return f"SQLite, {self.sizes.sqlite_tx} tx of {self.sizes.sqlite_rows} inserts"

    def command(self, s):
        return op_cmd("sqlite", self.dir(s) / "db.sqlite", self.sizes.sqlite_tx,
                      self.sizes.sqlite_rows), None, True

    def _check(self, path: Path) -> None:
        import sqlite3
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
            n = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        finally:
            conn.close()
        expect(ok == "ok", f"integrity_check: {ok}")
        want = self.sizes.sqlite_tx * self.sizes.sqlite_rows
        expect(n == want, f"{n} rows, expected {want}")

    def verify(self, s):
        self._check(self.dir(s) / "db.sqlite")

    def verify_bucket(self, s):
        tmp = s.ctx.workdir / "tmp" / f"bucket-{s.name}.sqlite"
        s.ctx.client().download_file(s.bucket, self.prefix() + "db.sqlite", str(tmp))
        try:
            self._check(tmp)
        finally:
            tmp.unlink()
        left = bucket_files(s, self.prefix())
        expect(left == [self.prefix() + "db.sqlite"], f"bucket holds {left}")


class TmpReplace(Workload):
    key = "tmpreplace"

    @property
    def title(self) -> str:
        return f"{self.sizes.tmp_rounds}x NamedTemporaryFile+fsync+os.replace"

    def command(self, s):
        return op_cmd("tmpreplace", self.dir(s), self.sizes.tmp_rounds), None, True

    def verify(self, s):
        names = sorted(os.listdir(self.dir(s)))
        expect(names == ["config.json"], f"directory holds {names[:5]}")
        want = tmp_content(self.sizes.tmp_rounds - 1)
        expect((self.dir(s) / "config.json").read_bytes() == want, "wrong final content")

    def verify_bucket(self, s):
        keys = bucket_files(s, self.prefix())
        expect(keys == [self.prefix() + "config.json"], f"bucket holds {keys[:5]}")
        body = s.ctx.client().get_object(Bucket=s.bucket, Key=keys[0])["Body"].read()
        expect(body == tmp_content(self.sizes.tmp_rounds - 1), "bucket: wrong final content")


class SeqWrite(Workload):
    key = "seqwrite"

    @property
    def title(self) -> str:
        return f"write {self.sizes.seq_mib} MiB + fsync"

    def command(self, s):
        return ["dd", f"if={self.inp.seq}", f"of={self.dir(s) / 'big.bin'}", "bs=1M",
                "conv=fsync", "status=none"], None, False

    def verify(self, s):
        run(["cmp", str(self.inp.seq), str(self.dir(s) / "big.bin")], 600)

    def verify_bucket(self, s):
        head = s.ctx.client().head_object(Bucket=s.bucket, Key=self.prefix() + "big.bin")
        size = head["ContentLength"]
        expect(size == self.sizes.seq_mib * MiB, f"bucket object has {size} bytes")


class ColdRead(Workload):
    key = "coldread"
    cold = True
    remount = True
    writes = False

    @property
    def title(self) -> str:
        return f"read {self.sizes.seq_mib} MiB cold (S3: fresh mount)"

    def dir(self, s):
        return s.root / "bench" / "seqwrite"

    def prepare(self, s):
        expect((self.dir(s) / "big.bin").exists(), "no file from the write step")

    def command(self, s):
        return ["dd", f"if={self.dir(s) / 'big.bin'}", "of=/dev/null", "bs=1M",
                "status=none"], None, False

    def verify(self, s):
        run(["cmp", str(self.inp.seq), str(self.dir(s) / "big.bin")], 600)


class SmallFiles(Workload):
    key = "smallfiles"

    @property
    def title(self) -> str:
        return f"{self.sizes.small_files:,} files of {self.sizes.small_kib} KiB"

    def command(self, s):
        return op_cmd("smallfiles", self.dir(s), self.sizes.small_files,
                      self.sizes.small_kib * 1024), None, True

    def verify(self, s):
        d = self.dir(s)
        names = os.listdir(d)
        expect(len(names) == self.sizes.small_files, f"{len(names)} files")
        for i in range(self.sizes.small_files):
            data = (d / f"f{i:05d}").read_bytes()
            expect(data == small_content(i, self.sizes.small_kib * 1024), f"f{i:05d} differs")

    def verify_bucket(self, s):
        n = len(bucket_files(s, self.prefix()))
        expect(n == self.sizes.small_files, f"bucket has {n} files")


class Touch(Workload):
    key = "empty"

    @property
    def title(self) -> str:
        return f"create {self.sizes.empty_files:,} empty files"

    def command(self, s):
        return op_cmd("touch", self.dir(s), self.sizes.empty_files), None, True

    def verify(self, s):
        n = len(os.listdir(self.dir(s)))
        expect(n == self.sizes.empty_files, f"{n} files")

    def verify_bucket(self, s):
        n = len(bucket_files(s, self.prefix()))
        expect(n == self.sizes.empty_files, f"bucket has {n} files")


class LsL(Workload):
    writes = False

    def __init__(self, inp: Inputs, cold: bool) -> None:
        super().__init__(inp)
        self.cold = cold
        self.key = "ls_cold" if cold else "ls_warm"

    @property
    def title(self) -> str:
        return (f"ls -l of {self.sizes.empty_files:,} entries, "
                + ("after drop_caches" if self.cold else "warm"))

    def dir(self, s):
        return s.root / "bench" / "empty"

    def out(self, s: System) -> Path:
        return s.ctx.workdir / "tmp" / f"{self.key}-{s.name}.txt"

    def prepare(self, s):
        expect(self.dir(s).is_dir(), "no directory from the create step")
        if not self.cold:  # warm: the listing has been done once already
            run(["ls", "-l", str(self.dir(s))], 600)

    def command(self, s):
        return ["sh", "-c", f"ls -l '{self.dir(s)}' > '{self.out(s)}'"], None, False

    def verify(self, s):
        lines = self.out(s).read_text().splitlines()
        expect(len(lines) == self.sizes.empty_files + 1, f"ls -l printed {len(lines)} lines")


class RmRf(Workload):
    key = "rmrf"
    title = "rm -rf of everything"

    def prepare(self, s):
        expect((s.root / "bench").is_dir(), "nothing to remove")

    def command(self, s):
        return ["rm", "-rf", str(s.root / "bench")], None, False

    def verify(self, s):
        expect(not (s.root / "bench").exists(), "bench/ still there")

    def verify_bucket(self, s):
        left = s.ctx.keys(s.bucket, "bench/")
        expect(not left, f"bucket still holds {len(left)} keys under bench/, e.g. {left[:3]}")


def workloads(inp: Inputs) -> list[Workload]:
    return [CpTree(inp), GitCommit(inp), GitClone(inp), Untar(inp), Sqlite(inp),
            TmpReplace(inp), SeqWrite(inp), ColdRead(inp), SmallFiles(inp), Touch(inp),
            LsL(inp, cold=False), LsL(inp, cold=True), RmRf(inp)]

