"""fsck's checks of the journal against the bucket (the second list of kinds in
``fsck``'s docstring): every exported, reachable inode whose keys no pending op names;
each listed directory is LISTed once, other objects are HEADed.

``BucketChecks`` is a part of fsck's checker (``fsck._Checker`` derives from it): its
methods read the state the journal checks built (``inodes``, ``children``,
``entry_of``, ``key_of``, ``dir_order``, ``op_keys``, ``etag_unknown``), report
through the checker's ``find`` and ask the bucket through ``store``.
"""

from __future__ import annotations

import stat
from collections.abc import Callable

from . import keys
from .errors import InvalidKey, NoSuchKey
from .fsck_findings import _adopt, _drop_entry, _has_local_content, _mark_dirty, _set_fields
from .journal import DIRTY_DATA, DIRTY_META, ROOT_INO, Inode
from .reconcile import Decision, decide, own_upload
from .store.base import ObjectInfo

_PROBE_PREFIX = ".s3fuse-probe-"


class BucketChecks:
    """The bucket half of ``fsck._Checker`` (see the module's docstring)."""

    def check_bucket(self) -> None:
        # children before their parents, so a directory is judged on what is left
        for ino in reversed(self.dir_order):
            self._check_dir(ino)

    def _list(self, prefix: str) -> tuple[dict[str, ObjectInfo], list[str]]:
        assert self.store is not None
        objects: dict[str, ObjectInfo] = {}
        prefixes: list[str] = []
        token = None
        while True:
            try:
                page = self.store.list(prefix, "/", token)
            except InvalidKey:
                return objects, prefixes
            objects.update((o.key, o) for o in page.objects)
            prefixes.extend(page.prefixes)
            token = page.next_token
            if token is None:
                return objects, prefixes

    def _head(self, key: str) -> ObjectInfo | None:
        assert self.store is not None
        try:
            return self.store.head(key)
        except (NoSuchKey, InvalidKey):
            return None

    def _exists_under(self, prefix: str) -> bool:
        assert self.store is not None
        try:
            page = self.store.list(prefix, "/", None, max_keys=1)
        except InvalidKey:
            return False
        return bool(page.objects or page.prefixes)

    def _blocked(self, inode: Inode, key: str) -> bool:
        """A pending op names one of its keys: the state is in flux until it runs."""
        return key in self.op_keys or (inode.remote_key is not None
                                       and inode.remote_key in self.op_keys)

    def _check_dir(self, ino: int) -> None:
        d = self.inodes[ino]
        k = self.prefix if ino == ROOT_INO else self.key_of.get(ino)
        if k is None:
            return  # not exported (.s3fuse/, too long a key): nothing in the bucket
        listing = self._list(k) if d.listed else None
        for _name, child in sorted(self.children.get(ino, {}).items()):
            c = self.inodes[child]
            ck = self.key_of.get(child)
            if stat.S_ISDIR(c.mode) or ck is None:
                continue
            info = listing[0].get(ck) if listing is not None else self._head(ck)
            self._check_entry(c, ck, info)
        if listing is not None:
            self._new_outside(d, k, listing)
        if ino == ROOT_INO:
            return
        if listing is not None:
            marker = listing[0].get(k)
            under = bool(listing[0] or listing[1])

            def exists_under() -> bool:
                return under
        else:
            marker = self._head(k) if d.remote_key is not None or d.dirty else None

            def exists_under() -> bool:
                return self._exists_under(k)
        self._check_dir_itself(d, k, marker, exists_under)

    def _check_dir_itself(self, d: Inode, k: str, marker: ObjectInfo | None,
                          exists_under: Callable[[], bool]) -> None:
        if self._blocked(d, k):
            return
        if d.dirty:
            self._check_pending(d, k, marker)
            return
        if d.remote_key not in (None, k):
            return  # reported as remote-key
        has_entries = bool(self.children.get(d.ino))
        if d.remote_key is None:
            if not has_entries and not exists_under():
                self._drop(d, "deleted-outside", "the directory is gone from the bucket: "
                                                 "no marker, nothing under its prefix")
            return
        if marker is None:
            if not has_entries and not exists_under():
                self._drop(d, "deleted-outside", "its marker was deleted from the bucket, "
                                                 "and nothing is left under its prefix")
            else:
                self.find("deleted-outside", d.ino, "its marker was deleted from the bucket; "
                                                    "repair: the directory stays, unmarked (it has "
                                                    "entries)",
                          fix=_set_fields(d.ino, remote_key=None, remote_etag=None))
            return
        if d.ino in self.etag_unknown:
            self.etag_unknown.discard(d.ino)
            self._refresh(d, k, "etag-unknown", "remote key without an ETag and no pending "
                                                "copy; repair: take the bucket's marker")
        elif marker.etag != d.remote_etag:
            self._refresh(d, k, "changed-outside",
                          f"its marker changed in the bucket (ETag {d.remote_etag} -> "
                          f"{marker.etag}); repair: take its attributes")

    def _check_entry(self, c: Inode, k: str, info: ObjectInfo | None) -> None:
        if self._blocked(c, k):
            return
        if c.dirty:
            self._check_pending(c, k, info)
            return
        if c.remote_key not in (None, k):
            return  # reported as remote-key
        if c.remote_key is not None and c.ino in self.etag_unknown:
            self.etag_unknown.discard(c.ino)
            self._refresh(c, k, "etag-unknown", "remote key without an ETag and no pending "
                                                "copy; repair: take the bucket's object")
            return
        # the mount's own rule (S3 wins), judged offline
        decision = decide(dirty=False, known_etag=c.remote_etag,
                          uploaded=c.remote_key is not None,
                          bucket_etag=info.etag if info is not None else None)
        if c.remote_key is None:
            if decision is Decision.REFRESH:
                self._refresh(c, k, "changed-outside",
                              "the journal knew no object here, the bucket has one; "
                              "repair: take the bucket's version")
            elif _has_local_content(self._data(c)):
                self.find("not-uploaded", c.ino, "clean, but not in the bucket; repair: "
                                                 "mark it dirty, the next mount uploads it",
                          fix=_mark_dirty(c.ino, DIRTY_DATA | DIRTY_META))
            else:
                self._drop(c, "no-data", "neither cached nor in the bucket: nothing to read")
            return
        if decision is Decision.REMOVE:
            self._drop(c, "deleted-outside", "the object was deleted from the bucket")
        elif decision is Decision.REFRESH:
            assert info is not None
            self._refresh(c, k, "changed-outside",
                          f"the object changed in the bucket (ETag {c.remote_etag} -> "
                          f"{info.etag}); repair: take the bucket's version")
        elif info is not None and stat.S_ISREG(c.mode) and info.size != self._data(c).size:
            self._refresh(c, k, "size", f"size {self._data(c).size} in the journal, "
                                        f"{info.size} in the bucket with the same ETag")

    def _check_pending(self, x: Inode, k: str, info: ObjectInfo | None) -> None:
        """A dirty inode: will its conditional upload find what it expects?"""
        if x.remote_key not in (None, k):
            return  # reported as remote-key
        if x.remote_key is not None and x.remote_etag is None:
            return  # reported as etag-unknown: the upload waits for an ETag
        expected = x.remote_etag if x.remote_key == k else None
        if decide(dirty=True, known_etag=expected, uploaded=x.remote_key == k,
                  bucket_etag=info.etag if info is not None else None) is Decision.KEEP:
            return
        if info is not None and self._ours(k, x):
            return  # our own upload landed before the daemon stopped: adopted on mount
        what = ("deleted from" if info is None else
                "created in" if expected is None else "changed in")
        self.find("conflict", x.ino, f"pending upload, but {k!r} was {what} the bucket "
                                     "meanwhile: the upload will be refused (S3 wins); "
                                     "copy the local version away, then remove it")

    def _ours(self, key: str, x: Inode) -> bool:
        """Does the object at ``key`` carry our upload marker for this inode, from this
        change or an earlier one (the flusher's adoption rule)?"""
        return own_upload(self._head(key), self.instance, x.ino, x.change_seq) is not None

    def _refresh(self, x: Inode, k: str, kind: str, detail: str) -> None:
        """S3 wins: take the object's ETag, size and attributes; drop cached bytes."""
        head = self._head(k)
        if head is None:  # gone between the listing and now
            self._drop(x, "deleted-outside", "the object was deleted from the bucket")
            return
        is_dir = stat.S_ISDIR(x.mode)
        if x.link_of or x.links:
            # the mount splits that name off the hard-linked file; not done offline
            self.find(kind, x.ino, detail + " (one name of a hard-linked file: mount to "
                                            "take the bucket's version at that name)")
            return
        self.find(kind, x.ino, detail, fix=_adopt(x.ino, k, head),
                  files=[] if is_dir else [self.cache_path(x.ino)])

    def _drop(self, x: Inode, kind: str, detail: str) -> None:
        """S3 wins: the entry leaves the journal (never a dirty one)."""
        assert not x.dirty
        parent, name = self.entry_of[x.ino]
        is_dir = stat.S_ISDIR(x.mode)
        if x.link_of or x.links:
            self.find(kind, x.ino, detail + " (one name of a hard-linked file: mount to "
                                            "have that name removed)")
            self.children.get(parent, {}).pop(name, None)
            return
        self.find(kind, x.ino, detail + "; repair: remove it from the journal",
                  fix=_drop_entry(parent, name, x.ino, is_dir),
                  files=[] if is_dir else [self.cache_path(x.ino)])
        # what a repair would leave, also when only checking: the parent is judged on it
        self.children.get(parent, {}).pop(name, None)

    def _new_outside(self, d: Inode, k: str, listing: tuple[dict[str, ObjectInfo],
                                                            list[str]]) -> None:
        objects, prefixes = listing
        kids = self.children.get(d.ino, {})
        is_root = d.ino == ROOT_INO
        new: list[str] = []
        dir_names: set[bytes] = set()
        for p in prefixes:
            name = keys.name_from_segment(p[len(k):-1])
            if name is None or (is_root and name == keys.RESERVED_ROOT_NAME):
                continue  # the mount skips it too
            dir_names.add(name)
            if name in kids:
                if not stat.S_ISDIR(self.inodes[kids[name]].mode):
                    self.find("new-outside", p, "a directory in the bucket where the "
                                                "journal has a file; the file stays on this "
                                                "cache directory's mounts")
                continue
            if any(b.startswith(p) for b in self.op_keys):
                continue  # a pending rename or delete still has to move it
            new.append(p)
        for key in objects:
            if key == k:
                continue  # this directory's own marker
            seg = key[len(k):]
            name = keys.name_from_segment(seg)
            if name is None or (is_root and (name == keys.RESERVED_ROOT_NAME
                                             or seg.startswith(_PROBE_PREFIX))):
                continue
            if name in dir_names or name in kids or key in self.op_keys:
                continue
            new.append(key)
        if not new:
            return
        busy = any(b.startswith(k) for b in self.op_keys)
        for key in new:
            if busy:
                self.find("new-outside", key, "in the bucket, not in the journal; pending "
                                              "operations in this directory: mount, then "
                                              "fsck --repair again to have it listed")
            else:
                self.find("new-outside", key, "in the bucket, not in the journal; repair: "
                                              "the next mount lists the directory again",
                          fix=_set_fields(d.ino, listed=False))
