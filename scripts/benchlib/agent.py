"""Agent workloads: what a coding agent does in its workspace (a venv and packages from
a local wheelhouse, cold imports, ``git status`` on a project, ``grep -r`` over the
installed packages, and removing it all). Everything lives under ``agent/``."""

from __future__ import annotations

import os
import sys

from benchlib.common import WHEELS, run
from benchlib.systems import System
from benchlib.workloads import Workload, expect

IMPORTS = "import requests, click, rich.console, rich.table, rich.progress, rich.syntax"


class AgentWorkload(Workload):
    def dir(self, s: System):
        return s.root / "agent"

    def prefix(self) -> str:
        return "agent/"

    def venv(self, s: System):
        return self.dir(s) / "venv"

    def out(self, s: System):
        return s.ctx.workdir / "tmp" / f"{self.key}-{s.name}.txt"


class VenvPip(AgentWorkload):
    key = "agent_pip"

    @property
    def title(self) -> str:
        return f"venv + pip install --no-index {','.join(WHEELS)}"

    def prepare(self, s):
        expect(self.inp.wheels_ok, "no wheelhouse (PyPI was unreachable when it was made)")
        self.dir(s).mkdir(parents=True, exist_ok=True)

    def command(self, s):
        v = self.venv(s)
        script = (f"'{sys.executable}' -m venv '{v}' && '{v}/bin/pip' install -q "
                  f"--disable-pip-version-check --no-index --find-links "
                  f"'{self.inp.wheelhouse}' {' '.join(WHEELS)}")
        return ["sh", "-c", script], None, False

    def verify(self, s):
        _, out = run([str(self.venv(s) / "bin" / "python"), "-c",
                      f"{IMPORTS}; print(requests.__file__)"], 300, env=s.ctx.env)
        expect(out.strip().startswith(str(self.venv(s))), f"imported from {out.strip()}")

    def verify_bucket(self, s):
        keys = s.ctx.keys(s.bucket, "agent/venv/")
        expect(any(k.endswith("site-packages/requests/__init__.py") for k in keys),
               f"no requests/__init__.py among {len(keys)} keys")


class ColdImports(AgentWorkload):
    key = "agent_import"
    cold = True
    writes = False
    title = "cold imports (requests, click, rich) after drop_caches"

    def prepare(self, s):
        expect((self.venv(s) / "bin" / "python").exists(), "no venv from the pip step")

    def command(self, s):
        return [str(self.venv(s) / "bin" / "python"), "-c", IMPORTS], None, False


class GitStatus(AgentWorkload):
    writes = False

    def __init__(self, inp, cold: bool) -> None:
        super().__init__(inp)
        self.cold = cold
        self.key = "agent_gitstatus_cold" if cold else "agent_gitstatus_warm"

    @property
    def title(self) -> str:
        return (f"git status, {self.sizes.agent_files:,} files, "
                + ("after drop_caches" if self.cold else "warm"))

    def proj(self, s):
        return self.dir(s) / "proj"

    def prepare(self, s):
        p = self.proj(s)
        if not (p / ".git").exists():  # made once (untimed), for the cold and warm steps
            self.dir(s).mkdir(parents=True, exist_ok=True)
            run(["cp", "-r", str(self.inp.agent_tree), str(p)], 600)
            script = "git init -q && git add -A && git commit -q -m project"
            run(["sh", "-c", script], 600, cwd=p, env=s.ctx.env)
            if s.s3:
                s.catch_up(600)
        if not self.cold:
            run(["git", "status", "--porcelain"], 600, cwd=p, env=s.ctx.env)

    def command(self, s):
        return ["sh", "-c", f"git status --porcelain > '{self.out(s)}'"], self.proj(s), False

    def verify(self, s):
        out = self.out(s).read_text()
        expect(out == "", f"git status not clean: {out[:200]}")
        _, files = run(["git", "ls-files"], 300, cwd=self.proj(s), env=s.ctx.env)
        n = len(files.splitlines())
        expect(n == self.sizes.agent_files, f"git ls-files lists {n} files")


class GrepTree(AgentWorkload):
    key = "agent_grep"
    cold = True
    writes = False
    title = "grep -r over the venv, after drop_caches"

    def prepare(self, s):
        expect(self.venv(s).is_dir(), "no venv from the pip step")

    def command(self, s):
        return ["sh", "-c", f"grep -r -l -F 'import' '{self.venv(s) / 'lib'}' > "
                            f"'{self.out(s)}'"], None, False

    def verify(self, s):
        got = set(self.out(s).read_text().splitlines())
        want = set()
        for d, _, files in os.walk(self.venv(s) / "lib"):
            for f in files:
                p = os.path.join(d, f)
                if not os.path.islink(p):
                    with open(p, "rb") as fh:
                        if b"import" in fh.read():
                            want.add(p)
        expect(len(want) > 100 and got == want,
               f"grep found {len(got)} files, a walk {len(want)}")


class RmWorkspace(AgentWorkload):
    key = "agent_rmrf"
    title = "rm -rf of the agent workspace (venv + project)"

    def prepare(self, s):
        expect(self.dir(s).is_dir(), "no workspace")

    def command(self, s):
        return ["rm", "-rf", str(self.dir(s))], None, False

    def verify(self, s):
        expect(not self.dir(s).exists(), "agent/ still there")

    def verify_bucket(self, s):
        left = s.ctx.keys(s.bucket, "agent/")
        expect(not left, f"bucket still holds {len(left)} keys under agent/, e.g. {left[:3]}")


def agent_workloads(inp) -> list[Workload]:
    return [VenvPip(inp), ColdImports(inp), GitStatus(inp, cold=True),
            GitStatus(inp, cold=False), GrepTree(inp), RmWorkspace(inp)]
