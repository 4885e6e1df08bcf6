"""fsck as the invariant check other tests end with.

* ``assert_fsck_clean(cache_dir, source, endpoint)``: after an unmount, run the real
  ``s3fuse fsck --json`` on the cache directory and fail with its findings unless it
  found nothing at all (an unmount drains, so even "pending" notes are a failure).
* ``assert_journal_clean(journal, cache_dir, store, prefix)``: the same, in process,
  on an open journal (unit tests over a ``Rig``): no FUSE, no subprocess.

``allow`` names finding kinds a test expects (say ``{"new-outside"}`` after writing
to the bucket directly); ``allow_pending=True`` accepts the notes a journal has while
work is still queued (``pending-upload``, ``pending-op``, ``unlinked-inode``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable

from s3fuse.fsck import INFO_KINDS, Report, check

S3FUSE = os.path.join(os.path.dirname(sys.executable), "s3fuse")
PENDING_KINDS = frozenset(INFO_KINDS - {"new-outside"})


def _allowed(allow: Iterable[str], allow_pending: bool) -> set[str]:
    return set(allow) | (set(PENDING_KINDS) if allow_pending else set())


def assert_journal_clean(journal, cache_dir, store=None, prefix: str = "", *,
                         allow: Iterable[str] = (), allow_pending: bool = False) -> Report:
    """Run ``fsck.check`` (no repair) and fail on any finding whose kind is not allowed."""
    report = check(journal, str(cache_dir), store, prefix)
    ok = _allowed(allow, allow_pending)
    unexpected = [f for f in report.findings if f.kind not in ok]
    assert not unexpected, "fsck found:\n" + "\n".join(str(f) for f in unexpected)
    return report


def run_fsck(cache_dir, source: str, endpoint: str | None = None, *, repair: bool = False,
             as_json: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``s3fuse fsck SOURCE --cache-dir DIR`` as a user runs it."""
    args = [S3FUSE, "fsck", source, "--cache-dir", str(cache_dir)]
    if endpoint:
        args += ["--endpoint-url", endpoint]
    if repair:
        args.append("--repair")
    if as_json:
        args.append("--json")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def assert_fsck_clean(cache_dir, source: str, endpoint: str | None = None, *,
                      allow: Iterable[str] = (), allow_pending: bool = False) -> dict:
    """After an unmount: ``s3fuse fsck`` exits 0 and reports nothing unexpected.
    Returns its JSON report."""
    res = run_fsck(cache_dir, source, endpoint)
    assert res.returncode in (0, 1), f"fsck could not run ({res.returncode}): {res.stderr}"
    report = json.loads(res.stdout)
    ok = _allowed(allow, allow_pending)
    unexpected = [f for f in report["findings"] if f["kind"] not in ok]
    assert not unexpected, "fsck found:\n" + "\n".join(json.dumps(f) for f in unexpected)
    # allowed problems (an expected outside change, say) still make the exit 1
    problems = any(f["severity"] == "problem" and not f["repaired"]
                   for f in report["findings"])
    assert res.returncode == (1 if problems else 0), res.stdout
    return report
