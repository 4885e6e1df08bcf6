"""The file store's versions (``file.py``'s docstring describes where they live and
the order a change to a versioned key follows): turning versioning on, keeping the
current version before a change, delete markers, reading a version, and listing them.

``FileVersions`` is a part of ``FileStore`` (its base class): its methods use the
store's descriptors and lock (``_root``, ``_private_dir``, ``_open_dirs``,
``_locked``, ``_fsync``) and its reads (``_live``, ``_open_object``, ``_entries``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable, Iterator

from s3fuse.errors import KeyConflict, NoSuchKey, NotSupported
from s3fuse.store._body import EMPTY_ETAG
from s3fuse.store._fileio import (
    _VID_RE,
    KEY_FILE,
    PRIVATE,
    SETTING,
    VERSIONS,
    XATTR_MARKER,
    XATTR_OBJ,
    _copy_fd,
    _file_info,
    _history_hash,
    _history_key,
    _history_names,
    _load_json_xattr,
    _lstat,
    _open_dir,
    _open_file,
    _record_sort,
    _set_record,
    _subdir_names,
    _write_all,
    split_key,
)
from s3fuse.store._listing import (
    NULL,
    Resume,
    decode_version_token,
    new_version_id,
    paginate_versions,
    roll_up_keys,
    version_after,
    version_id_of,
)
from s3fuse.store.base import ObjectInfo, VersionInfo, VersionPage


class FileVersions:
    """The versions half of ``FileStore`` (see the module docstring)."""

    # --- reading a version ---------------------------------------------------------------

    def _history_dir(self, root_fd: int, key: str, create: bool = False) -> int | None:
        """Descriptor of the versions directory of ``key`` (None if it has none).

        ``create`` (under the lock) makes it, with the file naming the key."""
        top, digest = _history_hash(key)
        if not create:
            priv = _open_dir(root_fd, PRIVATE)
            if priv is None:
                return None
            try:
                fd = self._open_dirs(priv, [VERSIONS, top, digest], key)
            finally:
                os.close(priv)
            return fd
        fd = self._private_dir(root_fd, VERSIONS, top, digest)
        try:
            if _lstat(fd, KEY_FILE) is None:
                tmp = f"{KEY_FILE}.{secrets.token_hex(6)}.tmp"
                kfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=fd)
                try:
                    _write_all(kfd, key.encode("utf-8"))
                    self._fsync(kfd)
                finally:
                    os.close(kfd)
                os.rename(tmp, KEY_FILE, src_dir_fd=fd, dst_dir_fd=fd)
                self._fsync(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def _open_version(self, key: str, version_id: str
                      ) -> Iterator[tuple[int | None, ObjectInfo]]:
        """``_open_object`` for one version: the current object if it is that version,
        else its file in the key's versions directory. NoSuchKey for a delete marker."""
        split_key(key)
        missing = NoSuchKey(f"file store: {key!r} has no version {version_id!r}")
        if version_id != NULL and not _VID_RE.fullmatch(version_id):
            raise missing
        with self._root() as root_fd:
            live = self._live(root_fd, key)
            if live is not None and version_id_of(live[0]) == version_id:
                # (reopened: the current object may be replaced meanwhile; the pin
                # on its ETag tells)
                with self._open_object(key) as (fd, info):
                    if info.etag == live[1].etag:
                        yield fd, info
                        return
                live = None
            hist = self._history_dir(root_fd, key)
        if hist is None:
            raise missing
        try:
            names = [n for n in _history_names(hist) if version_id_of(n) == version_id]
            opened = _open_file(hist, names[0]) if names else None
        finally:
            os.close(hist)
        if opened is None:
            raise missing
        fd, st = opened
        try:
            record = _load_json_xattr(fd, XATTR_OBJ)
            if record is not None and record.get("delete_marker"):
                raise missing
            yield fd, _file_info(fd, key, st, with_metadata=True)
        finally:
            os.close(fd)

    # --- versions -----------------------------------------------------------------------

    def _fault(self, step: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(step)

    def _versioned(self, root_fd: int) -> bool:
        """Whether versioning is on (read each time: another process may turn it on)."""
        priv = _open_dir(root_fd, PRIVATE)
        if priv is None:
            return False
        try:
            opened = _open_file(priv, SETTING)
        finally:
            os.close(priv)
        if opened is None:
            return False
        fd, _st = opened
        try:
            return os.read(fd, 64).strip() == b"enabled"
        finally:
            os.close(fd)

    def versioning(self) -> str:
        """Return "enabled" once ``enable_versioning()`` ran on this root, else "off"
        (the file store has no "suspended")."""
        with self._root() as root_fd:
            return "enabled" if self._versioned(root_fd) else "off"

    def server_time_ns(self) -> int:
        return time.time_ns()

    def lifecycle_rules(self) -> list[dict]:
        """Nothing here ever expires."""
        return []

    def enable_versioning(self) -> None:
        """Keep old versions and delete markers on this root from now on (for good:
        there is no way back but deleting ``.s3fuse-store/versions``)."""
        with self._root() as root_fd, self._locked(root_fd):
            if self._versioned(root_fd):
                return
            priv = self._private_dir(root_fd)
            try:
                tmp = f"{SETTING}.{secrets.token_hex(6)}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=priv)
                try:
                    _write_all(fd, b"enabled\n")
                    self._fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, SETTING, src_dir_fd=priv, dst_dir_fd=priv)
                self._fsync(priv)
            finally:
                os.close(priv)

    def _newest_kept(self, root_fd: int, key: str) -> str | None:
        """Sort name of the newest entry in the key's versions directory."""
        hist = self._history_dir(root_fd, key)
        if hist is None:
            return None
        try:
            names = _history_names(hist)
        finally:
            os.close(hist)
        return names[0] if names else None

    def _open_history(self, root_fd: int, key: str, current: str) -> int:
        """The key's versions directory (made if needed), without the leftovers of an
        interrupted change: entries at or above ``current``, the sort name of the
        current version. Under the lock."""
        hist = self._history_dir(root_fd, key, create=True)
        assert hist is not None
        for name in _history_names(hist):
            if name < current:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=hist)
        return hist

    def _keep_version(self, root_fd: int, key: str, dir_fd: int, name: str) -> str:
        """Link the current object (file ``name`` in ``dir_fd``) into the key's versions
        directory before it is replaced or removed; return its sort name. Under the
        lock. A crash after this leaves a second name for the current object, which
        listings ignore."""
        opened = _open_file(dir_fd, name)
        if opened is None:
            raise KeyConflict(f"file store: {key!r} vanished, retry")
        fd, st = opened
        try:
            sort = _record_sort(_load_json_xattr(fd, XATTR_OBJ), st)
            hist = self._open_history(root_fd, key, sort)
            try:
                try:
                    os.link(name, sort, src_dir_fd=dir_fd, dst_dir_fd=hist,
                            follow_symlinks=False)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    self._place_version_file(root_fd, hist, sort, key,
                                             lambda out: _copy_fd(fd, out, st.st_size),
                                             _load_json_xattr(fd, XATTR_OBJ) or {},
                                             st.st_mtime_ns)
                self._fsync(hist)
            finally:
                os.close(hist)
        finally:
            os.close(fd)
        return sort

    def _keep_marker_version(self, root_fd: int, key: str, segments: list[str]) -> str:
        """Save the current directory marker of ``key`` as an empty version file
        carrying its record; return its sort name. Under the lock."""
        dir_fd = self._open_dirs(root_fd, segments, key)
        if dir_fd is None:
            raise KeyConflict(f"file store: {key!r} vanished, retry")
        try:
            record = _load_json_xattr(dir_fd, XATTR_MARKER) or {}
        finally:
            os.close(dir_fd)
        sort = _record_sort(record, None)
        mtime_ns = record.get("mtime_ns") if isinstance(record.get("mtime_ns"), int) else 0
        hist = self._open_history(root_fd, key, sort)
        try:
            self._place_version_file(root_fd, hist, sort, key, None, record, mtime_ns)
        finally:
            os.close(hist)
        return sort

    def _place_delete_marker(self, root_fd: int, key: str, after: str) -> None:
        """Add a delete marker newer than ``after`` to the key's versions. Under the
        lock, before the object goes (a crash then leaves a marker that listings
        ignore while the object is still there)."""
        vid = new_version_id(after)
        hist = self._open_history(root_fd, key, vid)
        try:
            self._place_version_file(root_fd, hist, vid, key, None,
                                     {"delete_marker": True}, int(vid[:20]))
        finally:
            os.close(hist)
        self._fault("marker-placed")

    def _place_version_file(self, root_fd: int, hist: int, name: str, key: str,
                            fill: Callable[[int], None] | None, record: dict,
                            mtime_ns: int) -> None:
        """Write a version file via a temp file: content from ``fill`` (none: empty),
        mtime ``mtime_ns``, and ``record`` as its xattr (with the size and mtime it
        now has, so its ETag is trusted). Under the lock."""
        tmp_fd = self._private_dir(root_fd, "tmp")
        tmp_name = f"{secrets.token_hex(12)}.tmp"
        try:
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=tmp_fd)
            try:
                if fill is not None:
                    fill(fd)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                st = os.fstat(fd)
                record = dict(record, size=st.st_size, mtime_ns=st.st_mtime_ns)
                if fill is None and not record.get("delete_marker"):
                    record.setdefault("etag", EMPTY_ETAG)
                _set_record(fd, XATTR_OBJ, record, key)
                self._fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp_name, name, src_dir_fd=tmp_fd, dst_dir_fd=hist)
            self._fsync(hist)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name, dir_fd=tmp_fd)
            os.close(tmp_fd)

    def _delete_version(self, key: str, version_id: str) -> None:
        """``delete(key, version_id=...)``: remove one version or delete marker of an
        object for good; when it was the latest, the next newest entry becomes the
        latest (an object version is renamed back into place). Not for directory
        markers (NotSupported)."""
        segments, is_marker = split_key(key)
        if is_marker:
            raise NotSupported(f"file store: {key!r}: one version of a directory marker "
                               "cannot be deleted")
        if version_id != NULL and not _VID_RE.fullmatch(version_id):
            return  # no such version
        with self._root() as root_fd, self._locked(root_fd):
            live = self._live(root_fd, key)
            hist = self._history_dir(root_fd, key)
            try:
                names = [] if hist is None else [
                    n for n in _history_names(hist) if live is None or n < live[0]]
                if live is not None and version_id_of(live[0]) == version_id:
                    gone, heir = None, names[0] if names else None
                else:
                    match = [n for n in names if version_id_of(n) == version_id]
                    if not match:
                        return
                    gone = match[0]
                    heir = (names[1] if live is None and gone == names[0] and len(names) > 1
                            else None)
                if heir is not None and self._is_delete_marker(hist, heir):
                    heir = None
                dir_fd = self._open_dirs(root_fd, segments[:-1], key, create=True)
                assert dir_fd is not None
                try:
                    if gone is not None:
                        os.unlink(gone, dir_fd=hist)
                    if heir is not None:
                        os.rename(heir, segments[-1], src_dir_fd=hist, dst_dir_fd=dir_fd)
                    elif gone is None:
                        os.unlink(segments[-1], dir_fd=dir_fd)
                    self._fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            finally:
                if hist is not None:
                    os.close(hist)
            self._prune(root_fd, segments[:-1])

    @staticmethod
    def _is_delete_marker(hist: int | None, name: str) -> bool:
        opened = None if hist is None else _open_file(hist, name)
        if opened is None:
            return True  # (gone meanwhile: nothing to bring back)
        fd, _st = opened
        try:
            record = _load_json_xattr(fd, XATTR_OBJ)
            return bool(record and record.get("delete_marker"))
        finally:
            os.close(fd)

    def list_versions(self, prefix: str, token: str | None = None,
                      max_keys: int = 1000, delimiter: str | None = None) -> VersionPage:
        """See ``ObjectStore.list_versions``. Reads every key's versions directory
        (there is no index): fine for a workspace, slow for millions of keys. With a
        delimiter only the keys of the one level have their versions read."""
        resume = decode_version_token(token)
        with self._root() as root_fd:
            keys: set[str] = set()
            for entry in self._entries(root_fd, prefix, Resume(), rollup=False):
                assert not isinstance(entry, str)
                keys.add(entry.key)
            keys.update(self._history_keys(root_fd, prefix))
            out: list[tuple[str, VersionInfo] | str] = []
            for key, is_prefix in roll_up_keys(sorted(keys), prefix, delimiter, resume):
                if is_prefix:
                    out.append(key)
                    continue
                out.extend((name, info) for name, info in self._versions_of(root_fd, key)
                           if version_after(resume, key, name))
                if len(out) > max_keys:
                    break
        return paginate_versions(out, max_keys)

    def _history_keys(self, root_fd: int, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` with kept versions."""
        priv = _open_dir(root_fd, PRIVATE)
        if priv is None:
            return
        try:
            top = self._open_dirs(priv, [VERSIONS], prefix)
        finally:
            os.close(priv)
        if top is None:
            return
        try:
            for bucket in _subdir_names(top):
                bfd = _open_dir(top, bucket)
                if bfd is None:
                    continue
                try:
                    for name in _subdir_names(bfd):
                        key = _history_key(bfd, name)
                        if key is not None and key.startswith(prefix) \
                                and _history_hash(key)[1] == name:
                            yield key
                finally:
                    os.close(bfd)
        finally:
            os.close(top)

    def _versions_of(self, root_fd: int, key: str) -> list[tuple[str, VersionInfo]]:
        """``(sort name, version)`` of every version of ``key``, newest first."""
        out: list[tuple[str, VersionInfo]] = []
        live = self._live(root_fd, key)
        if live is not None:
            sort, info = live
            out.append((sort, VersionInfo(key, version_id_of(sort), info.etag, info.size,
                                          info.mtime_ns, True)))
        hist = self._history_dir(root_fd, key)
        if hist is None:
            return out
        try:
            for name in _history_names(hist):
                if live is not None and name >= live[0]:
                    continue  # the leftover of an interrupted change
                opened = _open_file(hist, name)
                if opened is None:
                    continue
                fd, st = opened
                try:
                    record = _load_json_xattr(fd, XATTR_OBJ)
                    latest = not out
                    if record is not None and record.get("delete_marker"):
                        out.append((name, VersionInfo(key, version_id_of(name), "", 0,
                                                      st.st_mtime_ns, latest, True)))
                    else:
                        info = _file_info(fd, key, st, with_metadata=False)
                        out.append((name, VersionInfo(key, version_id_of(name), info.etag,
                                                      info.size, info.mtime_ns, latest)))
                finally:
                    os.close(fd)
        finally:
            os.close(hist)
        return out
