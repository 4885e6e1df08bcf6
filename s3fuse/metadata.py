"""POSIX attributes <-> object user metadata, in the dialect s3fs-fuse and rclone use.

Written by us: ``mode`` (decimal st_mode, type bits included), ``uid``, ``gid``,
``mtime``/``atime``/``ctime`` (seconds with a nine-digit fraction), ``rdev`` for
device nodes, ``xattr`` (JSON of ``{name: base64 value}``) for ``user.*`` xattrs.
Also read: the AWS FSx dialect ``file-permissions`` (octal), ``file-owner``,
``file-group``, and rclone's octal ``mode`` and RFC 3339 ``mtime``. Every other key
is foreign metadata and is carried over unchanged when we rewrite the object.
"""

from __future__ import annotations

import base64
import json
import stat
from datetime import datetime
from decimal import Decimal, InvalidOperation

OURS = ("mode", "uid", "gid", "mtime", "atime", "ctime", "rdev", "xattr", "s3fuse-seq")
FSX = ("file-permissions", "file-owner", "file-group")
# S3 allows 2 KiB of user metadata in all (names and values).
METADATA_LIMIT_BYTES = 2048

_VALID_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
                stat.S_IFCHR, stat.S_IFBLK}


def format_time_ns(ns: int) -> str:
    """Seconds with a nine-digit fraction; times before 1970 carry a leading minus
    (-1 ns is "-0.000000001", not "-1.999999999")."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def parse_time_ns(text: str) -> int | None:
    try:
        return int(Decimal(text.strip()) * 1_000_000_000)
    except (InvalidOperation, ValueError):
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(Decimal(str(dt.timestamp())) * 1_000_000_000)


def parse_mode(text: str, octal_first: bool = False) -> int | None:
    """Decimal st_mode (s3fs), or octal ("0100644", rclone and FSx)."""
    text = text.strip()
    candidates = []
    for base in ((8, 10) if octal_first or text.startswith("0") else (10, 8)):
        try:
            candidates.append(int(text, base))
        except ValueError:
            continue
    for mode in candidates:
        if stat.S_IFMT(mode) in _VALID_TYPES or stat.S_IFMT(mode) == 0:
            return mode
    return None


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def encode(*, mode: int, uid: int, gid: int, mtime_ns: int, atime_ns: int, ctime_ns: int,
           rdev: int, xattrs: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The user metadata for an object holding an inode with these attributes."""
    md = dict(extra)
    md.update({
        "mode": str(mode), "uid": str(uid), "gid": str(gid),
        "mtime": format_time_ns(mtime_ns), "atime": format_time_ns(atime_ns),
        "ctime": format_time_ns(ctime_ns),
    })
    if rdev:
        md["rdev"] = str(rdev)
    if xattrs:
        md["xattr"] = json.dumps(xattrs, separators=(",", ":"), sort_keys=True)
    # keep a foreign FSx dialect truthful instead of stale
    if "file-permissions" in md:
        md["file-permissions"] = f"{mode:07o}"
    if "file-owner" in md:
        md["file-owner"] = str(uid)
    if "file-group" in md:
        md["file-group"] = str(gid)
    return md


def decode(metadata: dict[str, str] | None, *, is_dir: bool, default_mode: int,
           default_uid: int, default_gid: int, fallback_mtime_ns: int) -> dict:
    """Inode fields from object metadata, with the mount's defaults for what is absent.

    Returns a dict with mode, uid, gid, mtime_ns, atime_ns, ctime_ns, rdev, xattrs,
    extra. The file type comes from ``mode`` when it names one (symlinks, FIFOs...),
    else from ``is_dir``. Permission bits are never 0000 for lack of metadata.
    """
    md = {k.lower(): v for k, v in (metadata or {}).items()}
    default_type = stat.S_IFDIR if is_dir else stat.S_IFREG
    mode = None
    if "mode" in md:
        mode = parse_mode(md["mode"])
    elif "file-permissions" in md:
        mode = parse_mode(md["file-permissions"], octal_first=True)
    if mode is None or stat.S_IMODE(mode) == 0 and stat.S_IFMT(mode) == 0:
        mode = default_type | default_mode
    elif stat.S_IFMT(mode) == 0:
        mode |= default_type
    if is_dir:  # a prefix is a directory whatever the marker's header says
        mode = stat.S_IFDIR | stat.S_IMODE(mode)

    def _int(*names: str, default: int) -> int:
        for n in names:
            if n in md:
                try:
                    return int(md[n])
                except ValueError:
                    continue
        return default

    mtime = parse_time_ns(md["mtime"]) if "mtime" in md else None
    mtime = fallback_mtime_ns if mtime is None else mtime
    atime = parse_time_ns(md["atime"]) if "atime" in md else None
    ctime = parse_time_ns(md["ctime"]) if "ctime" in md else None
    xattrs: dict[str, str] = {}
    if "xattr" in md:
        try:
            loaded = json.loads(md["xattr"])
            if isinstance(loaded, dict):
                xattrs = {str(k): str(v) for k, v in loaded.items()}
        except ValueError:
            pass
    extra = {k: v for k, v in md.items() if k not in OURS}
    return {
        "mode": mode,
        "uid": _int("uid", "file-owner", default=default_uid),
        "gid": _int("gid", "file-group", default=default_gid),
        "mtime_ns": mtime,
        "atime_ns": mtime if atime is None else atime,
        "ctime_ns": mtime if ctime is None else ctime,
        "rdev": _int("rdev", default=0),
        "xattrs": xattrs,
        "extra": extra,
    }


def xattr_value(b64: str) -> bytes:
    return base64.b64decode(b64)


def xattr_encode(value: bytes) -> str:
    return base64.b64encode(value).decode()
