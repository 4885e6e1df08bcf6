"""The tree of the read-only views under ``.s3fuse/`` (views.py says what the mount
shows there): its nodes, the listings of view directories from version listings and
snapshot records, a pinned version's headers and bytes, each read once and kept.

``ViewTree`` holds the nodes and everything read from the bucket for them;
``views.Views`` derives from it and answers the kernel (routes, handles, lookup
counts, attributes, readdir, xattrs).
"""

from __future__ import annotations

import bisect
import errno
import logging
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from . import keys, metadata, timeline
from .errors import FsError, S3FuseError
from .store.base import VersionInfo
from .timeline import Pinned, Snapshot

if TYPE_CHECKING:
    from .filesystem import Filesystem

log = logging.getLogger("s3fuse.views")  # (one logger for the views, as before the split)

RESERVED = timeline.RESERVED.encode()
VIEW_BASE = 1 << 62
VIEWS_ROOT = VIEW_BASE + 1  # .s3fuse
AT_DIR = VIEW_BASE + 2  # .s3fuse/at
SNAPSHOTS_DIR = VIEW_BASE + 3  # .s3fuse/snapshots
_FIRST_DYNAMIC = VIEW_BASE + 16
LOST_FOUND = b"lost+found"

#: HEADs of pinned versions in flight at once (the live tree's HEAD_CONCURRENCY)
HEAD_CONCURRENCY = 16
#: how many entries after a looked-up one are loaded ahead, after a readdir
PREFETCH_AHEAD = 64
PREFETCH_AFTER_READDIR_S = 30.0
#: reads are cached in blocks of this size, at most BLOCK_CACHE_BYTES in all
BLOCK = 1 << 20
BLOCK_CACHE_BYTES = 64 << 20
#: the headers of this many versions are kept (one HEAD each, however often the
#: kernel forgets and looks up their entries again)
HEADERS_KEPT = 100_000
#: how long the answer to "is versioning on?" is trusted
VERSIONING_TTL_S = 10.0
#: a subdirectory of an at-view: at most this many version pages are read to find
#: whether it held a key then
EXISTS_MAX_PAGES = 1000
EXISTS_FIRST_PAGE = 16


@dataclass
class Entry:
    """One name of a view directory as its listing found it."""

    is_dir: bool
    pinned: Pinned | None  # the file's version, or the directory's marker (if any)


@dataclass
class View:
    """One pinned tree: an at-view (``at_ns``) or a snapshot (``snapshot``)."""

    at_ns: int
    key_prefix: str  # the bucket prefix the view's relative keys are under
    snapshot: Snapshot | None = None
    keys: list[str] = field(default_factory=list)  # a snapshot's keys, sorted
    by_key: dict[str, Pinned] = field(default_factory=dict)


@dataclass
class Node:
    ino: int
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    view: View | None = None  # None: the fixed directories, and snapshot records
    rel: str = ""  # a directory's prefix in the view ("" or "a/b/"), a file's key
    pinned: Pinned | None = None
    loaded: bool = False
    rdev: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)
    target: bytes | None = None
    lookups: int = 0
    entries: dict[bytes, Entry] | None = None  # a directory's listing, once read
    names: list[bytes] = field(default_factory=list)  # its names, sorted
    children: dict[bytes, int] = field(default_factory=dict)  # name -> node made
    readdir_at: float = -float("inf")
    fixed: bool = False  # never forgotten

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class ViewTree:
    """The nodes of ``.s3fuse`` and below and what was read from the bucket for
    them (see the module docstring). Runs on the daemon's event loop; the store is
    reached through ``fs.remote``."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.remote = fs.remote
        now = time.time_ns()
        d = fs.defaults
        self.nodes: dict[int, Node] = {}
        for ino, parent, name in ((VIEWS_ROOT, pyfuse3.ROOT_INODE, RESERVED),
                                  (AT_DIR, VIEWS_ROOT, b"at"),
                                  (SNAPSHOTS_DIR, VIEWS_ROOT, b"snapshots")):
            self.nodes[ino] = Node(ino, parent, name, stat.S_IFDIR | 0o555, d.uid, d.gid,
                                   now, loaded=True, fixed=True, entries={})
        self._next_ino = _FIRST_DYNAMIC
        self._loading: dict[tuple[str, str], trio.Event] = {}
        # (key, version id) -> that version's user metadata (None: none), least
        # recently used first: a version's headers never change
        self._headers: OrderedDict[tuple[str, str], dict[str, str] | None] = OrderedDict()
        self._listing: dict[int, trio.Event] = {}
        self._prefetched: dict[int, set[bytes]] = {}
        self._head_limiter = trio.CapacityLimiter(HEAD_CONCURRENCY)
        # (key, version id, block number) -> bytes, least recently used first
        self._blocks: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._block_bytes = 0
        self._block_loads: dict[tuple[str, str, int], trio.Event] = {}
        self._versioning: tuple[float, str] | None = None  # (trio time, state)
        self._said_versioning_off = False

    # --- nodes -----------------------------------------------------------------------
    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT, f"view inode {ino} was forgotten")
        return node

    def _child(self, parent: Node, name: bytes, make: Callable[[int], Node]) -> Node:
        """The node of ``parent``'s entry ``name``, made by ``make(ino)`` the first
        time (and again after the kernel forgot it)."""
        ino = parent.children.get(name)
        if ino is not None and ino in self.nodes:
            return self.nodes[ino]
        self._next_ino += 1
        node = make(self._next_ino)
        self.nodes[node.ino] = node
        parent.children[name] = node.ino
        return node

    def _entry_node(self, parent: Node, name: bytes, entry: Entry) -> Node:
        view = parent.view
        assert view is not None
        d = self.fs.defaults

        def make(ino: int) -> Node:
            p = entry.pinned
            if entry.is_dir:
                rel = parent.rel + name.decode("utf-8", "surrogateescape") + "/"
                return Node(ino, parent.ino, name, stat.S_IFDIR | d.dir_mode, d.uid, d.gid,
                            p.mtime_ns if p else view.at_ns, view=view, rel=rel, pinned=p,
                            loaded=p is None)
            assert p is not None
            return Node(ino, parent.ino, name, stat.S_IFREG | d.file_mode, d.uid, d.gid,
                        p.mtime_ns, size=p.size, view=view, rel=p.key, pinned=p)
        node = self._child(parent, name, make)
        self._apply_headers(node)  # (read before, for an earlier node of this name)
        return node

    # --- lookups ---------------------------------------------------------------------
    def _journal_lost_found(self) -> int | None:
        """The journal's ``.s3fuse`` directory if it holds ``lost+found``."""
        with self.fs.journal.read() as txn:
            top = txn.lookup(pyfuse3.ROOT_INODE, RESERVED)
            if top is None or txn.lookup(top, LOST_FOUND) is None:
                return None
            return top

    async def _at_root(self, parent: Node, name: bytes) -> Node:
        try:
            at_ns = timeline.parse_when(name.decode("utf-8", "replace"))
        except S3FuseError:
            raise FsError(errno.ENOENT, "not a UTC time like 2026-12-01T14:30:00Z") from None
        if at_ns > time.time_ns():
            raise FsError(errno.ENOENT, "a time not yet passed")
        await self._require_versioning()
        d = self.fs.defaults
        view = View(at_ns, self.fs.prefix)
        return self._child(parent, name, lambda ino: Node(
            ino, parent.ino, name, stat.S_IFDIR | 0o555, d.uid, d.gid, at_ns, view=view,
            loaded=True))

    async def _require_versioning(self) -> None:
        now = trio.current_time()
        if self._versioning is None or now - self._versioning[0] > VERSIONING_TTL_S:
            state = await self.remote.read_call(self.remote.store.versioning)
            self._versioning = (now, state)
        if self._versioning[1] == "off":
            if not self._said_versioning_off:
                self._said_versioning_off = True
                try:  # (its one line says how to turn versioning on; asks once more)
                    await trio.to_thread.run_sync(timeline.require_versioning,
                                                  self.remote.store, ".s3fuse/at")
                except timeline.VersioningOff as exc:
                    log.warning("%s", exc)
                except S3FuseError as exc:
                    log.warning(".s3fuse/at: the bucket does not keep old versions (%s)",
                                exc)
            raise FsError(errno.EOPNOTSUPP, "the bucket does not keep old versions")

    def _snapshot_key(self, name: bytes) -> str:
        try:
            return timeline.snapshot_key(self.fs.prefix, name.decode("utf-8"))
        except (S3FuseError, UnicodeDecodeError):
            raise FsError(errno.ENOENT, "not a snapshot name") from None

    async def _snapshot_root(self, parent: Node, name: bytes) -> Node:
        """A snapshot's record, read (again: a record can be deleted and made anew under
        its name) at each lookup; a new record is a new tree."""
        key = self._snapshot_key(name)
        info = await self.remote.head_or_none(key)
        if info is None:
            raise FsError(errno.ENOENT)
        ino = parent.children.get(name)
        old = self.nodes.get(ino) if ino is not None else None
        if old is not None and old.view is not None and old.pinned is not None \
                and old.pinned.etag == info.etag:
            return old
        body = await self.remote.read_call(self.remote.store.get, key, if_match=info.etag)
        try:
            snap = Snapshot.decode(body)
        except S3FuseError as exc:
            log.warning("snapshot %s: %s", key, exc)
            raise FsError(errno.EIO, str(exc)) from None
        view = View(snap.created_ns, snap.prefix, snap,
                    sorted(o.key for o in snap.objects), {o.key: o for o in snap.objects})
        record = Pinned(key, "", info.etag, info.size, info.mtime_ns)
        if old is not None and old.view is None:  # listed, not read yet: read now
            old.view, old.pinned, old.mtime_ns = view, record, snap.created_ns
            old.loaded = True
            return old
        parent.children.pop(name, None)  # a changed record: a new node, a new inode
        d = self.fs.defaults
        return self._child(parent, name, lambda i: Node(
            i, parent.ino, name, stat.S_IFDIR | 0o555, d.uid, d.gid, snap.created_ns,
            view=view, pinned=record, loaded=True))

    # --- listings ----------------------------------------------------------------------
    async def list_dir(self, node: Node) -> dict[bytes, Entry]:
        """The directory's entries, read once per node (concurrent callers share it)."""
        if node.ino == SNAPSHOTS_DIR:
            node.entries = await self._list_snapshots()  # read each time: records come and go
        elif node.ino == VIEWS_ROOT:
            node.entries = {b"at": Entry(True, None), b"snapshots": Entry(True, None)}
            if self._journal_lost_found() is not None:
                node.entries[LOST_FOUND] = Entry(True, None)
        async def read() -> None:
            assert node.view is not None
            if node.view.snapshot is not None:
                node.entries = self._snapshot_dir(node.view, node.rel)
            else:
                node.entries = await self._at_dir(node.view, node.rel)
        await _single_flight(self._listing, node.ino, lambda: node.entries is not None, read)
        if node.entries is None:
            raise FsError(errno.EIO, "listing the directory failed")
        if len(node.names) != len(node.entries) or node.view is None:
            node.names = sorted(node.entries)  # (a pinned listing never changes)
        return node.entries

    async def _list_snapshots(self) -> dict[bytes, Entry]:
        where = self.fs.prefix + timeline.SNAPSHOTS_DIR
        page = await self.remote.list_all(where, "/")
        out: dict[bytes, Entry] = {}
        for obj in page.objects:
            name = obj.key[len(where):]
            if not name.endswith(".json"):
                continue
            try:
                timeline.check_snapshot_name(name[:-5])
            except S3FuseError:
                continue
            out[name[:-5].encode()] = Entry(True, None)
        return out

    def _usable(self, rel_dir: str, segment: str) -> bytes | None:
        """The name for a key segment of the view directory ``rel_dir``, or None."""
        name = keys.name_from_segment(segment)
        if name is None or (rel_dir == "" and name == RESERVED):
            return None
        return name

    @staticmethod
    def _in_bucket(view: View, p: Pinned) -> Pinned:
        """A snapshot's pinned object with its key in the bucket (the record's keys
        are relative to its prefix)."""
        return Pinned(view.key_prefix + p.key, p.version_id, p.etag, p.size, p.mtime_ns)

    def _snapshot_dir(self, view: View, rel: str) -> dict[bytes, Entry]:
        out: dict[bytes, Entry] = {}
        files: dict[bytes, Pinned] = {}
        ks = view.keys
        i = bisect.bisect_left(ks, rel)
        while i < len(ks) and ks[i].startswith(rel):
            rest = ks[i][len(rel):]
            seg, slash, _ = rest.partition("/")
            if not slash:
                name = self._usable(rel, seg)
                if name is not None and rest:
                    files[name] = self._in_bucket(view, view.by_key[ks[i]])
                i += 1
                continue
            name = self._usable(rel, seg)
            marker = view.by_key.get(rel + seg + "/")
            if name is not None:
                out[name] = Entry(True, marker and self._in_bucket(view, marker))
            # past every key below rel + seg + "/" ("0" sorts right after "/")
            i = bisect.bisect_left(ks, rel + seg + "0", i + 1)
        for name, p in files.items():
            out.setdefault(name, Entry(False, p))  # a directory wins over a file
        return out

    async def _at_dir(self, view: View, rel: str) -> dict[bytes, Entry]:
        where = view.key_prefix + rel
        versions: list[VersionInfo] = []
        prefixes: list[str] = []
        token = None
        store = self.remote.store
        while True:
            page = await self.remote.read_call(store.list_versions, where, token,
                                               delimiter="/")
            versions += page.versions
            prefixes += page.prefixes
            token = page.next_token
            if token is None:
                break
        out: dict[bytes, Entry] = {}
        found: dict[bytes, Pinned | None] = {}

        async def probe(name: bytes, sub: str) -> None:
            async with self._head_limiter:
                there, marker = await self._existed(view, sub)
            if there:
                found[name] = marker
        async with trio.open_nursery() as nursery:
            for p in prefixes:
                name = self._usable(rel, p[len(where):-1])
                if name is not None:
                    nursery.start_soon(probe, name, p)
        for name in sorted(found):
            out[name] = Entry(True, found[name])
        for key, v in timeline.current_at(versions, view.at_ns).items():
            name = self._usable(rel, key[len(where):]) if key != where else None
            if name is not None and name not in out:
                out[name] = Entry(False, Pinned(key, v.version_id, v.etag, v.size, v.mtime_ns))
        return out

    async def _existed(self, view: View, sub: str) -> tuple[bool, Pinned | None]:
        """Whether some key under ``sub`` existed at the view's time, and the version
        of its marker ``sub`` then (if it had one). Reads pages only until the first
        key that existed."""
        token = None
        settled: set[str] = set()
        store = self.remote.store
        for n in range(EXISTS_MAX_PAGES):
            # a small first page: the first key is most often the answer
            page = await self.remote.read_call(store.list_versions, sub, token,
                                               EXISTS_FIRST_PAGE if n == 0 else 1000)
            for v in page.versions:
                if v.key in settled or v.mtime_ns > view.at_ns:
                    continue
                settled.add(v.key)
                if not v.is_delete_marker:
                    marker = Pinned(v.key, v.version_id, v.etag, v.size, v.mtime_ns) \
                        if v.key == sub else None
                    return True, marker
            token = page.next_token
            if token is None:
                return False, None
        log.warning("%s: more than %d pages of versions; shown as it is now", sub,
                    EXISTS_MAX_PAGES)
        return True, None

    # --- attributes ------------------------------------------------------------------
    async def load(self, node: Node) -> Node:
        """Make the node's attributes those of its pinned version's headers."""
        if node.loaded:
            return node
        if node.parent == SNAPSHOTS_DIR and node.view is None:
            # a snapshot listed but not looked up yet: read its record now
            if await self._snapshot_root(self.nodes[SNAPSHOTS_DIR], node.name) is not node:
                raise FsError(errno.ESTALE, "the snapshot's record was replaced")
            return node
        assert node.pinned is not None
        await self._read_headers(node.pinned)
        self._apply_headers(node)
        if not node.loaded:
            raise FsError(errno.EIO, "reading the version's headers failed")
        return node

    async def _read_headers(self, p: Pinned) -> None:
        """HEAD the version ``p`` once (concurrent callers share the request, and
        ``_headers`` keeps the answer: a version's headers never change)."""
        version = (p.key, p.version_id)

        async def head() -> None:
            async with self._head_limiter:
                info = await self.remote.read_call(self.remote.store.head, p.key,
                                                   version_id=p.version_id)
            self._headers[version] = info.metadata
            while len(self._headers) > HEADERS_KEPT:
                self._headers.popitem(last=False)
        await _single_flight(self._loading, version, lambda: version in self._headers, head)

    def _apply_headers(self, node: Node) -> None:
        """Take the attributes from the pinned version's headers, if they were read."""
        p = node.pinned
        version = (p.key, p.version_id) if p is not None else None
        if node.loaded or version not in self._headers:
            return
        self._headers.move_to_end(version)
        d = self.fs.defaults
        fields = metadata.decode(self._headers[version], is_dir=node.is_dir,
                                 default_mode=d.dir_mode if node.is_dir else d.file_mode,
                                 default_uid=d.uid, default_gid=d.gid,
                                 fallback_mtime_ns=p.mtime_ns)
        node.mode, node.uid, node.gid = fields["mode"], fields["uid"], fields["gid"]
        node.mtime_ns, node.rdev, node.xattrs = (fields["mtime_ns"], fields["rdev"],
                                                 fields["xattrs"])
        node.loaded = True

    def _prefetch_after(self, parent: Node, name: bytes) -> None:
        """An ``ls -l`` looks the entries up one by one after its readdir: load the
        next ones ahead of it (in the daemon's nursery, without waiting)."""
        nursery = self.fs.meta_loads.nursery
        if nursery is None or trio.current_time() - parent.readdir_at \
                > PREFETCH_AFTER_READDIR_S or parent.entries is None:
            return
        queued = self._prefetched.setdefault(parent.ino, set())
        names = parent.names
        start = bisect.bisect_right(names, name)
        for other in names[start:start + PREFETCH_AHEAD]:
            entry = parent.entries[other]
            p = entry.pinned
            if other in queued or entry.is_dir or p is None \
                    or (p.key, p.version_id) in self._headers:
                continue
            queued.add(other)
            nursery.start_soon(self._quietly, self._read_headers(p))

    async def _quietly(self, work: Awaitable[Any]) -> None:
        try:
            await work
        except Exception:  # noqa: BLE001 - a prefetch must never fail anything
            log.debug("prefetching a view entry failed", exc_info=True)

    # --- bytes -------------------------------------------------------------------------
    async def readlink(self, node: Node) -> bytes:
        await self.load(node)
        if not stat.S_ISLNK(node.mode):
            raise FsError(errno.EINVAL)
        if node.target is None:
            p = node.pinned
            assert p is not None
            node.target = await self.remote.read_call(self.remote.store.get, p.key,
                                                      version_id=p.version_id)
        return node.target

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        p = node.pinned
        if p is None or offset >= p.size or size <= 0:
            return b""
        end = min(p.size, offset + size)
        parts = []
        for block in range(offset // BLOCK, (end - 1) // BLOCK + 1):
            data = await self._block(p, block)
            lo = max(offset, block * BLOCK) - block * BLOCK
            hi = min(end, (block + 1) * BLOCK) - block * BLOCK
            parts.append(data[lo:hi])
        return b"".join(parts)

    async def _block(self, p: Pinned, block: int) -> bytes:
        """One block of a pinned version, from the cache or the bucket."""
        key = (p.key, p.version_id, block)

        async def get() -> None:
            data = await self.remote.read_call(
                self.remote.store.get, p.key, block * BLOCK, min(p.size, (block + 1) * BLOCK),
                version_id=p.version_id)
            self._blocks[key] = data
            self._block_bytes += len(data)
            while self._block_bytes > BLOCK_CACHE_BYTES and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self._block_bytes -= len(old)
        await _single_flight(self._block_loads, key, lambda: key in self._blocks, get)
        data = self._blocks.get(key)
        if data is None:
            raise FsError(errno.EIO, "reading the version failed")
        self._blocks.move_to_end(key)
        return data


async def _single_flight(busy: dict[Any, trio.Event], key: Any, ready: Callable[[], bool],
                         work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` unless ``ready()``; callers that come while it runs for ``key``
    wait for it instead of asking the bucket again (if it failed, they find the
    result still not ready: the one that ran it had the error)."""
    if ready():
        return
    running = busy.get(key)
    if running is not None:
        await running.wait()
        return
    done = busy[key] = trio.Event()
    try:
        await work()
    finally:
        del busy[key]
        done.set()
