"""The status the CLI reads through one extended attribute must fit in one (64 KiB)."""

from __future__ import annotations

import json

from s3fuse.daemon import STATUS_MAX_BYTES, Daemon


def test_a_long_status_keeps_the_newest_entries_and_says_how_many_there_are():
    daemon = object.__new__(Daemon)
    conflicts = [{"path": f"dir/file-{i:05d}", "lost_found": f".s3fuse/lost+found/x-{i}",
                  "time": float(i), "reason": "changed both in the bucket and on the mount"}
                 for i in range(1000)]
    daemon.status = lambda: {"dirty_files": 0, "conflicts": conflicts, "not_exported": [],
                             "skipped_keys": [{"key": "k" * 200, "reason": "r"}] * 300,
                             "errors": []}
    text = daemon.status_json()
    assert len(text.encode()) <= STATUS_MAX_BYTES
    status = json.loads(text)
    assert status["conflicts_total"] == 1000 and status["skipped_keys_total"] == 300
    assert 0 < len(status["conflicts"]) < 1000
    assert status["conflicts"][-1]["path"] == "dir/file-00999"  # the newest are kept
