"""``file:///PATH``: a local directory that behaves like a bucket.

Layout (chosen so a person can look at the files directly):

* object ``KEY`` is the regular file ``ROOT/KEY``; its ETag, user metadata and the
  (size, mtime) it was written with live in the JSON xattr ``user.s3fuse.obj``;
* a directory marker ``a/b/`` is the directory ``ROOT/a/b/`` carrying the JSON xattr
  ``user.s3fuse.marker``; an unmarked directory is only a prefix while it holds objects;
* ``ROOT/.s3fuse-store/`` is private (``tmp/`` for uploads in progress, ``lock``); it
  never shows up in listings and keys under it are refused.

Versions (off by default; ``enable_versioning()`` turns them on for good):

* ``.s3fuse-store/versioning`` holds ``enabled`` once versioning is on;
* the old versions and delete markers of ``KEY`` live in ``.s3fuse-store/versions/HH/H/``,
  where ``H`` is the SHA-256 of the key in hex and ``HH`` its first two digits: the file
  ``key`` there holds the key itself, and each version is a file named by its *sort
  name* (``_listing.py``): its version id (20 digits of ns time plus 8 hex digits),
  or ``<ns>-null`` for the version written before versioning was on. A version file
  is the old object itself (a hard link to the replaced inode, xattr included), or for
  a directory marker an empty file with the marker's record; a delete marker is an
  empty file whose ``user.s3fuse.obj`` is ``{"delete_marker": true}``.
* The current object's version id is ``vid`` in its record (none: "null").

Nothing in ``versions/`` is reachable by a key, and a version id is used as a file name
only after it is checked to have exactly that form. A change to a versioned key runs
under the lock in this order: the current version is linked into ``versions/`` first,
then (for a delete) the delete marker is placed there, and only then is the object
replaced by rename (or unlinked). A crash in between leaves the object as it was plus
a history entry whose sort name is at or above the object's own: listings ignore such
entries (they are the current object, or a delete that never happened) and the next
change to the key removes them. A delete of an absent key adds no marker.

Files put into ROOT by hand are objects too: with no (or an outdated) xattr their ETag
is derived from (size, mtime_ns) and their metadata is empty (or kept from the xattr).

Safety: keys are validated (``InvalidKey``) and every path is resolved one component at
a time from a descriptor of ROOT with ``O_NOFOLLOW``, so neither ``..`` nor a symlink
planted inside ROOT can make the store touch anything outside it. Symlinks and other
special files inside ROOT are not objects: listings skip them, reads treat them as
absent, writes through or over them raise ``InvalidKey``.

Atomicity: a put streams into a temp file under ``.s3fuse-store/tmp``, fsyncs it, sets
the xattr, and renames it into place, so readers never see a partial object and a crash
leaves at most an invisible temp file. Conditional checks and the rename (and every
other change to the tree) run under a lock: a ``threading.Lock`` for the threads of
this process plus ``flock`` on ``.s3fuse-store/lock`` for other processes on the root.
Readers take no lock: they read through a descriptor of one file version, and writers
only ever replace files by rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from s3fuse.errors import (
    AccessDenied,
    BodyChanged,
    InvalidKey,
    KeyConflict,
    NoSuchBucket,
    NoSuchKey,
    NotSupported,
    StoreError,
)
from s3fuse.store._body import CHUNK, EMPTY_ETAG, body_size, check_range, iter_body
from s3fuse.store._fileio import (
    PRIVATE,
    STALE_TMP_SECONDS,
    XATTR_MARKER,
    XATTR_OBJ,
    _check_conditions,
    _check_pin,
    _copy_fd,
    _derived_etag,
    _fail_key,
    _Fd,
    _file_info,
    _has_objects,
    _listable_name,
    _load_json_xattr,
    _lstat,
    _marker_info,
    _open_dir,
    _open_file,
    _record_sort,
    _remove_empty_tree,
    _set_record,
    _sorts_after,
    _write_all,
    split_key,
)
from s3fuse.store._listing import Resume, decode_token, new_version_id, paginate, roll_up
from s3fuse.store.base import Body, Capabilities, Copied, ListPage, ObjectInfo
from s3fuse.store.file_versions import FileVersions


class FileStore(FileVersions):
    """An ``ObjectStore`` kept in a local directory. See the module docstring."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        """``durable=False`` skips every fsync: puts are still atomic for readers, but
        a host crash may lose objects that were acknowledged. Only for scratch data
        (tests, demos); mounts keep the default."""
        self.root = os.path.abspath(os.fspath(root))
        self.durable = durable
        self.description = f"file://{self.root}"
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_fd_guard = threading.Lock()
        #: tests only: called with a step name ("version-kept", "marker-placed") in
        #: the middle of a versioned change; raising there stands for a crash
        self.fault_hook: Callable[[str], None] | None = None

    # --- descriptors and locking -------------------------------------------------------

    def _fsync(self, fd: int) -> None:
        if self.durable:
            os.fsync(fd)

    @contextlib.contextmanager
    def _root(self) -> Iterator[int]:
        """A descriptor of ROOT (ROOT itself may be a symlink: that is the user's choice)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchBucket(f"{self.root}: no such directory (file:// store)") from None
        except PermissionError:
            raise AccessDenied(f"{self.root}: permission denied (file:// store)") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _private_dir(self, root_fd: int, *parts: str) -> int:
        """Open (creating) ``ROOT/.s3fuse-store/<parts...>``; refuse a planted symlink."""
        fd = os.dup(root_fd)
        try:
            for name in (PRIVATE, *parts):
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                child = _open_dir(fd, name)
                if child is None:
                    raise StoreError(f"{self.root}: {PRIVATE} is not a plain directory")
                os.close(fd)
                fd = child
            return fd
        except PermissionError:
            os.close(fd)
            raise AccessDenied(f"{self.root}: not writable (file:// store)") from None
        except BaseException:
            os.close(fd)
            raise

    def _get_lock_fd(self, root_fd: int) -> int:
        with self._lock_fd_guard:
            if self._lock_fd is None:
                priv = self._private_dir(root_fd)
                try:
                    self._lock_fd = os.open(
                        "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600, dir_fd=priv)
                finally:
                    os.close(priv)
            return self._lock_fd

    @contextlib.contextmanager
    def _locked(self, root_fd: int) -> Iterator[None]:
        """Exclusive right to change the tree, against threads and other processes."""
        lock_fd = self._get_lock_fd(root_fd)
        with self._lock:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _open_dirs(self, root_fd: int, segments: list[str], key: str, *,
                   create: bool = False, writing: bool = False) -> int | None:
        """Descriptor of the directory ROOT/segments, walked without following symlinks.

        Returns None if a component is missing (and ``create`` is False). When reading,
        a file or symlink in the way also gives None (the key does not exist). When
        ``writing``, a regular file in the way raises KeyConflict and a symlink or
        special file raises InvalidKey. ``create`` makes missing directories (call it
        under the lock so pruning cannot race with it).
        """
        fd = os.dup(root_fd)
        try:
            for name in segments:
                child = _open_dir(fd, name)
                if child is None:
                    st = _lstat(fd, name)
                    if st is None and create:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, 0o777, dir_fd=fd)
                        self._fsync(fd)  # the new entry must survive a crash with the object
                        child = _open_dir(fd, name)
                    elif st is None or not (writing or create):
                        os.close(fd)
                        return None
                    elif stat.S_ISREG(st.st_mode):
                        raise KeyConflict(
                            f"file store: {key!r} needs a directory where a file is")
                    else:
                        raise _fail_key(key, "a path component is a symlink or special file")
                    if child is None:
                        raise KeyConflict(f"file store: {key!r}: directory vanished, retry")
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    # --- reading ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_object(self, key: str, version_id: str | None = None
                     ) -> Iterator[tuple[int | None, ObjectInfo]]:
        """Open ``key`` (its version ``version_id`` if given) for reading: yields
        ``(fd, info)``; fd is None for a marker.

        Raises NoSuchKey. The fd pins one version of the object: writers replace files
        by rename, so the content read through it matches ``info.etag``.
        """
        if version_id is not None:
            with self._open_version(key, version_id) as opened:
                yield opened
            return
        segments, is_marker = split_key(key)
        with self._root() as root_fd:
            dirs = segments if is_marker else segments[:-1]
            dir_fd = self._open_dirs(root_fd, dirs, key)
        if dir_fd is None:
            raise NoSuchKey(f"file store: no such key {key!r}")
        try:
            if is_marker:
                info = _marker_info(dir_fd, key, with_metadata=True)
                if info is None:
                    raise NoSuchKey(f"file store: no such key {key!r}")
                yield None, info
                return
            opened = _open_file(dir_fd, segments[-1])
        finally:
            os.close(dir_fd)
        if opened is None:
            raise NoSuchKey(f"file store: no such key {key!r}")
        fd, st = opened
        try:
            yield fd, _file_info(fd, key, st, with_metadata=True)
        finally:
            os.close(fd)

    def _live(self, root_fd: int, key: str) -> tuple[str, ObjectInfo] | None:
        """``(sort name, info)`` of the current object of ``key``, or None."""
        segments, is_marker = split_key(key)
        dir_fd = self._open_dirs(root_fd, segments if is_marker else segments[:-1], key)
        if dir_fd is None:
            return None
        try:
            if is_marker:
                record = _load_json_xattr(dir_fd, XATTR_MARKER)
                info = _marker_info(dir_fd, key, with_metadata=True)
                return None if info is None else (_record_sort(record, None), info)
            opened = _open_file(dir_fd, segments[-1])
        finally:
            os.close(dir_fd)
        if opened is None:
            return None
        fd, st = opened
        try:
            return (_record_sort(_load_json_xattr(fd, XATTR_OBJ), st),
                    _file_info(fd, key, st, with_metadata=True))
        finally:
            os.close(fd)

    def check(self) -> None:
        """ROOT must be a writable directory on a filesystem with user xattrs.

        Also removes temp files that a crash left behind long ago.
        """
        with self._root() as root_fd:
            tmp = self._private_dir(root_fd, "tmp")
            try:
                self._reap_stale_tmp(tmp)
                name = f"check-{secrets.token_hex(8)}"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o600, dir_fd=tmp)
                try:
                    os.setxattr(fd, XATTR_OBJ, b"{}")
                except OSError as e:
                    raise NotSupported(
                        f"{self.root}: the filesystem does not support user xattrs "
                        f"({os.strerror(e.errno or 0)}); file:// needs them") from None
                finally:
                    os.close(fd)
                    os.unlink(name, dir_fd=tmp)
            finally:
                os.close(tmp)

    @staticmethod
    def _reap_stale_tmp(tmp_fd: int) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        with os.scandir(tmp_fd) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.name, dir_fd=tmp_fd)

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        with self._open_object(key, version_id) as (_fd, info):
            return info

    def get(self, key: str, start: int = 0, end: int | None = None, *,
            if_match: str | None = None, version_id: str | None = None) -> bytes:
        check_range(start, end)
        with self._open_object(key, version_id) as (fd, info):
            _check_pin(key, info, if_match)
            stop = info.size if end is None else min(end, info.size)
            if fd is None or stop <= start:
                return b""
            parts = []
            offset = start
            while offset < stop:
                block = os.pread(fd, min(CHUNK * 16, stop - offset), offset)
                if not block:
                    break
                parts.append(block)
                offset += len(block)
            return b"".join(parts)

    def get_into(self, key: str, fileobj: BinaryIO, start: int = 0, end: int | None = None,
                 *, if_match: str | None = None, version_id: str | None = None) -> int:
        check_range(start, end)
        with self._open_object(key, version_id) as (fd, info):
            _check_pin(key, info, if_match)
            stop = info.size if end is None else min(end, info.size)
            offset = start
            while fd is not None and offset < stop:
                block = os.pread(fd, min(CHUNK, stop - offset), offset)
                if not block:
                    break
                fileobj.write(block)
                offset += len(block)
            return max(0, offset - start)

    # --- writing ------------------------------------------------------------------------

    def put(self, key: str, body: Body, metadata: dict[str, str], *,
            if_match: str | None = None, if_none_match: bool = False,
            unchanged: Callable[[], bool] | None = None) -> str:
        segments, is_marker = split_key(key)
        if is_marker:
            if body_size(body):
                raise _fail_key(key, "a key ending in '/' is a directory and must be empty")
            return self._put_marker(key, segments, metadata, if_match, if_none_match)

        def fill(fd: int) -> str:
            digest = hashlib.md5()
            for block in iter_body(body):
                digest.update(block)
                _write_all(fd, block)
            if unchanged is not None and not unchanged():
                raise BodyChanged(f"file store: the body of {key!r} changed while it "
                                  "was read")
            return digest.hexdigest()

        return self._write_object(key, segments, fill, metadata, if_match, if_none_match)[0]

    def copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None = None, *,
             src_if_match: str | None = None, src_version_id: str | None = None) -> str:
        return self._copy(src_key, dst_key, metadata, src_if_match, src_version_id)[0]

    def copy_version(self, src_bucket: str, src_key: str, version_id: str, dst_key: str,
                     size: int, *, if_none_match: bool = False) -> Copied:
        """See ``ObjectStore.copy_version``: within this store (``src_bucket`` is not
        looked at). The version id is None for a directory marker."""
        return Copied(*self._copy(src_key, dst_key, None, None, version_id, if_none_match))

    def _copy(self, src_key: str, dst_key: str, metadata: dict[str, str] | None,
              src_if_match: str | None, src_version_id: str | None,
              if_none_match: bool = False) -> tuple[str, str | None]:
        dst_segments, dst_marker = split_key(dst_key)
        with self._open_object(src_key, src_version_id) as (src_fd, info):
            _check_pin(src_key, info, src_if_match)
            meta = info.metadata if metadata is None else metadata
            assert meta is not None
            if dst_marker:
                if info.size:
                    raise _fail_key(dst_key, "a key ending in '/' must be an empty object")
                return self._put_marker(dst_key, dst_segments, meta, None,
                                        if_none_match), None

            def fill(fd: int) -> str | None:
                if src_fd is not None:
                    _copy_fd(src_fd, fd, info.size)
                # Same bytes, same ETag (as S3 for a single-part copy). A source we did
                # not write has a derived ETag that describes the source file only; the
                # copy then gets its own, derived from its own size and mtime.
                if src_fd is None or info.etag != _derived_etag(os.fstat(src_fd)):
                    return info.etag
                return None

            return self._write_object(dst_key, dst_segments, fill, meta, None,
                                      if_none_match)

    def _write_object(self, key: str, segments: list[str], fill, metadata: dict[str, str],
                      if_match: str | None, if_none_match: bool) -> tuple[str, str | None]:
        """Write a new version of ``key`` via a temp file and rename it into place.

        ``fill(fd)`` writes the content and returns its ETag (None: derive one).
        Returns the ETag and the new version's id (None: versioning is off).
        """
        with self._root() as root_fd:
            tmp_fd = self._private_dir(root_fd, "tmp")
            tmp_name = f"{secrets.token_hex(12)}.tmp"
            versioned = self._versioned(root_fd)
            try:
                fd = os.open(tmp_name,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o666, dir_fd=tmp_fd)
                try:
                    etag = fill(fd)
                    self._fsync(fd)
                    st = os.fstat(fd)
                    etag = etag or _derived_etag(st)
                    record = {"etag": etag, "meta": dict(metadata),
                              "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                    if versioned:
                        record["vid"] = new_version_id()
                    _set_record(fd, XATTR_OBJ, record, key)
                finally:
                    os.close(fd)
                with self._locked(root_fd):
                    parent = self._place(root_fd, key, segments, tmp_fd, tmp_name,
                                         if_match, if_none_match, record)
                try:
                    # durability, not atomicity: no need to hold the lock for it
                    self._fsync(parent)  # the rename is what makes the object durable
                finally:
                    os.close(parent)
                return etag, record.get("vid")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name, dir_fd=tmp_fd)  # only still there on failure
                os.close(tmp_fd)

    def _place(self, root_fd: int, key: str, segments: list[str], tmp_fd: int,
               tmp_name: str, if_match: str | None, if_none_match: bool,
               record: dict) -> int:
        """Check the conditions, keep the current version (versioning on), and rename
        the temp file (whose xattr is ``record``) to ``key``. Under the lock.

        Returns the parent directory's fd (the caller fsyncs and closes it)."""
        name = segments[-1]
        parent = self._open_dirs(root_fd, segments[:-1], key, writing=True)
        try:
            current = None
            if parent is not None:
                st = _lstat(parent, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    # An empty unmarked directory is nothing; anything else is a prefix.
                    if not _remove_empty_tree(parent, name):
                        raise KeyConflict(
                            f"file store: {key!r} is a directory holding other keys")
                elif st is not None and not stat.S_ISREG(st.st_mode):
                    raise _fail_key(key, "a symlink or special file is in the way")
                elif st is not None:
                    opened = _open_file(parent, name)
                    if opened is not None:
                        fd, fst = opened
                        try:
                            current = _file_info(fd, key, fst, with_metadata=False)
                        finally:
                            os.close(fd)
            _check_conditions(key, current, if_match, if_none_match)
            if self._versioned(root_fd):
                kept = (self._keep_version(root_fd, key, parent, name)
                        if current is not None else self._newest_kept(root_fd, key))
                if not _sorts_after(record.get("vid"), kept):
                    # (versioning came on meanwhile, or the clock went back)
                    record["vid"] = new_version_id(kept)
                    with contextlib.closing(_Fd(os.open(
                            tmp_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=tmp_fd))) as fd:
                        _set_record(fd.fd, XATTR_OBJ, record, key)
                        self._fsync(fd.fd)
                self._fault("version-kept")
            if parent is None:
                parent = self._open_dirs(root_fd, segments[:-1], key, create=True)
                assert parent is not None
            os.rename(tmp_name, name, src_dir_fd=tmp_fd, dst_dir_fd=parent)
        except BaseException:
            if parent is not None:
                os.close(parent)
            raise
        return parent

    def _put_marker(self, key: str, segments: list[str], metadata: dict[str, str],
                    if_match: str | None, if_none_match: bool) -> str:
        record = {"etag": EMPTY_ETAG, "meta": dict(metadata), "mtime_ns": time.time_ns()}
        with self._root() as root_fd, self._locked(root_fd):
            parent = self._open_dirs(root_fd, segments[:-1], key, writing=True)
            current = None
            if parent is not None:
                try:
                    st = _lstat(parent, segments[-1])
                    if st is not None and stat.S_ISREG(st.st_mode):
                        raise KeyConflict(f"file store: {key!r}: a file has that name")
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        raise _fail_key(key, "a symlink or special file is in the way")
                    if st is not None:
                        dir_fd = _open_dir(parent, segments[-1])
                        if dir_fd is not None:
                            try:
                                current = _marker_info(dir_fd, key, with_metadata=False)
                            finally:
                                os.close(dir_fd)
                finally:
                    os.close(parent)
            _check_conditions(key, current, if_match, if_none_match)
            if self._versioned(root_fd):
                kept = (self._keep_marker_version(root_fd, key, segments)
                        if current is not None else self._newest_kept(root_fd, key))
                record["vid"] = new_version_id(kept)
                self._fault("version-kept")
            dir_fd = self._open_dirs(root_fd, segments, key, create=True)
            assert dir_fd is not None
            try:
                _set_record(dir_fd, XATTR_MARKER, record, key)
                self._fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return EMPTY_ETAG

    def delete(self, key: str, *, if_match: str | None = None,
               version_id: str | None = None) -> None:
        if version_id is not None:
            self._delete_version(key, version_id)
            return
        segments, is_marker = split_key(key)
        dirs = segments if is_marker else segments[:-1]
        with self._root() as root_fd, self._locked(root_fd):
            dir_fd = self._open_dirs(root_fd, dirs, key)
            if dir_fd is None:
                return
            try:
                if is_marker:
                    current = _marker_info(dir_fd, key, with_metadata=False)
                    if current is None:
                        return
                    _check_conditions(key, current, if_match, False)
                    if self._versioned(root_fd):
                        kept = self._keep_marker_version(root_fd, key, segments)
                        self._place_delete_marker(root_fd, key, kept)
                    os.removexattr(dir_fd, XATTR_MARKER)
                else:
                    opened = _open_file(dir_fd, segments[-1])
                    if opened is None:
                        return  # absent (or not an object): deleting succeeds
                    fd, st = opened
                    try:
                        current = _file_info(fd, key, st, with_metadata=False)
                    finally:
                        os.close(fd)
                    _check_conditions(key, current, if_match, False)
                    if self._versioned(root_fd):
                        kept = self._keep_version(root_fd, key, dir_fd, segments[-1])
                        self._place_delete_marker(root_fd, key, kept)
                    os.unlink(segments[-1], dir_fd=dir_fd)
                # No fsync here: deletes are idempotent and the daemon's journal replays
                # them after a crash; an fsync per unlink would make `rm -r` crawl.
            finally:
                os.close(dir_fd)
            self._prune(root_fd, dirs)

    def _prune(self, root_fd: int, dirs: list[str]) -> None:
        """Remove now-empty unmarked directories from ROOT/dirs upwards. Under the lock."""
        for depth in range(len(dirs), 0, -1):
            parent = self._open_dirs(root_fd, dirs[: depth - 1], "/".join(dirs))
            if parent is None:
                return
            try:
                child = _open_dir(parent, dirs[depth - 1])
                if child is None:
                    return
                try:
                    if _load_json_xattr(child, XATTR_MARKER) is not None:
                        return  # a marked directory stays, empty or not
                finally:
                    os.close(child)
                try:
                    os.rmdir(dirs[depth - 1], dir_fd=parent)
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        return
                    raise
            finally:
                os.close(parent)


    # --- listing ------------------------------------------------------------------------

    def list(self, prefix: str, delimiter: str | None = "/", token: str | None = None,
             max_keys: int = 1000) -> ListPage:
        resume = decode_token(token)
        delimiter = delimiter or None
        with self._root() as root_fd:
            entries = self._entries(root_fd, prefix, resume, rollup=delimiter == "/")
            with contextlib.closing(entries):
                if delimiter not in (None, "/"):
                    return paginate(roll_up(entries, prefix, delimiter), max_keys)
                return paginate(entries, max_keys)

    def _entries(self, root_fd: int, prefix: str, resume: Resume,
                 rollup: bool) -> Iterator[ObjectInfo | str]:
        """Objects (and, with ``rollup``, "/" common prefixes) under ``prefix`` in order."""
        dir_part, _, name_part = prefix.rpartition("/")
        dirs = dir_part.split("/") if dir_part else []
        try:
            if "/" in prefix:
                split_key(dir_part)
        except InvalidKey:
            return  # no valid key can start with this prefix ("/", "../", "a//", ...)
        dir_fd = self._open_dirs(root_fd, dirs, prefix)
        if dir_fd is None:
            return
        try:
            if dirs and not name_part:
                # Listing inside "dir/": the marker "dir/" is itself an object here.
                marker = _marker_info(dir_fd, prefix, with_metadata=False)
                if marker is not None and resume.admits(prefix):
                    yield marker
            path = dir_part + "/" if dir_part else ""
            yield from self._walk(dir_fd, path, name_part, resume, rollup)
        finally:
            os.close(dir_fd)

    def _walk(self, dir_fd: int, path: str, name_part: str, resume: Resume,
              rollup: bool) -> Iterator[ObjectInfo | str]:
        """Walk the directory ``dir_fd`` (whose keys start with ``path``) in key order.

        Each entry sorts by its name, plus "/" for a directory: every key below a
        directory ``d`` starts with ``path + "d/"``, and no two such sort keys are
        prefixes of one another, so a depth-first walk in this order yields keys in
        ascending order overall ("a.txt" < "a/b" because "." < "/").
        """
        entries = []
        with os.scandir(dir_fd) as it:
            for entry in it:
                name = entry.name
                if not name.startswith(name_part) or not _listable_name(name):
                    continue
                if not path and name == PRIVATE:
                    continue
                if entry.is_file(follow_symlinks=False):
                    entries.append((path + name, name, False))
                elif entry.is_dir(follow_symlinks=False):
                    entries.append((path + name + "/", name, True))
                # symlinks, FIFOs, sockets, devices: not objects
        entries.sort()
        for key, name, is_dir in entries:
            if not is_dir:
                if resume.admits(key):
                    opened = _open_file(dir_fd, name)
                    if opened is not None:
                        fd, st = opened
                        try:
                            yield _file_info(fd, key, st, with_metadata=False)
                        finally:
                            os.close(fd)
                continue
            if not resume.admits_subtree(key):
                continue
            child = _open_dir(dir_fd, name)
            if child is None:
                continue
            try:
                if rollup:
                    if resume.admits(key) and _has_objects(child):
                        yield key
                    continue
                marker = _marker_info(child, key, with_metadata=False)
                if marker is not None and resume.admits(key):
                    yield marker
                yield from self._walk(child, key, "", resume, rollup=False)
            finally:
                os.close(child)

    # --- the rest -----------------------------------------------------------------------

    def probe(self, scratch_key: str) -> Capabilities:
        # Every condition is checked under the store lock: all of them hold.
        return Capabilities(conditional_put=True, conditional_copy=True,
                            conditional_delete=True)

    def close(self) -> None:
        with self._lock_fd_guard:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
