"""A directory slower to list than a lookup is willing to wait (NAME_CHECK_TIMEOUT_S)
is still listed: the re-list that close-to-open for names and for files starts goes
on in the background after the waiting lookup gave up. Before, each waiter's timeout
cancelled the listing, so a slow directory was never listed again and every miss in
it waited the full timeout (found by the benchmark's rm -rf of a 5,000-entry
directory on a loaded moto)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from core_rig import Rig
from s3fuse.discovery_checks import NAME_CHECK_TIMEOUT_S
from s3fuse.errors import FsError
from s3fuse.journal import ROOT_INO
from s3fuse.store.memory import MemoryStore


def _slow_lists(rig: Rig, seconds: float, as_at_start: bool = False) -> dict[str, int]:
    """Every LIST of the mount takes ``seconds`` more (on the trio clock); it shows
    the bucket as it was at its end, or ``as_at_start``."""
    remote = rig.fs.discovery.remote
    real = remote.list_all
    seen = {"lists": 0, "done": 0}

    async def list_all(*args, **kwargs):
        seen["lists"] += 1
        if as_at_start:
            page = await real(*args, **kwargs)
        await trio.sleep(seconds)
        if not as_at_start:
            page = await real(*args, **kwargs)
        seen["done"] += 1
        return page

    remote.list_all = list_all
    return seen


def on_mock_clock(tmp_path, store: MemoryStore, scenario) -> None:
    """Run ``scenario(rig, nursery)`` on a MockClock, with the rig's prefetches and
    background listings running in ``nursery`` (as in the daemon's), which is
    cancelled when the scenario returns."""

    async def main():
        rig = Rig(tmp_path, store)
        try:
            async with trio.open_nursery() as nursery:
                rig.fs.meta_loads.nursery = nursery
                await scenario(rig, nursery)
                nursery.cancel_scope.cancel()
        finally:
            rig.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("lookup_twice", [False, True])
def test_a_slow_directory_is_still_listed_for_a_missing_name(tmp_path, lookup_twice):
    store = MemoryStore()
    store.put("d/a", b"a", {})

    async def scenario(rig: Rig, nursery: trio.Nursery) -> None:
        d = await rig.fs.lookup(ROOT_INO, b"d")
        await rig.fs.lookup(d.ino, b"a")  # d is listed
        store.put("d/new", b"outside", {})  # an outside writer
        await trio.sleep(2.0)  # the listing is older than the TTL now
        seen = _slow_lists(rig, NAME_CHECK_TIMEOUT_S + 1.0)
        started = trio.current_time()
        with pytest.raises(FsError) as exc:
            await rig.fs.lookup(d.ino, b"new")
        assert exc.value.errno == errno.ENOENT
        # the lookup waited no longer than the timeout...
        assert trio.current_time() - started == pytest.approx(NAME_CHECK_TIMEOUT_S)
        if lookup_twice:  # (a second miss meanwhile waits on the same listing)
            with pytest.raises(FsError):
                await rig.fs.lookup(d.ino, b"other")
        # ...and the listing went on and was applied
        await trio.sleep(1.5)
        assert seen == {"lists": 1, "done": 1}
        inode = await rig.fs.lookup(d.ino, b"new")
        assert inode.size == len(b"outside")

    on_mock_clock(tmp_path, store, scenario)


def test_a_directory_made_here_is_not_listed_for_missing_names_until_uploaded(tmp_path):
    """git makes .git/objects/xx and then looks up many names there that do not exist
    yet: while the bucket has never had the directory (its marker is not uploaded),
    a miss there costs no LIST. Once it is in the bucket, misses list it again (one
    LIST per TTL), so names created there outside show on lookup."""
    store = MemoryStore()

    async def scenario(rig: Rig, nursery: trio.Nursery) -> None:
        await nursery.start(rig.flusher.run)
        d = await rig.fs.mkdir(ROOT_INO, b"objects", 0o755, 1000, 1000)
        await trio.sleep(2.0)  # older than the TTL
        lists = store.counts.get("list", 0)
        for i in range(20):
            with pytest.raises(FsError):
                await rig.fs.lookup(d.ino, b"tmp_obj_%d" % i)
            await trio.sleep(0.5)
        assert store.counts.get("list", 0) == lists
        assert await rig.flusher.drain(60.0)
        assert rig.fs.get(d.ino).remote_key is not None  # in the bucket now
        store.put("objects/outside", b"x", {})
        await trio.sleep(2.0)
        inode = await rig.fs.lookup(d.ino, b"outside")
        assert inode.size == 1
        assert store.counts.get("list", 0) > lists

    on_mock_clock(tmp_path, store, scenario)


def test_lookups_of_files_wait_once_for_a_slow_listing_and_still_see_outside_changes(
        tmp_path):
    """Close-to-open at lookups of clean files, when their directory takes longer to
    list than the timeout (a 5,000-entry directory on a loaded moto): the lookup that
    starts the LIST waits the timeout, the ones after it do not wait again for that
    LIST (before, an ``ls -l`` waited the whole timeout for every entry: 5,000 x 1.5 s);
    they check their file with a HEAD instead, so an outside change still shows."""
    store = MemoryStore()
    for i in range(10):
        store.put(f"d/f{i}", b"x", {})

    async def scenario(rig: Rig, nursery: trio.Nursery) -> None:
        d = await rig.fs.lookup(ROOT_INO, b"d")
        for i in range(10):
            await rig.fs.lookup(d.ino, b"f%d" % i)  # attributes loaded
        store.put("d/f7", b"changed outside", {})
        await trio.sleep(2.0)  # older than the TTL: lookups check again
        _slow_lists(rig, 3 * NAME_CHECK_TIMEOUT_S)
        started = trio.current_time()
        sizes = [(await rig.fs.lookup(d.ino, b"f%d" % i)).size for i in range(10)]
        assert trio.current_time() - started < NAME_CHECK_TIMEOUT_S + 0.5
        assert sizes[7] == len(b"changed outside")
        assert sizes[:7] + sizes[8:] == [1] * 9

    on_mock_clock(tmp_path, store, scenario)


def test_the_poller_skips_a_directory_a_check_just_listed(tmp_path):
    """A lookup's check lists a directory (and applies what changed): the poller's
    sweep right after it does not list it again; the next sweep does."""
    from s3fuse.discovery import Poller

    store = MemoryStore()
    store.put("d/a", b"a", {})

    async def scenario(rig: Rig, nursery: trio.Nursery) -> None:
        remote = rig.fs.discovery.remote
        real = remote.list_all
        listed: list[tuple[float, str]] = []

        async def list_all(prefix, *args, **kwargs):
            listed.append((trio.current_time(), prefix))
            return await real(prefix, *args, **kwargs)

        remote.list_all = list_all
        poller = Poller(rig.fs.discovery, 30.0)
        nursery.start_soon(poller.run)  # sweeps at 30 s, 60 s, ...
        d = await rig.fs.lookup(ROOT_INO, b"d")
        await rig.fs.lookup(d.ino, b"a")  # d is listed, and in use
        await trio.sleep(25.0)
        with pytest.raises(FsError):  # a miss past the TTL: d is listed again
            await rig.fs.lookup(d.ino, b"missing")
        await trio.sleep(20.0)  # the first sweep is over (t = 45 s)
        assert [t for t, p in listed if p == "d/"] == [0.0, 25.0]
        rig.fs.discovery.note_used(d.ino)
        await trio.sleep(30.0)  # the second sweep lists it (t = 75 s)
        later = [t for t, p in listed if p == "d/"][2:]
        assert len(later) == 1 and 60.0 <= later[0] < 75.0, later
        poller.stop()

    on_mock_clock(tmp_path, store, scenario)


def test_lookups_in_a_directory_slower_to_list_than_the_ttl_do_not_wait(tmp_path):
    """``rm -rf`` of a directory that takes longer than the TTL to list (2,000
    entries on moto): each unlink whose kernel entry had expired made a lookup that
    waited for a new listing, since a listing that outlasts the TTL answers no check
    by its start (rm -rf of 2,000 files: 10-19 s, under 4 s without the waits). Now a
    lookup's check answers from the last listing while it ended less than the TTL ago
    or its successor runs, and starts that successor itself: after the first wait,
    lookups go on at once, while the listings follow one another in the background.
    What changed outside still shows, at lookups within the TTL plus about two
    listings' time, and at ``open`` as soon as a listing that started after the
    change is in (``open`` still waits for one within the TTL)."""
    store = MemoryStore()
    for i in range(10):
        store.put(f"d/f{i}", b"x", {})
    listing_s = 1.2  # longer than the TTL (1 s), shorter than NAME_CHECK_TIMEOUT_S

    async def scenario(rig: Rig, nursery: trio.Nursery) -> None:
        ttl = rig.fs.discovery.metadata_ttl_s
        d = await rig.fs.lookup(ROOT_INO, b"d")
        for i in range(10):
            await rig.fs.lookup(d.ino, b"f%d" % i)  # attributes loaded
        await trio.sleep(2.0)  # older than the TTL, and quiet
        seen = _slow_lists(rig, listing_s, as_at_start=True)
        started = trio.current_time()
        await rig.fs.lookup(d.ino, b"f0")  # the first check waits for a listing
        assert trio.current_time() - started == pytest.approx(listing_s)
        assert seen["done"] == 1
        changed_at = None
        waited = []
        for step in range(60):  # 12 s of lookups, one every 0.2 s
            if step == 10:
                store.put("d/f3", b"changed outside", {})
                changed_at = trio.current_time()
            t = trio.current_time()
            sizes = [(await rig.fs.lookup(d.ino, b"f%d" % i)).size
                     for i in range(10)]
            waited.append(trio.current_time() - t)
            if changed_at is not None and sizes[3] != 1:
                shown_after = trio.current_time() - changed_at
                break
            await trio.sleep(0.2)
        else:
            raise AssertionError("the outside change never showed at a lookup")
        assert max(waited) == 0, waited
        assert shown_after <= ttl + 2 * listing_s + 0.2, shown_after
        assert sizes[:3] + sizes[4:] == [1] * 9
        # the listings ran one after another meanwhile, not one per lookup
        assert seen["lists"] <= 2 + (trio.current_time() - started) / listing_s
        # open is close-to-open: a change made the TTL before it shows, though
        # the listing that runs then began before the change
        f5 = (await rig.fs.lookup(d.ino, b"f5")).ino
        lists = seen["lists"]
        for _ in range(300):
            await rig.fs.lookup(d.ino, b"f5")
            if seen["lists"] > lists:
                break  # a listing just began
            await trio.sleep(0.01)
        store.put("d/f5", b"changed outside too", {})
        await trio.sleep(ttl)
        assert d.ino in rig.fs.discovery._relisting  # (that listing runs)
        assert rig.fs.get(f5).size == 1
        await rig.fs.revalidate(f5)
        assert rig.fs.get(f5).size == len(b"changed outside too")

    on_mock_clock(tmp_path, store, scenario)


def test_a_listing_that_failed_does_not_answer_an_open(tmp_path):
    """The last listing answers lookups while its successor runs; if that successor
    fails (the bucket is away), an open's check must not take the older listing for
    the new one: it asks the object itself (a HEAD), and sees the change."""
    from s3fuse.errors import TransientStoreError

    store = MemoryStore()
    store.put("d/a", b"a", {})

    async def scenario(rig: Rig, nursery: trio.Nursery) -> None:
        remote = rig.fs.discovery.remote
        real = remote.list_all
        d = await rig.fs.lookup(ROOT_INO, b"d")
        a = await rig.fs.lookup(d.ino, b"a")
        await trio.sleep(2.0)
        store.put("d/a", b"changed outside", {})

        async def failing(*args, **kwargs):
            raise TransientStoreError("the bucket is away")

        remote.list_all = failing
        assert await rig.fs.revalidate(a.ino) is True
        assert rig.fs.get(a.ino).size == len(b"changed outside")
        remote.list_all = real

    on_mock_clock(tmp_path, store, scenario)
