"""``s3fuse restore PATH``: put a file or a whole tree back as it was at a point in
its history, through the mount.

A restore is an ordinary change of the mount: plain file operations on MOUNTPOINT
paths, made by this process (``mkdir``, a temporary file then ``rename`` per file,
``symlink``, ``chmod``, ``utime``, ``unlink``/``rmdir`` of what the target did not
have). So it lands in the journal, goes up with the mount's conditional uploads and
follows the S3-wins rules: a restore never overwrites a change made in the bucket
that the mount has not seen (the bucket's version stays at the path and the
restored one goes to lost+found, as for any conflicting change).

The old bytes are read from the store by exact version id (``get_into`` with
``version_id``), never from "the current object". A file is not rewritten when it
already holds the target's bytes: the mount says it is synced (``user.s3fuse.state``),
its size is the version's, and the current object's ETag, from one listing of PATH,
is the version's ETag. No live file is read to decide it.
Only entries inside PATH are touched; its missing parents are created.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
import threading
from dataclasses import dataclass, field

from . import keys, metadata, timeline
from .store.base import ObjectInfo
from .timeline import Pinned
from .workspace import Workspace, parallel, run_parallel
from .xattrs import STATE_XATTR

_TMP = ".s3fuse-restore-"


@dataclass
class Want:
    """One entry of the target tree (``rel`` relative to the mount root)."""

    rel: str
    kind: str  # "file", "symlink" or "dir"
    pinned: Pinned | None  # None: a directory implied by its entries (no marker)
    info: ObjectInfo | None = None  # the version's HEAD (its metadata)


@dataclass
class Report:
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    directories: int = 0
    skipped: list[str] = field(default_factory=list)  # keys that cannot be paths


def _inside(rel: str, sub: str) -> bool:
    return not sub or rel == sub or rel.startswith(sub + "/")


def plan(target: dict[str, Pinned], sub: str) -> tuple[dict[str, Want], list[str]]:
    """The entries to have under ``sub``: every pinned object, and the directories
    that hold them (within ``sub``); and the keys that cannot be paths (``a//b``,
    ``../x``: skipped, as the mount skips them, never a path outside the mount)."""
    wants: dict[str, Want] = {}
    skipped: list[str] = []
    for key, p in target.items():
        rel = key[:-1] if key.endswith("/") else key
        if not rel:
            continue  # a marker for the prefix itself
        if any(keys.name_from_segment(seg) is None for seg in rel.split("/")):
            skipped.append(key)
            continue
        wants[rel] = Want(rel, "dir" if key.endswith("/") else "file", p)
    for rel in list(wants):
        parent = os.path.dirname(rel)
        while parent and _inside(parent, sub) and parent not in wants:
            wants[parent] = Want(parent, "dir", None)
            parent = os.path.dirname(parent)
    return wants, skipped


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0:
        return "file"
    return "special"  # a FIFO, a socket or a device node


def _live(mp: str, sub: str) -> dict[str, str]:
    """What the mount shows under ``sub`` now: relative path -> kind (the reserved
    ``.s3fuse`` at the root, and restore's own leftovers, left out)."""
    top = os.path.join(mp, sub) if sub else mp
    out: dict[str, str] = {}
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return out
    if not stat.S_ISDIR(st.st_mode):
        out[sub] = _kind(st.st_mode)
        return out
    if sub:
        out[sub] = "dir"
    for dirpath, dirnames, filenames in os.walk(top):
        base = os.path.relpath(dirpath, mp) if dirpath != mp else ""
        if not base:
            dirnames[:] = [d for d in dirnames if not timeline.is_reserved(d)]
            filenames = [f for f in filenames if not timeline.is_reserved(f)]
        for name in dirnames + filenames:
            rel = os.path.join(base, name) if base else name
            out[rel] = _kind(os.lstat(os.path.join(dirpath, name)).st_mode)
    return out


def _attrs(info: ObjectInfo | None) -> tuple[int | None, int | None, int | None, int | None]:
    """(mode, mtime_ns, uid, gid) the version's metadata names, None where absent."""
    md = {k.lower(): v for k, v in ((info.metadata if info else None) or {}).items()}
    mode = metadata.parse_mode(md["mode"]) if "mode" in md else None
    mtime = metadata.parse_time_ns(md["mtime"]) if "mtime" in md else None
    ids = []
    for name in ("uid", "gid"):
        try:
            ids.append(int(md[name]))
        except (KeyError, ValueError):
            ids.append(None)
    return mode, mtime, ids[0], ids[1]


def _synced_as(path: str, p: Pinned, current_etag: str | None) -> bool:
    """The live file holds exactly the version's bytes: the mount has nothing of its
    own to upload for it, its size is the version's, and the bucket's current object
    has the version's ETag."""
    if current_etag != p.etag:
        return False
    try:
        st = os.lstat(path)
        return (stat.S_ISREG(st.st_mode) and st.st_size == p.size
                and os.getxattr(path, STATE_XATTR, follow_symlinks=False) == b"synced")
    except OSError:
        return False


class Restorer:
    """One restore of ``sub`` (relative to the mount root) to ``target``."""

    def __init__(self, ws: Workspace, sub: str, target: dict[str, Pinned],
                 jobs: int = 8) -> None:
        self.ws, self.sub, self.jobs = ws, sub, jobs
        self.mp = ws.mountpoint
        self.wants, skipped = plan(target, sub)
        self.report = Report(skipped=skipped)
        self._current: dict[str, str] = {}  # key -> ETag of the current object, under sub
        self._lock = threading.Lock()  # guards report (files are put back in threads)

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.report, what, getattr(self.report, what) + 1)

    def path(self, rel: str) -> str:
        return os.path.join(self.mp, rel)

    def total(self) -> int:
        return len(self.wants)

    def run(self, progress: Callable[[int], None]) -> Report:
        """Everything, in order: read the versions' metadata, remove what the target
        did not have, make directories, write files, then set directory attributes
        deepest first. KeyboardInterrupt stops it between files (a file is either
        the old one or the restored one, never half of each)."""
        pinned_wants = [w for w in self.wants.values() if w.pinned is not None]
        with parallel(self.jobs) as pool:
            run_parallel(pool, self._head, pinned_wants, lambda n: None)
            self._current = self._current_etags()
            for w in pinned_wants:
                mode = _attrs(w.info)[0]
                if w.kind == "file" and mode is not None:
                    w.kind = _kind(mode)
            self._remove_unwanted()
            self._make_parents()
            dirs = sorted((w for w in self.wants.values() if w.kind == "dir"),
                          key=lambda w: w.rel)
            for w in dirs:
                self._make_dir(w)
            done = len(dirs)
            progress(done)
            files = [w for w in self.wants.values() if w.kind != "dir"]
            run_parallel(pool, self._put_back, files, lambda n: progress(done + n))
            for w in sorted(dirs, key=lambda w: w.rel, reverse=True):
                self._set_attrs(w, self.path(w.rel))
        return self.report

    def _head(self, w: Want) -> None:
        assert w.pinned is not None
        w.info = self.ws.store.head(self.ws.key(w.pinned.key), version_id=w.pinned.version_id)

    def _current_etags(self) -> dict[str, str]:
        """The ETag of every current object under ``sub`` (relative keys): one
        listing, so deciding "unchanged" reads no live file."""
        prefix = self.ws.key(self.sub)
        out: dict[str, str] = {}
        token = None
        while True:
            page = self.ws.store.list(prefix, None, token)
            out.update((o.key[len(self.ws.prefix):], o.etag) for o in page.objects)
            token = page.next_token
            if token is None:
                return out

    def _remove_unwanted(self) -> None:
        live = _live(self.mp, self.sub)
        for rel in sorted(live, reverse=True):  # children before their directory
            want = self.wants.get(rel)
            if want is not None and want.kind == live[rel]:
                continue
            full = self.path(rel)
            if live[rel] == "dir":
                os.rmdir(full)  # its entries went first
            else:
                os.unlink(full)
            self.report.removed += 1

    def _make_parents(self) -> None:
        """Directories above ``sub`` that no longer exist (restoring a file or a tree
        whose parents were removed too): made with the mount's default mode."""
        if self.sub and self.wants:
            parent = os.path.dirname(self.sub)
            if parent:
                os.makedirs(self.path(parent), exist_ok=True)

    def _make_dir(self, w: Want) -> None:
        full = self.path(w.rel)
        if not os.path.isdir(full):
            mode = _attrs(w.info)[0]
            os.mkdir(full, stat.S_IMODE(mode) if mode is not None else 0o755)
        self.report.directories += 1

    def _put_back(self, w: Want) -> None:
        p = w.pinned
        assert p is not None
        full = self.path(w.rel)
        key = self.ws.key(p.key)
        tmp = os.path.join(os.path.dirname(full), f".{_TMP}{secrets.token_hex(6)}")
        try:
            if w.kind == "symlink":
                target = os.fsdecode(self.ws.store.get(key, version_id=p.version_id))
                if os.path.islink(full) and os.readlink(full) == target:
                    self._count("unchanged")
                else:
                    os.symlink(target, tmp)
                    os.rename(tmp, full)
                    self._count("written")
            elif w.kind == "special":
                mode = _attrs(w.info)[0] or 0
                rdev = int((w.info.metadata or {}).get("rdev") or 0) if w.info else 0
                try:
                    st = os.lstat(full)
                    same = (stat.S_IFMT(st.st_mode), st.st_rdev) == (stat.S_IFMT(mode), rdev)
                except FileNotFoundError:
                    same = False
                if same:
                    self._count("unchanged")
                else:
                    os.mknod(tmp, mode, rdev)
                    os.rename(tmp, full)
                    self._count("written")
            elif _synced_as(full, p, self._current.get(p.key)):
                self._count("unchanged")
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    self.ws.store.get_into(key, f, version_id=p.version_id)
                self._set_attrs(w, tmp)
                os.rename(tmp, full)
                self._count("written")
                return
            self._set_attrs(w, full)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def _set_attrs(self, w: Want, full: str) -> None:
        """Mode, owner (as root) and mtime from the version's metadata, where it has
        them (an object written by another tool keeps the mount's defaults)."""
        mode, mtime, uid, gid = _attrs(w.info)
        link = w.kind == "symlink"
        st = os.lstat(full)
        if os.geteuid() == 0 and (uid, gid) != (None, None) and \
                (uid, gid) != (st.st_uid, st.st_gid):
            os.chown(full, -1 if uid is None else uid, -1 if gid is None else gid,
                     follow_symlinks=not link)
        if mode is not None and not link and stat.S_IMODE(mode) != stat.S_IMODE(st.st_mode):
            os.chmod(full, stat.S_IMODE(mode))
        if not link:
            _set_xattrs(full, w.info)
        if mtime is not None and mtime != st.st_mtime_ns:
            try:
                os.utime(full, ns=(mtime, mtime), follow_symlinks=not link)
            except OSError:
                if not link:
                    raise


def _set_xattrs(full: str, info: ObjectInfo | None) -> None:
    """The version's ``user.*`` extended attributes (metadata ``xattr``), and none
    other (s3fuse's own ``user.s3fuse.*`` aside)."""
    if info is None:
        return
    try:
        wanted = json.loads((info.metadata or {}).get("xattr") or "{}")
        if not isinstance(wanted, dict):
            wanted = {}
    except ValueError:
        wanted = {}
    for name in os.listxattr(full, follow_symlinks=False):
        if name.startswith("user.") and not name.startswith("user.s3fuse.") \
                and name not in wanted:
            os.removexattr(full, name, follow_symlinks=False)
    for name, b64 in wanted.items():
        value = metadata.xattr_value(str(b64))
        try:
            if os.getxattr(full, name, follow_symlinks=False) == value:
                continue
        except OSError:
            pass
        os.setxattr(full, name, value, follow_symlinks=False)
