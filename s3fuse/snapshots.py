"""Named snapshots (``s3fuse snapshot create|list|delete``) and the choice of a
point in a tree's history that ``restore`` and ``fork`` share (``pinned``).

A snapshot costs one version listing of the prefix and one PUT of its record (see
``timeline``: ``PREFIX.s3fuse/snapshots/NAME.json``); nothing is copied. The sync
barrier before it (everything the mount acknowledged is in the bucket) is the CLI's
part (``cli_timetravel``): this module only talks to the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import timeline
from .errors import NoSuchKey, NotSupported, PreconditionFailed, S3FuseError, UsageError
from .store import ObjectStore
from .timeline import Pinned, Snapshot


def read_snapshot(store: ObjectStore, prefix: str, name: str) -> Snapshot:
    """The record of snapshot ``name``; UsageError (one line) if there is none."""
    key = timeline.snapshot_key(prefix, name)
    try:
        return Snapshot.decode(store.get(key))
    except NoSuchKey:
        raise UsageError(f"no snapshot named {name!r} in {store.description}"
                         f"{'/' + prefix if prefix else ''} (see `s3fuse snapshot list`)"
                         ) from None


def pinned(store: ObjectStore, prefix: str, sub: str = "", *, at_ns: int | None = None,
           snapshot: str | None = None) -> dict[str, Pinned]:
    """The versions a tree had at ``at_ns`` or in ``snapshot``, keyed by their path
    relative to ``prefix`` (directory markers end in "/"), limited to ``sub`` (a
    relative path: that entry and everything under it; "" for the whole tree)."""
    def inside(rel: str) -> bool:
        return not sub or rel.rstrip("/") == sub or rel.startswith(sub + "/")

    if snapshot is not None:
        record = read_snapshot(store, prefix, snapshot)
        return {p.key: p for p in record.objects if inside(p.key)}
    assert at_ns is not None
    found = timeline.current_at(timeline.iter_versions(store, prefix + sub), at_ns)
    out = {}
    for key, v in found.items():
        rel = key[len(prefix):]
        if inside(rel) and not timeline.is_reserved(rel):
            out[rel] = Pinned(rel, v.version_id, v.etag, v.size, v.mtime_ns)
    return out


@dataclass
class Created:
    snapshot: Snapshot
    lifecycle_warning: str | None


def create(store: ObjectStore, bucket: str, prefix: str, name: str, at_ns: int) -> Created:
    """Pin every key under ``prefix`` as of now and store the record, never over an
    existing snapshot of that name (a HEAD, then a PUT with If-None-Match).

    "Now" is the later of ``at_ns`` (the host's clock, taken after the sync barrier)
    and the server's clock: Last-Modified is the server's, so with a server clock
    ahead of the host an upload acknowledged before the barrier ended is still in."""
    timeline.check_snapshot_name(name)
    timeline.require_versioning(store, "snapshot create")
    at_ns = max(at_ns, store.server_time_ns())
    key = timeline.snapshot_key(prefix, name)
    exists = UsageError(f"a snapshot named {name!r} exists already; delete it first "
                        "(`s3fuse snapshot delete`) or choose another name")
    # A HEAD first: some servers ignore If-None-Match (Ceph RGW on a versioned bucket
    # stores the PUT anyway); the condition then only narrows the race to two
    # snapshots of one name taken at the same moment.
    try:
        store.head(key)
        raise exists
    except NoSuchKey:
        pass
    record = Snapshot(name, at_ns, bucket, prefix, timeline.pin_tree(store, prefix, at_ns))
    try:
        store.put(key, record.encode(), {}, if_none_match=True)
    except PreconditionFailed:
        raise exists from None
    except NotSupported:
        store.put(key, record.encode(), {})
    return Created(record, lifecycle_warning(store, prefix, len(record.objects)))


def names(store: ObjectStore, prefix: str) -> list[str]:
    """The snapshots of the tree under ``prefix``, by name."""
    base = prefix + timeline.SNAPSHOTS_DIR
    out, token = [], None
    while True:
        page = store.list(base, None, token)
        for obj in page.objects:
            rel = obj.key[len(base):]
            if rel.endswith(".json") and "/" not in rel:
                out.append(rel[:-len(".json")])
        token = page.next_token
        if token is None:
            return sorted(out)


def listing(store: ObjectStore, prefix: str) -> list[dict]:
    """One dict per snapshot: name, created, objects, bytes (records that this
    version cannot read are listed with an ``error``)."""
    out = []
    for name in names(store, prefix):
        try:
            record = read_snapshot(store, prefix, name)
        except (UsageError, S3FuseError) as exc:
            out.append({"name": name, "error": str(exc)})
            continue
        out.append({"name": name, "created": timeline.format_when(record.created_ns),
                    "objects": len(record.objects),
                    "bytes": sum(p.size for p in record.objects)})
    return out


def delete(store: ObjectStore, prefix: str, name: str) -> None:
    """Remove the record (on a versioned bucket its old version stays, as any
    object's does); the versions it pinned are not touched."""
    key = timeline.snapshot_key(prefix, name)
    try:
        store.head(key)
    except NoSuchKey:
        raise UsageError(f"no snapshot named {name!r} (see `s3fuse snapshot list`)") from None
    store.delete(key)


def _rule_prefix(rule: dict) -> str:
    flt = rule.get("Filter") or {}
    if "Prefix" in flt:
        return str(flt["Prefix"] or "")
    if "And" in flt:
        return str((flt["And"] or {}).get("Prefix") or "")
    return str(rule.get("Prefix") or "")


def lifecycle_warning(store: ObjectStore, prefix: str, count: int) -> str | None:
    """One line when an enabled lifecycle rule covering ``prefix`` (or part of it)
    expires objects or noncurrent versions: the versions a snapshot pins would go."""
    for rule in store.lifecycle_rules():
        if str(rule.get("Status", "")).lower() != "enabled":
            continue
        scope = _rule_prefix(rule)
        if not (prefix.startswith(scope) or scope.startswith(prefix)):
            continue
        if rule.get("NoncurrentVersionExpiration"):
            days = rule["NoncurrentVersionExpiration"].get("NoncurrentDays")
            what = f"noncurrent versions after {days} days" if days else "noncurrent versions"
        elif {"Days", "Date"} & set(rule.get("Expiration") or {}):
            what = "objects"  # (ExpiredObjectDeleteMarker alone removes only markers)
        else:
            continue
        return (f"lifecycle rule {rule.get('ID') or '(unnamed)'!s} on prefix {scope!r} "
                f"expires {what}: the {count} versions this snapshot pins may be deleted "
                "by the server when they become noncurrent")
    return None
