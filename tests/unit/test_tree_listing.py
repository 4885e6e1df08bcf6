"""Close-to-open checks of a small subtree share one listing of it: a lookup or an
open past the TTL in a directory whose subtree the mount knows to be small (and did
not walk a moment ago) lists every key below it at once (no delimiter) and applies
that listing to every directory in it (``Discovery.poll_tree``), so ``grep -r`` or
imports cost one request per small subtree and TTL instead of one LIST per
directory; ``git status``, which checks every directory's files before it looks up
``.gitignore`` from the top, lists each directory alone. What each directory is told
must be exactly what its own listing would have said (``split_listing``): a wrong
split would delete files the bucket still has."""

from __future__ import annotations

import errno
import os

import pytest
import trio
import trio.testing
from core_rig import Rig
from hypothesis import given, settings
from hypothesis import strategies as st

from s3fuse import discovery_checks
from s3fuse.discovery import split_listing
from s3fuse.errors import FsError
from s3fuse.journal import ROOT_INO
from s3fuse.store.memory import MemoryStore

TTL_PAST = 2.0  # seconds on the mock clock: every listing is older than the TTL


def listed(store: MemoryStore, prefix: str) -> tuple[list[str], list[str]]:
    """(common prefixes, keys) of a delimited listing of ``prefix``, every page."""
    prefixes: list[str] = []
    objects: list[str] = []
    token = None
    while True:
        page = store.list(prefix, "/", token, max_keys=3)
        prefixes += page.prefixes
        objects += [o.key for o in page.objects]
        token = page.next_token
        if token is None:
            return prefixes, objects


def every_prefix(store: MemoryStore, root: str) -> list[str]:
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += listed(store, p)[0]
    return found


segment = st.sampled_from(["a", "b", "é", "", "a.b", "zz"])
key = st.lists(segment, min_size=1, max_size=4).map("/".join)
trailing = st.booleans()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(key, trailing), max_size=25), st.sampled_from(["", "a/", "b/a/"]))
def test_a_subtree_listing_splits_into_each_directory_s_own_listing(keys_, root):
    store = MemoryStore()
    for k, slash in keys_:
        if k + "/" * slash:
            store.put(k + "/" if slash else k, b"", {})
    everything = []
    token = None
    while True:
        page = store.list(root, None, token, max_keys=4)
        everything += page.objects
        token = page.next_token
        if token is None:
            break
    wanted = every_prefix(store, root) + [root + "never/"]
    split = split_listing(root, everything, wanted)
    for p in wanted:
        prefixes, objects = split[p]
        assert (prefixes, [o.key for o in objects]) == listed(store, p), p


def tree(store: MemoryStore) -> None:
    """A project: 3 levels, 12 directories, a few files each."""
    for top in ("src", "docs", "tests"):
        for sub in ("x", "y", "z"):
            for f in ("a.py", "b.py"):
                store.put(f"proj/{top}/{sub}/{f}", b"v1 " + f.encode(), {})
        store.put(f"proj/{top}/README", b"readme", {})
    store.put("proj/setup.py", b"setup", {})


async def walk(rig: Rig, ino: int) -> dict[str, int]:
    """Look up every entry below ``ino`` (as ``git status`` lstats every file):
    {relative path: inode}."""
    out: dict[str, int] = {}
    todo = [(ino, "")]
    while todo:
        d, path = todo.pop()
        fh = await rig.fs.opendir(d)
        names = [n for n, _, _ in rig.fs.readdir(fh, 0)]
        rig.fs.releasedir(fh)
        for n in names:
            child = await rig.fs.lookup(d, n)
            out[path + n.decode()] = child.ino
            if child.mode & 0o040000:
                todo.append((child.ino, path + n.decode() + "/"))
    return out


async def lists_to_open(rig: Rig, d: int) -> int:
    """LISTs an open of the first file of directory ``d`` makes (its check)."""
    with rig.journal.read() as txn:
        name = next(n for n, c in txn.children(d) if txn.get(c).mode & 0o100000)
    before = rig.store.counts["list"]
    inode = await rig.fs.lookup(d, name)
    fh, _ = await rig.fs.open(inode.ino, os.O_RDONLY)
    await rig.fs.release(fh)
    return rig.store.counts["list"] - before


async def lists_to_miss(rig: Rig, d: int) -> int:
    """LISTs a lookup of a name directory ``d`` does not hold makes."""
    before = rig.store.counts["list"]
    with pytest.raises(FsError) as exc:
        await rig.fs.lookup(d, b"missing")  # (git looks up many missing names)
    assert exc.value.errno == errno.ENOENT
    return rig.store.counts["list"] - before


async def stale_tree(rig: Rig, top: bytes) -> int:
    """Look up every entry below ``top`` (so the mount has listed it all), then let
    the TTL pass, and the time after which that walk is not recent any more;
    returns ``top``'s inode."""
    d = await rig.fs.lookup(ROOT_INO, top)
    await walk(rig, d.ino)
    await trio.sleep(discovery_checks.WALKED_S + TTL_PAST)
    return d.ino


def spy_listings(rig: Rig, delay: float = 0.0) -> list[tuple[str, str | None]]:
    """(prefix, delimiter) of every listing the mount makes from now on, each taking
    ``delay`` more seconds."""
    remote = rig.fs.discovery.remote
    real = remote.list_upto
    listed: list[tuple[str, str | None]] = []

    async def spy(prefix, delimiter, max_pages):
        listed.append((prefix, delimiter))
        await trio.sleep(delay)
        return await real(prefix, delimiter, max_pages)

    remote.list_upto = spy
    return listed


def run(tmp_path, store, scenario):
    async def main():
        rig = Rig(tmp_path, store)
        try:
            async with trio.open_nursery() as nursery:
                rig.fs.meta_loads.nursery = nursery
                await scenario(rig)
                nursery.cancel_scope.cancel()
        finally:
            rig.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_walk_past_the_ttl_lists_the_subtree_once_and_sees_outside_changes(tmp_path):
    store = MemoryStore()
    tree(store)

    async def scenario(rig: Rig):
        proj = await rig.fs.lookup(ROOT_INO, b"proj")
        first = await walk(rig, proj.ino)  # every directory listed once
        assert len(first) == 3 + 9 + 18 + 3 + 1
        await trio.sleep(discovery_checks.WALKED_S + TTL_PAST)
        # outside: a new file deep down, one changed, one deleted, a new directory
        store.put("proj/src/y/new.py", b"outside", {})
        store.put("proj/docs/x/a.py", b"v2 changed outside", {})
        store.delete("proj/tests/z/b.py")
        store.put("proj/tests/w/c.py", b"in a new directory", {})
        before = store.counts["list"]
        # grep -r opens proj's own files first: 38 keys, one page, every directory
        assert await lists_to_open(rig, proj.ino) == 1
        src = await rig.fs.lookup(proj.ino, b"src")
        y = await rig.fs.lookup(src.ino, b"y")
        assert (await rig.fs.lookup(y.ino, b"new.py")).size == len(b"outside")
        docs_x = await rig.fs.lookup((await rig.fs.lookup(proj.ino, b"docs")).ino, b"x")
        a = await rig.fs.lookup(docs_x.ino, b"a.py")
        fh, _ = await rig.fs.open(a.ino, os.O_RDONLY)
        assert await rig.fs.read(fh, 0, 100) == b"v2 changed outside"
        await rig.fs.release(fh)
        tests_ = await rig.fs.lookup(proj.ino, b"tests")
        z = await rig.fs.lookup(tests_.ino, b"z")
        with pytest.raises(FsError) as exc:
            await rig.fs.lookup(z.ino, b"b.py")
        assert exc.value.errno == errno.ENOENT
        w = await rig.fs.lookup(tests_.ino, b"w")
        assert (await rig.fs.lookup(w.ino, b"c.py")).size == len(b"in a new directory")
        # every other lookup and open below proj within the TTL: no LIST
        again = await walk(rig, proj.ino)
        assert store.counts["list"] - before == 1 + 1  # (w itself: never listed before)
        assert set(again) - set(first) == {"src/y/new.py", "tests/w", "tests/w/c.py"}
        assert set(first) - set(again) == {"tests/z/b.py"}

    run(tmp_path, store, scenario)


def test_a_subtree_the_mount_knows_to_be_large_is_listed_one_directory_at_a_time(
        tmp_path, monkeypatch):
    monkeypatch.setattr(discovery_checks, "TREE_LIST_MAX_KEYS", 10)
    store = MemoryStore()
    tree(store)

    async def scenario(rig: Rig):
        proj = await stale_tree(rig, b"proj")
        assert await lists_to_open(rig, proj) == 1
        src = await rig.fs.lookup(proj, b"src")
        # src's subtree is small enough (10 entries): its own check lists it whole
        assert await lists_to_open(rig, src.ino) == 1
        x = await rig.fs.lookup(src.ino, b"x")
        assert await lists_to_open(rig, x.ino) == 0

    run(tmp_path, store, scenario)


def test_a_subtree_grown_large_outside_falls_back_to_its_own_directory(tmp_path):
    """The mount expected one page; the bucket has three: the check lists the
    directory alone (the cut listing is not applied), then lists no subtree there
    for TREE_TOO_BIG_S, and every directory below still gets checked."""
    store = MemoryStore()
    tree(store)

    async def scenario(rig: Rig):
        proj = await stale_tree(rig, b"proj")
        for i in range(2100):
            store.put(f"proj/docs/y/gen/{i:05}", b"", {})
        store.put("proj/src/x/new.py", b"outside", {})
        assert await lists_to_open(rig, proj) == 1 + 1  # a page of the tree, then proj
        src = await rig.fs.lookup(proj, b"src")
        x = await rig.fs.lookup(src.ino, b"x")
        assert (await rig.fs.lookup(x.ino, b"new.py")).size == len(b"outside")
        docs = await rig.fs.lookup(proj, b"docs")
        y = await rig.fs.lookup(docs.ino, b"y")
        assert (await rig.fs.lookup(y.ino, b"gen")).mode & 0o040000
        await trio.sleep(TTL_PAST)
        assert await lists_to_open(rig, proj) == 1  # proj alone, as it is too big now

    run(tmp_path, store, scenario)


def test_checks_below_a_running_subtree_listing_join_it(tmp_path):
    """While the listing of a subtree runs, checks in the directories it covers
    (here lookups of names they do not hold) wait for it instead of listing their
    own directory."""
    store = MemoryStore()
    tree(store)

    async def scenario(rig: Rig):
        proj = await rig.fs.lookup(ROOT_INO, b"proj")
        await walk(rig, proj.ino)
        src = await rig.fs.lookup(proj.ino, b"src")
        x = await rig.fs.lookup(src.ino, b"x")
        await trio.sleep(discovery_checks.WALKED_S + TTL_PAST)
        store.put("proj/src/x/new.py", b"outside", {})
        listed = spy_listings(rig, 0.5)
        before = store.counts["list"]
        found = {}

        async def miss(d, name):
            with pytest.raises(FsError):
                await rig.fs.lookup(d, name)

        async def hit():
            found["new"] = await rig.fs.lookup(x.ino, b"new.py")

        async def opened(d):
            await lists_to_open(rig, d)

        async with trio.open_nursery() as n:
            n.start_soon(opened, proj.ino)
            await trio.sleep(0.1)
            n.start_soon(hit)
            n.start_soon(miss, src.ino, b"nothing")
        assert listed == [("proj/", None)] and store.counts["list"] - before == 1
        assert found["new"].size == len(b"outside")

    run(tmp_path, store, scenario)


def test_a_large_directory_with_one_small_subdirectory_is_listed_alone(tmp_path):
    """Two pages of its subtree would spare one LIST (its subdirectory's): the
    check lists the directory alone."""
    store = MemoryStore()
    for i in range(1500):
        store.put(f"big/f{i:04}", b"", {})
    store.put("big/sub/x", b"x", {})

    async def scenario(rig: Rig):
        big = await stale_tree(rig, b"big")
        assert await lists_to_open(rig, big) == 2  # its own two pages, not the tree's
        sub = await rig.fs.lookup(big, b"sub")
        assert await lists_to_open(rig, sub.ino) == 1

    run(tmp_path, store, scenario)


def test_a_subtree_slow_to_list_is_then_listed_one_directory_at_a_time(tmp_path):
    """A listing's time is when it began: one that takes more than half the TTL
    leaves its answers stale soon after it ends, so the next checks there list
    the directory alone (for TREE_TOO_BIG_S)."""
    store = MemoryStore()
    tree(store)

    async def scenario(rig: Rig):
        proj = await stale_tree(rig, b"proj")
        listed = spy_listings(rig, 0.6)
        assert await lists_to_open(rig, proj) == 1
        await trio.sleep(TTL_PAST)
        assert await lists_to_open(rig, proj) == 1
        await trio.sleep(discovery_checks.WALKED_S)
        src = await rig.fs.lookup(proj, b"src")
        assert await lists_to_open(rig, src.ino) == 1
        # the tree (slowly), then proj alone, then src's own tree
        assert listed == [("proj/", None), ("proj/", "/"), ("proj/src/", None)]

    run(tmp_path, store, scenario)


def test_git_status_s_missing_names_after_its_checks_list_each_directory_alone(tmp_path):
    """git status checks the files of every directory, then looks up .gitignore in
    each directory it scans, top-down: a directory whose subdirectories were all
    walked a moment ago is listed alone for its miss."""
    store = MemoryStore()
    for sub in ("x", "y", "z"):
        for f in ("a.py", "b.py"):
            store.put(f"proj/pkg/{sub}/{f}", b"v1", {})

    async def scenario(rig: Rig):
        proj = await stale_tree(rig, b"proj")
        pkg = await rig.fs.lookup(proj, b"pkg")
        leaves = [await rig.fs.lookup(pkg.ino, n) for n in (b"x", b"y", b"z")]
        listed = spy_listings(rig)
        for leaf in leaves:
            assert await lists_to_open(rig, leaf.ino) == 1
        assert await lists_to_miss(rig, pkg.ino) == 1
        assert listed == [("proj/pkg/x/", "/"), ("proj/pkg/y/", "/"), ("proj/pkg/z/", "/"),
                          ("proj/pkg/", "/")]

    run(tmp_path, store, scenario)


def test_a_subtree_whose_directories_were_just_listed_is_not_listed_again(tmp_path):
    """The subdirectory was listed a moment ago (its 100 entries stay in date for
    most of the TTL): the check of its parent lists the parent alone."""
    store = MemoryStore()
    store.put("proj/a", b"a", {})
    for i in range(100):
        store.put(f"proj/big/f{i:03}", b"", {})

    async def scenario(rig: Rig):
        proj = await stale_tree(rig, b"proj")
        big = await rig.fs.lookup(proj, b"big")
        listed = spy_listings(rig)
        assert await lists_to_open(rig, big.ino) == 1
        assert await lists_to_open(rig, proj) == 1
        assert listed == [("proj/big/", "/"), ("proj/", "/")]

    run(tmp_path, store, scenario)


@pytest.mark.parametrize("change", ["rename", "unlink", "create"])
def test_a_subtree_listing_taken_while_the_mount_changes_names_is_not_believed(
        tmp_path, change):
    """The mount renames, removes or creates a file below while the subtree's
    listing is on its way: what the listing says of those names is older than the
    mount's change and must not bring back the old name, nor drop the new one."""
    store = MemoryStore()
    tree(store)

    async def scenario(rig: Rig):
        proj = await stale_tree(rig, b"proj")
        src = await rig.fs.lookup(proj, b"src")
        x = await rig.fs.lookup(src.ino, b"x")
        spy_listings(rig, 0.3)

        async def change_names():
            await trio.sleep(0.1)  # (the listing is on its way)
            if change == "rename":
                await rig.fs.rename(x.ino, b"a.py", x.ino, b"c.py")
            elif change == "unlink":
                await rig.fs.unlink(x.ino, b"a.py")
            else:
                await rig.write_file(x.ino, b"c.py", b"new here")

        async with trio.open_nursery() as n:
            n.start_soon(lists_to_open, rig, proj)
            n.start_soon(change_names)
        with rig.journal.read() as txn:
            names = sorted(n for n, _ in txn.children(x.ino))
        want = {"rename": [b"b.py", b"c.py"], "unlink": [b"b.py"],
                "create": [b"a.py", b"b.py", b"c.py"]}[change]
        assert names == want
        async with trio.open_nursery() as n:
            await n.start(rig.flusher.run)
            assert await rig.flusher.drain(120)
            n.cancel_scope.cancel()
        keys = sorted(k for k in store.snapshot() if k.startswith("proj/src/x/"))
        assert keys == ["proj/src/x/" + w.decode() for w in want]

    run(tmp_path, store, scenario)
