"""Running real programs from tests: ``run`` (asserts the program succeeded), and a
git repository's set-up and check. Used by tests/fuse/test_programs.py and
tests/fuse/test_timetravel.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


TIMEOUT = 60  # seconds, for any one program run


def run(cmd: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
        timeout: float = TIMEOUT) -> str:
    """Run ``cmd``; assert it succeeded; return its stdout."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert res.returncode == 0, (f"{' '.join(cmd)} exited {res.returncode}\n"
                                 f"stdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}")
    return res.stdout


def git_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def git_init(repo: str, env: dict[str, str]) -> None:
    """A new repository at ``repo`` (made here), with a committer."""
    os.mkdir(repo)
    run(["git", "-c", "init.defaultBranch=main", "init", "-q"], cwd=repo, env=env)
    run(["git", "config", "user.name", "S3 Fuse"], cwd=repo, env=env)
    run(["git", "config", "user.email", "s3fuse@example.invalid"], cwd=repo, env=env)


def assert_fsck_clean(repo: str, env: dict[str, str]) -> None:
    res = subprocess.run(["git", "fsck", "--full", "--strict"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"git fsck in {repo} failed:\n{out[-3000:]}"
    for word in ("error", "missing", "corrupt", "broken", "dangling", "bad"):
        assert word not in out.lower(), f"git fsck in {repo}:\n{out[-3000:]}"
