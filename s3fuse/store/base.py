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

Versions (S3 bucket versioning, and its equivalent in the other backends):

* ``versioning()`` says whether the bucket keeps old versions: ``"enabled"``,
  ``"suspended"`` (it did once: the versions kept then are still there, new writes
  replace the "null" version) or ``"off"`` (never enabled).
* Every object has a version id: an opaque string, or ``"null"`` for an object written
  while versioning was off or suspended (S3's literal name for it). Versions written by
  the memory and file backends get ids that sort by time; S3 ids are opaque.
* ``list_versions`` works whatever ``versioning()`` says: on a bucket that never had
  versioning, every key has exactly one version, ``"null"``, the current object.
* A delete on a versioned bucket keeps the object as an old version and adds a *delete
  marker* (a version with no content) as the key's latest version.
* ``get``/``head``/``copy`` take a version id (``version_id``, ``src_version_id``):
  a version that does not exist, or that is a delete marker, raises ``NoSuchKey``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple, Protocol, Union

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
class VersionInfo:
    """One version of a key (or a delete marker) as ``list_versions`` saw it.

    A delete marker has ``etag`` "" and ``size`` 0. ``is_latest``: this is the key's
    current version (a key whose latest version is a delete marker does not exist).
    """

    key: str
    version_id: str
    etag: str
    size: int
    mtime_ns: int
    is_latest: bool
    is_delete_marker: bool = False


@dataclass
class VersionPage:
    """One page of ``list_versions``: keys in ascending UTF-8 byte order, the versions
    of each key newest first. ``prefixes``: with a delimiter, the common prefixes
    (each ending in it) of the keys rolled up, ascending. ``next_token`` is None on
    the last page."""

    versions: list[VersionInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None


class Copied(NamedTuple):
    """What ``copy_version`` made: the new object's ETag, its version id (None where
    the server does not say: an unversioned bucket, Ceph RGW 16, a copy made part by
    part) and the time the server gave it (None where it did not say), by which a
    version listing can still tell the copy when its id is unknown."""

    etag: str
    version_id: str | None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Capabilities:
    """What the server honours; filled by ``probe()`` at mount time."""

    conditional_put: bool = True
    conditional_copy: bool = False
    conditional_delete: bool = False
    #: the bucket's versioning state the answer was found under ("off", "enabled",
    #: "suspended"), when the probe could read it; None where the answer does not
    #: depend on it or it is unknown. The daemon keeps a probe's answer under this
    #: state (``capcache``); not part of the comparison of two answers.
    versioning: str | None = field(default=None, compare=False)


class ObjectStore(Protocol):
    """The interface the daemon needs from a bucket. See the module docstring."""

    #: short human description for logs and status, never containing credentials
    description: str

    def check(self) -> None:
        """Verify the bucket exists and is reachable with these credentials.

        Raises NoSuchBucket, AccessDenied, or TransientStoreError (unreachable
        endpoint), each with a one-line message fit for the user.
        """

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        """Size, ETag, mtime and user metadata of ``key`` (of its version ``version_id``
        if given). Raises NoSuchKey (also for a missing version or a delete marker)."""

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None, version_id: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end`` None: to the end).

        With ``if_match`` the read is pinned to that ETag: PreconditionFailed if the
        object changed. A range past the end returns the bytes that exist (maybe b"").
        With ``version_id`` the bytes are those of that version (which never change);
        NoSuchKey if it does not exist or is a delete marker.
        """

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None, version_id: str | None = None) -> int:
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
             src_if_match: str | None = None, src_version_id: str | None = None) -> str:
        """Server-side copy ``src_key`` to ``dst_key``; no bytes pass through the host.

        ``metadata`` None keeps the source's metadata, a dict replaces it.
        ``src_if_match`` pins the source version (PreconditionFailed otherwise).
        ``src_version_id`` copies that version of the source (its metadata too, unless
        replaced); the destination becomes a new current version like any write.
        Raises NoSuchKey if the source (version) is gone. Returns the new object's ETag.
        """

    def delete(self, key: str, *, if_match: str | None = None,
               version_id: str | None = None) -> None:
        """Remove ``key``. Deleting an absent key succeeds (S3 semantics).

        ``if_match`` is honoured where the backend can (see Capabilities); a backend
        that cannot check it deletes unconditionally.

        ``version_id`` removes exactly that version (or delete marker) for good, as
        S3's DeleteObject with VersionId: no delete marker is added; if it was the
        key's latest, the next newest becomes the latest (the key is absent if that is
        a delete marker, or if there is none). An unknown version id changes nothing.
        """

    def copy_version(self, src_bucket: str, src_key: str, version_id: str, dst_key: str,
                     size: int, *, if_none_match: bool = False) -> Copied:
        """Server-side copy of the version ``version_id`` of ``src_key`` in the bucket
        ``src_bucket`` (S3: any bucket of the same server; the file and memory stores
        copy within themselves and ignore it) to ``dst_key``, its metadata kept.
        ``size`` is the version's size (the caller knows it: no HEAD).
        ``if_none_match``: only if ``dst_key`` does not exist (PreconditionFailed),
        where the server honours it. Returns what it made (``Copied``)."""

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        """One page of keys starting with ``prefix``.

        With ``delimiter`` "/", keys containing "/" after the prefix are rolled into
        ``prefixes``; with None every key under ``prefix`` is in ``objects``.
        Listing metadata is None in the returned ObjectInfo.
        """

    def list_versions(self, prefix: str, token: str | None = None,
                      max_keys: int = 1000, delimiter: str | None = None) -> VersionPage:
        """One page of every version and delete marker of the keys starting with
        ``prefix`` (``delimiter`` None: the whole subtree).

        Keys in ascending order, each key's versions newest first; at most
        ``max_keys`` entries per page (a version, a marker or a common prefix),
        continued with the opaque ``next_token``. With ``delimiter`` ("/"), keys with
        a delimiter after the prefix are rolled up into ``prefixes``, as in ``list``:
        one directory level (a prefix is listed if any version, even a delete marker,
        lies below it). On a bucket whose versioning is "off" every key has one
        version, "null".
        """

    def versioning(self) -> str:
        """The bucket's versioning state: "enabled", "suspended" or "off" (never
        enabled). Raises like ``check()`` when the bucket cannot be asked."""

    def enable_versioning(self) -> None:
        """Turn versioning on ("enabled") for good: S3 PutBucketVersioning; the file
        and memory backends start keeping versions. Idempotent."""

    def server_time_ns(self) -> int:
        """The server's clock now, rounded up: no version written before this call
        has a later Last-Modified. S3: the end of the second in the Date header of a
        HEAD of the bucket; the file and memory backends: the host's clock."""

    def lifecycle_rules(self) -> list[dict]:
        """The bucket's lifecycle rules in S3's form (GetBucketLifecycleConfiguration
        ``Rules``: ``Status``, ``Filter``/``Prefix``, ``Expiration``,
        ``NoncurrentVersionExpiration``, ...); [] when there are none (the file and
        memory backends never expire anything)."""

    def probe(self, scratch_key: str) -> Capabilities:
        """Find out which conditional requests the server honours, by writing and
        then deleting ``scratch_key`` (the daemon passes a key under its prefix).

        The answer is for this bucket as it is now: some servers honour a condition
        on an unversioned bucket and refuse it on a versioned one (Ceph RGW 16 refuses
        every If-Match PUT there). On a versioned bucket the probe removes the
        versions it made, leaving no history behind."""

    def close(self) -> None:
        """Release connections and files. Idempotent."""
