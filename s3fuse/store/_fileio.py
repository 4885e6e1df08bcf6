"""The file store's low-level helpers (``file.py`` describes the layout): key
validation, the records in xattrs, opening files and directories one component at a
time without following symlinks, and the conditions a write checks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat

from s3fuse.errors import InvalidKey, NotSupported, PreconditionFailed, StoreError
from s3fuse.store._body import CHUNK, EMPTY_ETAG
from s3fuse.store._listing import null_sort_name
from s3fuse.store.base import ObjectInfo

PRIVATE = ".s3fuse-store"
XATTR_OBJ = "user.s3fuse.obj"
XATTR_MARKER = "user.s3fuse.marker"
#: under PRIVATE: the versioning setting, and the tree of old versions
SETTING = "versioning"
VERSIONS = "versions"
#: in a key's versions directory: the file holding the key
KEY_FILE = "key"
#: a version id the store made (the only form used as a file name)
_VID_RE = re.compile(r"[0-9]{20}[0-9a-f]{8}")
#: a sort name: a version id, or the "null" version's "<ns>-null"
_SORT_RE = re.compile(r"[0-9]{20}(?:[0-9a-f]{8}|-null)")

#: temp files older than this are leftovers of a crash; ``check()`` removes them
STALE_TMP_SECONDS = 24 * 3600

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone planted in ROOT must not hang the store.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP)


def _fail_key(key: str, why: str) -> InvalidKey:
    return InvalidKey(f"file store cannot hold key {key[:80]!r}: {why}")


def split_key(key: str) -> tuple[list[str], bool]:
    """Validate ``key`` and split it into path segments.

    Returns ``(segments, is_marker)``; a marker key ends in a single ``/``.
    Raises InvalidKey for anything that is not a plain relative path inside ROOT.
    """
    if not isinstance(key, str) or not key:
        raise _fail_key(str(key), "empty key")
    if key.startswith("/"):
        raise _fail_key(key, "absolute path")
    if "\0" in key:
        raise _fail_key(key, "NUL byte")
    is_marker = key.endswith("/")
    segments = (key[:-1] if is_marker else key).split("/")
    for seg in segments:
        if seg in ("", ".", ".."):
            raise _fail_key(key, f"path segment {seg!r}")
        try:
            size = len(seg.encode("utf-8"))
        except UnicodeEncodeError:
            raise _fail_key(key, "not valid UTF-8") from None
        if size > 255:
            raise _fail_key(key, "a path segment is longer than 255 bytes")
    if segments[0] == PRIVATE:
        raise _fail_key(key, f"{PRIVATE}/ is private to the store")
    return segments, is_marker


def _derived_etag(st: os.stat_result) -> str:
    """ETag of a file we did not write: changes whenever size or mtime change."""
    return hashlib.md5(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def _load_json_xattr(fd: int, name: str) -> dict | None:
    try:
        raw = os.getxattr(fd, name)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return None
        raise
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _clean_meta(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _file_info(fd: int, key: str, st: os.stat_result, with_metadata: bool) -> ObjectInfo:
    """ObjectInfo of the regular file open as ``fd``."""
    record = _load_json_xattr(fd, XATTR_OBJ)
    etag = None
    meta: dict[str, str] = {}
    if record is not None:
        meta = _clean_meta(record.get("meta"))
        # The recorded ETag is the md5 of what we wrote; trust it only while the file
        # still has the size and mtime it had then (someone may have edited it by hand).
        if record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns:
            etag = record.get("etag")
    if not isinstance(etag, str) or not etag:
        etag = _derived_etag(st)
    return ObjectInfo(key, st.st_size, etag, st.st_mtime_ns, meta if with_metadata else None)


def _record_sort(record: dict | None, st: os.stat_result | None) -> str:
    """The sort name of a current object (``st``: its file's stat; None for a marker)
    from its record: its ``vid``, or the "null" version's. A file edited by hand since
    (size or mtime changed) is a "null" version of its own."""
    if record is not None:
        vid = record.get("vid")
        fresh = st is None or (record.get("size") == st.st_size
                               and record.get("mtime_ns") == st.st_mtime_ns)
        if fresh and isinstance(vid, str) and _VID_RE.fullmatch(vid):
            return vid
        if st is None and isinstance(record.get("mtime_ns"), int):
            return null_sort_name(record["mtime_ns"])
    return null_sort_name(st.st_mtime_ns if st is not None else 0)


def _history_hash(key: str) -> tuple[str, str]:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return digest[:2], digest


def _subdir_names(dir_fd: int) -> list[str]:
    """The names of the directories (not followed through links) in ``dir_fd``."""
    with os.scandir(dir_fd) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False)]


def _history_key(bucket_fd: int, name: str) -> str | None:
    """The key whose versions directory is ``name`` in ``bucket_fd`` (its key file),
    or None if it has none (a crash before the key file: no versions)."""
    hfd = _open_dir(bucket_fd, name)
    if hfd is None:
        return None
    try:
        opened = _open_file(hfd, KEY_FILE)
        if opened is None:
            return None
        kfd, _st = opened
        try:
            return os.read(kfd, 4096).decode("utf-8", "replace")
        finally:
            os.close(kfd)
    finally:
        os.close(hfd)


def _history_names(hist_fd: int) -> list[str]:
    """The sort names of the versions in a key's versions directory, newest first."""
    with os.scandir(hist_fd) as it:
        names = [e.name for e in it if _SORT_RE.fullmatch(e.name)]
    names.sort(reverse=True)
    return names


def _marker_info(fd: int, key: str, with_metadata: bool) -> ObjectInfo | None:
    """ObjectInfo of the marker on the directory open as ``fd``, or None if unmarked."""
    record = _load_json_xattr(fd, XATTR_MARKER)
    if record is None:
        return None
    mtime_ns = record.get("mtime_ns")
    if not isinstance(mtime_ns, int):
        mtime_ns = os.fstat(fd).st_mtime_ns
    etag = record.get("etag") if isinstance(record.get("etag"), str) else EMPTY_ETAG
    meta = _clean_meta(record.get("meta"))
    return ObjectInfo(key, 0, etag, mtime_ns, meta if with_metadata else None)


def _open_file(dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
    """Open the regular file ``name`` in ``dir_fd``; None if absent or not a regular file."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.ENOTDIR):
            return None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def _open_dir(dir_fd: int, name: str) -> int | None:
    """Open the real directory ``name`` in ``dir_fd``; None if absent, a file or a symlink."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _has_objects(dir_fd: int) -> bool:
    """True if the directory ``dir_fd`` is marked or holds an object at any depth."""
    if _load_json_xattr(dir_fd, XATTR_MARKER) is not None:
        return True
    with os.scandir(dir_fd) as it:
        subdirs = []
        for entry in it:
            if not _listable_name(entry.name):
                continue
            if entry.is_file(follow_symlinks=False):
                return True
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
    for name in subdirs:
        child = _open_dir(dir_fd, name)
        if child is None:
            continue
        try:
            if _has_objects(child):
                return True
        finally:
            os.close(child)
    return False


def _listable_name(name: str) -> bool:
    """Names that can be a key segment (undecodable names are skipped)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _remove_empty_tree(dir_fd: int, name: str) -> bool:
    """Remove directory ``name`` if it holds nothing but empty unmarked directories."""
    child = _open_dir(dir_fd, name)
    if child is None:
        return False
    try:
        if _load_json_xattr(child, XATTR_MARKER) is not None:
            return False
        with os.scandir(child) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for sub, is_dir in entries:
            if not is_dir or not _remove_empty_tree(child, sub):
                return False
    finally:
        os.close(child)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True


def _copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` to ``dst`` inside the kernel where possible."""
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src, dst, size - offset, offset, offset)
            if n == 0:
                break
            offset += n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while offset < size:  # fallback for filesystems without copy_file_range
        block = os.pread(src, min(CHUNK, size - offset), offset)
        if not block:
            break
        os.pwrite(dst, block, offset)
        offset += len(block)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _set_record(fd: int, name: str, record: dict, key: str) -> None:
    try:
        os.setxattr(fd, name, json.dumps(record, separators=(",", ":")).encode())
    except OSError as e:
        if e.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
            raise StoreError(f"file store: metadata of {key!r} is too large") from None
        if e.errno == errno.ENOTSUP:
            raise NotSupported("file store: the filesystem does not support user xattrs") from None
        raise


class _Fd:
    """A descriptor that ``contextlib.closing`` closes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _sorts_after(vid: object, kept: str | None) -> bool:
    """True when ``vid`` is a version id newer than the sort name ``kept``."""
    return isinstance(vid, str) and (kept is None or vid > kept)


def _check_pin(key: str, info: ObjectInfo, if_match: str | None) -> None:
    if if_match is not None and info.etag != if_match:
        raise PreconditionFailed(f"file store: {key!r} changed (etag {info.etag})")


def _check_conditions(key: str, current: ObjectInfo | None, if_match: str | None,
                      if_none_match: bool) -> None:
    if if_none_match and current is not None:
        raise PreconditionFailed(f"file store: {key!r} already exists")
    if if_match is not None and (current is None or current.etag != if_match):
        seen = current.etag if current else "no object"
        raise PreconditionFailed(f"file store: {key!r} is not at etag {if_match} ({seen})")
