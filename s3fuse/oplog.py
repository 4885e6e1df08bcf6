"""The op log's operations: typed server-side ``copy`` and ``delete``, the one rule
for the keys an op names, and how one op is carried out against the bucket.

Renames and unlinks of objects already in the bucket append these to the journal's
``ops`` sub-database (see ``journal``), in the transaction that changes the
namespace; the flusher starts them in order (``Flusher._run_ops``: an op starts
once no earlier pending op, and no upload in flight, names any of its keys). The
keys an op names (``Op.keys``) are what that ordering, the journal's op index and
fsck go by: this module is the only place that says which they are.

On disk an op is the JSON object ``record`` gives (``{"op": "copy", "src", "dst",
"etag", "ino"}`` or ``{"op": "delete", "key", "etag", "ino"}``); ``parse`` reads it
back. Every op is idempotent, so a crash that replays one already done is safe.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from . import faults
from .errors import NoSuchKey, PreconditionFailed

if TYPE_CHECKING:
    from .remote import Remote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyOp:
    """Copy ``src`` to ``dst`` server-side, pinned to the source version ``etag``
    (a rename of a clean object). ``ino``: the record whose object the copy makes
    (until it ran, its bytes are read from ``src``)."""

    kind: ClassVar[str] = "copy"
    src: str
    dst: str
    etag: str | None
    ino: int = 0

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.src, self.dst)


@dataclass(frozen=True)
class DeleteOp:
    """Delete ``key`` if it is still at version ``etag`` (S3 wins: a version written
    outside since stays). ``ino``: the record the object belonged to."""

    kind: ClassVar[str] = "delete"
    key: str
    etag: str | None
    ino: int = 0

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)


Op = CopyOp | DeleteOp
KINDS: dict[str, type[CopyOp] | type[DeleteOp]] = {"copy": CopyOp, "delete": DeleteOp}


class BadOp(ValueError):
    """A record in the op log that is no operation this version knows."""


def record(op: Op) -> dict[str, Any]:
    """The JSON object ``op`` is stored as."""
    return {"op": op.kind, **dataclasses.asdict(op)}


def parse(rec: object) -> Op:
    """The op a stored record holds; ``BadOp`` if it names no known operation. The
    fields are taken as they are (fsck checks the keys: ``Fsck.check_ops``)."""
    kind = rec.get("op") if isinstance(rec, dict) else None
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadOp(f"unknown operation {rec!r}")
    assert isinstance(rec, dict)
    fields = {f.name: rec.get(f.name) for f in dataclasses.fields(cls)}
    if fields["ino"] is None:
        fields["ino"] = 0
    return cls(**fields)


def with_ino(op: Op, ino: int) -> Op:
    """``op`` made for record ``ino`` instead (a hard link handed its name on)."""
    return dataclasses.replace(op, ino=ino)


def with_etag(op: Op, etag: str) -> Op:
    """``op`` pinned to version ``etag`` instead."""
    return dataclasses.replace(op, etag=etag)


async def carry_out(op: Op, remote: Remote, counts: Counter[str]) -> str | None:
    """Do ``op`` in the bucket once. Returns a copy's new ETag, or ``""`` when its
    source changed or went (S3 wins; what that means is ``Flusher._finish_op``'s
    to settle); None for a delete, done or refused because the key changed. Store
    errors are raised for the caller to retry. Counts what it did in ``counts``."""
    if isinstance(op, DeleteOp):
        faults.crash_point("before-delete")
        try:
            if op.etag and not remote.capabilities.conditional_delete:
                # the server ignores If-Match on DELETE: look first (best effort,
                # as for uploads to such servers)
                info = await remote.head_or_none(op.key)
                if info is not None and info.etag != op.etag:
                    raise PreconditionFailed(f"{op.key} is at another ETag")
            await remote.delete(op.key, if_match=op.etag)
        except PreconditionFailed:
            # rewritten in the bucket since we saw it: S3 wins, the new version stays
            log.warning("not deleting %s: it changed in the bucket", op.key)
            return None
        counts["delete"] += 1
        return None
    try:
        etag = await remote.copy(op.src, op.dst, None, src_if_match=op.etag)
    except (NoSuchKey, PreconditionFailed) as exc:
        # changed or removed in the bucket meanwhile; resolved in _finish_op
        log.warning("copy %s -> %s: source changed in the bucket: %s", op.src, op.dst, exc)
        return ""
    counts["copy"] += 1
    return etag
