"""The composition root closes whatever it opened, however it fails."""

from __future__ import annotations

import os

import pytest

from s3fuse import daemon
from s3fuse.cachelock import CacheLock
from s3fuse.config import Settings
from s3fuse.errors import UsageError
from s3fuse.journal import Journal


def test_a_failure_after_the_lock_and_the_journal_opened_releases_both(tmp_path):
    """The cache directory belongs to another source: prepare fails after taking the
    lock and opening the journal, and ``run`` leaves neither behind."""
    cache = tmp_path / "cache"
    bucket = tmp_path / "bucket"
    mnt = tmp_path / "mnt"
    for d in (bucket, mnt):
        d.mkdir()
    os.makedirs(cache, mode=0o700)
    journal = Journal(str(cache / "journal"))
    journal.set_meta(b"source", b"file:///somewhere/else")
    journal.close()
    settings = Settings(source=f"file://{bucket}", mountpoint=str(mnt),
                        cache_dir=str(cache))
    with pytest.raises(UsageError, match="belongs to"):
        daemon.run(settings, ready=lambda: None)
    lock = CacheLock(str(cache))  # the failed daemon let go of it
    lock.release()
    journal = Journal(str(cache / "journal"))  # and of the journal
    assert journal.get_meta(b"source") == b"file:///somewhere/else"
    journal.close()
