"""``s3fuse fsck``: check a cache directory (journal and cache files) against its
bucket, offline; report what differs and repair what is safe to repair.

``check(journal, cache_dir, store, prefix)`` is the core: synchronous, no FUSE, no
trio, so unit tests run it after every scenario as the invariant check. ``run`` is the
command: it refuses a cache directory a running mount holds (the ``CACHE_DIR/lock``
flock) or one that belongs to another source, and holds that lock itself while it
works, so no mount can start in the middle.

What is checked (``kind`` of each finding; *info* kinds never make the exit non-zero):

Journal, no bucket needed
  ``root``             the root inode is missing or not a directory.
  ``dangling-dirent``  an entry names an inode that does not exist. Repair: remove it.
  ``dirent``           an entry whose parent is missing or not a directory, a second
                       entry for one inode, an entry whose inode records another
                       (parent, name), an entry for an unlinked inode.
  ``unreachable``      a live inode (nlink > 0) that no chain of entries reaches from
                       the root. Never repaired: it may hold data.
  ``unlinked-inode``   (info) nlink 0: kept for a handle open when the daemon stopped;
                       the next mount drops it. Repair: drop it now.
  ``nlink``            a directory's nlink is not 2 + its subdirectories (a file's not
                       1 + its link records). Repair: set it.
  ``link``             a hard link's records disagree: a link record whose inode is
                       missing or does not list it, or an inode listing a record that
                       is missing or belongs to another. Never repaired.
  ``dirty-set``        the ``dirty`` flag and the ``dirty`` sub-database disagree.
                       Repair: a dirty inode joins the set (so it gets uploaded); a
                       clean or missing one leaves it.
  ``dirty-not-cached`` dirty data that is not whole in the cache: nothing to upload.
  ``cache-missing``    a file marked cached has no cache file. Repair when clean:
                       cached=False (read from the bucket). Dirty: its data is lost.
  ``cache-size``       the cache file's length is not the file's size. Repair: clean,
                       drop the cache file; dirty, the cache file is the data and its
                       length wins (as the next mount does).
  ``orphan-cache-file`` a cache file without an inode, or for a non-regular inode.
                       Repair: delete it.
  ``bad-op``           a pending op that is malformed or names a key outside the prefix.
  ``remote-key``       an inode's ``remote_key`` is not the key of its path (the
                       journal's invariant), or an unlinked inode still owns an object.
  ``etag-unknown``     ``remote_key`` without an ETag and no pending copy to produce
                       it. Repair (with the bucket): adopt the bucket's object.
  ``counter``          ``next_ino``/``next_op`` not above every inode / op.
  ``pending-upload``   (info) a dirty inode; the next mount uploads it.
  ``pending-op``       (info) a pending copy or delete; the next mount carries it out.

Journal against the bucket (every exported, reachable inode whose keys no pending op
names; each listed directory is LISTed once, other objects are HEADed)
  ``deleted-outside``  a clean inode's object is gone. Repair (S3 wins): the entry is
                       removed from the journal; a directory that still has entries
                       only loses its marker. A directory with nothing left under its
                       prefix goes too.
  ``changed-outside``  a clean inode's object has another ETag (or the journal knew no
                       object where the bucket has one). Repair (S3 wins): ETag, size
                       and attributes from a HEAD, cache file dropped: the bucket's
                       bytes are read next time.
  ``size``             same ETag, another size. Repair: as ``changed-outside``.
  ``not-uploaded``     a clean, exported inode with local content and no object.
                       Repair: mark it dirty, so the next mount uploads it.
  ``no-data``          a clean file neither cached nor in the bucket. Repair: remove it.
  ``conflict``         a dirty inode whose object changed, vanished or appeared in the
                       bucket since we last saw it (and not by our own interrupted
                       upload): the upload will be refused. Never repaired here:
                       nothing acknowledged may be lost.
  ``new-outside``      (info) an object or prefix in a listed directory that the
                       journal does not know. Repair: mark the directory unlisted, so
                       the next mount lists it again (``ensure_listed`` adds the new
                       names and keeps every existing one); not while pending ops
                       touch that directory.

Repairs are applied at the end, in one journal transaction (then the cache files are
deleted), and only with ``repair=True``; without it the report says what a repair
would do. Key rules are the filesystem's own (``Namespace.object_key``).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable

from . import keys, oplog
from .config import default_cache_dir
from .errors import FsError, StoreError, UsageError
from .fsck_bucket import BucketChecks
from .fsck_findings import (INFO_KINDS, Finding, Report, _clear_dirty, _delete_inode,
                            _mark_dirty, _name_bytes, _set_counter, _set_fields,
                            _unlink_entry)
from .journal import DIRTY_DATA, DIRTY_META, ROOT_INO, Inode, Journal, Txn
from .namespace import Defaults, Namespace
from .store.base import ObjectStore

__all__ = ["INFO_KINDS", "Finding", "Report", "check", "run"]


def check(journal: Journal, cache_dir: str, store: ObjectStore | None = None,
          prefix: str = "", *, repair: bool = False) -> Report:
    """Check ``journal`` and the cache files in ``cache_dir`` (and, given a store,
    the bucket under ``prefix``); with ``repair``, fix what is safe to fix.

    The caller makes sure no mount uses the cache directory. Store calls are made
    synchronously; a ``StoreError`` other than a missing key propagates, before any
    repair is applied.
    """
    checker = _Checker(journal, cache_dir, store, prefix, repair)
    checker.run()
    return checker.report


class _Checker(BucketChecks):
    def __init__(self, journal: Journal, cache_dir: str, store: ObjectStore | None,
                 prefix: str, repair: bool) -> None:
        self.journal = journal
        self.data_dir = os.path.join(cache_dir, "data")
        self.store = store
        self.prefix = prefix
        self.repair = repair
        # the mount's key rules (path_names, object_key): they read the journal and
        # nothing else, so no cache, remote or trio is needed
        self.ns = Namespace(journal, prefix, Defaults(uid=0, gid=0))
        self.report = Report(repair=repair, bucket_checked=store is not None)
        self.instance = (journal.get_meta(b"instance") or b"").decode()
        self._actions: list[Callable[[Txn], None]] = []
        self._unlink_paths: dict[str, None] = {}

    # --- bookkeeping ----------------------------------------------------------------
    def find(self, kind: str, subject: int | str, detail: str, *,
             fix: Callable[[Txn], None] | None = None, files: Iterable[str] = ()) -> None:
        files = list(files)
        fixable = fix is not None or bool(files)
        path = self.path_of.get(subject) if isinstance(subject, int) else None
        self.report.findings.append(Finding(kind, subject, detail,
                                            repaired=self.repair and fixable, path=path))
        if self.repair and fixable:
            if fix is not None:
                self._actions.append(fix)
            for p in files:
                self._unlink_paths[p] = None

    def cache_path(self, ino: int) -> str:
        return os.path.join(self.data_dir, str(ino))

    def run(self) -> None:
        self.path_of: dict[int, str] = {}
        self.load()
        self.check_tree()
        self.check_inodes()
        self.check_cache()
        self.check_ops()
        self.check_remote_keys()
        self.check_counters()
        if self.store is not None:
            self.check_bucket()
        for ino in sorted(self.etag_unknown):
            if self.inodes[ino].dirty:
                self.find("etag-unknown", ino, "remote key without an ETag, and no pending "
                          "copy will produce one: its upload waits for that ETag forever")
            else:
                self.find("etag-unknown", ino, "remote key without an ETag, and no pending "
                          "copy will produce one (check with the bucket to repair)")
        for f in self.report.findings:
            if f.path is None and isinstance(f.subject, int):
                f.path = self.path_of.get(f.subject)
        if self.repair:
            self.apply()

    def load(self) -> None:
        with self.journal.read() as txn:
            self.inodes: dict[int, Inode] = {i.ino: i for i in txn.all_inodes()}
            self.raw_dirents: list[tuple[int, bytes, int]] = list(txn.all_dirents())
            self.dirty_set = set(txn.dirty_inos())
            # as stored: a record that is no operation is reported (check_ops)
            self.ops = list(txn.op_records())
            self.next_ino = txn.get_counter(b"next_ino")
            self.next_op = txn.get_counter(b"next_op")

    def apply(self) -> None:
        if self._actions:
            with self.journal.write() as txn:
                for action in self._actions:
                    action(txn)
            self.journal.sync()
        # after the commit: a crash in between leaves orphan cache files (found by
        # the next fsck), never a "cached" inode without its file
        for p in self._unlink_paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    # --- the tree -------------------------------------------------------------------
    def check_tree(self) -> None:
        inodes = self.inodes
        root = inodes.get(ROOT_INO)
        if root is None or not stat.S_ISDIR(root.mode):
            self.find("root", ROOT_INO, "the root inode is missing or not a directory")
        self.children: dict[int, dict[bytes, int]] = {}
        self.entry_of: dict[int, tuple[int, bytes]] = {}
        for parent, name, child in self.raw_dirents:
            where = f"entry {name!r} of directory {parent}"
            c = inodes.get(child)
            p = inodes.get(parent)
            if c is None:
                self.find("dangling-dirent", child,
                          f"{where} names inode {child}, which does not exist",
                          fix=_unlink_entry(parent, name, child))
                continue
            if p is None or not stat.S_ISDIR(p.mode):
                self.find("dirent", child, f"{where}: that parent is missing or not a "
                                           "directory")
                continue
            # a hard-linked file: each of its names has a record of its own
            rec = self._record_for(c, parent, name)
            if rec.ino in self.entry_of:
                other = self.entry_of[rec.ino]
                self.find("dirent", child, f"{where} and entry {other[1]!r} of directory "
                                           f"{other[0]} both name inode {child}")
                continue
            if rec.parent != parent or _name_bytes(rec.name) != name:
                self.find("dirent", child, f"{where} names inode {child}, whose record "
                                           f"says parent {c.parent}, name {c.name!r}")
            if c.nlink == 0:
                self.find("dirent", child, f"{where} names inode {child}, which is unlinked")
            self.children.setdefault(parent, {})[name] = rec.ino
            self.entry_of[rec.ino] = (parent, name)

        # reachability: each inode has at most one entry, so this walk is a tree walk
        self.reachable: set[int] = set()
        self.dir_order: list[int] = []  # directories, parents before children
        stack = [ROOT_INO] if root is not None and stat.S_ISDIR(root.mode) else []
        while stack:
            ino = stack.pop()
            if ino in self.reachable:
                continue
            self.reachable.add(ino)
            inode = inodes[ino]
            if stat.S_ISDIR(inode.mode):
                self.dir_order.append(ino)
                stack.extend(self.children.get(ino, {}).values())

        self.key_of: dict[int, str | None] = {}
        with self.journal.read() as txn:
            for ino in self.reachable:
                inode = inodes[ino]
                try:
                    self.key_of[ino] = self.ns.object_key(txn, inode)
                    names = self.ns.path_names(txn, inode)
                except FsError:
                    self.key_of[ino] = None
                    continue
                self.path_of[ino] = "/" + "/".join(names)

    def _record_for(self, c: Inode, parent: int, name: bytes) -> Inode:
        """The record of ``c`` for the entry ``name`` of ``parent``: ``c`` itself,
        or the link record holding that name (``c`` when none does)."""
        if c.parent == parent and _name_bytes(c.name) == name:
            return c
        for ino in c.links:
            r = self.inodes.get(ino)
            if r is not None and r.link_of == c.ino and r.parent == parent \
                    and _name_bytes(r.name) == name:
                return r
        return c

    def _data(self, rec: Inode) -> Inode:
        """The inode whose bytes and attributes a name record stands for."""
        return self.inodes.get(rec.link_of, rec) if rec.link_of else rec

    def check_links(self) -> None:
        for ino, inode in sorted(self.inodes.items()):
            if inode.link_of:
                owner = self.inodes.get(inode.link_of)
                if owner is None or ino not in owner.links:
                    self.find("link", ino, f"link record {inode.name!r} of inode "
                                           f"{inode.link_of}, which does not list it")
            for rec in inode.links:
                r = self.inodes.get(rec)
                if r is None or r.link_of != ino:
                    self.find("link", ino, f"lists link record {rec}, which is missing or "
                                           "belongs to another inode")

    def check_inodes(self) -> None:
        self.check_links()
        for ino, inode in sorted(self.inodes.items()):
            if ino == ROOT_INO:
                pass
            elif inode.nlink == 0:
                if ino not in self.entry_of:
                    self.find("unlinked-inode", ino,
                              f"{inode.name!r} is unlinked (it was open when the daemon "
                              "stopped); the next mount drops it",
                              fix=_delete_inode(ino),
                              files=[self.cache_path(ino)])
                continue
            elif ino not in self.reachable:
                self.find("unreachable", ino,
                          f"{inode.name!r} (parent {inode.parent}) is not reachable from "
                          "the root" + (" and has data pending upload" if inode.dirty
                                        else ""))
                continue
            if stat.S_ISDIR(inode.mode):
                want = 2 + sum(1 for c in self.children.get(ino, {}).values()
                               if stat.S_ISDIR(self.inodes[c].mode))
            else:
                want = 1 + len(inode.links)
            if inode.nlink != want:
                self.find("nlink", ino, f"nlink is {inode.nlink}, expected {want}; "
                                        "repair: set it",
                          fix=_set_fields(ino, nlink=want))

        # dirty flag <=> dirty set
        for ino in sorted(self.dirty_set - self.inodes.keys()):
            self.find("dirty-set", ino, "the dirty set names an inode that does not "
                                              "exist; repair: leave the set",
                      fix=_clear_dirty(ino))
        for ino, inode in sorted(self.inodes.items()):
            if inode.dirty and ino not in self.dirty_set and inode.nlink > 0:
                self.find("dirty-set", ino, "marked dirty but missing from the dirty set: "
                                            "it would never be uploaded; repair: add it",
                          fix=_mark_dirty(ino))
            elif not inode.dirty and ino in self.dirty_set:
                self.find("dirty-set", ino, "in the dirty set but not marked dirty; repair: "
                                                 "leave the set",
                          fix=_clear_dirty(ino))
            if inode.dirty and inode.nlink > 0 and ino in self.reachable:
                what = []
                if inode.dirty & DIRTY_DATA:
                    what.append("data")
                if inode.dirty & DIRTY_META:
                    what.append("attributes")
                self.find("pending-upload", ino, f"{' and '.join(what) or 'changes'} not "
                                                 "uploaded yet; the next mount uploads it")

    def check_cache(self) -> None:
        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            names = []
        for name in sorted(names):
            if not name.isdigit():
                continue
            ino = int(name)
            inode = self.inodes.get(ino)
            if inode is None:
                self.find("orphan-cache-file", f"data/{name}",
                          "cache file of no inode; repair: delete it",
                          files=[self.cache_path(ino)])
            elif not stat.S_ISREG(inode.mode):
                self.find("orphan-cache-file", f"data/{name}",
                          f"cache file of inode {ino}, which is not a regular file; "
                          "repair: delete it",
                          files=[self.cache_path(ino)])
        for ino, inode in sorted(self.inodes.items()):
            if not stat.S_ISREG(inode.mode) or inode.nlink == 0 or inode.link_of:
                continue  # (a link record's bytes are its inode's cache file)
            dirty_data = bool(inode.dirty & DIRTY_DATA)
            if dirty_data and not inode.cached:
                self.find("dirty-not-cached", ino, "data marked dirty is not whole in the "
                                                   "cache: there is nothing to upload")
            if not inode.cached:
                continue
            try:
                size = os.stat(self.cache_path(ino)).st_size
            except FileNotFoundError:
                if dirty_data:
                    self.find("cache-missing", ino, "the cache file of data pending upload "
                                                    "is missing: that data is lost")
                else:
                    self.find("cache-missing", ino, "marked cached but has no cache file; "
                                                    "repair: read the bucket",
                              fix=_set_fields(ino, cached=False))
                continue
            if size == inode.size:
                continue
            if dirty_data:
                self.find("cache-size", ino, f"cache file is {size} bytes, the journal says "
                                             f"{inode.size}; repair: the cache file is the "
                                             "data, its length wins",
                          fix=_set_fields(ino, size=size))
            else:
                self.find("cache-size", ino, f"cache file is {size} bytes, the journal says "
                                             f"{inode.size}; repair: drop it, read the bucket",
                          fix=_set_fields(ino, cached=False), files=[self.cache_path(ino)])

    def check_ops(self) -> None:
        self.op_keys: set[str] = set()
        self.copy_dsts: set[str] = set()
        for seq, rec in self.ops:
            try:
                op = oplog.parse(rec)
            except oplog.BadOp:
                self.find("bad-op", f"op {seq}", f"unknown operation {rec!r}")
                continue
            bad = [k for k in op.keys if not self._valid_key(k)]
            if bad:
                self.find("bad-op", f"op {seq}", f"{op.kind} names keys that cannot be "
                                                 f"ours: {bad!r}")
                continue
            self.op_keys.update(op.keys)
            if isinstance(op, oplog.CopyOp):
                self.copy_dsts.add(op.dst)
                self.find("pending-op", op.dst, f"copy from {op.src} pending; the next "
                                                "mount carries it out")
            else:
                self.find("pending-op", op.key, "delete pending; the next mount carries it "
                                                "out")

    def _valid_key(self, key: object) -> bool:
        if not isinstance(key, str) or not key.startswith(self.prefix):
            return False
        rel = key[len(self.prefix):]
        rel = rel[:-1] if rel.endswith("/") else rel
        return bool(rel) and all(keys.name_from_segment(s) is not None
                                 for s in rel.split("/"))

    def check_remote_keys(self) -> None:
        """The journal's invariant: a live inode's remote_key is its path's key."""
        self.etag_unknown: set[int] = set()
        for ino, inode in sorted(self.inodes.items()):
            r = inode.remote_key
            if r is None or ino == ROOT_INO:
                continue
            if inode.nlink == 0:
                self.find("remote-key", ino, f"unlinked inode {inode.name!r} still owns "
                                             f"object {r!r}: nothing will delete it")
                continue
            if ino not in self.reachable:
                continue
            k = self.key_of.get(ino)
            if r != k:
                pending = " (a pending op names it)" if r in self.op_keys else ""
                self.find("remote-key", ino, f"remote key {r!r} is not the key of its path "
                                             f"{k!r}{pending}")
            elif inode.remote_etag is None and r not in self.copy_dsts:
                self.etag_unknown.add(ino)

    def check_counters(self) -> None:
        top_ino = max(self.inodes, default=ROOT_INO)
        nxt = self.next_ino if self.next_ino is not None else ROOT_INO + 1
        if nxt <= top_ino:
            self.find("counter", "next_ino", f"next_ino is {nxt}, but inode {top_ino} exists",
                      fix=_set_counter(b"next_ino", top_ino + 1))
        top_op = max((seq for seq, _ in self.ops), default=0)
        nxt = self.next_op if self.next_op is not None else 1
        if nxt <= top_op:
            self.find("counter", "next_op", f"next_op is {nxt}, but op {top_op} is pending",
                      fix=_set_counter(b"next_op", top_op + 1))


# --- the command ------------------------------------------------------------------------

def run(source: str, *, cache_dir: str | None, endpoint_url: str | None = None,
        region: str | None = None, repair: bool = False, as_json: bool = False) -> int:
    """``s3fuse fsck``: 0 clean (or all repaired), 1 problems remain. Raises UsageError
    (exit 2) when it cannot check: no journal, cache directory in use by a mount,
    another source, unreachable bucket."""
    from .cachelock import CacheLock
    from .forkstore import wrap_if_forking
    from .store import open_store

    cache_dir = os.path.abspath(cache_dir or default_cache_dir(source, endpoint_url))
    journal_dir = os.path.join(cache_dir, "journal")
    if not os.path.isfile(os.path.join(journal_dir, "data.mdb")):
        raise UsageError(f"no s3fuse journal in {cache_dir} (nothing was mounted with "
                         "this cache directory)")
    store, prefix = open_store(source, endpoint_url=endpoint_url, region=region)
    try:
        try:
            lock = CacheLock(cache_dir)
        except UsageError as exc:
            raise UsageError(f"{exc}; fsck works offline: unmount it first") from None
        except OSError as exc:
            raise UsageError(f"cannot lock {cache_dir}: {exc.strerror}") from None
        try:
            try:
                journal = Journal(journal_dir)
            except Exception as exc:  # lmdb's errors, a format this version cannot read
                raise UsageError(f"cannot open the journal in {cache_dir}: {exc}") from None
            try:
                ident = f"{source} {endpoint_url or ''}".strip()
                known = (journal.get_meta(b"source") or b"").decode()
                if not known:
                    raise UsageError(f"the journal in {cache_dir} records no source; "
                                     "mount it once first")
                if known != ident:
                    raise UsageError(f"cache directory {cache_dir} belongs to {known!r}, "
                                     f"not {ident!r}")
                try:
                    store.check()
                    store = wrap_if_forking(store, prefix, source, endpoint_url=endpoint_url,
                                            region=region)  # a fork's DEST, as mounted
                    report = check(journal, cache_dir, store, prefix, repair=repair)
                except StoreError as exc:
                    raise UsageError(f"could not read the bucket: {exc}") from None
            finally:
                journal.close()
        finally:
            lock.release()
    finally:
        store.close()
    if as_json:
        print(json.dumps({"source": source, "cache_dir": cache_dir, **report.as_dict()},
                         indent=2, sort_keys=True))
    else:
        print(f"s3fuse fsck {source} (cache {cache_dir})")
        for f in report.findings:
            print(f"  {f}")
        print(f"s3fuse fsck: {report.summary()}")
    return 0 if report.clean else 1
