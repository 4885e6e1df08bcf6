"""Rename and ``RENAME_EXCHANGE``: moving entries, and the bucket work that follows.

A rename is one journal transaction (no ``await`` inside): the namespace change,
and the ops and dirty marks that make every object at or below the moved entry
follow it (``_move_remote``). An exchange is the same for two entries trading
places, with the cycles that makes in the bucket broken as described at
``exchange``. Store calls (listing what must be complete, fetching a side that
must be uploaded whole) happen before the transaction. ``Filesystem.rename``
and ``Filesystem.exchange`` are the entry points; this module changes the journal
through ``namespace`` and learns of the bucket through ``discovery``.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Awaitable, Callable

from . import faults, keys
from .cache import Cache
from .discovery import Discovery
from .errors import FsError
from .journal import DIRTY_DATA, DIRTY_META, ROOT_INO, Inode, Txn
from .namespace import Namespace, leave_bucket, set_remote, unmark
from .oplog import CopyOp, DeleteOp

# renameat2(2) flags (linux/fs.h; pyfuse3 has the same values): the two ``rename``
# implements. Any other bit (RENAME_WHITEOUT, bits Linux may add) answers EINVAL.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# an exchange fetches a side it must upload whole, then tries again: this many times
EXCHANGE_TRIES = 4


class _NeedLocal(Exception):
    """Raised inside an exchange's transaction, which it aborts: name record ``ino``
    must have its bytes on local disk first (``Renamer.make_local``)."""

    def __init__(self, ino: int) -> None:
        super().__init__(ino)
        self.ino = ino


class Renamer:
    """Moves entries of one mount's namespace (``rename``, ``exchange``)."""

    def __init__(self, ns: Namespace, discovery: Discovery, cache: Cache,
                 make_local: Callable[[int], Awaitable[None]],
                 maybe_purge: Callable[[int], None]) -> None:
        self.ns = ns
        self.discovery = discovery
        self.cache = cache
        #: have the attributes and whole bytes of a name record on local disk
        self.make_local = make_local
        #: drop an unlinked inode once nothing refers to it
        self.maybe_purge = maybe_purge

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        """Atomic rename, replacing an existing target (``os.replace``).

        ``flags``: renameat2's. ``RENAME_NOREPLACE``: EEXIST if the target exists;
        ``RENAME_EXCHANGE``: swap the two entries (``exchange``); both at once, or any
        other bit (``RENAME_WHITEOUT``...): EINVAL, nothing changes.
        """
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, f"rename flags {flags:#x} are not supported")
        if flags & RENAME_EXCHANGE:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EINVAL, "RENAME_EXCHANGE with RENAME_NOREPLACE")
            await self.exchange(old_parent, old_name, new_parent, new_name)
            return
        new_seg = keys.check_new_name(new_name)
        await self.discovery.ensure_listed(old_parent)
        await self.discovery.ensure_listed(new_parent)
        with self.ns.journal.read() as txn:
            ino = txn.lookup(old_parent, old_name)
            if ino is None:
                raise FsError(errno.ENOENT)
            moving = self.ns.get_in(txn, ino)
            target_ino = txn.lookup(new_parent, new_name)
        if stat.S_ISDIR(moving.mode):
            await self._ensure_subtree_listed(ino)
        if target_ino is not None:
            await self.discovery.ensure_listed(target_ino, complete=True)

        now = time.time_ns()
        pending: list[int] = []
        dropped: list[int] = []
        with self.ns.journal.write() as txn:
            if txn.lookup(old_parent, old_name) != ino:
                raise FsError(errno.ENOENT)
            moving = self.ns.get_in(txn, ino)
            is_dir = stat.S_ISDIR(moving.mode)
            np = self.ns.get_in(txn, new_parent)
            if not stat.S_ISDIR(np.mode):
                raise FsError(errno.ENOTDIR)
            if np.nlink == 0:
                raise FsError(errno.ENOENT)
            if is_dir:
                self._check_not_below(txn, np, ino)
            target_ino = txn.lookup(new_parent, new_name)
            if target_ino == ino:
                return
            displaced: Inode | None = None
            if target_ino is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST)
                displaced = self.ns.get_in(txn, target_ino)
                if stat.S_ISDIR(displaced.mode):
                    if not is_dir:
                        raise FsError(errno.EISDIR)
                    if txn.has_children(target_ino):
                        raise FsError(errno.ENOTEMPTY)
                elif is_dir:
                    raise FsError(errno.ENOTDIR)

            # the name record that moves (a hard-linked file has one per name), and
            # the keys before the move of every object that has to follow it
            rec = moving if is_dir else self.ns.record_at(txn, old_parent, old_name, moving)
            old_keys = {i.ino: self.ns.object_key(txn, i) for i in self.ns.subtree(txn, rec)}

            # the namespace change itself
            # (the moved inode overwrites the displaced name's object: no delete needed)
            inherited: tuple[str, str | None] | None = None
            if displaced is not None:
                txn.unlink(new_parent, new_name)
                if stat.S_ISDIR(displaced.mode):
                    displaced.nlink = 0
                    displaced.ctime_ns = now
                    if displaced.remote_key is not None:
                        inherited = (displaced.remote_key, displaced.remote_etag)
                    leave_bucket(txn, displaced)
                    self.ns.touch_dir(txn, new_parent, now, -1)
                else:
                    inherited = self.ns.remove_name(txn, displaced, new_parent, new_name, now,
                                                  pending, dropped)
                txn.put(displaced)
            txn.unlink(old_parent, old_name)
            txn.link(new_parent, new_name, ino)
            moving = self.ns.get_in(txn, ino)
            moving.ctime_ns = now
            if rec.ino == ino:
                moving.parent, moving.name = new_parent, new_seg
                txn.put(moving)
            else:
                txn.put(moving)
                rec = self.ns.get_in(txn, rec.ino)
                rec.parent, rec.name = new_parent, new_seg
                txn.put(rec)
            dir_delta = 1 if is_dir else 0
            self.ns.touch_dir(txn, old_parent, now, -dir_delta)
            self.ns.touch_dir(txn, new_parent, now, dir_delta)

            faults.crash_point("mid-rename")  # the transaction is not committed yet
            # bucket side: every object below the moved entry follows it
            for node in self.ns.subtree(txn, self.ns.get_in(txn, rec.ino)):
                self._move_remote(txn, node, old_keys[node.ino],
                                  inherited if node.ino == rec.ino else None, pending)
            self.ns.keep_parent_dir(txn, old_parent, pending)
        self.ns.notify(pending)
        self.ns.forget_records(dropped)
        if displaced is not None:
            self.maybe_purge(displaced.ino)

    async def _ensure_subtree_listed(self, ino: int) -> None:
        stack = [ino]
        while stack:
            d = stack.pop()
            await self.discovery.ensure_listed(d, complete=True)
            with self.ns.journal.read() as txn:
                for _, child in txn.children(d):
                    c = txn.get(child)
                    if c is not None and stat.S_ISDIR(c.mode):
                        stack.append(child)

    def _check_not_below(self, txn: Txn, dest: Inode, ino: int) -> None:
        """EINVAL if directory ``dest`` is directory ``ino`` or below it: no moving a
        directory into itself."""
        walk = dest
        while True:
            if walk.ino == ino:
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if walk.ino == ROOT_INO:
                return
            walk = self.ns.get_in(txn, walk.parent)

    def _move_remote(self, txn: Txn, node: Inode, old_key: str | None,
                     inherited: tuple[str, str | None] | None, pending: list[int]) -> None:
        """Queue the bucket work that makes ``node``'s object follow its new path.

        ``inherited``: the object already at the new key that this node replaces; our
        next upload there is conditioned on its ETag instead of deleting it first.
        """
        node = self.ns.get_in(txn, node.ino)
        new_key = self.ns.object_key(txn, node)
        is_dir = stat.S_ISDIR(node.mode)
        had_remote = node.remote_key is not None
        if had_remote and node.remote_key != new_key:
            old = DeleteOp(node.remote_key, node.remote_etag, node.ino)
            if is_dir or node.dirty & DIRTY_DATA or new_key is None:
                # rewritten from local state at the new key (or not at all)
                txn.append_op(old)
                set_remote(node, None, None)
            else:
                # clean data stays server-side: copy, then delete the old key
                txn.append_op(CopyOp(old.key, new_key, old.etag, node.ino))
                txn.append_op(old)
                set_remote(node, new_key, None)
                inherited = None  # the copy overwrites it
        if new_key is None:
            unmark(txn, node)
        else:
            if inherited is not None and node.remote_key is None:
                set_remote(node, *inherited)
            if old_key is None:
                # it was not exported before (e.g. under .s3fuse/): upload it now
                self.ns.mark(txn, node, DIRTY_META if is_dir else DIRTY_DATA | DIRTY_META,
                           pending)
            elif is_dir and (had_remote or inherited is not None):
                # the directory's marker and attributes move with it
                self.ns.mark(txn, node, DIRTY_META, pending)
        txn.put(node)

    # --- RENAME_EXCHANGE --------------------------------------------------------------
    #
    # The two entries trade places on the mount in one journal transaction, like a
    # rename. In the bucket every object at or below each entry moves to the same place
    # at or below the other. Where both trees have an object at one place (the two
    # entries themselves when both are files or both directories, then each name two
    # directories have in common, at any depth), the two keys trade their contents: a
    # cycle. Server-side copies alone cannot turn a cycle without a third key, and
    # s3fuse puts no object of its own in the bucket. So one side of each such *pair*
    # is written from local state:
    #
    # * directory markers always are (they hold attributes the journal has): each
    #   directory takes over the other's marker (key and ETag) and rewrites it;
    # * a file that is to be uploaded anyway (DIRTY_DATA) is uploaded to its new key,
    #   conditioned on the ETag of the object it replaces there (the other side's);
    # * of two clean files, one is made DIRTY_DATA and goes the same way (the smaller
    #   one whose bytes are on local disk; if neither is, the smaller one is fetched
    #   first, before the transaction); the other one is copied server-side, pinned
    #   to its ETag, to its new key, which is the local side's old key.
    #
    # Why that order never loses a version: the copy op names both keys, and an upload
    # to a key waits while a pending op names it (``Flusher._start_uploads``; an upload
    # already in flight holds the copy back instead, ``_startable_ops``). So the copy
    # reads the copied side's version before the local side's upload replaces it; and
    # the copy overwrites only the local side's old object, whose bytes are then in
    # its cache file, which is never evicted while dirty; the DIRTY_DATA mark is in
    # the very transaction that makes the swap. A crash before the commit leaves the
    # old tree; after it, replay finds the same op log and dirty set (copies and
    # uploads are repeated safely, as for a rename). No delete is queued for a pair:
    # each of its keys is overwritten by its new holder. If the copy's source was
    # changed outside meanwhile, the copy is dropped (S3 wins) as for a rename.
    #
    # Objects with no partner at their new place simply move, as in a rename
    # (``_move_remote``): their new keys are no one's old key, so no cycle. Except
    # a file whose place in the other tree is a directory (a file exchanged with a
    # directory, or a name that is a file in one tree and a directory in the other):
    # its new key ``K`` still has the directory's objects below ``K/`` until they have
    # moved, and they move to below the file's old key, which the file holds until it
    # has moved; a store that keeps keys as paths (``file://``) can hold no file ``K``
    # beside keys under ``K/``. So such a file goes from local state: its old object
    # is deleted first (the first ops of the exchange), and it is uploaded to its new
    # key once the directory's objects are gone from there (a failed attempt is
    # retried, as any upload).

    async def exchange(self, parent_a: int, name_a: bytes, parent_b: int,
                       name_b: bytes) -> None:
        """``renameat2(RENAME_EXCHANGE)``: entry ``name_a`` of ``parent_a`` and entry
        ``name_b`` of ``parent_b`` trade places, atomically (one journal transaction):
        two files, two directories, or a file and a directory. Both must exist
        (ENOENT); neither directory may end up inside itself (EINVAL); two names of
        one file: nothing happens, as on Linux. The bucket follows through the op log
        and the dirty set (see above); of two clean files, one may be fetched first."""
        await self.discovery.ensure_listed(parent_a)
        await self.discovery.ensure_listed(parent_b)
        for _ in range(EXCHANGE_TRIES):
            with self.ns.journal.read() as txn:
                found = (txn.lookup(parent_a, name_a), txn.lookup(parent_b, name_b))
                if found[0] is None or found[1] is None:
                    raise FsError(errno.ENOENT)
                dirs = [ino for ino in found if stat.S_ISDIR(self.ns.get_in(txn, ino).mode)]
            for ino in dirs:
                await self._ensure_subtree_listed(ino)
            try:
                self._exchange(parent_a, name_a, parent_b, name_b)
                return
            except _NeedLocal as need:
                await self.make_local(need.ino)
        raise FsError(errno.EBUSY, "the entries kept changing while being exchanged")

    def _exchange(self, parent_a: int, name_a: bytes, parent_b: int, name_b: bytes) -> None:
        """The transaction of ``exchange``. Raises ``_NeedLocal`` (nothing changed) when
        a clean file must be fetched first."""
        now = time.time_ns()
        pending: list[int] = []
        with self.ns.journal.write() as txn:
            ino_a, ino_b = txn.lookup(parent_a, name_a), txn.lookup(parent_b, name_b)
            if ino_a is None or ino_b is None:
                raise FsError(errno.ENOENT)
            for parent in (parent_a, parent_b):
                d = self.ns.get_in(txn, parent)
                if not stat.S_ISDIR(d.mode):
                    raise FsError(errno.ENOTDIR)
                if d.nlink == 0:
                    raise FsError(errno.ENOENT)
            if ino_a == ino_b:
                return  # two names of one file: Linux does nothing either
            a, b = self.ns.get_in(txn, ino_a), self.ns.get_in(txn, ino_b)
            a_dir, b_dir = stat.S_ISDIR(a.mode), stat.S_ISDIR(b.mode)
            if a_dir:
                self._check_not_below(txn, self.ns.get_in(txn, parent_b), ino_a)
            if b_dir:
                self._check_not_below(txn, self.ns.get_in(txn, parent_a), ino_b)
            rec_a = a if a_dir else self.ns.record_at(txn, parent_a, name_a, a)
            rec_b = b if b_dir else self.ns.record_at(txn, parent_b, name_b, b)

            # before the swap: every object below each entry by its place, and the pairs
            places_a, places_b = self._places(txn, rec_a), self._places(txn, rec_b)
            pairs: list[tuple[Inode, str | None, Inode, str | None, int | None]] = []
            for place, (x, key_x) in places_a.items():
                if place in places_b:
                    y, key_y = places_b[place]
                    pairs.append((x, key_x, y, key_y,
                                  self._copy_side(txn, x, key_x, y, key_y)))
            # files that meet a directory (see above): written from local state
            clashes = [(node, key) for places, other in ((places_a, places_b),
                                                         (places_b, places_a))
                       for (rel, is_dir), (node, key) in places.items()
                       if not is_dir and (rel, True) in other]
            for node, _ in clashes:
                if not self._is_local(txn, node):
                    raise _NeedLocal(node.ino)

            # the namespace change itself
            txn.unlink(parent_a, name_a)
            txn.unlink(parent_b, name_b)
            txn.link(parent_a, name_a, ino_b)
            txn.link(parent_b, name_b, ino_a)
            for rec_ino, data_ino, parent, seg in ((rec_a.ino, ino_a, parent_b, rec_b.name),
                                                   (rec_b.ino, ino_b, parent_a, rec_a.name)):
                data = self.ns.get_in(txn, data_ino)
                data.ctime_ns = now
                txn.put(data)
                rec = self.ns.get_in(txn, rec_ino)
                rec.parent, rec.name = parent, seg
                txn.put(rec)
            # a directory that trades places with a file moves a subdirectory link
            delta = int(b_dir) - int(a_dir)
            self.ns.touch_dir(txn, parent_a, now, delta if parent_a != parent_b else 0)
            if parent_b != parent_a:
                self.ns.touch_dir(txn, parent_b, now, -delta)

            faults.crash_point("mid-exchange")  # the transaction is not committed yet
            # bucket side
            done: set[int] = set()
            # local sides whose only other copy an op will overwrite or delete
            durable: set[int] = set()
            for x, key_x, y, key_y, copied in pairs:
                self._swap_remote(txn, x.ino, key_x, y.ino, key_y, copied, pending)
                done.update((x.ino, y.ino))
                if copied is not None:
                    durable.add(self.ns.data_of(txn, y if copied == x.ino else x).ino)
            for node, old_key in clashes:  # (their deletes first: nothing waits on them)
                durable.add(self.ns.data_of(txn, node).ino)
                node = self.ns.get_in(txn, node.ino)
                self.ns.mark(txn, node, DIRTY_DATA, pending)
                txn.put(node)
                self._move_remote(txn, node, old_key, None, pending)
                done.add(node.ino)
            for places in (places_a, places_b):
                for node, old_key in places.values():
                    if node.ino not in done:
                        self._move_remote(txn, node, old_key, None, pending)
        if durable:
            # Before any op runs (none can before this returns to the event loop): a
            # host crash must not find the copy or delete done in the bucket and the
            # exchange, or the bytes it relies on, missing here. (A kill -9 loses
            # neither: both are in the page cache.)
            for ino in durable:
                self.cache.fsync(ino)
            self.ns.journal.sync()
        self.ns.notify(pending)

    def _places(self, txn: Txn, top: Inode) -> dict[tuple[tuple[str, ...], bool],
                                                   tuple[Inode, str | None]]:
        """Every name record at or below ``top``, by its place relative to ``top``
        (the names below it, and whether it is a directory: a file's key and a
        directory's never meet), with its object key now."""
        depth = len(self.ns.path_names(txn, top))
        out: dict[tuple[tuple[str, ...], bool], tuple[Inode, str | None]] = {}
        for node in self.ns.subtree(txn, top):
            place = (tuple(self.ns.path_names(txn, node)[depth:]), stat.S_ISDIR(node.mode))
            out[place] = (node, self.ns.object_key(txn, node))
        return out

    def _is_local(self, txn: Txn, rec: Inode) -> bool:
        """Can name record ``rec``'s object be written whole from local state now?"""
        if rec.dirty & DIRTY_DATA:
            return True  # (dirty data is always whole in the cache)
        data = self.ns.data_of(txn, rec)
        if not data.meta_loaded:
            return False
        if stat.S_ISREG(data.mode):
            return data.cached
        if stat.S_ISLNK(data.mode):
            return data.target is not None
        return True  # a FIFO, socket or device: an empty object with attributes

    def _copy_side(self, txn: Txn, x: Inode, key_x: str | None, y: Inode,
                   key_y: str | None) -> int | None:
        """Of a pair (``x`` at ``key_x`` goes to ``key_y``, ``y`` the other way), the
        record whose object moves by a server-side copy, or None: each side is written
        from local state. Raises ``_NeedLocal`` for a side to fetch first."""
        if stat.S_ISDIR(x.mode):
            return None  # markers are rewritten from the journal
        sides = ((x, key_y), (y, key_x))
        copyable = [r for r, new_key in sides
                    if new_key is not None and r.remote_key is not None
                    and not r.dirty & DIRTY_DATA]
        copied: Inode | None = copyable[0] if len(copyable) == 1 else None
        if len(copyable) == 2:
            # two clean objects: the smaller one we hold goes up from local bytes
            by_size = sorted(copyable, key=lambda r: self.ns.data_of(txn, r).size)
            local = next((r for r in by_size if self._is_local(txn, r)), None)
            if local is None:
                raise _NeedLocal(by_size[0].ino)
            copied = y if local is x else x
        for r, new_key in sides:
            if r is not copied and new_key is not None and not self._is_local(txn, r):
                raise _NeedLocal(r.ino)
        return copied.ino if copied is not None else None

    def _swap_remote(self, txn: Txn, x_ino: int, key_x: str | None, y_ino: int,
                     key_y: str | None, copied: int | None, pending: list[int]) -> None:
        """The bucket side of a pair, after the swap in the namespace: ``x`` now has
        ``y``'s old path and key (``key_y``), ``y`` ``x``'s (``key_x``; None: not in
        the bucket, under ``.s3fuse/``). Each takes over the other's object
        (key and ETag), so its next write there is conditioned on the version it
        replaces. ``copied`` (a record, or None) has its own object copied to its new
        key instead; every other side is (re)written from local state."""
        x, y = self.ns.get_in(txn, x_ino), self.ns.get_in(txn, y_ino)
        is_dir = stat.S_ISDIR(x.mode)
        had = {x.ino: x.remote_key is not None, y.ino: y.remote_key is not None}
        old_x = (x.remote_key, x.remote_etag)
        set_remote(x, y.remote_key, y.remote_etag)
        set_remote(y, *old_x)
        if copied is not None:
            c, other = (x, y) if copied == x.ino else (y, x)
            # (after the swap, ``other`` holds the copied side's own object)
            new_key = self.ns.object_key(txn, c)
            txn.append_op(CopyOp(other.remote_key, new_key, other.remote_etag, c.ino))
            set_remote(c, new_key, None)  # the copy gives the ETag
        txn.put(x)
        txn.put(y)
        for ino, old_key in ((x_ino, key_x), (y_ino, key_y)):
            node = self.ns.get_in(txn, ino)
            if self.ns.object_key(txn, node) is None:
                # left the bucket (now under .s3fuse/): its place's object, if any, is
                # the other side's now
                leave_bucket(txn, node)
            elif ino == copied:
                pass
            elif not is_dir:
                self.ns.mark(txn, node, DIRTY_DATA | DIRTY_META, pending)
            elif had[x_ino] or had[y_ino] or old_key is None:
                # its marker, rewritten (or written: it just entered the bucket)
                self.ns.mark(txn, node, DIRTY_META, pending)
            txn.put(node)
