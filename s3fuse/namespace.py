"""The namespace inside a journal transaction: records, path <-> key, and the setters
that keep the records' invariants together.

Everything here runs inside a transaction the caller holds (``txn``) and never awaits.
Effects that reach beyond the journal are handed back to the caller instead of done:
the inodes that became dirty go into a ``pending`` list, the records dropped from the
journal into a ``dropped`` list; after its commit the caller passes them on with
``notify`` and ``forget_records``, which tell the flusher through two callbacks
(``on_change``, ``on_forget``; set when a flusher is attached, None in fsck and in
tests without one).

Owners of the invariants (see ``journal``):

* a record's dirty state is its ``dirty`` flag plus its entry in the ``dirty``
  sub-database (plus the flusher's schedule, told through ``notify``): ``mark`` sets
  them, ``unmark`` clears them, together;
* ``remote_key``/``remote_etag`` (the object that holds the record's last uploaded
  state) are set by ``set_remote`` only, and a record that leaves the bucket goes
  through ``leave_bucket`` (no object, nothing to upload).
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import keys, metadata
from .errors import FsError
from .journal import DIRTY_META, ROOT_INO, Inode, Journal, Txn
from .store.base import ObjectInfo


@dataclass
class Defaults:
    """Attributes of entries the bucket says nothing about (mount options)."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


def name_of(inode: Inode) -> bytes:
    """The entry name a record holds (as ``keys.name_from_segment`` made it)."""
    return inode.name.encode("utf-8", "surrogatepass")


def set_remote(inode: Inode, key: str | None, etag: str | None) -> None:
    """The one setter of ``remote_key``/``remote_etag``: ``inode``'s last uploaded state
    is now object ``key`` at version ``etag`` (None: a pending copy will give it; key
    None: no object). The caller ``txn.put``s the inode. Keeping the journal's
    invariant (the key is the record's path once pending ops ran) is the caller's
    part: it sets the key its path has, or appends the ops that move it there."""
    inode.remote_key, inode.remote_etag = key, etag


def unmark(txn: Txn, inode: Inode) -> None:
    """``inode`` has nothing to upload: its flag and its ``dirty`` entry go together.
    The caller ``txn.put``s it and tells the flusher (``Namespace.forget_schedule``)
    if it may have been scheduled."""
    inode.dirty = 0
    txn.clear_dirty(inode.ino)


def leave_bucket(txn: Txn, inode: Inode) -> None:
    """``inode`` no longer has an object, nor anything to upload (removed, or moved
    where keys are not exported). Any delete of its old object is the caller's op."""
    set_remote(inode, None, None)
    unmark(txn, inode)


def object_metadata(inode: Inode, xattrs: dict[str, str] | None = None) -> dict[str, str]:
    """The user metadata the object of ``inode`` carries in the bucket (with
    ``xattrs`` instead of the inode's own, to size a change before making it)."""
    return metadata.encode(mode=inode.mode, uid=inode.uid, gid=inode.gid,
                           mtime_ns=inode.mtime_ns, atime_ns=inode.atime_ns,
                           ctime_ns=inode.ctime_ns, rdev=inode.rdev,
                           xattrs=inode.xattrs if xattrs is None else xattrs,
                           extra=inode.extra)


class Namespace:
    """The records of one journal and their paths under one bucket prefix."""

    def __init__(self, journal: Journal, prefix: str, defaults: Defaults) -> None:
        self.journal = journal
        self.prefix = prefix
        self.defaults = defaults
        # paths kept only locally because their key would pass S3's 1,024 bytes:
        # ino -> path (filled by ``object_key``, pruned by ``Filesystem.not_exported_paths``)
        self.not_exported: dict[int, str] = {}
        #: told each ino that became dirty (after the commit: ``notify``)
        self.on_change: Callable[[int], None] | None = None
        #: told each ino that has nothing to upload any more (``forget_schedule``)
        self.on_forget: Callable[[int], None] | None = None

    # --- reading records (no side effects) -----------------------------------------
    def get(self, ino: int) -> Inode:
        """The inode ``ino`` as of now (its own read transaction); ENOENT if none."""
        with self.journal.read() as txn:
            inode = txn.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT, f"inode {ino}")
        return inode

    def get_in(self, txn: Txn, ino: int) -> Inode:
        """The inode ``ino`` as ``txn`` sees it; ENOENT if there is none."""
        inode = txn.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT, f"inode {ino}")
        return inode

    # hard links: one inode, a name record per name (see ``journal.Inode``)
    def data_of(self, txn: Txn, rec: Inode) -> Inode:
        """The inode whose bytes and attributes a name record's object carries."""
        return self.get_in(txn, rec.link_of) if rec.link_of else rec

    def records(self, txn: Txn, inode: Inode) -> list[Inode]:
        """Every name record of ``inode``: itself, then its link records."""
        return [inode] + [self.get_in(txn, ino) for ino in inode.links]

    def record_at(self, txn: Txn, parent: int, name: bytes, inode: Inode) -> Inode:
        """The name record of ``inode`` for its entry ``name`` in ``parent``."""
        if not inode.links or (inode.parent == parent and name_of(inode) == name):
            return inode
        for ino in inode.links:
            rec = self.get_in(txn, ino)
            if rec.parent == parent and name_of(rec) == name:
                return rec
        raise FsError(errno.EIO, f"inode {inode.ino} has no record of its name {name!r}")

    def subtree(self, txn: Txn, top: Inode) -> Iterator[Inode]:
        """``top`` (a name record) and, for a directory, every name record below it:
        a hard-linked file once per name it has there."""
        stack = [top]
        while stack:
            rec = stack.pop()
            yield rec
            if stat.S_ISDIR(rec.mode):
                for name, child in txn.children(rec.ino):
                    c = self.get_in(txn, child)
                    stack.append(c if stat.S_ISDIR(c.mode)
                                 else self.record_at(txn, rec.ino, name, c))

    def lookup_entry(self, parent: int, name: bytes) -> Inode:
        """What entry ``name`` of directory ``parent`` names now (``.`` and ``..``
        too): ENOTDIR, ENAMETOOLONG, ENOENT. Reads only."""
        with self.journal.read() as txn:
            p = self.get_in(txn, parent)
            if not stat.S_ISDIR(p.mode):
                raise FsError(errno.ENOTDIR)
            if name == b".":
                ino = parent
            elif name == b"..":
                ino = p.parent
            else:
                if len(name) > keys.NAME_MAX:
                    raise FsError(errno.ENAMETOOLONG)
                found = txn.lookup(parent, name)
                if found is None:
                    raise FsError(errno.ENOENT)
                ino = found
            return self.get_in(txn, ino)

    # --- path <-> key ----------------------------------------------------------------
    def path_names(self, txn: Txn, inode: Inode) -> list[str]:
        """The names from the root down to ``inode``'s record (ELOOP past 4,096)."""
        names: list[str] = []
        depth = 0
        while inode.ino != ROOT_INO:
            names.append(inode.name)
            parent = txn.peek(inode.parent)  # read-only: no copy per ancestor
            if parent is None:
                raise FsError(errno.ENOENT, f"inode {inode.parent}")
            inode = parent
            depth += 1
            if depth > 4096:
                raise FsError(errno.ELOOP, "directory chain too deep")
        names.reverse()
        return names

    def object_key(self, txn: Txn, inode: Inode) -> str | None:
        """The bucket key for this inode's current path (``dir/`` for a directory),
        or None if it is not exported (the root, ``.s3fuse/``, too long a key)."""
        if inode.ino == ROOT_INO:
            return None
        names = self.path_names(txn, inode)
        if names[0] == keys.RESERVED_ROOT_NAME.decode():
            return None
        key = self.prefix + "/".join(names)
        if stat.S_ISDIR(inode.mode):
            key += "/"
        if len(key.encode()) > keys.KEY_MAX:
            self.not_exported[inode.ino] = "/".join(names)
            return None
        return key

    def inode_at_key(self, txn: Txn, key: str) -> Inode | None:
        """The live inode whose path is ``key`` (a ``dir/`` key names a directory)."""
        if not key.startswith(self.prefix):
            return None
        rel = key[len(self.prefix):]
        want_dir = rel.endswith("/")
        ino = parent = ROOT_INO
        name = b""
        for part in rel.rstrip("/").split("/"):
            name = part.encode()
            found = txn.lookup(ino, name)
            if found is None:
                return None
            parent, ino = ino, found
        inode = txn.get(ino)
        if inode is None or stat.S_ISDIR(inode.mode) != want_dir:
            return None
        return self.record_at(txn, parent, name, inode)

    def dir_prefix(self, txn: Txn, inode: Inode) -> str:
        """The key prefix the entries of directory ``inode`` have in the bucket."""
        if inode.ino == ROOT_INO:
            return self.prefix
        return self.prefix + "/".join(self.path_names(txn, inode)) + "/"

    def in_lost_found(self, inode: Inode) -> bool:
        """``inode`` is kept below ``.s3fuse/lost+found/``."""
        with self.journal.read() as txn:
            names = self.path_names(txn, inode)
        return len(names) > 2 and names[0] == keys.RESERVED_ROOT_NAME.decode() \
            and names[1] == "lost+found"

    # --- setters (inside the caller's transaction; the caller puts what it changed) ---
    def touch_dir(self, txn: Txn, ino: int, now: int, nlink_delta: int = 0) -> None:
        """Directory ``ino`` changed at ``now`` (its entries): times, and its link
        count by ``nlink_delta`` (a subdirectory added or removed). Puts it."""
        d = self.get_in(txn, ino)
        d.mtime_ns = d.ctime_ns = now
        d.nlink += nlink_delta
        txn.put(d)

    def mark(self, txn: Txn, inode: Inode, flags: int, pending: list[int]) -> None:
        """Record a change to upload: the ``dirty`` flag and sub-database together, and
        the ino in ``pending`` (for ``notify`` after the commit). Idempotent but for
        the change sequence, which every call bumps. The caller has ``txn.put`` the
        inode after. The other names of a hard-linked file are marked (and put) too:
        each name's object holds the same bytes and attributes. An inode that is not
        exported (no key) is not marked."""
        if self.object_key(txn, inode) is not None:
            inode.dirty |= flags
            inode.change_seq += 1
            txn.mark_dirty(inode.ino)
            pending.append(inode.ino)
        for ino in inode.links:
            rec = self.get_in(txn, ino)
            self.mark(txn, rec, flags, pending)
            txn.put(rec)

    def keep_parent_dir(self, txn: Txn, parent: int, pending: list[int]) -> None:
        """A directory that loses its last entry keeps existing in the bucket: make
        sure a marker gets written for it."""
        if parent == ROOT_INO or txn.has_children(parent):
            return
        d = self.get_in(txn, parent)
        if d.remote_key is None and d.nlink > 0:
            self.mark(txn, d, DIRTY_META, pending)
            txn.put(d)

    def add_from_object(self, txn: Txn, parent: int, name: bytes, info: ObjectInfo) -> Inode:
        """A new entry for a file object seen in the bucket (clean, not cached); from
        a listing (no metadata) its attributes are loaded later (``load_meta``)."""
        child = self.inode_from_object(txn, parent, name, info, is_dir=False,
                                       fallback_ns=info.mtime_ns)
        child.size = info.size
        set_remote(child, info.key, info.etag)
        txn.put(child)
        txn.link(parent, name, child.ino)
        return child

    def add_dir_from_bucket(self, txn: Txn, parent: int, name: bytes, key: str,
                            info: ObjectInfo | None, now: int) -> Inode:
        """A new directory entry for the common prefix ``key`` the bucket listed
        (``info``: a HEAD of its marker, if one was made). Puts it and links it; the
        caller updates ``parent``'s link count."""
        child = self.inode_from_object(txn, parent, name, info, is_dir=True, fallback_ns=now)
        if info is not None:
            set_remote(child, key, info.etag)
        txn.put(child)
        txn.link(parent, name, child.ino)
        return child

    def inode_from_object(self, txn: Txn, parent: int, name: bytes,
                          info: ObjectInfo | None, *, is_dir: bool,
                          fallback_ns: int) -> Inode:
        """An inode from what the bucket said: a HEAD (``info.metadata`` set) gives its
        attributes; a listing, or a common prefix (``info`` None), gives defaults and
        ``meta_loaded=False``. Not put."""
        fields = self.decode(info.metadata if info is not None else None, is_dir,
                             fallback_ns)
        inode = Inode(ino=txn.new_ino(), parent=parent, name=name.decode(), **fields)
        inode.meta_loaded = info is not None and info.metadata is not None
        if is_dir:
            inode.nlink = 2
        return inode

    def decode(self, md: dict[str, str] | None, is_dir: bool,
               fallback_ns: int) -> dict:
        """Inode fields from an object's user metadata, this mount's defaults filling in."""
        d = self.defaults
        return metadata.decode(md, is_dir=is_dir,
                               default_mode=d.dir_mode if is_dir else d.file_mode,
                               default_uid=d.uid, default_gid=d.gid,
                               fallback_mtime_ns=fallback_ns)

    def remove_name(self, txn: Txn, inode: Inode, parent: int, name: bytes, now: int,
                    pending: list[int], dropped: list[int]) -> tuple[str, str | None] | None:
        """The entry ``name`` of ``parent`` (already unlinked by the caller) no longer
        names the non-directory ``inode``. Returns that name's object (key, ETag), for
        the caller to delete or, renaming over it, to inherit; None if it has none.
        Records dropped from the journal are added to ``dropped`` (for the flusher).
        The caller puts ``inode``."""
        rec = self.record_at(txn, parent, name, inode)
        remote = (rec.remote_key, rec.remote_etag)
        inode.nlink -= 1
        inode.ctime_ns = now
        if rec is not inode:
            inode.links.remove(rec.ino)
            txn.delete_inode(rec.ino)
            dropped.append(rec.ino)
        elif inode.links:
            # its first name goes: the next name's record becomes the inode's own
            nxt = self.get_in(txn, inode.links.pop(0))
            inode.parent, inode.name = nxt.parent, nxt.name
            set_remote(inode, nxt.remote_key, nxt.remote_etag)
            inode.change_seq = max(inode.change_seq, nxt.change_seq) + 1
            unmark(txn, inode)
            if nxt.dirty:
                inode.dirty = nxt.dirty
                txn.mark_dirty(inode.ino)
                pending.append(inode.ino)
            txn.retarget_ops(nxt.ino, inode.ino)
            txn.delete_inode(nxt.ino)
            dropped.append(nxt.ino)
        else:
            leave_bucket(txn, inode)
        if inode.nlink > 0:
            self.mark(txn, inode, DIRTY_META, pending)  # the names left carry the ctime
        return remote if remote[0] is not None else None

    # --- after the commit: tell the flusher ----------------------------------------------
    def notify(self, pending: list[int]) -> None:
        """Tell the flusher about the inodes ``mark`` put in ``pending`` (committed)."""
        if self.on_change is not None:
            for ino in pending:
                self.on_change(ino)

    def forget_schedule(self, ino: int) -> None:
        """``ino`` has nothing to upload any more (gone, or no longer dirty)."""
        if self.on_forget is not None:
            self.on_forget(ino)

    def forget_records(self, dropped: list[int]) -> None:
        """The records ``remove_name`` dropped (committed) have nothing to upload."""
        for ino in dropped:
            self.forget_schedule(ino)

