"""Helpers for ``Body`` values (bytes, or the path of a local file holding the body)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from s3fuse.store.base import Body

#: read size when streaming a body from disk
CHUNK = 1 << 20

#: ETag of an empty object (md5 of b"")
EMPTY_ETAG = hashlib.md5(b"").hexdigest()


def is_bytes(body: Body) -> bool:
    return isinstance(body, (bytes, bytearray, memoryview))


def body_size(body: Body) -> int:
    """Length of the body in bytes (stats the file for a path body)."""
    if is_bytes(body):
        return len(body)  # type: ignore[arg-type]
    return os.stat(body).st_size  # type: ignore[arg-type]


def read_body(body: Body) -> bytes:
    """The whole body in memory. Only for backends that keep objects in memory."""
    if is_bytes(body):
        return bytes(body)  # type: ignore[arg-type]
    with open(body, "rb") as f:  # type: ignore[arg-type]
        return f.read()


def iter_body(body: Body, chunk: int = CHUNK) -> Iterator[bytes]:
    """The body in chunks of at most ``chunk`` bytes, without loading a file whole."""
    if is_bytes(body):
        view = memoryview(body)  # type: ignore[arg-type]
        for start in range(0, len(view), chunk):
            yield bytes(view[start:start + chunk])
        return
    with open(body, "rb") as f:  # type: ignore[arg-type]
        while block := f.read(chunk):
            yield block


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def check_range(start: int, end: int | None) -> None:
    """Reject ranges no caller should ask for (negative offsets)."""
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"invalid byte range [{start}, {end})")
