"""Which bucket keys can be paths, and which names can be keys.

A key is split on "/" into names. A name must be a usable file name: not empty, not
"." or "..", no NUL, at most 255 bytes. Keys that break these rules (``a//b``,
``./x``, ``../x``, ``/abs``, long names) are skipped, never fatal, and never turned
into a path outside the mount. The name ``.s3fuse`` at the root of the mount is
reserved for s3fuse's own local directory (lost+found); bucket keys under it are
skipped too.
"""

from __future__ import annotations

import errno

from .errors import FsError

NAME_MAX = 255
KEY_MAX = 1024
RESERVED_ROOT_NAME = b".s3fuse"


def name_from_segment(segment: str) -> bytes | None:
    """The file name for one key segment, or None if the segment cannot be a name."""
    if segment in ("", ".", ".."):
        return None
    raw = segment.encode("utf-8", "surrogatepass")
    if b"\0" in raw or len(raw) > NAME_MAX:
        return None
    return raw


def check_new_name(name: bytes) -> str:
    """Validate a name a program asks to create; return it as a key segment."""
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, "invalid name")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(errno.EINVAL, "names must be UTF-8 to become S3 keys") from None
