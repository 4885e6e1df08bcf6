"""``s3fuse fork SOURCE --snapshot NAME|--at TIME DEST``: a new workspace made of
server-side copies of the versions a tree had at that point.

No byte passes through the host: each object is one CopyObject of an exact version
id (``copy_version``; within one file:// store, a copy inside it), many in parallel,
in key order.

The fork record, and DEST in use before the end
-----------------------------------------------
Before the first copy, the fork writes ``DEST_PREFIX.s3fuse/fork.json`` (If-None-Match;
its format is ``forkstore.ForkRecord``): the source (bucket, prefix), the point
(snapshot name or time) and every pinned version (key, version id, ETag, size, time).
Every ``PROGRESS_S`` and at the end it is rewritten with ``copied_through``: the
greatest key K such that every pinned key up to K is in DEST (copied, or DEST had it).
Then ``finished`` is set. A mount of DEST that finds the record unfinished shows the
keys not copied yet from their source versions (``forkstore.ForkedStore``), so DEST
is usable at once; a change there to such a key first copies it into DEST (and
leaves a note under ``forkstore.CHANGED_DIR``, which the fork removes at the end).

No resurrection
---------------
A key the mount changed first and then deleted (or renamed away) in DEST has only a
delete marker as its current version, so the fork's own copy of it, which comes later,
passes If-None-Match and would bring the file back. So the fork keeps the version id
of every copy it made, and before it marks the record finished it lists DEST's
versions once: a copy of its own that is not the oldest version of its key was made
over someone's change, and that version is deleted by its id (the change is the
current version again). This needs a versioned DEST; on an unversioned one, and for a
fork that crashes between such a copy and the sweep (the rerun does not know the
copies of the run before), the file comes back (README, docs/SEMANTICS.md).

Resuming, and never overwriting
-------------------------------
Ctrl-C does not wait for the copies in flight beyond ``workspace.STOP_GRACE_S``
(``workspace.run_parallel``): each is one request that lands or not (a part-by-part
copy cut short is an incomplete multipart upload, left to the bucket's lifecycle
rule), and the rerun copies whatever DEST still lacks.
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
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import faults, timeline
from .errors import NoSuchKey, PreconditionFailed, StoreError, UsageError
from .forkstore import FORK_FORMAT, FORK_RECORD, changed_keys, encode_record
from .store import Copied, ObjectStore, VersionInfo
from .timeline import Pinned
from .workspace import parallel, run_parallel

__all__ = ["FORK_FORMAT", "FORK_RECORD", "PROGRESS_S", "Report", "Side", "fork"]

log = logging.getLogger(__name__)

#: how often the record's ``copied_through`` is rewritten while copying
PROGRESS_S = 2.0


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
    swept: int = 0  # copies made over a change in DEST, removed again
    seconds: float = 0.0


def _same_fork(body: bytes, source: Side, pins: dict[str, Pinned]) -> bool:
    try:
        doc = json.loads(body)
        theirs = {(o["key"], o["version_id"]) for o in doc["objects"]}
        return (doc.get("format") == FORK_FORMAT
                and doc["source"] == {"bucket": source.bucket, "prefix": source.prefix}
                and theirs == {(p.key, p.version_id) for p in pins.values()})
    except (ValueError, KeyError, TypeError):
        return False


def _dest_keys(dest: Side, *, current: bool = False) -> set[str]:
    """Every key (relative) DEST has, or ever had on a versioned bucket (``current``:
    only the keys it has now, one plain listing)."""
    if not current and dest.store.versioning() != "off":
        return {v.key[len(dest.prefix):] for v in timeline.iter_versions(dest.store, dest.prefix)}
    out, token = set(), None
    while True:
        page = dest.store.list(dest.prefix, None, token)
        out.update(o.key[len(dest.prefix):] for o in page.objects)
        token = page.next_token
        if token is None:
            return out


class _Progress:
    """Which pinned keys are done, in key order, and so ``copied_through``; the record
    rewritten with it now and then. ``lock`` guards the counts and the frontier."""

    def __init__(self, source: Side, dest: Side, point: dict, pins: dict[str, Pinned],
                 report: Report) -> None:
        self.source, self.dest, self.point, self.pins = source, dest, point, pins
        self.report = report
        self.order = sorted(pins)
        self.index = {k: i for i, k in enumerate(self.order)}
        self.done = [False] * len(self.order)
        self.frontier = 0  # every key before it is done
        self.lock = threading.Lock()
        self.created_ns = time.time_ns()
        self.written: int | None = None  # the frontier the record last said
        self.written_at = time.monotonic()
        #: what each copy of this run made (keys relative), for the sweep
        self.copies: dict[str, Copied] = {}

    def mark(self, key: str, what: str, made: Copied | None = None) -> None:
        with self.lock:
            setattr(self.report, what, getattr(self.report, what) + 1)
            if made is not None:
                self.copies[key] = made
            self.done[self.index[key]] = True
            while self.frontier < len(self.done) and self.done[self.frontier]:
                self.frontier += 1

    def record(self, finished_ns: int | None = None) -> bytes:
        with self.lock:
            frontier = self.frontier
        through = self.order[frontier - 1] if frontier else None
        return encode_record(self.source.bucket, self.source.prefix, self.point,
                             list(self.pins.values()), created_ns=self.created_ns,
                             finished_ns=finished_ns, copied_through=through)

    def write(self, force: bool = False) -> None:
        """Rewrite the record if the frontier moved and PROGRESS_S has passed (or
        ``force``). A failure is logged: the next one, or the end, says it."""
        with self.lock:
            frontier = self.frontier
        if not force and (frontier == self.written
                          or time.monotonic() - self.written_at < PROGRESS_S):
            return
        try:
            self.dest.store.put(self.dest.prefix + FORK_RECORD, self.record(), {})
            self.written, self.written_at = frontier, time.monotonic()
        except StoreError as exc:
            if force:
                raise
            log.warning("could not note the fork's progress in its record: %s", exc)


def _start(source: Side, dest: Side, progress: _Progress) -> bool:
    """Write the fork record, or find our own from an earlier run (True: resuming)."""
    key = dest.prefix + FORK_RECORD
    try:
        body = dest.store.get(key)
    except NoSuchKey:
        body = None
    if body is not None:
        if _same_fork(body, source, progress.pins):
            return True
        raise UsageError(f"{dest.url} holds another fork (its {FORK_RECORD} names another "
                         "source or point); choose another DEST")
    refusal = UsageError(f"{dest.url} is not empty; fork into a new prefix or bucket")
    if any(not timeline.is_reserved(k) for k in _dest_keys(dest, current=True)):
        raise refusal
    try:
        dest.store.put(key, progress.record(), {}, if_none_match=True)
    except PreconditionFailed:
        return _start(source, dest, progress)  # a concurrent run of the same fork
    # Old versions and delete markers count too (the sweep must find no history but
    # the fork's): a version listing, slower than the plain one, so it comes after the
    # record, which a mount of DEST may use already, and before the first copy.
    if any(not timeline.is_reserved(k) for k in _dest_keys(dest)):
        dest.store.delete(key)
        raise refusal
    return False


def _is_copy(v: VersionInfo, made: Copied) -> bool:
    """Whether the version ``v`` is the one a copy made: by its id, or where the
    server did not name it (Ceph RGW 16), by its ETag and time."""
    if made.version_id is not None:
        return v.version_id == made.version_id
    return (made.mtime_ns is not None and not v.is_delete_marker and v.etag == made.etag
            and v.mtime_ns == made.mtime_ns)


def _sweep(dest: Side, copies: dict[str, Copied]) -> int:
    """Delete (by version id) each copy of this run that is not the oldest version of
    its key: it was made over a change in DEST (see the module docstring). One
    listing of DEST's versions; returns how many were deleted."""
    if not copies or dest.store.versioning() == "off":
        return 0
    oldest: dict[str, str] = {}
    mine: dict[str, str] = {}
    for v in timeline.iter_versions(dest.store, dest.prefix):
        rel = v.key[len(dest.prefix):]
        oldest[rel] = v.version_id  # (each key's versions come newest first)
        made = copies.get(rel)
        if made is not None and rel not in mine and _is_copy(v, made):
            mine[rel] = v.version_id
    swept = 0
    for rel, vid in sorted(mine.items()):
        if oldest[rel] != vid:
            try:
                dest.store.delete(dest.prefix + rel, version_id=vid)
                swept += 1
            except StoreError as exc:
                log.warning("could not remove the fork's copy of %s made over a change "
                            "there (version %s): %s", rel, vid, exc)
    return swept


def _is_s3(store: ObjectStore) -> bool:
    from .store.s3 import S3Store  # (boto3: only when asked)

    return isinstance(store, S3Store)


def fork(source: Side, dest: Side, point: dict, pins: dict[str, Pinned], *, jobs: int = 32,
         progress: Callable[[int, int], None] = lambda done, total: None) -> Report:
    """Copy every pinned version of SOURCE into DEST (see the module docstring).
    ``point`` names what was pinned (``{"snapshot": NAME}`` or ``{"at": TIME}``)."""
    if source.store is not dest.store and not _is_s3(dest.store):
        raise UsageError("fork copies between two stores only on S3 servers (s3:// URLs)")
    started = time.monotonic()
    report = Report(total=len(pins))
    state = _Progress(source, dest, point, pins, report)
    report.resumed = _start(source, dest, state)
    have = _dest_keys(dest) if report.resumed else set()
    todo = [pins[k] for k in state.order if k not in have]
    for key in state.order:
        if key in have:
            state.mark(key, "present")

    def copy_one(p: Pinned) -> None:
        faults.wait_point("fork-copy")
        try:
            made = dest.store.copy_version(
                source.bucket, source.prefix + p.key, p.version_id, dest.prefix + p.key,
                p.size, if_none_match=True)
            state.mark(p.key, "copied", made)
        except PreconditionFailed:  # written into DEST meanwhile: theirs stays
            state.mark(p.key, "present")

    def tick(done: int) -> None:
        state.write()
        progress(report.present + report.copied, report.total)

    with parallel(jobs) as pool:
        run_parallel(pool, copy_one, todo, tick)
    state.write(force=True)  # everything copied: nothing is pending for a mount
    report.swept = _sweep(dest, state.copies)
    dest.store.put(dest.prefix + FORK_RECORD, state.record(time.time_ns()), {})
    for note in changed_keys(dest.store, dest.prefix):  # no mount needs them any more
        dest.store.delete(note)
    report.seconds = time.monotonic() - started
    return report
