"""The metadata journal: the only module that imports lmdb.

Everything the mount knows that the bucket may not know yet lives here, so that a
crash or ``kill -9`` loses nothing that was acknowledged. One LMDB environment in
``CACHE_DIR/journal/`` with these sub-databases (integers are 8-byte big-endian so
that keys sort numerically):

``inodes``   ino -> Inode record (compact JSON, see ``Inode``). Every inode the mount
             knows: directories, files, symlinks, special files, including files that
             are unlinked but still open (nlink 0) until their last handle and
             lookup go away; and the link records of a hard-linked file's further
             names (see ``Inode``).
``dirents``  parent_ino + name bytes -> child ino. A range scan over one parent gives
             that directory's entries in name order (readdir offsets are positions in
             that order, resumed by name so concurrent changes skip nothing).
``dirty``    ino -> b"". The set of inodes whose data or attributes differ from the
             bucket; the flusher's work list, rebuilt into its schedule at start.
``ops``      seq -> bucket operation (JSON), the ordered log of server-side work that
             renames and unlinks of already-uploaded objects leave behind: ``copy``
             (src -> dst, pinned to the source ETag) and ``delete`` (key, ETag). The
             flusher starts them in order, each once no earlier pending op names any
             of its keys (so ops on one key run in order); an upload of a key waits
             while any pending op names that key. ``Journal.ops_index`` counts the
             keys they name, in memory.
``meta``     counters: ``next_ino``, ``next_op``, ``format`` (layout version),
             ``source`` and ``instance`` (which bucket, and this journal's id in the
             ``s3fuse-seq`` tag of every upload), ``conflicts`` (JSON list of the
             most recent conflicts: path, lost+found name, time, reason),
             ``probe`` (the server's capabilities as last probed, with the bucket's
             versioning state then: ``capcache``, written only by the daemon).

Invariant kept by every write transaction: once the pending ``ops`` are carried out,
each live inode's (and link record's) ``remote_key`` equals the key of its path (or is
None), so an upload never needs to know about history, only about the inode's current path.

The environment is opened without a sync per commit (``sync=False``): a daemon crash
(kill -9) loses nothing because committed pages are in the OS page cache; ``sync()``
forces them to disk, and ``fsync(2)`` on the mount, the periodic checkpoint and
unmount call it. A host crash can lose changes made since the last ``sync()``.

Disk space: ``RESERVE_BYTES`` beyond the journal's last page are kept allocated in
its file (``posix_fallocate``), so commits still find room when cache files have
filled the disk; above all the unlink that frees the space.

*Deferred records* (``Journal.defer``): a write to a file whose record already says
DIRTY_DATA changes only its size, times and change sequence. Such a record is kept in
memory and written by the next write transaction, by ``sync()``, or after at most
``Journal.DEFER_S`` seconds, instead of a commit per ``write(2)``. Every read sees it.
A crash can lose it, and loses nothing the user needs: the record on disk is still
dirty (so the file is uploaded again), replay takes the size from the cache file's
length, and the flusher writes deferred records before an upload, so no object in
the bucket carries a change sequence the journal has not committed.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import lmdb

from . import oplog
from .oplog import Op

FORMAT_VERSION = 1
ROOT_INO = 1

# Inode.dirty flags
DIRTY_DATA = 1  # the bytes differ from the bucket: upload the whole object
DIRTY_META = 2  # only attributes/xattrs differ: rewrite metadata (server-side copy)

_U64 = struct.Struct(">Q")


def _k(n: int) -> bytes:
    return _U64.pack(n)


@dataclass
class Inode:
    """One inode as stored in the ``inodes`` sub-database.

    ``remote_key``/``remote_etag``: the object in the bucket that holds this inode's
    last uploaded state (for a directory, its ``dir/`` marker), or None if there is
    none. ``remote_etag`` is None while a pending copy op will produce it.
    ``cached``: the whole content is in the cache file (always true for dirty data).
    ``meta_loaded``: attributes were read from the object's headers (HEAD), or the
    inode was made here; False for entries known only from a listing.
    ``listed``: for directories, the bucket prefix has been listed into ``dirents``.
    ``change_seq``: bumped on every change; the flusher clears ``dirty`` only if the
    record still has the sequence number its upload snapshot was taken at.
    ``extra``: user metadata other tools put on the object, kept on rewrite.

    **One version** (the invariant that keeps outside changes from being overwritten):
    a regular file's cached bytes and its ``remote_etag`` belong to the same version.
    The bytes are that version's, plus the local changes made since (then DIRTY_DATA,
    and always ``cached``: dirty bytes are never partly remote), and an upload's
    ``If-Match`` names exactly ``remote_etag``. So whatever changes ``remote_etag``
    to another version of the object drops the cached bytes in the same step
    (``reconcile.Reconciler`` for what the bucket did; an upload or copy commit for
    what the mount did), and the bytes a write lands on are checked whole, with no
    ``await`` between that check and the write (``Filesystem.write``). Fetched bytes
    enter the cache only while it is still the generation they were fetched for.

    Hard links: the inode the kernel sees (the *data record*) holds the data, the
    attributes and its first name (``parent``/``name``/``remote_*``/``dirty``). Each
    further name is a *link record*: an inode number of its own that the kernel never
    sees, with ``link_of`` = the data record, its own ``parent``/``name``, and the
    ``remote_*``/``dirty``/``change_seq`` of its own object. The data record lists its
    link records in ``links``; its ``nlink`` is 1 + len(links). ``dirents`` map every
    name to the data record. The flusher uploads each record's object from the data
    record's bytes and attributes, so every name's object holds the same.
    """

    ino: int
    mode: int
    uid: int
    gid: int
    parent: int
    name: str
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    rdev: int = 0
    target: str | None = None
    xattrs: dict[str, str] = field(default_factory=dict)  # name -> base64 value
    extra: dict[str, str] = field(default_factory=dict)
    remote_key: str | None = None
    remote_etag: str | None = None
    dirty: int = 0
    cached: bool = False
    meta_loaded: bool = True
    listed: bool = False
    change_seq: int = 0
    links: list[int] = field(default_factory=list)
    link_of: int = 0

    def encode(self) -> bytes:
        # keep records small: drop fields at their defaults (and skip asdict's deep
        # copy: this runs on every journal write)
        d = {k: v for k, v in self.__dict__.items() if _DEFAULTS.get(k, _MISSING) != v}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Inode:
        return cls(**json.loads(raw))


_MISSING = object()
_DEFAULTS: dict[str, Any] = {
    "size": 0, "atime_ns": 0, "mtime_ns": 0, "ctime_ns": 0, "nlink": 1, "rdev": 0,
    "target": None, "xattrs": {}, "extra": {}, "remote_key": None, "remote_etag": None,
    "dirty": 0, "cached": False, "meta_loaded": True, "listed": False, "change_seq": 0,
    "links": [], "link_of": 0,
}


class _Decoded:
    """Decoded ``Inode`` records by their stored bytes, so that the same record read
    again (every FUSE request reads a few, a path walk reads each ancestor) costs a
    dict lookup and a copy instead of a JSON decode. Keyed by the bytes themselves,
    so a changed record can never be served stale; bounded (emptied when full).
    Callers always get their own copy: they mutate it before ``put``."""

    LIMIT = 8192

    def __init__(self) -> None:
        self._by_raw: dict[bytes, Inode] = {}

    def _keep(self, raw: bytes, inode: Inode) -> None:
        if len(self._by_raw) >= self.LIMIT:
            self._by_raw.clear()  # cheaper than evicting one by one; refills at once
        self._by_raw[raw] = inode

    def peek(self, raw: bytes) -> Inode:
        """The shared decoded record: never to be changed."""
        kept = self._by_raw.get(raw)
        if kept is None:
            kept = Inode.decode(raw)
            self._keep(raw, kept)
        return kept

    def get(self, raw: bytes) -> Inode:
        return _copy(self.peek(raw))

    def encode(self, inode: Inode) -> bytes:
        """``inode``'s record; ``inode`` is kept as its decoded form, so the caller
        must not change it afterwards."""
        raw = inode.encode()
        self._keep(raw, inode)
        return raw


def _copy(inode: Inode) -> Inode:
    """A copy that shares nothing mutable with ``inode``: the fields made by a
    ``default_factory`` (dicts, lists of strings) are copied one level."""
    new = object.__new__(Inode)
    d = new.__dict__
    d.update(inode.__dict__)
    for name in _MUTABLE_FIELDS:
        d[name] = d[name].copy()
    return new


_MUTABLE_FIELDS = tuple(f.name for f in fields(Inode)
                        if f.default_factory is not MISSING)  # type: ignore[misc]


class Txn:
    """A journal transaction with typed helpers. Use via ``Journal.write()/read()``.

    Inode records ``put`` in a write transaction are kept decoded and written once,
    when the transaction commits (``flush``): a namespace change puts the same
    inode (its parent, the moved inode) several times, and encoding is the costly
    part. ``get`` sees them, so the transaction reads its own writes as before."""

    def __init__(self, journal: Journal, txn: lmdb.Transaction, write: bool = False) -> None:
        self._j = journal
        self.txn = txn
        self._write = write
        # this transaction's changes to the journal's op index, applied at commit
        self.op_delta = _OpIndex()
        self._unwritten: dict[int, Inode] = {}
        self._deleted: set[int] = set()  # (so a deferred record of one is not seen)

    def flush(self) -> None:
        """Write the inodes put so far, and the journal's deferred records (before
        commit, and before a raw scan)."""
        deferred = self._j.deferred if self._write else None
        if not self._unwritten and not deferred:
            return
        encode, db = self._j.decoded.encode, self._j.db_inodes
        if deferred:
            for ino, inode in deferred.items():
                if ino not in self._unwritten and ino not in self._deleted:
                    self.txn.put(_k(ino), encode(inode), db=db)
        for ino, inode in self._unwritten.items():
            self.txn.put(_k(ino), encode(inode), db=db)
        self._unwritten.clear()

    # --- inodes -------------------------------------------------------------------
    def get(self, ino: int) -> Inode | None:
        inode = self.peek(ino)
        return _copy(inode) if inode is not None else None

    def peek(self, ino: int) -> Inode | None:
        """Like ``get`` but without the copy: the caller must not change the result
        (for hot read-only paths: walking up a path, checking a flag)."""
        inode = self._unwritten.get(ino)
        if inode is not None:
            return inode
        if self._j.deferred and ino not in self._deleted:
            inode = self._j.deferred.get(ino)
            if inode is not None:
                return inode
        raw = self.txn.get(_k(ino), db=self._j.db_inodes)
        return self._j.decoded.peek(raw) if raw is not None else None

    def put(self, inode: Inode) -> None:
        # a copy: what the caller changes after put is not written, as before
        self._unwritten[inode.ino] = _copy(inode)

    def delete_inode(self, ino: int) -> None:
        self._unwritten.pop(ino, None)
        self._deleted.add(ino)
        self.txn.delete(_k(ino), db=self._j.db_inodes)
        self.txn.delete(_k(ino), db=self._j.db_dirty)

    def new_ino(self) -> int:
        raw = self.txn.get(b"next_ino", db=self._j.db_meta)
        ino = _U64.unpack(raw)[0] if raw else ROOT_INO + 1
        self.txn.put(b"next_ino", _k(ino + 1), db=self._j.db_meta)
        return ino

    def all_inodes(self) -> Iterator[Inode]:
        self.flush()
        deferred = {} if self._write else self._j.deferred
        with self.txn.cursor(db=self._j.db_inodes) as cur:
            for key, raw in cur:
                d = deferred.get(_U64.unpack(key)[0])
                yield _copy(d) if d is not None else Inode.decode(raw)

    def get_meta(self, key: bytes) -> bytes | None:
        return self.txn.get(key, db=self._j.db_meta)

    def put_meta(self, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self._j.db_meta)

    def get_counter(self, key: bytes) -> int | None:
        """A counter of ``meta`` (``next_ino``, ``next_op``); None if it is not set."""
        raw = self.txn.get(key, db=self._j.db_meta)
        return _U64.unpack(raw)[0] if raw is not None else None

    def set_counter(self, key: bytes, value: int) -> None:
        """Set a counter of ``meta`` (fsck's repair of one that fell behind)."""
        self.txn.put(key, _k(value), db=self._j.db_meta)

    # --- directory entries --------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> int | None:
        raw = self.txn.get(_k(parent) + name, db=self._j.db_dirents)
        return _U64.unpack(raw)[0] if raw is not None else None

    def link(self, parent: int, name: bytes, ino: int) -> None:
        self.txn.put(_k(parent) + name, _k(ino), db=self._j.db_dirents)

    def unlink(self, parent: int, name: bytes) -> None:
        self.txn.delete(_k(parent) + name, db=self._j.db_dirents)

    def all_dirents(self) -> Iterator[tuple[int, bytes, int]]:
        """Every directory entry as (parent, name, child), whether or not its parent or
        child exists (fsck checks that)."""
        with self.txn.cursor(db=self._j.db_dirents) as cur:
            for k, v in cur:
                yield _U64.unpack(k[:8])[0], bytes(k[8:]), _U64.unpack(v)[0]

    def children(self, parent: int, after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """Entries of ``parent`` in name order, strictly after ``after`` if given."""
        prefix = _k(parent)
        with self.txn.cursor(db=self._j.db_dirents) as cur:
            start = prefix + after if after is not None else prefix
            if not cur.set_range(start):
                return
            for key, raw in cur:
                if not key.startswith(prefix):
                    return
                name = key[8:]
                if after is not None and name == after:
                    continue
                yield name, _U64.unpack(raw)[0]

    def has_children(self, parent: int) -> bool:
        return next(self.children(parent), None) is not None

    # --- dirty set ----------------------------------------------------------------
    def mark_dirty(self, ino: int) -> None:
        self.txn.put(_k(ino), b"", db=self._j.db_dirty)

    def clear_dirty(self, ino: int) -> None:
        self.txn.delete(_k(ino), db=self._j.db_dirty)

    def dirty_inos(self) -> list[int]:
        with self.txn.cursor(db=self._j.db_dirty) as cur:
            return [_U64.unpack(k)[0] for k, _ in cur]

    # --- op log -------------------------------------------------------------------
    def append_op(self, op: Op) -> int:
        """Queue ``op`` after every pending op; returns its sequence number."""
        raw = self.txn.get(b"next_op", db=self._j.db_meta)
        seq = _U64.unpack(raw)[0] if raw else 1
        self.txn.put(b"next_op", _k(seq + 1), db=self._j.db_meta)
        self._put_op(seq, op)
        self.op_delta.add(op, 1)
        return seq

    def _put_op(self, seq: int, op: Op) -> None:
        self.txn.put(_k(seq), json.dumps(oplog.record(op), separators=(",", ":")).encode(),
                     db=self._j.db_ops)

    def ops(self) -> list[tuple[int, Op]]:
        """Every pending op, in order."""
        return list(self.ops_from())

    def ops_from(self, after: int = 0) -> Iterator[tuple[int, Op]]:
        """Pending ops in order, from the first one after ``after``, decoded lazily (a
        caller that stops early reads only what it looked at). ``oplog.BadOp`` for a
        record that is no operation (``fsck`` reports those: ``op_records``)."""
        for seq, rec in self.op_records(after):
            yield seq, oplog.parse(rec)

    def op_records(self, after: int = 0) -> Iterator[tuple[int, Any]]:
        """The op log's records as stored (decoded JSON, not checked), in order."""
        with self.txn.cursor(db=self._j.db_ops) as cur:
            if not cur.set_range(_k(after + 1)):
                return
            for k, v in cur:
                yield _U64.unpack(k)[0], json.loads(v)

    def remove_op(self, seq: int) -> None:
        raw = self.txn.get(_k(seq), db=self._j.db_ops)
        if raw is not None:
            try:
                self.op_delta.add(oplog.parse(json.loads(raw)), -1)
            except oplog.BadOp:
                pass  # (never counted: see ``Journal.__init__``)
            self.txn.delete(_k(seq), db=self._j.db_ops)

    def retarget_ops(self, old_ino: int, new_ino: int) -> None:
        """Pending copies made for inode ``old_ino`` are now ``new_ino``'s (a hard
        link's record handed its name to its inode): where its bytes are until they
        run, and whose ETag they produce."""
        if self._j.ops_index.copy_inos.get(old_ino, 0) \
                + self.op_delta.copy_inos.get(old_ino, 0) <= 0:
            return
        for seq, op in list(self.ops_from()):
            if op.ino == old_ino:
                self.remove_op(seq)
                op = oplog.with_ino(op, new_ino)
                self._put_op(seq, op)
                self.op_delta.add(op, 1)

    def repin_copies(self, src: str, old_etag: str, new_etag: str) -> None:
        """Pending copies from ``src`` pinned to ``old_etag`` are pinned to ``new_etag``
        (our own metadata rewrite of that object changed its ETag, not its bytes)."""
        if self._j.ops_index.keys.get(src, 0) + self.op_delta.keys.get(src, 0) <= 0:
            return
        for seq, op in list(self.ops_from()):
            if isinstance(op, oplog.CopyOp) and op.src == src and op.etag == old_etag:
                self._put_op(seq, oplog.with_etag(op, new_etag))

    # the op index (see ``Journal``): this transaction's view, its own changes included
    def op_names(self, key: str) -> bool:
        """Some pending op names ``key`` (as source, target, or key to delete)."""
        return self._j.ops_index.keys.get(key, 0) + self.op_delta.keys.get(key, 0) > 0

    def copy_pending_to(self, key: str) -> bool:
        """A server-side copy to ``key`` is still queued in the op log."""
        return self._j.ops_index.copy_dsts.get(key, 0) \
            + self.op_delta.copy_dsts.get(key, 0) > 0


class _OpIndex:
    """Counts over the op log: how many pending ops name each key, copy to each key,
    and copy the bytes of each inode; and how many ops there are."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.copy_dsts: dict[str, int] = {}
        self.copy_inos: dict[int, int] = {}
        self.count = 0

    def add(self, op: Op, n: int) -> None:
        self.count += n
        if isinstance(op, oplog.CopyOp):
            _bump(self.copy_dsts, op.dst, n)
            _bump(self.copy_inos, op.ino or None, n)
        for key in op.keys:
            _bump(self.keys, key, n)

    def merge(self, other: _OpIndex) -> None:
        self.count += other.count
        for mine, theirs in ((self.keys, other.keys), (self.copy_dsts, other.copy_dsts),
                             (self.copy_inos, other.copy_inos)):
            for k, n in theirs.items():
                _bump(mine, k, n)


def _bump(counts: dict, key: Any, n: int) -> None:
    if key is None:
        return
    left = counts.get(key, 0) + n
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)


class Journal:
    """The LMDB environment. All calls happen on the daemon's event-loop thread;
    a write transaction never spans an ``await``, which is what makes every
    namespace change (rename of a whole directory included) atomic.

    ``ops_index`` counts what the committed op log names (built once at open, kept up
    to date at each commit from the transaction's own counts), so "does a pending op
    name this key?" costs a dict look-up instead of a read of the whole log."""

    #: disk space kept allocated ahead of the last page (see the module's docstring)
    RESERVE_BYTES = 8 << 20

    def __init__(self, path: str, map_size: int = 1 << 36) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.env = lmdb.open(path, map_size=map_size, max_dbs=8, sync=False,
                             metasync=False, subdir=True, mode=0o600)
        self.db_inodes = self.env.open_db(b"inodes")
        self.db_dirents = self.env.open_db(b"dirents")
        self.db_dirty = self.env.open_db(b"dirty")
        self.db_ops = self.env.open_db(b"ops")
        self.db_meta = self.env.open_db(b"meta")
        self.decoded = _Decoded()
        with self.env.begin(write=True) as txn:
            fmt = txn.get(b"format", db=self.db_meta)
            if fmt is None:
                txn.put(b"format", str(FORMAT_VERSION).encode(), db=self.db_meta)
            elif int(fmt) != FORMAT_VERSION:
                raise RuntimeError(f"journal {path} has format {int(fmt)}, "
                                   f"this s3fuse reads {FORMAT_VERSION}")
        self._data_file = os.path.join(path, "data.mdb")
        self._page = self.env.stat()["psize"]
        self._allocated = 0
        self._reserve()
        self.ops_index = _OpIndex()
        self.unsynced = True  # a write transaction committed since the last sync
        # ino -> record not yet written (see "Deferred records" above)
        self.deferred: dict[int, Inode] = {}
        self._deferred_since = 0.0
        with self.read() as txn:
            for _, rec in txn.op_records():
                try:
                    self.ops_index.add(oplog.parse(rec), 1)
                except oplog.BadOp:
                    pass  # (fsck reports it; the flusher stops at it)

    def pending_op_keys(self) -> set[str]:
        """Every key a committed pending op names."""
        return set(self.ops_index.keys)

    def write(self) -> _TxnContext:
        return _TxnContext(self, write=True)

    def read(self) -> _TxnContext:
        return _TxnContext(self, write=False)

    def get_meta(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self.db_meta)

    def set_meta(self, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, value, db=self.db_meta)
        self.unsynced = True

    def _reserve(self) -> None:
        """Keep ``RESERVE_BYTES`` allocated past the last page (after each commit;
        a full disk just leaves the reserve as it is)."""
        used = (self.env.info()["last_pgno"] + 1) * self._page
        if used + self.RESERVE_BYTES // 2 <= self._allocated:
            return
        try:
            fd = os.open(self._data_file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.posix_fallocate(fd, 0, used + self.RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            return
        self._allocated = used + self.RESERVE_BYTES

    #: the longest a deferred record waits for its write
    DEFER_S = 1.0

    def defer(self, inode: Inode) -> None:
        """Put ``inode`` without a transaction of its own: it is written with the next
        one (see "Deferred records" above). Only for a record whose version on disk
        already has DIRTY_DATA and which differs from it by size, times and change
        sequence only. ``inode`` is kept: the caller must not change it afterwards.
        Never call this inside a transaction."""
        now = time.monotonic()
        if not self.deferred:
            self._deferred_since = now
        self.deferred[inode.ino] = inode
        if now - self._deferred_since >= self.DEFER_S:
            self.persist()

    def persist(self) -> None:
        """Write the deferred records now (one transaction)."""
        if self.deferred:
            with self.write():
                pass  # (the commit writes them)

    def sync(self) -> None:
        """Force every committed transaction, and the deferred records, to disk
        (nothing to do when nothing changed since the last sync)."""
        self.persist()
        if self.unsynced:
            self.unsynced = False
            self.env.sync(True)

    def close(self) -> None:
        self.persist()
        self.env.sync(True)
        self.env.close()


class _TxnContext:
    def __init__(self, journal: Journal, write: bool) -> None:
        self._journal = journal
        self._write = write

    def __enter__(self) -> Txn:
        self._lmdb = self._journal.env.begin(write=self._write)
        self._txn = Txn(self._journal, self._lmdb, self._write)
        return self._txn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._lmdb.abort()
            return
        try:
            self._txn.flush()
            self._lmdb.commit()
        except BaseException as err:
            self._lmdb.abort()  # (a no-op once a failed commit has ended it)
            if isinstance(err, lmdb.DiskError):
                # the cache disk is full: the request answers ENOSPC, not EIO
                raise OSError(errno.ENOSPC, f"journal commit failed: {err}") from err
            raise
        if self._write:
            self._journal.unsynced = True
            self._journal.deferred.clear()  # (the commit wrote them, or newer versions)
            self._journal._reserve()
        self._journal.ops_index.merge(self._txn.op_delta)  # (a no-op when untouched)
