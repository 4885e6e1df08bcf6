"""Discovery's close-to-open checks: a lookup of a name the mount does not know lists
its directory again (``relist_for_names``, at most once per directory and TTL), and
an open of a clean file checks it against one shared LIST of its directory
(``recheck``, ``listed_etags``); a lookup waits for the bucket at most
``NAME_CHECK_TIMEOUT_S``, the listing itself goes on in the background (``_shared``).

``CloseToOpenChecks`` is a part of ``discovery.Discovery`` (its base class): its
methods use the discovery's state (``ns``, ``journal``, ``remote``, ``reconciler``,
``metadata_ttl_s``, ``meta_loads``, and the check bookkeeping ``_names_at``,
``_relisting``, ``_dir_etags``, ``_tree_too_big``, all set in ``Discovery.__init__``)
and its re-listing (``poll_dir``, or ``poll_tree`` for a small subtree), which is the
one LIST both checks share.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import islice
from typing import NamedTuple

import trio

from .errors import StoreError
from .journal import ROOT_INO, Inode, Txn
from .reconcile import Decision, Stamp
from .store.base import ObjectInfo

log = logging.getLogger("s3fuse.discovery")  # (discovery's log lines keep its name)

#: how long a lookup of a name the mount does not know waits for the bucket's listing
#: before it answers from what the mount knows (ENOENT)
NAME_CHECK_TIMEOUT_S = 1.5
#: a check lists a directory's whole subtree at once (``_tree_below``) when the mount
#: knows at most this many entries in it: one page, since pages come one after the
#: other and a listing that outlasts the TTL answers no check (its time is when it
#: began); a server slow to list pages that size (moto: 0.6 s for 1,000 keys, 30 ms
#: for a directory of 20) makes ``_relist_tree`` list the subtree alone again...
TREE_LIST_MAX_KEYS = 1000
#: ...for this long, as does a subtree found larger than that
TREE_TOO_BIG_S = 60.0
#: a directory listed less than this long ago was walked already (``_tree_below``)
WALKED_S = 5.0
#: what one more request costs, in entries of a listing (moto: 30 ms a LIST, 0.55 ms
#: an entry; S3: about 25 ms and 0.1 ms)
LIST_COST_ENTRIES = 50


class DirListing(NamedTuple):
    """What one listing of a directory showed, for close-to-open checks: taken at
    ``at`` (a reconciler stamp: when it began), ended at ``ended`` (trio clock)."""

    at: Stamp
    etags: dict[str, str]  # key -> ETag of the objects directly in the directory
    ended: float


def listed_subtree(txn: Txn, ino: int) -> Iterator[Inode]:
    """Directory ``ino`` (if it exists) and every directory below it that the mount
    has listed, each before those below it."""
    todo = [ino]
    while todo:
        d = txn.peek(todo.pop())
        if d is None:
            continue
        yield d
        if d.nlink > 2:  # (it has subdirectories; most directories are leaves)
            for _, child in txn.children(d.ino):
                c = txn.peek(child)
                if c is not None and stat.S_ISDIR(c.mode) and c.listed:
                    todo.append(child)


class CloseToOpenChecks:
    """The close-to-open half of ``Discovery`` (see the module docstring)."""

    async def relist_for_names(self, parent: int) -> bool:
        """A name was not found in ``parent``: if its listing is older than the TTL,
        list it again now and apply what changed (``_relist``), so a name created
        outside shows on lookup, not only at the next poll. One LIST per directory
        per TTL, shared by the lookups that miss meanwhile (git and Python imports
        look up many names that do not exist). A lookup waits for it at most
        ``NAME_CHECK_TIMEOUT_S`` and then answers from what the mount knows (the
        directory is not asked about again within the TTL); the listing itself goes
        on in the background (``_shared``), so a directory slower to list than that
        is still listed. True if a listing was applied."""
        if self.listed_within(parent, self.metadata_ttl_s) or self._made_here(parent):
            return False
        if await self._check(parent):
            return True
        log.info("no listing of directory %d within %s s to look for a name; answering "
                 "from what the mount knows", parent, NAME_CHECK_TIMEOUT_S)
        self.note_names_listed(parent, trio.current_time())
        return False

    async def _check(self, parent: int) -> bool:
        """Start the listing that checks directory ``parent``, or join the one
        running for it (or for a directory above it: ``_relist_tree``); True if it
        ended within ``NAME_CHECK_TIMEOUT_S``. Where the mount knows a small subtree
        below ``parent`` that was not walked a moment ago (``_tree_below``), that
        listing is one of the whole subtree, and checks of the directories in it
        join it."""
        if parent not in self._relisting:
            below = self._tree_below(parent)
            if below:
                return await self._shared(self._relisting, parent,
                                          lambda: self._relist_tree(parent, below), below)
        return await self._shared(self._relisting, parent, lambda: self._relist(parent))

    def _tree_below(self, parent: int) -> list[int]:
        """The directories below ``parent`` that one listing of its subtree would
        check with it, or none (``parent`` is then listed alone). A tool that walks
        a tree (``grep -r``, ``cp -r``, imports) then costs one request per small
        subtree and TTL instead of one per directory.

        Every directory the mount has listed there, when it knows at most
        ``TREE_LIST_MAX_KEYS`` entries in the subtree, no such listing found it
        larger or slow within ``TREE_TOO_BIG_S``, and the LISTs it spares are worth
        more than the entries it lists for nothing. A directory below that was
        listed less than ``WALKED_S`` ago is taken as walked already (``git
        status`` checks the files of every directory, then looks up
        ``.gitignore`` in each, top-down): its entries would be listed for
        nothing. Any other would need a LIST of its own, which costs about what
        ``LIST_COST_ENTRIES`` entries of a listing cost."""
        now = trio.current_time()
        if now - self._tree_too_big.get(parent, float("-inf")) < TREE_TOO_BIG_S:
            return []
        below: list[int] = []
        seen = spared = fresh_entries = 0
        with self.journal.read() as txn:
            top = txn.peek(parent)
            if top is None or top.nlink <= 2:
                return []  # no subdirectories: nothing to list with it
            for d in listed_subtree(txn, parent):
                # (counted up to the limit: a large directory is not read to its end)
                entries = sum(1 for _ in islice(txn.children(d.ino),
                                                TREE_LIST_MAX_KEYS + 1 - seen))
                seen += entries
                if seen > TREE_LIST_MAX_KEYS:
                    self._not_whole(parent)
                    return []
                if d.ino == parent:
                    continue
                below.append(d.ino)
                if self.listed_within(d.ino, WALKED_S):
                    fresh_entries += entries
                else:
                    spared += 1
        return below if spared * LIST_COST_ENTRIES > fresh_entries else []

    async def _relist_tree(self, parent: int, below: list[int]) -> None:
        """``_relist`` of ``parent`` and the directories ``below`` it at once
        (``poll_tree``, one page). If the bucket holds more under it, only
        ``parent`` is listed, and its subtree is not listed whole again within
        ``TREE_TOO_BIG_S``, nor is it after a listing that took more than half the
        TTL; the checks that joined for the directories below it then answer from
        what the mount knows, and their next check lists them."""
        started = trio.current_time()
        try:
            if not await self.poll_tree(parent, 1):
                self._not_whole(parent)
                await self.poll_dir(parent)
            elif trio.current_time() - started > self.metadata_ttl_s / 2:
                self._not_whole(parent)
        except StoreError as exc:
            log.info("cannot list directory %d and those below it to check them against "
                     "the bucket (%s)", parent, exc)
            for d in (parent, *below):
                self.note_names_listed(d, trio.current_time())

    def _not_whole(self, parent: int) -> None:
        """Directory ``parent``'s subtree is not listed whole for ``TREE_TOO_BIG_S``
        (too large, or slow to list)."""
        now = trio.current_time()
        if len(self._tree_too_big) >= 4096:
            for d in [d for d, t in self._tree_too_big.items() if now - t >= TREE_TOO_BIG_S]:
                del self._tree_too_big[d]
        self._tree_too_big[parent] = now

    async def _relist(self, parent: int) -> None:
        """The one LIST of ``parent`` both checks share (a lookup's missing name and
        an open's ETag check, run through ``_shared`` under ``_relisting``): it
        applies what changed, notes the names listed and keeps the ETags
        (``note_etags``), so one listing answers both for the TTL."""
        try:
            await self.poll_dir(parent)
        except StoreError as exc:
            # the bucket is away: answer from what the mount knows (not asked
            # again within the TTL); the poller catches up when it is back
            log.info("cannot list directory %d to check it against the bucket (%s)",
                     parent, exc)
            self.note_names_listed(parent, trio.current_time())

    def note_etags(self, parent: int, listed_at: Stamp, objects: Iterable[ObjectInfo]
                   ) -> None:
        """A listing of directory ``parent`` taken at ``listed_at`` and ending now
        showed ``objects``: their ETags answer close-to-open checks there for the
        TTL (and behind it, for lookups: ``listed_etags``)."""
        now = trio.current_time()
        if len(self._dir_etags) >= 1024:  # (a poller sweep notes every directory)
            cutoff = now - self.metadata_ttl_s
            for d in [d for d, snap in self._dir_etags.items() if snap.ended < cutoff]:
                del self._dir_etags[d]
            if len(self._dir_etags) >= 1024:
                self._dir_etags.pop(next(iter(self._dir_etags)))
        self._dir_etags[parent] = DirListing(listed_at, {o.key: o.etag for o in objects},
                                             now)

    def listed_within(self, ino: int, seconds: float) -> bool:
        """Directory ``ino``'s names were listed (and applied) less than ``seconds``
        ago."""
        return trio.current_time() - self._names_at.get(ino, float("-inf")) < seconds

    def _made_here(self, parent: int) -> bool:
        """Directory ``parent`` was made by this mount and the bucket has not had it
        yet (its marker is still to be uploaded): no name in it can be in the bucket
        unless a writer outside creates keys under a prefix the bucket never showed,
        which the poller shows and the S3-wins rules settle. Such directories are not
        re-listed for missing names (git makes its object directories and then looks
        up many names in them that do not exist yet). The same test also covers a
        directory known from the bucket without a marker whose attributes this mount
        changed (its marker is pending too): until that upload, names created there
        outside show at the next poll, not at a lookup."""
        with self.journal.read() as txn:
            d = txn.peek(parent)
        return d is not None and parent != ROOT_INO and d.dirty != 0 \
            and d.remote_key is None and d.meta_loaded

    async def _shared(self, running: dict[int, tuple[trio.Event, float]], parent: int,
                      work: Callable[[], Awaitable[None]], also: Iterable[int] = ()
                      ) -> bool:
        """Run ``work`` for directory ``parent`` unless it runs already (``running``
        holds its end event and when it started; a run that starts is registered
        for the directories ``also`` it covers too, where none runs), and wait for it until
        ``NAME_CHECK_TIMEOUT_S`` after it started; True if it ended meanwhile. A
        caller that joins a run the bucket is already slow to answer waits no longer
        than the one that started it: without that, when a listing takes longer than
        the TTL (a large directory on a loaded server), every lookup of an ``ls -l``
        waited the whole timeout. It runs in the daemon's nursery, so a caller that
        stops waiting does not cancel it (without one, in core tests, it runs in the
        caller). An unexpected error in it is logged, never raised into the nursery."""
        now = trio.current_time()
        done, started = running.get(parent, (None, now))
        inline = None
        if done is None:
            done = trio.Event()
            mine = [d for d in (parent, *also) if d not in running]
            for d in mine:
                running[d] = (done, started)

            async def run() -> None:
                try:
                    await work()
                except Exception:  # noqa: BLE001 - a background listing must not crash the mount
                    log.exception("listing directory %d failed", parent)
                finally:
                    for d in mine:
                        del running[d]
                    done.set()

            if self.meta_loads.nursery is not None:
                self.meta_loads.nursery.start_soon(run)
            else:
                inline = run
        with trio.move_on_at(started + NAME_CHECK_TIMEOUT_S):
            await (inline() if inline is not None else done.wait())
            return True
        return False

    def note_names_listed(self, ino: int, at: float) -> None:
        """The names of directory ``ino`` are known as of ``at`` (a listing)."""
        if len(self._names_at) >= 4096:
            cutoff = trio.current_time() - self.metadata_ttl_s
            for d in [d for d, t in self._names_at.items() if t < cutoff]:
                del self._names_at[d]
        self._names_at[ino] = at

    def _recheck_due(self, inode: Inode) -> bool:
        """``recheck`` asks the bucket about ``inode`` (does not answer None)."""
        return stat.S_ISREG(inode.mode) and not inode.dirty and inode.nlink > 0 \
            and inode.remote_key is not None and inode.remote_etag is not None \
            and not inode.links and trio.current_time() \
            - self.reconciler.checked_since(inode.ino) >= self.metadata_ttl_s

    async def recheck(self, inode: Inode, at_lookup: bool = False) -> Decision | None:
        """Close-to-open for a clean regular file whose state is older than the TTL
        (at ``open``, and at a lookup of its name: ``at_lookup``): one LIST of its
        directory, shared by every check there within the TTL (git, a build: many
        files in few directories), and a HEAD only where the listing shows another
        ETag or no object; what the bucket holds is applied (``Reconciler``). At a
        lookup, a listing behind the TTL may answer (``listed_etags``). KEEP when in
        date, not judged here (dirty files: their upload's condition judges them;
        hard-linked ones: the poller), or when the bucket does not answer within
        ``NAME_CHECK_TIMEOUT_S``: the mount then serves what it has. None when it is
        not due (nothing asked, nothing changed): the one place that decides it."""
        ino = inode.ino
        if not self._recheck_due(inode):
            return None
        key = inode.remote_key
        with trio.move_on_after(NAME_CHECK_TIMEOUT_S):
            listed = await self.listed_etags(inode.parent, behind=at_lookup)
            if listed is not None and listed.etags.get(key) == inode.remote_etag \
                    and not self.reconciler.newer_than(ino, listed.at):
                self.reconciler.note_bucket_state(ino, listed.at)
                return Decision.KEEP
            try:
                return await self.reconciler.observe(ino, key)
            except StoreError as exc:
                log.info("cannot check %s against the bucket (%s); serving the cached "
                         "version", key, exc)
                return Decision.KEEP
        log.info("no answer from the bucket within %s s to check %s; serving the cached "
                 "version", NAME_CHECK_TIMEOUT_S, key)
        return Decision.KEEP

    async def listed_etags(self, parent: int, behind: bool = False) -> DirListing | None:
        """The objects directly in directory ``parent`` (their ETags), from a LIST
        taken less than the TTL ago (one LIST is shared by every open that needs it);
        None if it cannot be listed. ``behind``: the last listing also answers while
        it is behind the TTL but refreshed in the background (``_answers_behind``)."""
        snap = self._dir_etags.get(parent)
        asked = trio.current_time()
        if snap is not None and (asked - snap.at[1] < self.metadata_ttl_s
                                 or behind and self._answers_behind(parent, snap)):
            return snap
        if not await self._check(parent):
            return None
        snap = self._dir_etags.get(parent)
        # only a listing begun less than the TTL before this check answers it: not the
        # one before a listing that failed, nor a running one it joined that began
        # earlier (a directory slower to list than the TTL): the caller asks the object
        return snap if snap is not None and asked - snap.at[1] < self.metadata_ttl_s \
            else None

    def _answers_behind(self, parent: int, snap: DirListing) -> bool:
        """The last listing of directory ``parent`` (``snap``), older than the TTL,
        answers a lookup's check while it ended less than the TTL ago or while the
        listing that replaces it runs, if that one started before then; the
        replacement starts here, in the background, so a lookup does not wait. In a
        directory that takes longer than the TTL to list (thousands of entries on a
        slow server), waiting made every lookup whose kernel entry had expired wait
        for a listing: ``rm -rf`` of 2,000 files on moto took 10-14 s instead of
        under 3 s. What a lookup then shows may be older than the TTL by up to about
        two listings' time; ``open`` still waits for a listing within the TTL."""
        now = trio.current_time()
        running = self._relisting.get(parent)
        if running is not None:
            return running[1] < snap.ended + self.metadata_ttl_s
        if now - snap.ended >= self.metadata_ttl_s:
            return False
        if self.meta_loads.nursery is not None:
            self.meta_loads.nursery.start_soon(self._check_behind, parent)
        return True

    async def _check_behind(self, parent: int) -> None:
        """``_check`` in the background (``_answers_behind``)."""
        try:
            await self._check(parent)
        except Exception:  # noqa: BLE001 - a background listing must not crash the mount
            log.exception("listing directory %d in the background failed", parent)
