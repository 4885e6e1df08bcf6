"""Points in a bucket's history (docs/SEMANTICS.md, "Time travel"): the time format,
which version of a key was current at a given time, and the record of a named
snapshot.

Shared by the commands (``history``, ``restore``, ``snapshot``, ``fork``) and by the
mount's read-only views under ``MOUNTPOINT/.s3fuse/``. Nothing here changes the live
tree, and nothing here talks to a store except through ``ObjectStore``.

Where s3fuse keeps its own records
----------------------------------
``RESERVED`` (``.s3fuse``) is a reserved name at the root of every mount: the mount
shows its views there, and the keys ``PREFIX.s3fuse/...`` (``PREFIX`` is the mounted
prefix, ending in ``/``, or empty for a whole bucket) hold s3fuse's records. A named
snapshot is the object ``PREFIX.s3fuse/snapshots/NAME.json`` (``snapshot_key``): it
lives in the bucket, so it survives the loss of a cache directory and every mount of
the prefix sees it. Keys under ``PREFIX.s3fuse/`` are never part of the tree a mount,
a snapshot or a fork shows.

A point in time
---------------
The version of a key current at time T is its newest version whose Last-Modified is
at or before T; if that version is a delete marker, or the key has no version that
old, the key did not exist at T (``current_at``). Last-Modified is the server's
clock, at the precision the server keeps (S3: milliseconds or seconds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .errors import S3FuseError, UsageError
from .store.base import ObjectStore, VersionInfo

RESERVED = ".s3fuse"
#: below the mounted prefix: where named snapshots are kept
SNAPSHOTS_DIR = RESERVED + "/snapshots/"
SNAPSHOT_FORMAT = "s3fuse-snapshot/1"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_WHEN = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z")


class VersioningOff(S3FuseError):
    """A time-travel command on a bucket that never kept old versions."""


def parse_when(text: str) -> int:
    """``2026-12-01T14:30:00Z`` (ISO 8601, UTC, optional fraction of a second) as
    nanoseconds since the epoch. Anything else raises UsageError with one line."""
    m = _WHEN.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{text!r} is not a UTC time like 2026-12-01T14:30:00Z")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        whole = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except ValueError as exc:
        raise UsageError(f"{text!r} is not a valid time: {exc}") from None
    frac = (m.group(7) or "").ljust(9, "0")
    return int(whole.timestamp()) * 1_000_000_000 + int(frac or 0)


def format_when(ns: int) -> str:
    """The inverse of ``parse_when``: whole seconds print without a fraction."""
    sec, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def check_snapshot_name(name: str) -> str:
    """A snapshot name: letters, digits, ``._-``, at most 100, not starting with a dot
    or dash (it becomes a file name in views and a key in the bucket)."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a snapshot name: use letters, digits, '.', "
                         "'_' and '-' (at most 100, not starting with '.' or '-')")
    return name


def snapshot_key(prefix: str, name: str) -> str:
    """The bucket key of the snapshot ``name`` of the tree under ``prefix``."""
    return prefix + SNAPSHOTS_DIR + check_snapshot_name(name) + ".json"


def is_reserved(rel_key: str) -> bool:
    """True for keys (relative to the mounted prefix) that hold s3fuse's records."""
    return rel_key == RESERVED or rel_key.startswith(RESERVED + "/")


def require_versioning(store: ObjectStore, what: str) -> None:
    """Raise VersioningOff (one line saying how to turn it on) unless the bucket keeps
    old versions now or did once ("suspended" still has the versions it kept)."""
    if store.versioning() == "off":
        raise VersioningOff(
            f"{what}: the bucket does not keep old versions; turn versioning on first "
            "with `s3fuse versioning enable s3://BUCKET` (or file:///PATH), then remount")


def iter_versions(store: ObjectStore, prefix: str) -> Iterator[VersionInfo]:
    """Every version and delete marker under ``prefix``, page after page, keys
    ascending and each key's versions newest first."""
    token: str | None = None
    while True:
        page = store.list_versions(prefix, token)
        yield from page.versions
        token = page.next_token
        if token is None:
            return


def current_at(versions: Iterable[VersionInfo], at_ns: int) -> dict[str, VersionInfo]:
    """For versions in listing order (keys ascending, newest first per key): each key's
    version current at ``at_ns``; keys deleted or not yet written then are left out."""
    found: dict[str, VersionInfo] = {}
    settled: set[str] = set()
    for v in versions:
        if v.key in settled or v.mtime_ns > at_ns:
            continue
        settled.add(v.key)
        if not v.is_delete_marker:
            found[v.key] = v
    return found


@dataclass(frozen=True)
class Pinned:
    """One object of a snapshot: its key relative to the prefix and exact version."""

    key: str
    version_id: str
    etag: str
    size: int
    mtime_ns: int


@dataclass
class Snapshot:
    """A named snapshot as stored at ``snapshot_key(prefix, name)``: JSON with
    ``format``, ``name``, ``created`` (``format_when``), ``bucket``, ``prefix`` and
    ``objects`` (one object per pinned version, keys ascending)."""

    name: str
    created_ns: int
    bucket: str
    prefix: str
    objects: list[Pinned]

    def encode(self) -> bytes:
        return json.dumps({
            "format": SNAPSHOT_FORMAT, "name": self.name,
            "created": format_when(self.created_ns), "bucket": self.bucket,
            "prefix": self.prefix,
            "objects": [asdict(p) for p in sorted(self.objects, key=lambda p: p.key)],
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> Snapshot:
        """Raises S3FuseError (one line) for a record this version cannot read."""
        try:
            doc = json.loads(body)
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            return cls(check_snapshot_name(doc["name"]), parse_when(doc["created"]),
                       str(doc["bucket"]), str(doc["prefix"]),
                       [Pinned(str(o["key"]), str(o["version_id"]), str(o["etag"]),
                               int(o["size"]), int(o["mtime_ns"]))
                        for o in doc["objects"]])
        except (ValueError, KeyError, TypeError, AttributeError, UsageError) as exc:
            raise S3FuseError(f"not a snapshot record s3fuse can read: {exc}") from None


def pin_tree(store: ObjectStore, prefix: str, at_ns: int) -> list[Pinned]:
    """The versions of every key under ``prefix`` current at ``at_ns`` (keys relative
    to ``prefix``; s3fuse's own records left out): what a snapshot records."""
    chosen = current_at(iter_versions(store, prefix), at_ns)
    out = []
    for key, v in chosen.items():
        rel = key[len(prefix):]
        if not is_reserved(rel):
            out.append(Pinned(rel, v.version_id, v.etag, v.size, v.mtime_ns))
    return out
