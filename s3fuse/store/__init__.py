"""Object-store backends and ``open_store``, which picks one from a mount source.

Sources:

* ``s3://BUCKET[/PREFIX]`` -- an S3 bucket (AWS, or any S3-compatible server with
  ``endpoint_url``); credentials come from the standard AWS chain.
* ``file:///ABS/PATH`` -- a local directory used as a bucket (see ``file.py``). The
  path is taken literally (no %-decoding); ``file://localhost/ABS/PATH`` works too.
* ``memory://NAME[/PREFIX]`` -- an in-process bucket for tests; stores opened with
  the same NAME share their objects.

Only the S3 backend imports boto3, and only when an ``s3://`` source is opened.
"""

from __future__ import annotations

import os
import re

from s3fuse.errors import UsageError
from s3fuse.store.base import (
    Body,
    Capabilities,
    Copied,
    ListPage,
    ObjectInfo,
    ObjectStore,
    VersionInfo,
    VersionPage,
)

__all__ = ["Body", "Capabilities", "Copied", "ListPage", "ObjectInfo", "ObjectStore", "VersionInfo",
           "VersionPage", "open_store", "normalize_prefix"]

_FORMS = "s3://BUCKET[/PREFIX], file:///ABSOLUTE/PATH or memory://NAME"
# Lenient on purpose: S3-compatible servers accept names AWS would not (upper case,
# underscores); the server has the last word, this only catches typos early.
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def normalize_prefix(prefix: str, source: str) -> str:
    """``"a/b"`` or ``"a/b/"`` -> ``"a/b/"``; ``""`` -> ``""``.

    Refuses prefixes that cannot be a directory path (``a//b``, ``.``, ``..``, NUL).
    """
    if prefix.endswith("/"):
        prefix = prefix[:-1]
    if not prefix:
        return ""
    for segment in prefix.split("/"):
        if segment in ("", ".", "..") or "\0" in segment:
            raise UsageError(f"invalid prefix in {source!r}: {prefix!r} is not a plain path")
    return prefix + "/"


def open_store(source: str, *, endpoint_url: str | None = None,
               region: str | None = None) -> tuple[ObjectStore, str]:
    """Open the store named by ``source``; return ``(store, key_prefix)``.

    ``key_prefix`` is ``""`` or ends with ``"/"``. Does no I/O: call ``store.check()``
    to find out whether the bucket is there. ``region`` only matters for s3://;
    ``endpoint_url`` with another scheme is a usage error. Raises UsageError with a
    one-line message for a malformed source.
    """
    scheme, sep, rest = source.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("s3", "file", "memory"):
        raise UsageError(f"unknown source {source!r}: expected {_FORMS}")
    if endpoint_url is not None and scheme != "s3":
        raise UsageError(f"--endpoint-url only applies to s3:// sources, not {source!r}")

    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.fullmatch(bucket):
            raise UsageError(f"invalid bucket name {bucket!r} in {source!r}")
        key_prefix = normalize_prefix(prefix, source)
        from s3fuse.store.s3 import S3Store  # boto3 is slow to import; only when needed

        return S3Store(bucket, endpoint_url=endpoint_url, region=region), key_prefix

    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise UsageError(f"file:// source needs an absolute path (file:///PATH), "
                             f"not {source!r}")
        if "\0" in rest:
            raise UsageError("file:// path contains a NUL byte")
        path = os.path.normpath(rest)
        if path in ("/", "//"):
            raise UsageError("refusing to use / itself as a file:// store")
        from s3fuse.store.file import FileStore

        return FileStore(path), ""

    name, _, prefix = rest.partition("/")
    if not name:
        raise UsageError(f"memory:// source needs a name (memory://NAME), not {source!r}")
    key_prefix = normalize_prefix(prefix, source)
    from s3fuse.store.memory import MemoryStore

    return MemoryStore(name), key_prefix
