"""Sizes and the input files every system gets the same copy of."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib.common import SDIST, WHEELS, MiB, StepFailed, log, run
from benchlib.systems import Ctx

# ======================================================================================
# Inputs
# ======================================================================================

@dataclass
class Sizes:
    tree_files: int = 500
    sqlite_tx: int = 100
    sqlite_rows: int = 10
    tmp_rounds: int = 100
    seq_mib: int = 256
    small_files: int = 2000
    small_kib: int = 4
    empty_files: int = 5000
    scale_objects: int = 10000
    scale_dirs: int = 100
    scale_big: int = 5000
    step_timeout: float = 600
    scale_timeout: float = 1500
    agent_files: int = 2000      # the git tree of the agent workloads
    ckpt_mib: int = 2048         # the ML checkpoint ...
    ckpt_chunk_mib: int = 64     # ... written in chunks of this size
    dataset_files: int = 1000    # the ML dataset: files of 1 MiB ...
    readers: int = 8             # ... read by this many threads (boto3: as many threads)


QUICK = Sizes(tree_files=50, sqlite_tx=20, tmp_rounds=20, seq_mib=32, small_files=100,
              empty_files=500, scale_objects=3000, scale_dirs=30, scale_big=500,
              step_timeout=240, scale_timeout=300, agent_files=200, ckpt_mib=128,
              ckpt_chunk_mib=16, dataset_files=100)


class Inputs:
    def __init__(self, ctx: Ctx, sizes: Sizes) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.src = ctx.workdir / "src"
        self.tree = self.src / "tree"
        self.repo = self.src / "repo"
        self.sdist = self.src / "sdist.tar.gz"
        self.sdist_tree = self.src / "sdist-extracted"
        self.sdist_name = ""
        self.seq = Path("/dev/shm") / f"s3fuse-bench-{os.getpid()}.bin"
        #: one checkpoint chunk (each chunk written is this with its number in front)
        self.chunk = Path("/dev/shm") / f"s3fuse-bench-{os.getpid()}-chunk.bin"
        self.agent_tree = self.src / "agent-tree"
        self.wheelhouse = ctx.workdir / "downloads" / "wheelhouse"
        self.wheels_ok = False

    def make(self) -> None:
        shutil.rmtree(self.src, ignore_errors=True)
        self.src.mkdir(parents=True)
        rnd = random.Random(6)
        n = self.sizes.tree_files
        for i in range(n):
            d = self.tree / f"pkg{i % 10:02d}" / f"mod{(i // 10) % 5}"
            d.mkdir(parents=True, exist_ok=True)
            kind = rnd.random()
            size = rnd.randint(64, 8192) if kind < 0.6 else (
                rnd.randint(8192, 65536) if kind < 0.9 else rnd.randint(65536, 262144))
            (d / f"file{i:04d}.dat").write_bytes(rnd.randbytes(size))
        # a repository with a few commits, packed, to clone
        genv = self.ctx.env
        shutil.copytree(self.tree, self.repo)
        run(["git", "init", "-q", str(self.repo)], 60, env=genv)
        run(["git", "add", "-A"], 60, cwd=self.repo, env=genv)
        run(["git", "commit", "-q", "-m", "initial"], 60, cwd=self.repo, env=genv)
        files = sorted(p for p in self.repo.rglob("*.dat"))
        for c in range(4):
            for p in rnd.sample(files, max(1, len(files) // 10)):
                p.write_bytes(rnd.randbytes(rnd.randint(64, 16384)))
            run(["git", "commit", "-q", "-a", "-m", f"change {c}"], 60, cwd=self.repo,
                env=genv)
        run(["git", "gc", "-q"], 120, cwd=self.repo, env=genv)
        self._sdist()
        self.sdist_tree.mkdir()
        run(["tar", "xzf", str(self.sdist)], 120, cwd=self.sdist_tree, env=genv)
        # 256 MiB of incompressible data on tmpfs: drop_caches cannot evict it
        with open(self.seq, "wb") as f:
            for _ in range(self.sizes.seq_mib):
                f.write(rnd.randbytes(MiB))
        self.chunk.write_bytes(rnd.randbytes(self.sizes.ckpt_chunk_mib * MiB))
        # an agent's project: source-like text files in nested packages
        for i in range(self.sizes.agent_files):
            d = self.agent_tree / f"pkg{i % 20:02d}" / f"sub{(i // 20) % 5}"
            d.mkdir(parents=True, exist_ok=True)
            lines = rnd.randint(10, 200)
            (d / f"m{i:04d}.py").write_text("".join(
                f"def f{j}(x):\n    return x * {rnd.randint(0, 9999)}\n" for j in range(lines)))
        self._wheelhouse()

    def _wheelhouse(self) -> None:
        """Wheels of WHEELS and their dependencies, downloaded from PyPI once (kept
        under the work directory), for the agent's ``pip install --no-index``."""
        stamp = self.wheelhouse / ".complete"
        if not stamp.exists():
            log(f"downloading wheels of {' '.join(WHEELS)} from PyPI (once)")
            self.wheelhouse.mkdir(parents=True, exist_ok=True)
            try:
                run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                     "-d", str(self.wheelhouse), *WHEELS], 300, env=self.ctx.env)
                stamp.touch()
            except StepFailed as exc:
                log(f"no wheelhouse ({exc}): the agent's pip install step will fail")
        self.wheels_ok = stamp.exists()

    def _sdist(self) -> None:
        cached = self.ctx.workdir / "downloads"
        cached.mkdir(exist_ok=True)
        name, version = SDIST.split("==")
        found = sorted(cached.glob(f"{name}-{version}.tar.gz"))
        if not found:
            log(f"downloading the sdist of {SDIST} from PyPI (once)")
            with contextlib.suppress(StepFailed):
                run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                     "--no-binary", ":all:", "--no-build-isolation", "-d", str(cached), SDIST],
                    300, env=self.ctx.env)
            found = sorted(cached.glob(f"{name}-{version}.tar.gz"))
        if found:
            shutil.copy(found[0], self.sdist)
            self.sdist_name = found[0].name
            return
        # offline: pack the installed pip package the way an sdist is packed
        import pip
        log("could not download the sdist; using a tar.gz of the installed pip package")
        base = Path(pip.__file__).parent
        run(["tar", "czf", str(self.sdist), "-C", str(base.parent), base.name], 120)
        self.sdist_name = f"pip-package-{pip.__version__}.tar.gz (fallback)"

    def remove(self) -> None:
        for p in (self.seq, self.chunk):
            with contextlib.suppress(OSError):
                p.unlink()

