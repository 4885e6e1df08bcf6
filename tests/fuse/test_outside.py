"""Outside writers: S3 wins, nothing is lost. Through real mounts, on both backends.

Writes and deletes made directly in the bucket while a file on the mount is clean,
dirty, open for reading or open for writing; then what the mount shows, what the
bucket holds, and what ``.s3fuse/lost+found`` keeps. Also two mounts of one bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from mounts import S3FUSE, Mount, make_mount

FAST = ["--poll-interval", "0.3", "--metadata-ttl", "0.2"]


def wait_for(predicate, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, body: bytes) -> None:
    with open(path, "wb") as f:
        f.write(body)


def lost_found(m: Mount) -> dict[str, bytes]:
    d = m.p(".s3fuse/lost+found")
    if not os.path.isdir(d):
        return {}
    return {name: read(os.path.join(d, name)) for name in os.listdir(d)}


def status(m: Mount) -> dict:
    res = subprocess.run([S3FUSE, "status", "--json", m.path], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def fast(unmounted: Mount, window: str = "1") -> Mount:
    unmounted.extra_args = FAST + ["--flush-window", window]
    unmounted.mount()
    return unmounted


def test_clean_file_changed_outside_is_seen_on_open(unmounted):
    m = fast(unmounted)
    write(m.p("doc"), b"one")
    m.sync()
    m.put("doc", b"two, from outside")
    time.sleep(0.3)
    assert read(m.p("doc")) == b"two, from outside"  # close-to-open
    wait_for(lambda: os.path.getsize(m.p("doc")) == len(b"two, from outside"),
             what="the new size")
    m.umount()
    assert m.objects() == {"doc": b"two, from outside"}


def test_objects_created_and_deleted_outside_show_up(unmounted):
    m = fast(unmounted)
    write(m.p("mine"), b"m")
    os.mkdir(m.p("sub"))
    m.sync()
    assert sorted(os.listdir(m.path)) == ["mine", "sub"]
    m.put("theirs", b"t")
    m.put("sub/deep", b"d")
    m.put("newdir/x", b"x")
    wait_for(lambda: sorted(os.listdir(m.path)) == ["mine", "newdir", "sub", "theirs"],
             what="new objects in the listing")
    assert read(m.p("theirs")) == b"t"
    wait_for(lambda: os.listdir(m.p("sub")) == ["deep"], what="new object in sub/")
    store, prefix = m.store()
    store.delete(prefix + "mine")
    store.close()
    wait_for(lambda: not os.path.exists(m.p("mine")), what="the outside delete")
    m.umount()
    assert set(m.objects()) == {"theirs", "sub/", "sub/deep", "newdir/x"}


def test_dirty_file_changed_outside_goes_to_lost_found(unmounted):
    m = fast(unmounted, window="30")
    write(m.p("report"), b"v1")
    m.sync()
    with open(m.p("report"), "r+b") as f:  # open for writing before the outside change
        m.put("report", b"their v2")
        f.write(b"our v2")
    m.sync()
    assert m.objects() == {"report": b"their v2"}  # S3 wins at the path
    wait_for(lambda: read(m.p("report")) == b"their v2", what="the bucket's version")
    kept = lost_found(m)
    assert list(kept.values()) == [b"our v2"]  # ours is kept whole
    [name] = kept
    assert name.startswith("report.conflict-")
    assert os.getxattr(m.p(f".s3fuse/lost+found/{name}"), "user.s3fuse.state") == b"conflict"
    st = status(m)
    assert [c["path"] for c in st["conflicts"]] == ["report"]
    assert st["conflicts"][0]["lost_found"] == f".s3fuse/lost+found/{name}"
    m.umount()
    assert m.objects() == {"report": b"their v2"}  # lost+found never uploaded


def test_dirty_file_deleted_outside_is_kept(unmounted):
    m = fast(unmounted, window="30")
    write(m.p("draft"), b"v1")
    m.sync()
    with open(m.p("draft"), "r+b") as f:
        store, prefix = m.store()
        store.delete(prefix + "draft")
        store.close()
        f.write(b"v2 unsaved")
    m.sync()
    assert m.objects() == {}
    assert list(lost_found(m).values()) == [b"v2 unsaved"]
    wait_for(lambda: not os.path.exists(m.p("draft")), what="the path to go")


def test_both_created_the_same_name(unmounted):
    m = fast(unmounted, window="30")
    write(m.p("fresh"), b"ours")
    m.put("fresh", b"theirs")
    m.sync()
    assert m.objects() == {"fresh": b"theirs"}
    assert list(lost_found(m).values()) == [b"ours"]
    wait_for(lambda: read(m.p("fresh")) == b"theirs", what="theirs at the path")


def test_reader_keeps_its_version_while_the_path_shows_the_new_one(unmounted):
    m = fast(unmounted)
    write(m.p("data"), b"A" * 10000)
    m.sync()
    with open(m.p("data"), "rb") as reader:
        assert reader.read(10) == b"A" * 10
        m.put("data", b"B" * 5000)
        wait_for(lambda: os.path.getsize(m.p("data")) == 5000, what="the new version")
        assert read(m.p("data")) == b"B" * 5000
        assert reader.read() == b"A" * 9990  # the open handle is not switched under it


def test_renamed_directory_keeps_files_added_outside_under_the_old_name(unmounted):
    m = fast(unmounted)
    os.mkdir(m.p("old"))
    write(m.p("old/a"), b"a")
    m.sync()
    os.rename(m.p("old"), m.p("new"))
    m.put("old/late", b"added outside")
    m.sync()
    wait_for(lambda: os.path.exists(m.p("old/late")), what="the outside file")
    assert read(m.p("old/late")) == b"added outside"
    assert read(m.p("new/a")) == b"a"
    m.umount()
    objs = m.objects()
    assert objs["old/late"] == b"added outside" and objs["new/a"] == b"a"
    assert "old/a" not in objs


def test_two_mounts_converge(tmp_path, file_source):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_mount(tmp_path / "a", file_source, None)
    b = make_mount(tmp_path / "b", file_source, None)
    try:
        for m in (a, b):
            fast(m)
        os.listdir(b.path)  # B is looking at the root
        write(a.p("from-a"), b"hello from A")
        t0 = time.monotonic()
        wait_for(lambda: "from-a" in os.listdir(b.path), what="A's file on B")
        seen_after = time.monotonic() - t0
        assert read(b.p("from-a")) == b"hello from A"
        write(b.p("from-a"), b"B edited it")
        b.sync()
        wait_for(lambda: read(a.p("from-a")) == b"B edited it", what="B's edit on A")
        # simultaneous edits: one version at the path, the other in lost+found
        with open(a.p("from-a"), "r+b") as fa, open(b.p("from-a"), "r+b") as fb:
            fa.write(b"A's concurrent edit")
            fb.write(b"B's concurrent edit")
        b.sync()
        a.sync()
        store, _ = a.store()
        final = store.get("from-a")
        store.close()
        losers = list(lost_found(a).values()) + list(lost_found(b).values())
        assert final in (b"A's concurrent edit", b"B's concurrent edit")
        assert losers and losers[0] in (b"A's concurrent edit", b"B's concurrent edit")
        assert {final, losers[0]} == {b"A's concurrent edit", b"B's concurrent edit"}
        wait_for(lambda: read(a.p("from-a")) == final == read(b.p("from-a")),
                 what="both mounts to show the winner")
        print(f"\nan outside change appeared on the other mount after {seen_after:.2f} s")
    finally:
        a.cleanup()
        b.cleanup()


def test_two_mounts_under_a_random_workload_converge(tmp_path, file_source):
    import random

    rng = random.Random(7)
    mounts = []
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        mounts.append(make_mount(tmp_path / side, file_source, None))
    try:
        for m in mounts:
            fast(m, window="0.5")
            os.listdir(m.path)  # both watch the root
        last: dict[str, bytes] = {}  # every version either side wrote last per name
        for step in range(60):
            m = rng.choice(mounts)
            name = rng.choice(["n1", "n2", "n3", "n4"])
            if rng.random() < 0.8:
                body = f"{m.path[-8:]}-{step}".encode()
                try:
                    write(m.p(name), body)
                    last[(m.path, name)] = body
                except FileNotFoundError:
                    pass
            else:
                try:
                    os.unlink(m.p(name))
                except FileNotFoundError:
                    pass
                last.pop((m.path, name), None)
            time.sleep(rng.uniform(0, 0.2))
        for _ in range(3):  # upload, let each side poll the other's changes, again
            for m in mounts:
                m.sync()
            time.sleep(1.0)
        store, _ = mounts[0].store()
        bucket = {n: store.get(n) for n in ("n1", "n2", "n3", "n4") if _exists(store, n)}
        store.close()

        def trees_agree() -> bool:
            return all({n: read(m.p(n)) for n in os.listdir(m.path) if n != ".s3fuse"}
                       == bucket for m in mounts)

        wait_for(trees_agree, what="both mounts to show the bucket")
        kept = set()
        for m in mounts:
            kept |= set(lost_found(m).values())
        # nothing either side wrote last was silently dropped: it is in the bucket,
        # in a lost+found, or the other side overwrote it after seeing it
        for (path, name), body in last.items():
            others = {b for (p, n), b in last.items() if n == name and p != path}
            assert body in bucket.values() or body in kept or others, \
                f"{name} from {path} was lost"
    finally:
        for m in mounts:
            m.cleanup()


def _exists(store, key: str) -> bool:
    try:
        store.head(key)
        return True
    except Exception:
        return False


def test_one_name_of_a_hard_link_changed_outside_splits_off(unmounted):
    m = fast(unmounted)
    write(m.p("a"), b"ours")
    os.link(m.p("a"), m.p("b"))
    m.sync()
    m.put("b", b"theirs, from outside")
    os.listdir(m.path)  # the root is in use: the poller watches it
    wait_for(lambda: read(m.p("b")) == b"theirs, from outside",
             what="the outside version at b")
    assert read(m.p("a")) == b"ours"
    wait_for(lambda: os.stat(m.p("a")).st_nlink == 1, what="a's link count to drop")
    assert os.stat(m.p("a")).st_ino != os.stat(m.p("b")).st_ino
    m.umount()
    assert m.objects() == {"a": b"ours", "b": b"theirs, from outside"}
