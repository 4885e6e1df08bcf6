"""The object-store contract every backend implements.

A backend is synchronous and thread-safe: the daemon calls it from worker threads
(``trio.to_thread.run_sync`` behind a ``CapacityLimiter``), never from the event loop.

Conventions shared by all backends:

* Keys are ``str`` (UTF-8 in the bucket). A backend that cannot hold a key raises
  ``InvalidKey``; nothing a key says may make a backend touch a path outside its root.
* ETags are returned *without* surrounding quotes. Comparisons use that form.
* ``metadata`` is the user metadata (``x-amz-meta-NAME``) as ``{NAME: value}`` with
  lower-case names and no prefix, e.g. ``{"mode": "33188", "mtime": "1700000000.5"}``.
* Conditional writes: ``if_match=ETAG`` replaces only that version;
  ``if_none_match=True`` creates only if absent. Either failing raises
  ``PreconditionFailed`` and changes nothing.
* Errors are the classes in ``s3fuse.errors``; ``TransientStoreError`` means retry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, Union

# A body to upload: bytes, or a path to a local file whose whole content is the body
# (the daemon hands a private snapshot that nobody writes to during the upload).
Body = Union[bytes, "os.PathLike[str]", str]


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing or a HEAD saw it.

    ``metadata`` is None when the source (a listing) does not carry user metadata.
    """

    key: str
    size: int
    etag: str
    mtime_ns: int
    metadata: dict[str, str] | None = None


@dataclass
class ListPage:
    """One page of a delimited listing.

    ``objects`` are the keys directly under the prefix, ``prefixes`` the common
    prefixes (each ending in the delimiter), both in ascending UTF-8 byte order.
    ``next_token`` is None on the last page.
    """

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What the server honours; filled by ``probe()`` at mount time."""

    conditional_put: bool = True
    conditional_copy: bool = False
    conditional_delete: bool = False


class ObjectStore(Protocol):
    """The interface the daemon needs from a bucket. See the module docstring."""

    #: short human description for logs and status, never containing credentials
    description: str

    def check(self) -> None:
        """Verify the bucket exists and is reachable with these credentials.

        Raises NoSuchBucket, AccessDenied, or TransientStoreError (unreachable
        endpoint), each with a one-line message fit for the user.
        """

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, mtime and user metadata of ``key``. Raises NoSuchKey."""

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end`` None: to the end).

        With ``if_match`` the read is pinned to that ETag: PreconditionFailed if the
        object changed. A range past the end returns the bytes that exist (maybe b"").
        """

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None) -> int:
        """Like ``get`` but writes into ``fileobj`` at its current position, streaming.
        Returns the number of bytes written."""

    def put(self, key: str, body: Body, metadata: dict[str, str], *,
            if_match: str | None = None, if_none_match: bool = False,
            unchanged: Callable[[], bool] | None = None) -> str:
        """Store the whole object atomically (readers never see a partial object).

        Large bodies may go up as a multipart upload. Returns the new ETag.

        With ``unchanged``, ``body`` is a file that may be written while it is read
        (the mount's own cache file: no copy is made). ``unchanged()`` tells whether
        it is as it was when the call began; the store calls it after reading the
        last byte and before the object becomes visible, and if it answers False,
        stores nothing and raises BodyChanged. It may be called from any thread.
        """

    def copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None = None, *,
             src_if_match: str | None = None) -> str:
        """Server-side copy ``src_key`` to ``dst_key``; no bytes pass through the host.

        ``metadata`` None keeps the source's metadata, a dict replaces it.
        ``src_if_match`` pins the source version (PreconditionFailed otherwise).
        Raises NoSuchKey if the source is gone. Returns the new object's ETag.
        """

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove ``key``. Deleting an absent key succeeds (S3 semantics).

        ``if_match`` is honoured where the backend can (see Capabilities); a backend
        that cannot check it deletes unconditionally.
        """

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        """One page of keys starting with ``prefix``.

        With ``delimiter`` "/", keys containing "/" after the prefix are rolled into
        ``prefixes``; with None every key under ``prefix`` is in ``objects``.
        Listing metadata is None in the returned ObjectInfo.
        """

    def probe(self, scratch_key: str) -> Capabilities:
        """Find out which conditional requests the server honours, by writing and
        then deleting ``scratch_key`` (the daemon passes a key under its prefix)."""

    def close(self) -> None:
        """Release connections and files. Idempotent."""
