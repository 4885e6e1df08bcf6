"""``s3fuse fork SOURCE --snapshot NAME|--at TIME DEST``: a new workspace made of
server-side copies of the versions a tree had at that point.

No byte passes through the host: each object is one CopyObject of an exact version
id (``S3Store.copy_version``; within one file:// store, ``copy`` with
``src_version_id``), many in parallel.

The fork record
---------------
Before the first copy, the fork writes ``DEST_PREFIX.s3fuse/fork.json`` (If-None-Match):
the source (bucket, prefix), the point (snapshot name or time) and every pinned
version (key, version id, ETag, size). It is rewritten with ``finished`` when every
copy is done. A mount of DEST can read it to serve files not copied yet from their
source versions (not done yet: see the README).

Resuming, and never overwriting
-------------------------------
Run the same command again after a crash or Ctrl-C: it finds its own record (same
source and the same pinned versions; a different fork there is refused), lists DEST
once, and copies only the keys DEST has never had. On a versioned DEST "had" means
any version or delete marker of the key, so a file someone changed or deleted in
DEST since the copy is left as they left it; on an unversioned DEST it means the
key exists now. A DEST that holds other objects and no fork record is refused.
Each copy is sent with ``If-None-Match: *`` where the server honours it, so a key
written into DEST after the listing is not overwritten either.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import timeline
from .errors import NoSuchKey, PreconditionFailed, UsageError
from .store import ObjectStore
from .timeline import Pinned
from .workspace import run_parallel

FORK_FORMAT = "s3fuse-fork/1"
FORK_RECORD = timeline.RESERVED + "/fork.json"


@dataclass
class Side:
    """One end of a fork: a store, the bucket's name (as in the URL) and a prefix."""

    store: ObjectStore
    bucket: str
    prefix: str
    url: str  # for messages


@dataclass
class Report:
    copied: int = 0
    present: int = 0  # DEST had the key already: copied before, or changed there
    total: int = 0
    resumed: bool = False
    seconds: float = 0.0


def _record(source: Side, point: dict, pins: dict[str, Pinned], finished: int | None) -> bytes:
    return json.dumps({
        "format": FORK_FORMAT, "source": {"bucket": source.bucket, "prefix": source.prefix},
        **point, "created": timeline.format_when(time.time_ns()),
        "finished": None if finished is None else timeline.format_when(finished),
        "objects": [{"key": p.key, "version_id": p.version_id, "etag": p.etag,
                     "size": p.size} for p in sorted(pins.values(), key=lambda p: p.key)],
    }, separators=(",", ":")).encode()


def _same_fork(body: bytes, source: Side, pins: dict[str, Pinned]) -> bool:
    try:
        doc = json.loads(body)
        theirs = {(o["key"], o["version_id"]) for o in doc["objects"]}
        return (doc.get("format") == FORK_FORMAT
                and doc["source"] == {"bucket": source.bucket, "prefix": source.prefix}
                and theirs == {(p.key, p.version_id) for p in pins.values()})
    except (ValueError, KeyError, TypeError):
        return False


def _dest_keys(dest: Side) -> set[str]:
    """Every key (relative) DEST has, or ever had on a versioned bucket."""
    if dest.store.versioning() != "off":
        return {v.key[len(dest.prefix):] for v in timeline.iter_versions(dest.store, dest.prefix)}
    out, token = set(), None
    while True:
        page = dest.store.list(dest.prefix, None, token)
        out.update(o.key[len(dest.prefix):] for o in page.objects)
        token = page.next_token
        if token is None:
            return out


def _start(source: Side, dest: Side, point: dict, pins: dict[str, Pinned]) -> bool:
    """Write the fork record, or find our own from an earlier run (True: resuming)."""
    key = dest.prefix + FORK_RECORD
    try:
        body = dest.store.get(key)
    except NoSuchKey:
        body = None
    if body is not None:
        if _same_fork(body, source, pins):
            return True
        raise UsageError(f"{dest.url} holds another fork (its {FORK_RECORD} names another "
                         "source or point); choose another DEST")
    if any(not timeline.is_reserved(k) for k in _dest_keys(dest)):
        raise UsageError(f"{dest.url} is not empty; fork into a new prefix or bucket")
    try:
        dest.store.put(key, _record(source, point, pins, None), {}, if_none_match=True)
    except PreconditionFailed:
        return _start(source, dest, point, pins)  # a concurrent run of the same fork
    return False


def fork(source: Side, dest: Side, point: dict, pins: dict[str, Pinned], *, jobs: int = 32,
         progress: Callable[[int, int], None] = lambda done, total: None) -> Report:
    """Copy every pinned version of SOURCE into DEST (see the module docstring).
    ``point`` names what was pinned (``{"snapshot": NAME}`` or ``{"at": TIME}``)."""
    if source.store is not dest.store and not hasattr(dest.store, "copy_version"):
        raise UsageError("fork copies between two stores only on S3 servers (s3:// URLs)")
    started = time.monotonic()
    report = Report(total=len(pins))
    report.resumed = _start(source, dest, point, pins)
    have = _dest_keys(dest) if report.resumed else set()
    todo = [p for p in pins.values() if p.key not in have]
    report.present = len(pins) - len(todo)
    lock = threading.Lock()

    def copy_one(p: Pinned) -> None:
        src_key, dst_key = source.prefix + p.key, dest.prefix + p.key
        try:
            if source.store is dest.store and not hasattr(dest.store, "copy_version"):
                dest.store.copy(src_key, dst_key, src_version_id=p.version_id)
            else:
                dest.store.copy_version(  # type: ignore[attr-defined]
                    source.bucket, src_key, p.version_id, dst_key, p.size, if_none_match=True)
            what = "copied"
        except PreconditionFailed:  # written into DEST meanwhile: theirs stays
            what = "present"
        with lock:
            setattr(report, what, getattr(report, what) + 1)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        run_parallel(pool, copy_one, todo,
                     lambda n: progress(report.present + n, report.total))
    dest.store.put(dest.prefix + FORK_RECORD,
                   _record(source, point, pins, time.time_ns()), {})
    report.seconds = time.monotonic() - started
    return report
