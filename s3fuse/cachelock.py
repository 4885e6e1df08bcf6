"""The cache directory's lock: one mount (or one fsck) per cache directory.

The daemon holds it for its whole life; ``s3fuse fsck`` takes it too, so that it
never checks a journal a mount is changing. An exclusive ``flock`` on
``CACHE_DIR/lock``, which also names the holder's pid for the error message.
"""

from __future__ import annotations

import fcntl
import os

from .errors import UsageError


class CacheLock:
    """One mount per cache directory: an exclusive flock held for the daemon's life."""

    def __init__(self, cache_dir: str) -> None:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        os.chmod(cache_dir, 0o700)
        self.path = os.path.join(cache_dir, "lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise UsageError(f"cache directory {cache_dir} is in use by another s3fuse "
                             f"mount (pid {holder})") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)
