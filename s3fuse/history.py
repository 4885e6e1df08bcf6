"""``s3fuse history PATH``: the versions of one file, newest first, and who wrote
each one.

The writer comes from the ``s3fuse-seq`` user metadata that every upload of a mount
carries (``reconcile.SEQ_META``: ``JOURNALID:INO:SEQ``): the asking mount's own
journal id means "this mount", another id "s3fuse mount JOURNALID", no tag
"outside" (another tool, or a copy made by one). Delete markers are deletions.
One version listing, plus one HEAD per version (the listing carries no metadata).
"""

from __future__ import annotations


from . import timeline
from .errors import NoSuchKey
from .reconcile import SEQ_META
from .workspace import Workspace, parallel


def writer_of(metadata: dict[str, str] | None, journal_id: str) -> str:
    tag = (metadata or {}).get(SEQ_META, "")
    owner, _, rest = tag.partition(":")
    if not owner or not rest:
        return "outside"
    return "this mount" if owner == journal_id else f"s3fuse mount {owner}"


def versions(ws: Workspace, rel: str) -> list[dict]:
    """One dict per version of ``rel`` (a file; a directory's marker with a "/"):
    ``time``, ``size``, ``version_id``, ``etag``, ``writer`` ("this mount", "s3fuse
    mount ID", "outside"; None for a deletion), ``deleted``, newest first, with
    ``current`` on the version the path shows now."""
    timeline.require_versioning(ws.store, "history")
    key = ws.key(rel)
    found = [v for v in timeline.iter_versions(ws.store, key) if v.key == key]

    def describe(v) -> dict:
        entry = {"time": timeline.format_when(v.mtime_ns), "size": v.size,
                 "version_id": v.version_id, "etag": v.etag, "deleted": v.is_delete_marker,
                 "current": v.is_latest and not v.is_delete_marker}
        if v.is_delete_marker:
            entry["writer"] = None  # a delete marker carries no metadata
            return entry
        try:
            info = ws.store.head(key, version_id=v.version_id)
            entry["writer"] = writer_of(info.metadata, ws.journal_id)
        except NoSuchKey:  # expired since the listing
            entry["writer"] = "gone"
        return entry

    with parallel(8) as pool:
        return list(pool.map(describe, found))
