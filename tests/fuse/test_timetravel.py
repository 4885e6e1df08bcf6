"""Time travel through real mounts (SPEC §9), on the file:// store, moto and Ceph RGW:
``s3fuse versioning``, ``snapshot``, ``history``, ``restore`` and ``fork`` run as a
user runs them, against a bucket with versioning on.

The agent scenario end to end (git repository, snapshot, wreckage, restore, ``git
fsck`` and the tree byte for byte); a history of six uploads in order with their
writers; a restore over an outside change keeping both versions; two forks of one
snapshot diverging; a fork killed with SIGKILL resuming; the one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import new_bucket
from mounts import S3FUSE, Mount, make_mount, require_fuse
from programs import assert_fsck_clean, git_env, git_init, run

TIMEOUT = 120


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([S3FUSE, *args], capture_output=True, text=True, timeout=TIMEOUT,
                         check=False)
    if ok:
        assert res.returncode == 0, f"s3fuse {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def bucket_url(m: Mount) -> str:
    """The bucket (not the mounted prefix) of a mount's source."""
    if m.source.startswith("s3://"):
        return "s3://" + m.source[len("s3://"):].split("/")[0]
    return m.source


def endpoint_args(m: Mount) -> list[str]:
    return ["--endpoint-url", m.endpoint] if m.endpoint else []


@pytest.fixture
def versioned(unmounted):
    """A mount of a bucket whose versioning `s3fuse versioning enable` turned on."""
    require_fuse()
    url = bucket_url(unmounted)
    assert "versioning off" in cli("versioning", "status", url,
                                   *endpoint_args(unmounted)).stdout
    cli("versioning", "enable", url, *endpoint_args(unmounted))
    assert "versioning enabled" in cli("versioning", "status", url,
                                       *endpoint_args(unmounted)).stdout
    unmounted.mount()
    return unmounted


def tree(root: str) -> dict[str, tuple]:
    """relative path -> (kind, mode bits, bytes or link target, mtime of files) of
    everything under ``root`` but s3fuse's reserved ``.s3fuse``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d != ".s3fuse"]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), f.read(), st.st_mtime_ns)
    return out


def assert_same_tree(now: dict, then: dict) -> None:
    assert now.keys() == then.keys(), (f"missing {sorted(then.keys() - now.keys())[:10]}, "
                                       f"extra {sorted(now.keys() - then.keys())[:10]}")
    differ = sorted(k for k in then if now[k] != then[k])
    assert not differ, f"differ: {[(k, now[k][:2], then[k][:2]) for k in differ[:5]]}"


# --- the agent scenario -----------------------------------------------------------


@pytest.mark.moto_only  # (RGW's versions: the restore, fork and lifecycle tests)
def test_agent_scenario_snapshot_wreck_restore(versioned, tmp_path: Path) -> None:
    m = versioned
    env = git_env(tmp_path)
    repo = m.p("work")
    git_init(repo, env)
    for d in ("src", "docs", "tests"):
        os.mkdir(os.path.join(repo, d))
        for i in range(8):
            with open(os.path.join(repo, d, f"f{i}.txt"), "w") as f:
                f.write(f"{d} {i}\n" * (i * 50 + 1))
    os.chmod(os.path.join(repo, "src", "f1.txt"), 0o755)
    os.symlink("src/f0.txt", os.path.join(repo, "link"))
    os.mkdir(os.path.join(repo, "empty"))
    run(["git", "add", "-A"], cwd=repo, env=env)
    run(["git", "commit", "-qm", "one"], cwd=repo, env=env)
    with open(os.path.join(repo, "docs", "f2.txt"), "a") as f:
        f.write("more\n")
    run(["git", "commit", "-qam", "two"], cwd=repo, env=env)
    before = tree(m.path)
    res = cli("snapshot", "create", m.path, "before-risky-step")
    assert "snapshot before-risky-step" in res.stdout
    listed = json.loads(cli("snapshot", "list", m.path, "--json").stdout)
    assert [s["name"] for s in listed] == ["before-risky-step"]
    assert listed[0]["objects"] >= len([v for v in before.values() if v[0] != "dir"])

    # the risky step: edits, a commit, new files, then rm -rf of half the tree
    with open(os.path.join(repo, "src", "f3.txt"), "w") as f:
        f.write("broken\n")
    os.chmod(os.path.join(repo, "src", "f1.txt"), 0o600)
    with open(os.path.join(repo, "new.txt"), "w") as f:
        f.write("new\n")
    run(["git", "add", "-A"], cwd=repo, env=env)
    run(["git", "commit", "-qm", "wreck"], cwd=repo, env=env)
    shutil.rmtree(os.path.join(repo, "src"))
    shutil.rmtree(os.path.join(repo, "tests"))
    shutil.rmtree(os.path.join(repo, ".git", "objects"))
    m.sync()
    assert tree(m.path) != before

    res = cli("restore", m.path, "--snapshot", "before-risky-step")
    assert "restored" in res.stdout
    m.sync()
    assert_same_tree(tree(m.path), before)
    assert_fsck_clean(repo, env)
    assert run(["git", "log", "--format=%s"], cwd=repo, env=env).split() == ["two", "one"]
    # and the bucket holds it too: after a remount (nothing cached) still the same
    m.remount()
    assert_same_tree(tree(m.path), before)


def test_a_restore_rewrites_only_what_differs_and_reads_no_live_file(versioned) -> None:
    """Files that already hold the target's bytes are left alone, decided from the
    mount's sync state and one listing's ETags: a multipart-sized file too (its ETag
    is no MD5 of the bytes), and a file whose live bytes were changed is rewritten."""
    m = versioned
    os.mkdir(m.p("t"))
    big = os.urandom(9 << 20)  # past the 8 MiB multipart threshold
    with open(m.p("t/big"), "wb") as f:
        f.write(big)
    for i in range(5):
        with open(m.p(f"t/f{i}"), "w") as f:
            f.write(f"f{i}\n")
    m.sync()
    cli("snapshot", "create", m.path, "same")
    with open(m.p("t/f0"), "w") as f:
        f.write("changed\n")
    m.sync()
    res = cli("restore", m.p("t"), "--snapshot", "same")
    assert "1 file written, 5 unchanged" in res.stdout, res.stdout
    m.sync()
    assert open(m.p("t/f0")).read() == "f0\n"
    with open(m.p("t/big"), "rb") as f:
        assert f.read() == big


def test_restore_of_a_deleted_file_and_a_removed_tree_by_time(versioned) -> None:
    m = versioned
    os.makedirs(m.p("d/e"))
    for rel in ("d/a", "d/e/b", "keep"):
        with open(m.p(rel), "w") as f:
            f.write(rel)
    os.setxattr(m.p("d/a"), "user.color", b"blue")
    os.mkfifo(m.p("d/e/pipe"), 0o640)
    m.sync()
    time.sleep(1.1)  # S3 keeps Last-Modified in seconds (moto): a clear point between
    when = cli_time()
    time.sleep(1.1)
    with open(m.p("d/later"), "w") as f:
        f.write("later")
    shutil.rmtree(m.p("d/e"))
    os.unlink(m.p("d/a"))
    m.sync()
    cli("restore", m.p("d"), "--at", when)
    m.sync()
    assert sorted(os.listdir(m.p("d"))) == ["a", "e"]  # d/later did not exist then
    assert open(m.p("d/e/b")).read() == "d/e/b"
    assert os.getxattr(m.p("d/a"), "user.color") == b"blue"
    st = os.lstat(m.p("d/e/pipe"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert open(m.p("keep")).read() == "keep"  # outside PATH: untouched


def cli_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- history ------------------------------------------------------------------------


@pytest.mark.moto_only  # (RGW's versions: the restore, fork and lifecycle tests)
def test_history_of_six_uploads_in_order_with_writers(versioned, tmp_path: Path) -> None:
    m = versioned
    uploads = 6
    for i in range(uploads):
        with open(m.p("notes.txt"), "w") as f:
            f.write(f"version {i}\n" * (i + 1))
        m.sync()  # one flush window apart, each its own upload
        time.sleep(1.05 if m.source.startswith("s3://") else 0.01)  # distinct seconds
    found = json.loads(cli("history", m.p("notes.txt"), "--json").stdout)
    assert [v["size"] for v in found] == [len(f"version {i}\n") * (i + 1)
                                          for i in reversed(range(uploads))]
    assert all(v["writer"] == "this mount" for v in found)
    assert found[0]["current"] and not any(v["current"] for v in found[1:])
    times = [v["time"] for v in found]
    assert times == sorted(times, reverse=True)
    # another mount of the bucket, an outside writer, a delete; then a restore of an
    # old version by its id
    (tmp_path / "second").mkdir()
    other = make_mount(tmp_path / "second", m.source, m.endpoint)
    other.mount()
    try:
        with open(other.p("notes.txt"), "w") as f:
            f.write("from the second mount\n")
        other.sync()
        other_id = json.loads(cli("status", "--json", other.path).stdout)["journal_id"]
    finally:
        other.umount()
    time.sleep(1.05 if m.source.startswith("s3://") else 0.01)
    m.put("notes.txt", b"from another tool\n")
    _seen(m, "notes.txt", b"from another tool\n")
    os.unlink(m.p("notes.txt"))
    m.sync()
    found = json.loads(cli("history", m.p("notes.txt"), "--json").stdout)
    assert found[0]["deleted"] and found[1]["writer"] == "outside"
    assert found[2]["writer"] == f"s3fuse mount {other_id}" != "s3fuse mount "
    assert len(found) == uploads + 3
    text = cli("history", m.p("notes.txt")).stdout.splitlines()
    assert "deleted" in text[0] and "outside" in text[1] and "this mount" in text[3]
    third = found[-3]["version_id"]  # "version 2"
    cli("restore", m.p("notes.txt"), "--version", third)
    assert open(m.p("notes.txt")).read() == "version 2\n" * 3
    m.sync()
    assert m.objects()["notes.txt"] == b"version 2\n" * 3


def _seen(m: Mount, rel: str, body: bytes) -> None:
    """Wait (bounded) until the mount shows an outside write."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with open(m.p(rel), "rb") as f:
                if f.read() == body:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the mount never showed the outside write of {rel}")


# --- restore over an outside change -------------------------------------------------


def test_restore_over_an_unseen_outside_change_keeps_both(unmounted) -> None:
    require_fuse()
    m = unmounted
    cli("versioning", "enable", bucket_url(m), *endpoint_args(m))
    m.extra_args = ["--metadata-ttl", "600", "--poll-interval", "600"]
    m.fsck_allow = ("f",)
    m.mount()
    with open(m.p("f"), "w") as f:
        f.write("v1\n")
    m.sync()
    cli("snapshot", "create", m.path, "s")
    with open(m.p("f"), "w") as f:
        f.write("v2\n")
    m.sync()
    m.put("f", b"outside\n")  # the mount will not look before it uploads again
    cli("restore", m.p("f"), "--snapshot", "s")
    m.sync()
    assert m.objects()["f"] == b"outside\n"  # S3 wins: the bucket's version stays
    lost = m.p(".s3fuse/lost+found")
    kept = [open(os.path.join(lost, n), "rb").read() for n in os.listdir(lost)]
    assert b"v1\n" in kept  # and the restored bytes are kept in lost+found
    st = json.loads(cli("status", "--json", m.path).stdout)
    assert st["conflicts_total"] >= 1


# --- fork ---------------------------------------------------------------------------


def _s3_only(m: Mount) -> None:
    if not m.source.startswith("s3://"):
        pytest.skip("fork takes s3:// URLs")


def test_two_forks_of_one_snapshot_diverge(versioned, tmp_path: Path) -> None:
    m = versioned
    _s3_only(m)
    os.makedirs(m.p("a/b"))
    for rel in ("a/one", "a/b/two", "top"):
        with open(m.p(rel), "w") as f:
            f.write(rel * 100)
    os.symlink("a/one", m.p("ln"))
    cli("snapshot", "create", m.path, "base")
    with open(m.p("top"), "w") as f:
        f.write("changed after the snapshot")
    m.sync()
    snap = {k: v for k, v in m.objects().items() if not k.startswith(".s3fuse/")}
    snap["top"] = b"top" * 100
    bucket = bucket_url(m)[len("s3://"):]
    other = new_bucket(m.endpoint)
    dests = [f"s3://{bucket}/fork1", f"s3://{other}/fork2"]
    for dest in dests:
        res = cli("fork", m.path, "--snapshot", "base", dest, *endpoint_args(m))
        assert "copied" in res.stdout
    mounts = []
    for i, dest in enumerate(dests):
        d = tmp_path / f"fork{i}"
        d.mkdir()
        fm = make_mount(d, dest, m.endpoint)
        fm.mount()
        mounts.append(fm)
    try:
        for fm in mounts:
            assert {k: v for k, v in fm.objects().items()
                    if not k.startswith(".s3fuse/")} == snap
            assert os.readlink(fm.p("ln")) == "a/one"
        with open(mounts[0].p("top"), "w") as f:
            f.write("fork one")
        os.unlink(mounts[1].p("a/one"))
        for fm in mounts:
            fm.sync()
        assert open(mounts[1].p("top")).read() == "top" * 100
        assert open(mounts[0].p("a/one")).read() == "a/one" * 100
        assert open(m.p("top")).read() == "changed after the snapshot"
        assert open(m.p("a/one")).read() == "a/one" * 100
    finally:
        for fm in mounts:
            fm.cleanup()


def _many_then_now(m: Mount, count: int) -> str:
    """``many/f000``... (``body 0``...) written under the mount's prefix, on S3 only;
    then a time after them, for ``fork --at``."""
    _s3_only(m)
    store, prefix = m.store()
    try:
        for i in range(count):
            store.put(f"{prefix}many/f{i:03d}", f"body {i}".encode(), {})
    finally:
        store.close()
    time.sleep(1.1)
    return cli_time()


@pytest.mark.moto_only  # (RGW's versions: the restore, fork and lifecycle tests)
def test_fork_killed_midway_resumes_and_completes(versioned) -> None:
    m = versioned
    when = _many_then_now(m, 400)
    bucket = bucket_url(m)[len("s3://"):]
    dest = f"s3://{bucket}/forked"
    argv = [S3FUSE, "fork", m.source, "--at", when, dest, "--jobs", "1", *endpoint_args(m)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    copied = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        copied = len(_keys(m, "forked/many/"))
        if copied >= 20:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the fork finished before it could be killed"
    assert 20 <= copied < 400
    res = cli("fork", m.source, "--at", when, dest, *endpoint_args(m))
    assert "(resumed)" in res.stdout and "there already" in res.stdout
    dest_store, _ = m.store()
    try:
        for i in range(400):
            assert dest_store.get(f"forked/many/f{i:03d}") == f"body {i}".encode()
    finally:
        dest_store.close()
    # a third run copies nothing; another point in time into the same DEST is refused
    assert "0 objects copied" in cli("fork", m.source, "--at", when, dest,
                                     *endpoint_args(m)).stdout
    m.put("many/f000", b"changed")
    time.sleep(1.1)
    res = cli("fork", m.source, "--at", cli_time(), dest, *endpoint_args(m), ok=False)
    assert res.returncode != 0 and "another fork" in res.stderr


@pytest.mark.moto_only  # (RGW's versions: the restore, fork and lifecycle tests)
def test_ctrl_c_stops_a_fork_within_seconds_whatever_is_in_flight(versioned) -> None:
    """Copies that take long (here 30 s each, by the test fault ``sleep@fork-copy``;
    in life a busy server and botocore's retries) do not keep the fork alive after
    Ctrl-C: it ends within a few seconds, and a rerun completes DEST."""
    m = versioned
    when = _many_then_now(m, 40)
    dest = f"{bucket_url(m)}/slow"
    argv = [S3FUSE, "fork", m.source, "--at", when, dest, "--jobs", "8", *endpoint_args(m)]
    env = {**os.environ, "S3FUSE_TEST_FAULTS": "sleep@fork-copy=30"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None \
            and not _keys(m, "slow/.s3fuse/fork.json"):
        time.sleep(0.05)
    time.sleep(0.5)  # (the copies are in flight: each sleeps before it is sent)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert took < 10, f"the fork took {took:.1f} s to stop after Ctrl-C"
    assert err.strip().splitlines()[-1].startswith("s3fuse: stopped; run the same command"), err
    assert not _keys(m, "slow/many/")  # nothing was copied yet
    res = cli("fork", m.source, "--at", when, dest, *endpoint_args(m))
    assert "(resumed)" in res.stdout and "40 objects copied" in res.stdout, res.stdout
    dest_store, _ = m.store()
    try:
        for i in range(40):
            assert dest_store.get(f"slow/many/f{i:03d}") == f"body {i}".encode()
        assert len(_keys(m, "slow/many/")) == 40
    finally:
        dest_store.close()


def _keys(m: Mount, under: str) -> list[str]:
    store, _ = m.store()
    try:
        out, token = [], None
        while True:
            page = store.list(under, None, token)
            out += [o.key for o in page.objects]
            token = page.next_token
            if token is None:
                return out
    finally:
        store.close()


def test_snapshot_warns_about_a_lifecycle_rule_that_expires_its_versions(versioned) -> None:
    m = versioned
    _s3_only(m)
    from conftest import s3_client

    client = s3_client(m.endpoint)
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket_url(m)[len("s3://"):],
        LifecycleConfiguration={"Rules": [{
            "ID": "old-versions", "Status": "Enabled", "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}]})
    with open(m.p("f"), "w") as f:
        f.write("x")
    res = cli("snapshot", "create", m.path, "s1")
    warning = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "old-versions" in warning[0]
    cli("snapshot", "delete", m.path, "s1")
    assert json.loads(cli("snapshot", "list", m.path, "--json").stdout) == []


# --- one-line errors ----------------------------------------------------------------


def test_time_travel_on_an_unversioned_bucket_says_how_to_turn_it_on(file_mount) -> None:
    m = file_mount
    with open(m.p("f"), "w") as f:
        f.write("x")
    for argv in (["history", m.p("f")], ["snapshot", "create", m.path, "s"],
                 ["snapshot", "list", m.path], ["restore", m.p("f"), "--at", cli_time()]):
        res = cli(*argv, ok=False)
        assert res.returncode != 0
        assert res.stderr.count("\n") == 1 and "s3fuse versioning enable" in res.stderr, argv


@pytest.mark.moto_only  # (RGW's versions: the restore, fork and lifecycle tests)
def test_bad_input_is_one_line(versioned) -> None:
    m = versioned
    cases = [
        (["restore", m.path, "--at", "yesterday"], "not a UTC time"),
        (["restore", m.path, "--at", "2026-13-01T00:00:00Z"], "not a valid time"),
        (["restore", m.path, "--snapshot", "nope"], "no snapshot named 'nope'"),
        (["snapshot", "create", m.path, "../x"], "not a snapshot name"),
        (["snapshot", "delete", m.path, "nope"], "no snapshot named 'nope'"),
        (["history", "/tmp"], "not on an s3fuse mount"),
        (["restore", m.path, "--version", "abc"], "--version restores a file"),
        (["restore", m.p("nothing"), "--version", "abc"], "has no version 'abc'"),
        (["restore", m.p(".s3fuse/lost+found"), "--at", cli_time()], "reserved"),
        (["fork", m.path, "--at", cli_time(), "file:///tmp/x"], "DEST must be"),
    ]
    for argv, words in cases:
        res = cli(*argv, ok=False)
        assert res.returncode != 0, argv
        assert res.stderr.count("\n") == 1 and words in res.stderr, (argv, res.stderr)
    with open(m.p("f"), "w") as f:
        f.write("x")
    cli("snapshot", "create", m.path, "twice")
    res = cli("snapshot", "create", m.path, "twice", ok=False)
    assert res.returncode != 0 and "exists already" in res.stderr


def test_ctrl_c_stops_a_long_restore_cleanly_and_a_rerun_finishes(tmp_path, file_source):
    require_fuse()
    m = make_mount(tmp_path, file_source, None)
    cli("versioning", "enable", m.source)
    try:
        m.mount()
        os.mkdir(m.p("many"))
        for i in range(300):
            with open(m.p(f"many/f{i:03d}"), "w") as f:
                f.write(f"old {i}\n")
        cli("snapshot", "create", m.path, "s")
        shutil.rmtree(m.p("many"))
        m.sync()
        proc = subprocess.Popen([S3FUSE, "restore", m.p("many"), "--snapshot", "s",
                                 "--jobs", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.isdir(m.p("many")) and len(os.listdir(m.p("many"))) >= 20:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, "the restore finished before Ctrl-C"
        said = [line for line in err.splitlines() if not line.startswith("restoring: ")]
        assert len(said) == 1 and "run the same command again" in said[0], err
        names = os.listdir(m.p("many"))
        assert 20 <= len(names) < 300
        assert not [n for n in names if "s3fuse-restore" in n]  # no temporary left
        cli("restore", m.p("many"), "--snapshot", "s")
        assert sorted(os.listdir(m.p("many"))) == [f"f{i:03d}" for i in range(300)]
        assert all(open(m.p(f"many/f{i:03d}")).read() == f"old {i}\n" for i in range(300))
    finally:
        m.cleanup()
