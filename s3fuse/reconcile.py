"""Outside changes and the S3-wins policy, as a pure decision.

The bucket is the source of truth. When what the mount believes about an object
(the ETag it last saw, whether it has local changes) and what the bucket holds
disagree, ``decide`` says what to do. It does no I/O; ``filesystem`` carries it out.

=====================  ==============================  ============================
mount's file           bucket's object                 decision
=====================  ==============================  ============================
clean, ETag E          still E                         KEEP
clean, ETag E          changed to F                    REFRESH: show F, drop cache
clean, ETag E          gone                            REMOVE the entry
dirty, ETag E          still E (or never uploaded,     KEEP: our upload goes ahead
                       and still absent)
dirty, ETag E          changed to F                    CONFLICT: ours to lost+found,
                                                       F takes the path
dirty, ETag E          gone                            CONFLICT_GONE: ours to
                                                       lost+found, the path goes
dirty, never uploaded  someone created it              CONFLICT: as above
=====================  ==============================  ============================

A file whose object is about to be written by a pending rename copy (no ETag yet) is
never judged: the bucket cannot agree with it until the op log has run.
"""

from __future__ import annotations

import enum


class Decision(enum.Enum):
    KEEP = "keep"
    REFRESH = "refresh"
    REMOVE = "remove"
    CONFLICT = "conflict"
    CONFLICT_GONE = "conflict-gone"


def decide(*, dirty: bool, known_etag: str | None, uploaded: bool,
           bucket_etag: str | None) -> Decision:
    """``uploaded``: the mount has (or inherited) an object at this key, whose ETag
    is ``known_etag``. ``bucket_etag``: what the bucket holds now (None: nothing)."""
    if not uploaded:
        if bucket_etag is None:
            return Decision.KEEP
        return Decision.CONFLICT if dirty else Decision.REFRESH
    if known_etag is None:
        return Decision.KEEP  # a pending copy will produce it
    if bucket_etag == known_etag:
        return Decision.KEEP
    if bucket_etag is None:
        return Decision.CONFLICT_GONE if dirty else Decision.REMOVE
    return Decision.CONFLICT if dirty else Decision.REFRESH
