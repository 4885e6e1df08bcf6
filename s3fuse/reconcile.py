"""The S3-wins policy: the one place that decides, and carries out, what the mount does
when it learns what the bucket holds for one of its inodes (docs/SEMANTICS.md, "Outside writers").

Everything that looks at the bucket reports what it saw here and nowhere else: the
poller (a re-listing), close-to-open (``Filesystem.revalidate``), lazy attribute
loads, the fetcher (a version that vanished while its bytes were read), and the
flusher (an upload the server refused, a server that ignores conditions, our own
upload found again after a crash). fsck uses ``decide`` and ``own_upload`` for its
offline verdicts. A change to the policy is a change to this file.

=====================  ==============================  ============================
mount's file           bucket's object                 decision
=====================  ==============================  ============================
clean, ETag E          still E                         KEEP
clean, ETag E          changed to F                    REFRESH: show F, drop cache
clean, ETag E          gone                            REMOVE the entry
dirty, ETag E          still E (or never uploaded,     KEEP: our upload goes ahead
                       and still absent)
dirty, ETag E          changed to F                    CONFLICT: ours to lost+found,
                                                       F takes the path
dirty, ETag E          gone                            CONFLICT_GONE: ours to
                                                       lost+found, the path goes
dirty, never uploaded  someone created it              CONFLICT: as above
=====================  ==============================  ============================

A file whose object is about to be written by a pending rename copy (no ETag yet) is
never judged: the bucket cannot agree with it until the op log has run.

Two rules make this hold under concurrency (the poller, close-to-open checks, fetches
and uploads all run at once, and each awaits the bucket between looking at an inode
and acting on it):

* **Observations are dated.** Each caller passes ``seen_at``: a ``Stamp`` taken just
  before the request whose answer it reports was sent. ``known_at[ino]`` is the
  stamp of the newest bucket fact the inode's record reflects (an upload or copy
  that committed, an earlier observation applied). An observation older than that
  is stale and changes nothing: a HEAD that was in flight while our own upload
  committed must not bring the older version back. A stamp is (a ticket that only
  grows, the trio clock): the ticket orders events exactly, also on a mock clock
  where no time passes between them; the clock serves the TTLs.
* **Every judgement is made again inside the transaction that acts on it**, on the
  inode as it is then (it may have become dirty, moved, or been refreshed already).

Open files: a process that has a file open keeps the version it opened when the
bucket replaces or deletes it, as with an atomic replace on a local disk. What it
writes afterwards is kept in lost+found at its last close (``keep_replaced``); what
it reads and was never cached answers ESTALE (a read never mixes two versions). Two
exceptions: a file open for writing and not whole in the cache has no old version to
write on, and a file of which nothing is cached has no old version anyone can have
read: these are refreshed in place, and their handles go on with the bucket's
version (a write lands on top of it).
"""

from __future__ import annotations

import enum
import json
import logging
import stat
import time
from typing import TYPE_CHECKING

import trio
import xxhash

from . import keys
from .errors import ConditionMismatch
from .journal import ROOT_INO, Inode, Txn
from .namespace import leave_bucket, set_remote, unmark
from .store.base import ObjectInfo

if TYPE_CHECKING:
    from .filesystem import Filesystem

log = logging.getLogger(__name__)

#: the user metadata that tags every upload: ``<journal id>:<ino>:<change_seq>``
SEQ_META = "s3fuse-seq"

#: when an observation was made: (ticket, trio clock); see "Observations are dated"
Stamp = tuple[int, float]
_NEVER: Stamp = (0, 0.0)


class Decision(enum.Enum):
    KEEP = "keep"
    REFRESH = "refresh"
    REMOVE = "remove"
    CONFLICT = "conflict"
    CONFLICT_GONE = "conflict-gone"


def decide(*, dirty: bool, known_etag: str | None, uploaded: bool,
           bucket_etag: str | None) -> Decision:
    """The table above, as a pure function. ``uploaded``: the mount has (or
    inherited) an object at this key, whose ETag is ``known_etag``. ``bucket_etag``:
    what the bucket holds now (None: nothing)."""
    if not uploaded:
        if bucket_etag is None:
            return Decision.KEEP
        return Decision.CONFLICT if dirty else Decision.REFRESH
    if known_etag is None:
        return Decision.KEEP  # a pending copy will produce it
    if bucket_etag == known_etag:
        return Decision.KEEP
    if bucket_etag is None:
        return Decision.CONFLICT_GONE if dirty else Decision.REMOVE
    return Decision.CONFLICT if dirty else Decision.REFRESH


def own_upload(info: ObjectInfo | None, instance: str, ino: int,
               seq: int) -> tuple[str, int] | None:
    """Is the object an upload of inode ``ino`` by the journal ``instance``, of change
    ``seq`` or an earlier one (a PUT that landed before a crash, or whose reply was
    lost)? Its (ETag, change sequence) if so: the mount adopts it instead of
    treating it as someone else's change."""
    if info is None or not instance:
        return None
    tag = (info.metadata or {}).get(SEQ_META, "")
    tag_instance, _, rest = tag.partition(":")
    tag_ino, _, tag_seq = rest.partition(":")
    if tag_instance != instance or tag_ino != str(ino) or not tag_seq.isdigit():
        return None
    if int(tag_seq) > seq:
        return None
    return info.etag, int(tag_seq)


class Reconciler:
    """Carries out the policy on one mount's journal. State it owns:

    ``known_at``: ino -> ``Stamp`` of the newest bucket fact the inode's
    ``remote_etag`` reflects (see the module docstring); also when close-to-open
    last checked it. Only ``note_bucket_state`` and ``apply`` move it.
    ``conflicts``: the most recent conflicts (also in the journal's ``conflicts``
    meta record), for ``s3fuse status``.
    ``replaced``: inodes that left their path because the bucket deleted or replaced
    it, while they may still be (or get) open: ino -> (path, cache generation then,
    what happened). At their last close they go to lost+found if they were written
    since (``keep_replaced``); dropped with the inode (``forget``).
    """

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.known_at: dict[int, Stamp] = {}
        self._tickets = 0
        self.conflicts: list[dict] = []
        self.replaced: dict[int, tuple[str, int, str]] = {}
        # inodes refreshed to a newer version since their last open: the kernel may
        # still hold pages of the old one (the next open drops them)
        self.refreshed: set[int] = set()

    @property
    def instance(self) -> str:
        """This journal's id, as the ``s3fuse-seq`` tag of our uploads names it."""
        return self.fs.flusher.instance_id if self.fs.flusher is not None else ""

    def load(self, txn: Txn) -> None:
        raw = txn.get_meta(b"conflicts")
        self.conflicts = json.loads(raw) if raw else []

    # --- freshness ----------------------------------------------------------------------
    def stamp(self) -> Stamp:
        """Now, for dating an observation (take it before sending the request)."""
        self._tickets += 1
        return (self._tickets, trio.current_time())

    def newer_than(self, ino: int, stamp: Stamp) -> bool:
        """The inode reflects a bucket fact newer than ``stamp``."""
        return self.known_at.get(ino, _NEVER) > stamp

    def note_bucket_state(self, ino: int, at: Stamp | None = None) -> None:
        """The mount learnt what the bucket holds for ``ino`` (an upload or copy
        committed, a listing added it): an observation sent before ``at`` (default:
        now) must not judge it."""
        at = self.stamp() if at is None else at
        if at > self.known_at.get(ino, _NEVER):
            self.known_at[ino] = at

    def checked_since(self, ino: int) -> float:
        """When (trio clock) the bucket's state of ``ino`` was last known (0: never)."""
        return self.known_at.get(ino, _NEVER)[1]

    def forget(self, ino: int) -> None:
        """``ino`` is gone from the journal."""
        self.known_at.pop(ino, None)
        self.replaced.pop(ino, None)
        self.refreshed.discard(ino)

    def take_refreshed(self, ino: int) -> bool:
        """``ino`` was refreshed since it was last opened (and is no longer marked)."""
        if ino in self.refreshed:
            self.refreshed.discard(ino)
            return True
        return False

    def left_for_the_bucket(self, ino: int) -> bool:
        """``ino`` left its path because the bucket deleted or replaced it."""
        return ino in self.replaced

    # --- observations -------------------------------------------------------------------
    async def observe(self, ino: int, key: str) -> Decision:
        """HEAD ``key`` now and apply what it shows to ``ino``. Raises StoreError when
        the bucket cannot be asked."""
        seen_at = self.stamp()
        info = await self.fs.remote.head_or_none(key)
        return self.apply(ino, key, info, seen_at)

    def apply(self, ino: int, key: str, info: ObjectInfo | None, seen_at: Stamp,
              reason: str = "changed in the bucket", *, by_upload: bool = False) -> Decision:
        """Bring ``ino`` (at ``key``) in line with what the bucket held at ``seen_at``
        (``info``; None: nothing). Judged again in its own transaction, so it is safe
        after any await; an observation older than what the inode reflects is
        ignored (KEEP). ``ino`` may be a link record (one name of a hard-linked
        file). Returns what was done: REMOVE also when the inode left its path for
        the bucket's version (an open file kept, a hard link's name split off).

        A dirty inode is judged only by its own upload (``by_upload``) while one is
        in flight, and never on an object that is its own upload: a HEAD that
        overtakes the commit of our PUT sees our object, not someone else's."""
        fs = self.fs
        if seen_at < self.known_at.get(ino, _NEVER):
            return Decision.KEEP
        entries: list[tuple[int, bytes]] = []
        inodes: list[int] = []
        now = time.time_ns()
        with fs.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink == 0 or fs.ns.object_key(txn, inode) != key:
                return Decision.KEEP
            self.known_at[ino] = seen_at
            decision = decide(dirty=bool(inode.dirty), known_etag=inode.remote_etag,
                              uploaded=inode.remote_key == key,
                              bucket_etag=info.etag if info is not None else None)
            if decision is Decision.KEEP:
                return decision
            if inode.dirty and not by_upload and (
                    fs.flusher is not None and fs.flusher.is_uploading(ino)
                    or own_upload(info, self.instance, ino, inode.change_seq) is not None):
                return Decision.KEEP
            if inode.link_of or inode.links:
                return self._split_name(txn, inode, info, now)
            if stat.S_ISDIR(inode.mode):
                self._adopt_marker(txn, inode, info)
                return Decision.REFRESH
            if decision in (Decision.REFRESH, Decision.REMOVE) and fs.open_count.get(ino) \
                    and (inode.cached or decision is Decision.REMOVE
                         or fs.cache.holds_any(ino) and not fs.open_for_writing(ino)):
                # Like an atomic replace (or an unlink) on a local disk: open handles
                # keep the version they opened, the path shows the bucket's. What is
                # written through them from now on is kept in lost+found at their
                # last close (``keep_replaced``): it was acknowledged, so it is not
                # lost. Readers of bytes that were never cached get ESTALE. (Open
                # for writing and not cached whole, there is no old version to
                # write on; nothing cached, no reader can have seen any of it:
                # either way the handles go on with the bucket's, refreshed below.)
                self._remove_gone(txn, inode, now, entries,
                                  "changed in the bucket" if info is not None
                                  else "deleted in the bucket")
                if info is not None:
                    fs.ns.add_from_object(txn, inode.parent, inode.name.encode(), info)
                decision = Decision.REMOVE
            elif decision is Decision.REFRESH:
                assert info is not None
                self._refresh(txn, inode, info)
                inodes.append(ino)
            elif decision is Decision.REMOVE:
                self._remove_gone(txn, inode, now, entries)
            else:
                self._keep_ours(txn, inode, info, reason, now, entries)
        if decision is Decision.REFRESH:
            # (same step as the new ETag: the cached bytes and the ETag stay one version)
            fs.cache.remove(ino)
            fs.fetcher.forget(ino)
            self.refreshed.add(ino)
        if decision is not Decision.REFRESH:
            fs.ns.forget_schedule(ino)
        fs.invalidate(entries, inodes)
        if decision is Decision.REMOVE:
            fs.maybe_purge(ino)
        return decision

    def upload_refused(self, ino: int, key: str, info: ObjectInfo | None, seen_at: Stamp,
                       instance: str, seq: int) -> tuple[str, int] | Decision:
        """An upload of ``ino`` to ``key`` found another object than it expected (its
        condition failed, or a HEAD before an unconditional upload said so); ``info``
        is what a HEAD sent at ``seen_at`` found. If that object is our own earlier
        upload, returns its (ETag, change sequence) to adopt. Otherwise S3 wins, and
        the decision carried out is returned: CONFLICT or CONFLICT_GONE (ours went to
        lost+found), or KEEP when the inode moved on meanwhile (nothing to do now; the
        next attempt uploads what it is then). Raises ``ConditionMismatch`` when the
        bucket holds exactly what the upload expected: the server compares ETags in
        another way, and retrying later is all that is safe."""
        ours = own_upload(info, instance, ino, seq)
        if ours is not None:
            return ours
        decision = self.apply(ino, key, info, seen_at,
                              reason="changed both in the bucket and on the mount",
                              by_upload=True)
        if decision is Decision.KEEP:
            inode = self.fs.get(ino)
            expected = inode.remote_etag if inode.remote_key == key else None
            if inode.nlink > 0 and (info.etag if info is not None else None) == expected:
                raise ConditionMismatch(f"{key}: the server refused the condition but "
                                        "holds what the mount expected")
        return decision

    async def adopt_current(self, ino: int, gone_etag: str | None) -> bool:
        """The version ``gone_etag`` a clean file's bytes were being fetched from is no
        longer in the bucket: take the bucket's current one (S3 wins; nothing local
        is at stake). True if the inode is on another version now (fetch again);
        False if nothing newer could be learnt (the caller gives up). Raises
        StoreError when the bucket is away."""
        fs = self.fs
        inode = fs.get(ino)
        if inode.dirty or inode.cached:
            return True  # settled meanwhile (written, or fetched whole by another)
        key, etag = fs.read_source(inode)
        if etag != gone_etag or inode.nlink == 0:
            return True  # moved on meanwhile (the poller, another reader)
        if key is None or key != inode.remote_key:
            return False  # the source of a pending copy: the copy resolves it
        seen_at = self.stamp()
        info = await fs.remote.head_or_none(key)
        if info is not None and info.etag == etag:
            return False  # the same version after all: a transient failure
        self.apply(ino, key, info, seen_at)
        after = fs.get(ino)
        return (after.remote_key, after.remote_etag, after.nlink) != (
            inode.remote_key, inode.remote_etag, inode.nlink)

    def retype(self, ino: int, info: ObjectInfo, seen_at: Stamp) -> int | None:
        """The headers (``info``, a HEAD sent at ``seen_at``) of a file known from a
        listing say it is not a regular file (a symlink, FIFO, socket or device) while
        readdir may have shown it as one. The kernel never changes an inode's type, so
        the name gets a new inode of the headers' type and the old one leaves the path:
        the kernel is told to drop the name, and its next lookup finds the new inode.
        The old inode lives on while the kernel or a handle refers to it: an open of it
        answers ESTALE (the kernel looks the path up again); a handle opened on it
        before (its headers could not be read then) ends as one on a file replaced in
        the bucket (``replaced``, ``keep_replaced``). Judged in its own transaction:
        only a clean, unloaded, single-named regular file still at this version is
        replaced. Returns the new inode (None: nothing done)."""
        fs = self.fs
        entries: list[tuple[int, bytes]] = []
        with fs.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink == 0 or inode.meta_loaded or inode.dirty \
                    or inode.links or inode.link_of or not stat.S_ISREG(inode.mode) \
                    or (inode.remote_key, inode.remote_etag) != (info.key, info.etag):
                return None
            self.replaced[ino] = ("/".join(fs.ns.path_names(txn, inode)),
                                  fs.cache.generation(ino), "found to be no regular file")
            name = inode.name.encode()
            txn.unlink(inode.parent, name)
            entries.append((inode.parent, name))
            inode.nlink = 0
            inode.meta_loaded = True  # nothing more to learn: it left its path
            set_remote(inode, None, None)
            txn.put(inode)
            new = fs.ns.add_from_object(txn, inode.parent, name, info)
        self.note_bucket_state(new.ino, seen_at)
        fs.ns.forget_schedule(ino)
        fs.invalidate(entries, [])
        fs.maybe_purge(ino)
        return new.ino

    # --- carrying it out (inside the caller's transaction) ------------------------------
    def _split_name(self, txn: Txn, rec: Inode, info: ObjectInfo | None,
                    now: int) -> Decision:
        """S3 wins at one name of a hard-linked file: that name leaves the file (whose
        other names keep its data, and upload it as before), and the bucket's object,
        if there is one, takes the path as a file of its own. Returns REMOVE: this
        record left its path."""
        fs = self.fs
        data = fs.ns.data_of(txn, rec)
        parent, name = rec.parent, rec.name.encode("utf-8", "surrogatepass")
        pending: list[int] = []
        dropped: list[int] = []
        txn.unlink(parent, name)
        fs.ns.touch_dir(txn, parent, now)
        # the object at this key is the bucket's now: not deleted
        fs.ns.remove_name(txn, data, parent, name, now, pending, dropped)
        txn.put(data)
        if info is not None:
            fs.ns.add_from_object(txn, parent, name, info)
        log.warning("%s of a hard-linked file %s in the bucket: that name now holds the "
                    "bucket's version, the file keeps its other names", rec.name,
                    "changed" if info is not None else "was deleted")
        fs.ns.notify(pending)
        fs.ns.forget_records(dropped)
        fs.invalidate([(parent, name)], [data.ino])
        return Decision.REMOVE

    def _refresh(self, txn: Txn, inode: Inode, info: ObjectInfo) -> None:
        """REFRESH: the bucket's newer version replaces our clean copy (the caller
        drops the cache file right after the commit)."""
        fields = self.fs.ns.decode(info.metadata, False, info.mtime_ns)
        for name, value in fields.items():
            setattr(inode, name, value)
        inode.meta_loaded = info.metadata is not None
        inode.size = info.size
        set_remote(inode, info.key, info.etag)
        inode.cached = False
        inode.target = None
        txn.put(inode)

    def _adopt_marker(self, txn: Txn, inode: Inode, info: ObjectInfo | None) -> None:
        """A directory marker changed outside: the bucket's attributes win; a marker
        deleted outside is written again if the directory still needs one."""
        if info is None:
            set_remote(inode, None, None)
        else:
            fields = self.fs.ns.decode(info.metadata, True, info.mtime_ns)
            for name in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "xattrs",
                         "extra"):
                setattr(inode, name, fields[name])
            set_remote(inode, info.key, info.etag)
            unmark(txn, inode)
        txn.put(inode)

    def _remove_gone(self, txn: Txn, inode: Inode, now: int,
                     entries: list[tuple[int, bytes]],
                     what: str = "deleted in the bucket") -> None:
        """REMOVE: the inode leaves its path, which the bucket deleted (or gave to a
        newer version); nothing local to keep. A handle that is open, or that the
        kernel opens on it still, may write to it: that is kept in lost+found at
        the last close (``replaced``)."""
        fs = self.fs
        self.replaced[inode.ino] = ("/".join(fs.ns.path_names(txn, inode)),
                                    fs.cache.generation(inode.ino), what)
        name = inode.name.encode()
        txn.unlink(inode.parent, name)
        self.fs.ns.touch_dir(txn, inode.parent, now)
        inode.nlink = 0
        set_remote(inode, None, None)
        txn.put(inode)
        entries.append((inode.parent, name))
        log.info("%s was deleted in the bucket; removed from the mount", inode.name)

    def _keep_ours(self, txn: Txn, inode: Inode, info: ObjectInfo | None, reason: str,
                   now: int, entries: list[tuple[int, bytes]]) -> None:
        """CONFLICT: our version moves, whole, to lost+found (same inode, so open
        handles keep working); the bucket's version, if any, takes the path."""
        fs = self.fs
        path = "/".join(fs.ns.path_names(txn, inode))
        parent, name = inode.parent, inode.name.encode()
        txn.unlink(parent, name)
        self._file_conflict(txn, inode, path,
                            reason if info is not None else "deleted in the bucket", now)
        inode.ctime_ns = now
        txn.put(inode)
        fs.ns.touch_dir(txn, parent, now)
        if info is not None:
            fs.ns.add_from_object(txn, parent, name, info)
        entries.append((parent, name))

    def version_lost(self, txn: Txn, inode: Inode,
                     entries: list[tuple[int, bytes]]) -> None:
        """A renamed file's copy found its source version gone from the bucket (S3
        wins: replaced or deleted there first), and none of its bytes are cached:
        the name goes (the caller invalidates ``entries`` and purges after commit)."""
        log.warning("%s: its version was replaced or deleted in the bucket before its "
                    "rename reached it, and none of it was cached; removed", inode.name)
        self._remove_gone(txn, inode, time.time_ns(), entries,
                          "replaced in the bucket before its rename reached it")

    def keep_replaced(self, ino: int) -> None:
        """The last handle of ``ino`` closed. If the bucket replaced or deleted it
        while it was open (``replaced``) and it was written through its handles
        since, it goes to lost+found, whole, as a conflict (the bucket's version keeps
        the path)."""
        fs = self.fs
        replaced = self.replaced.pop(ino, None)
        if replaced is None or not fs.cache.exists(ino) \
                or fs.cache.generation(ino) == replaced[1]:
            return
        path, _, what = replaced
        now = time.time_ns()
        with fs.journal.write() as txn:
            inode = txn.get(ino)
            if inode is None or inode.nlink != 0 or not inode.cached:
                return
            self._file_conflict(txn, inode, path, f"written here after it was {what}", now)
            inode.nlink = 1
            inode.ctime_ns = now
            txn.put(inode)

    def _file_conflict(self, txn: Txn, inode: Inode, path: str, reason: str,
                       now: int) -> str:
        """Link ``inode`` into lost+found under a conflict name for ``path`` and record
        the conflict; returns where it is (relative to the mount)."""
        fs = self.fs
        lost_found = self._lost_found(txn, now)
        new_name = _conflict_name(txn, lost_found, path, now)
        txn.link(lost_found, new_name, inode.ino)
        inode.parent, inode.name = lost_found, new_name.decode()
        leave_bucket(txn, inode)
        fs.ns.touch_dir(txn, lost_found, now)
        where = f"{keys.RESERVED_ROOT_NAME.decode()}/lost+found/{new_name.decode()}"
        record = {"path": path, "lost_found": where, "time": now / 1e9, "reason": reason}
        self.conflicts = (self.conflicts + [record])[-1000:]
        txn.put_meta(b"conflicts", json.dumps(self.conflicts).encode())
        log.warning("conflict on %s (%s): the bucket's version stays at the path, the "
                    "mount's is kept at %s", path, reason, where)
        return where

    def _lost_found(self, txn: Txn, now: int) -> int:
        """The local directory ``.s3fuse/lost+found`` (made on first use). Nothing
        under ``.s3fuse`` is ever uploaded."""
        fs = self.fs
        ino = ROOT_INO
        for name in (keys.RESERVED_ROOT_NAME, b"lost+found"):
            child = txn.lookup(ino, name)
            if child is None:
                d = Inode(ino=txn.new_ino(), mode=stat.S_IFDIR | 0o755, uid=fs.defaults.uid,
                          gid=fs.defaults.gid, parent=ino, name=name.decode(), nlink=2,
                          listed=True, atime_ns=now, mtime_ns=now, ctime_ns=now)
                txn.put(d)
                txn.link(ino, name, d.ino)
                fs.ns.touch_dir(txn, ino, now, 1)
                child = d.ino
            ino = child
        return ino


def _conflict_name(txn: Txn, lost_found: int, path: str, now: int) -> bytes:
    """``a%2Fb.txt.conflict-20261121T045000Z``: the path and the time in one name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now // 1_000_000_000))
    base = path.replace("%", "%25").replace("/", "%2F")
    suffix = f".conflict-{stamp}"
    if len((base + suffix).encode()) > 200:
        digest = xxhash.xxh64(path.encode()).hexdigest()[:12]
        base = base.encode()[:150].decode("utf-8", "ignore") + "~" + digest
    name = (base + suffix).encode()
    n = 1
    while txn.lookup(lost_found, name) is not None:
        n += 1
        name = f"{base}{suffix}-{n}".encode()
    return name
