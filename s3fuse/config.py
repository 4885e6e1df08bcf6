"""Frozen mount settings: defaults < environment (S3FUSE_*) < command line, validated once."""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field

from .errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str) -> int:
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use bytes or a size like 512M, 10G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_seconds(text: str | float, what: str, minimum: float = 0.0) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"invalid {what} {text!r}: expected seconds") from None
    if not math.isfinite(value):
        raise UsageError(f"invalid {what} {text!r}: expected a finite number of seconds")
    if value < minimum:
        raise UsageError(f"invalid {what} {text!r}: must be at least {minimum:g}")
    return value


def parse_mode(text: str | int, what: str) -> int:
    try:
        value = int(str(text), 8)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}: expected an octal mode like 0644") from None
    if not 0 <= value <= 0o7777:
        raise UsageError(f"invalid {what} {text!r}: expected an octal mode like 0644")
    return value


def default_cache_root() -> str:
    if os.geteuid() == 0:
        return "/var/cache/s3fuse"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "s3fuse")


def default_cache_dir(source: str, endpoint_url: str | None) -> str:
    """The cache directory of a mount given none: one per bucket source, so mounting
    the same source again (anywhere) replays the same journal."""
    digest = hashlib.sha256(f"{source} {endpoint_url or ''}".encode()).hexdigest()
    return os.path.join(default_cache_root(), digest[:16])


@dataclass(frozen=True)
class Settings:
    source: str
    mountpoint: str
    cache_dir: str
    endpoint_url: str | None = None
    region: str | None = None
    cache_size_bytes: int = 10 << 30
    flush_window_s: float = 60.0
    metadata_ttl_s: float = 1.0
    poll_interval_s: float = 30.0
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool = False
    fsync_upload: bool = False
    max_uploads: int = 8
    drain_timeout_s: float = 600.0
    log_level: str = "INFO"
    fuse_options: tuple[str, ...] = ()
    read_only: bool = False  # -o ro / --read-only: the kernel mount is read-only
    nonempty: bool = False  # mount over a directory that has entries
    metrics_addr: str | None = None  # HOST:PORT to serve Prometheus metrics on
    #: readdir reports small objects whose headers were not read as regular files
    #: (``Discovery.type_known``): ``find`` makes no HEAD for them, but a symlink or
    #: FIFO among them shows as a file in readdir's d_type until it is looked up.
    #: Off by default: --types-from-listing / -o types_from_listing
    types_from_listing: bool = False
