"""S3 listing semantics shared by the local backends (memory and file).

S3 lists keys in ascending UTF-8 byte order. For valid Unicode strings that is the
same as Python's code-point order on ``str``, so plain ``str`` comparisons are used.

Continuation tokens are opaque to callers. Ours name the last entry returned and
whether it was a key (``K...``: resume strictly after that key) or a common prefix
(``P...``: resume after every key starting with that prefix).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from s3fuse.errors import StoreError
from s3fuse.store.base import ListPage, ObjectInfo, VersionInfo, VersionPage

@dataclass(frozen=True)
class Resume:
    """Where a page starts: strictly after ``after`` (and, for a prefix token,
    after every key that starts with it)."""

    after: str = ""
    is_prefix: bool = False

    def admits(self, key: str) -> bool:
        """True when ``key`` (an object key or a common prefix) belongs after the token."""
        if self.is_prefix and key.startswith(self.after):
            return False
        return key > self.after

    def admits_subtree(self, prefix: str) -> bool:
        """True when some key starting with ``prefix`` may come after the token.

        Lets a walker skip a whole directory without reading it.
        """
        if self.is_prefix and prefix.startswith(self.after):
            return False
        # Every key starting with ``prefix`` sorts before ``after`` iff ``after`` is
        # greater than ``prefix`` and does not itself start with it.
        return not (self.after > prefix and not self.after.startswith(prefix))


def decode_token(token: str | None) -> Resume:
    """Parse a continuation token made by ``paginate``."""
    if token is None:
        return Resume()
    if len(token) < 2 or token[0] not in "KP":
        raise StoreError(f"invalid continuation token {token[:40]!r}")
    return Resume(token[1:], token[0] == "P")


def check_max_keys(max_keys: int) -> None:
    """Reject page sizes S3 would also reject."""
    if max_keys < 1:
        raise ValueError(f"max_keys must be >= 1, not {max_keys}")


def roll_up(objects: Iterable[ObjectInfo], prefix: str,
            delimiter: str | None) -> Iterator[ObjectInfo | str]:
    """Apply S3 delimiter semantics to ``objects`` (sorted, all under ``prefix``).

    A key with ``delimiter`` after the prefix is replaced by its common prefix (the key
    up to and including the first delimiter after ``prefix``); each common prefix is
    yielded once, at the position of its first key.
    """
    if not delimiter:
        yield from objects
        return
    last_prefix = None
    for info in objects:
        cut = info.key.find(delimiter, len(prefix))
        if cut < 0:
            yield info
            continue
        common = info.key[: cut + len(delimiter)]
        if common != last_prefix:
            last_prefix = common
            yield common


def paginate(entries: Iterable[ObjectInfo | str], max_keys: int) -> ListPage:
    """Take one page of at most ``max_keys`` entries from a sorted entry stream.

    Reads one entry more than the page to know whether another page follows, so a lazy
    ``entries`` is consumed only as far as needed.
    """
    check_max_keys(max_keys)
    page = ListPage()
    last: ObjectInfo | str | None = None
    for taken, entry in enumerate(entries):
        if taken == max_keys:
            if isinstance(last, str):
                page.next_token = "P" + last
            elif last is not None:
                page.next_token = "K" + last.key
            break
        if isinstance(entry, str):
            page.prefixes.append(entry)
        else:
            page.objects.append(entry)
        last = entry
    return page


# --- versions (memory and file backends) ---------------------------------------------
#
# A version id is ``NNNNNNNNNNNNNNNNNNNN`` (the write's time in ns, 20 digits) plus 8 hex
# digits of randomness, so ids sort by time. The "null" version (written while
# versioning was off) has no such id; it sorts by its write time as ``NNN...N-null``
# ("-" sorts before every hex digit). That string, the *sort name*, orders a key's
# versions: the larger, the newer.

NULL = "null"

#: guards ``_last_ns``
_clock_lock = threading.Lock()
#: the time of the last id made in this process: ids are strictly increasing
_last_ns = 0


def new_version_id(after: str | None = None) -> str:
    """A fresh version id, newer than every id made before in this process and than
    the sort name ``after`` (the key's newest version, when the caller knows it)."""
    global _last_ns
    floor = sort_ns(after) if after else 0
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1, floor + 1)
        return f"{_last_ns:020d}{secrets.token_hex(4)}"


def null_sort_name(mtime_ns: int) -> str:
    """The sort name of the "null" version written at ``mtime_ns``."""
    return f"{max(0, mtime_ns):020d}-{NULL}"


def sort_ns(sort_name: str) -> int:
    """The time in a sort name (0 if it has none)."""
    try:
        return int(sort_name[:20])
    except ValueError:
        return 0


def version_id_of(sort_name: str) -> str:
    return NULL if sort_name.endswith("-" + NULL) else sort_name


@dataclass(frozen=True)
class VersionResume:
    """Where a version page starts: after the version (``key``, sort name ``name``),
    or, for a common prefix (``is_prefix``), after every key starting with ``key``."""

    key: str
    name: str = ""
    is_prefix: bool = False

    def admits_key(self, key: str) -> bool:
        """True when some version of ``key`` (or the prefix ``key``) may come after."""
        if self.is_prefix:
            return key > self.key and not key.startswith(self.key)
        return key >= self.key


def decode_version_token(token: str | None) -> VersionResume | None:
    """Where the page after ``token`` starts (None: at the beginning)."""
    if token is None:
        return None
    try:
        doc = json.loads(token[1:]) if token.startswith("V") else None
    except ValueError:
        doc = None
    if not isinstance(doc, list) or len(doc) not in (2, 3) \
            or not all(isinstance(x, str) for x in doc[:2]):
        raise StoreError(f"invalid continuation token {token[:40]!r}")
    return VersionResume(doc[0], doc[1], len(doc) == 3)


def version_after(resume: VersionResume | None, key: str, sort_name: str) -> bool:
    """True when the version (key, sort_name) comes after the token's entry."""
    if resume is None:
        return True
    if resume.is_prefix:
        return resume.admits_key(key)
    return key > resume.key or (key == resume.key and sort_name < resume.name)


def roll_up_keys(keys: Iterable[str], prefix: str, delimiter: str | None,
                 resume: VersionResume | None) -> Iterator[tuple[str, bool]]:
    """``(key, False)`` for each of the sorted ``keys`` (all under ``prefix``) with no
    ``delimiter`` after the prefix, ``(common prefix, True)`` once for the others, in
    listing order; prefixes the token has passed are left out (keys are filtered by
    the caller, version by version)."""
    last = None
    for key in keys:
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            if resume is None or resume.admits_key(key):
                yield key, False
            continue
        common = key[: cut + len(delimiter)]
        if common != last:
            last = common
            if resume is None or (common > resume.key
                                  and not (resume.is_prefix and common == resume.key)):
                yield common, True


def paginate_versions(entries: Iterable[tuple[str, VersionInfo] | str],
                      max_keys: int) -> VersionPage:
    """One page from ``(sort name, version)`` pairs and common prefixes (``str``)
    already in listing order (keys ascending, each key newest first) and already
    past the token. A common prefix counts as one entry, as on S3."""
    check_max_keys(max_keys)
    page = VersionPage()
    last: list[str | bool] | None = None
    for taken, entry in enumerate(entries):
        if taken == max_keys:
            assert last is not None
            page.next_token = "V" + json.dumps(last)
            break
        if isinstance(entry, str):
            page.prefixes.append(entry)
            last = [entry, "", True]
        else:
            name, info = entry
            page.versions.append(info)
            last = [info.key, name]
    return page
