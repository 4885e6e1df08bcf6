"""Domain exceptions, and the one table that maps them to errno.

Every layer below the FUSE adapter raises these (or ``FsError`` with an errno);
``fuse_ops`` turns them into ``pyfuse3.FUSEError`` in one place via ``to_errno``.
Store errors are split by what the caller should do: ``TransientStoreError`` is
retried with backoff, everything else is final for that request.
"""

from __future__ import annotations

import errno


class S3FuseError(Exception):
    """Base class of every error s3fuse raises on purpose."""


class UsageError(S3FuseError):
    """Bad input from the user (CLI option, mount source, mount point).

    The CLI prints ``str(exc)`` as one line and exits non-zero.
    """


class FsError(S3FuseError):
    """A filesystem operation failed with a specific errno (ENOENT, EEXIST, ...)."""

    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(err, detail)
        self.errno = err
        self.detail = detail

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {self.detail}" if self.detail else name


class VersionGone(S3FuseError):
    """The version of an object a read was pinned to is no longer the bucket's: it
    was replaced or deleted while its bytes were fetched. The caller adopts the
    bucket's current version (S3 wins) and reads again; a request that cannot
    answers ESTALE. ``etag``: the version that was asked for."""

    def __init__(self, message: str, etag: str | None = None) -> None:
        super().__init__(message)
        self.etag = etag


# --- object store -----------------------------------------------------------------


class StoreError(S3FuseError):
    """Base class of object-store failures. Messages never contain credentials."""

    #: the HTTP status the server answered with, where there was an answer (metrics)
    http_status: int | None = None


class NoSuchKey(StoreError):
    """The object does not exist (HTTP 404 on an object)."""


class NoSuchBucket(StoreError):
    """The bucket (or file:// root) does not exist."""


class AccessDenied(StoreError):
    """Credentials missing or refused (HTTP 401/403)."""


class PreconditionFailed(StoreError):
    """A conditional request did not hold (HTTP 412): If-Match saw another ETag,
    or If-None-Match: * found an existing object."""


class ConditionMismatch(StoreError):
    """The server refused an upload's condition although the bucket holds the version
    the condition named (it compares ETags in another way): retried later, never
    overwritten. Raised by ``reconcile``; EIO like any store error not in the table."""


class InvalidKey(StoreError):
    """The key cannot be stored by this backend (``..`` segments, absolute, NUL, too long)."""


class KeyConflict(StoreError):
    """The backend cannot hold this key next to another one right now (the file://
    store cannot have an object ``a`` and an object under ``a/`` at once). Callers
    retry later: usually a pending delete of the other key resolves it."""


class NotSupported(StoreError):
    """The server does not implement a feature we asked for (HTTP 501)."""


class BodyChanged(StoreError):
    """A put's body (a file something else may write) changed while it was read:
    nothing was stored. Not a failure of the store; the caller tries again."""


class TransientStoreError(StoreError):
    """Timeouts, refused connections, 5xx, throttling: worth retrying later."""


_ERRNO_BY_TYPE: dict[type, int] = {
    NoSuchKey: errno.ENOENT,
    NoSuchBucket: errno.EIO,
    AccessDenied: errno.EACCES,
    PreconditionFailed: errno.EIO,
    InvalidKey: errno.EINVAL,
    KeyConflict: errno.EIO,
    NotSupported: errno.EOPNOTSUPP,
    TransientStoreError: errno.EIO,
    UsageError: errno.EINVAL,
    VersionGone: errno.ESTALE,
}


def fetch_failed(key: str, exc: StoreError) -> FsError:
    """A store error while fetching a file's bytes (not the version gone: that is
    ``VersionGone``). Always EIO, whatever the table says for the same error on a
    name: the file exists and is open; only its bytes could not be had now."""
    return FsError(errno.EIO, f"reading {key}: {exc}")


def to_errno(exc: BaseException) -> int:
    """The errno a FUSE request answers with for ``exc``.

    ``FsError`` carries its own errno; ``OSError`` from local cache I/O keeps its
    errno (ENOSPC from a full cache disk reaches the writer); anything else is EIO.
    """
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    for cls in type(exc).__mro__:
        if cls in _ERRNO_BY_TYPE:
            return _ERRNO_BY_TYPE[cls]
    return errno.EIO
