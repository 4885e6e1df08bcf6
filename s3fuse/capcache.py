"""The capability probe's answer, kept between mounts in the journal's meta table.

A probe (``ObjectStore.probe``) costs about ten requests: a scratch object written,
four conditions that must be refused, the object deleted. Its answer depends on the
server, the bucket and the bucket's versioning (Ceph RGW 16 refuses If-Match PUTs on
a versioned bucket), so it is kept with the store's description (endpoint and
bucket, never credentials) and the versioning state it was found under. A later
mount of the same cache directory uses it again when the bucket's versioning still
reads the same (one GetBucketVersioning) and it is younger than ``MAX_AGE_S``;
anything else (another endpoint or bucket, a record that does not parse, an old or
future one, a versioning state that moved) is ignored and the server probed again.
The cache directory is private to the user (0700), as the journal is.
"""

from __future__ import annotations

import json

from .store.base import Capabilities

#: the journal meta key of the kept answer
KEY = b"probe"
#: a kept answer older than this is probed again (a server's support may change
#: without its bucket's versioning changing: an upgrade, a proxy in front of it)
MAX_AGE_S = 24 * 3600.0
#: a kept answer may be this far in the future (clock steps) and still count
_CLOCK_SLACK_S = 300.0
_FORMAT = 1
_STATES = ("off", "enabled", "suspended")
_FLAGS = ("conditional_put", "conditional_copy", "conditional_delete")


def encode(where: str, caps: Capabilities, now: float) -> bytes | None:
    """The record for ``caps`` found at ``where`` (the store's description) at
    ``now``; None when the answer cannot be kept (the versioning was not readable)."""
    if caps.versioning not in _STATES:
        return None
    record = {"format": _FORMAT, "where": where, "versioning": caps.versioning, "at": now}
    record.update({name: bool(getattr(caps, name)) for name in _FLAGS})
    return json.dumps(record, sort_keys=True).encode()


def decode(raw: bytes | None, where: str, now: float) -> Capabilities | None:
    """The kept answer if ``raw`` is a sound, recent record for ``where``; else None."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:  # (UnicodeDecodeError is one)
        return None
    if not isinstance(record, dict) or record.get("format") != _FORMAT \
            or record.get("where") != where or record.get("versioning") not in _STATES:
        return None
    at = record.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) \
            or not now - MAX_AGE_S < at <= now + _CLOCK_SLACK_S:
        return None
    flags = [record.get(name) for name in _FLAGS]
    if not all(isinstance(flag, bool) for flag in flags):
        return None
    return Capabilities(*flags, versioning=record["versioning"])
