"""Kill the daemon at named points and at random moments; remount; nothing acknowledged
is lost, nothing is applied twice, the bucket converges to the mount.

The daemon is killed by ``os._exit`` at a crash point (``S3FUSE_TEST_FAULTS``) or
by SIGKILL. Remounting the same cache directory must clean the dead mount up and
replay the journal.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from mounts import Mount, daemon_pid, make_mount, tree, wait_dead

FAULTS = "S3FUSE_TEST_FAULTS"


def assert_dead_mount(m: Mount) -> None:
    with pytest.raises(OSError) as exc:
        os.statvfs(m.path)  # stat could be answered from the kernel's cache
    assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def crashing_mount(tmp_path, file_source, point: str) -> Mount:
    m = make_mount(tmp_path, file_source, None)
    m.env = {FAULTS: f"crash@{point}"}
    m.mount()
    return m


def remount_clean(m: Mount) -> None:
    m.env = {}
    m.mount()  # cleans up the dead mount, replays the journal


def bucket_tree(objects: dict[str, bytes]) -> dict[str, bytes | None]:
    """The tree the bucket's keys describe, in the same form as ``tree``."""
    out: dict[str, bytes | None] = {}
    for key, body in objects.items():
        parts = key.rstrip("/").split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = None
        out[key.rstrip("/")] = None if key.endswith("/") else body
    return out


@pytest.fixture
def cleanup():
    mounts: list[Mount] = []
    yield mounts.append
    for m in mounts:
        m.cleanup()


def test_crash_before_put(tmp_path, file_source, cleanup):
    m = crashing_mount(tmp_path, file_source, "before-put")
    cleanup(m)
    pid = daemon_pid(m)
    with open(m.p("a.txt"), "wb") as f:
        f.write(b"acknowledged")
    wait_dead(pid)
    assert_dead_mount(m)
    assert m.objects() == {}
    remount_clean(m)
    assert open(m.p("a.txt"), "rb").read() == b"acknowledged"
    m.umount()
    assert m.objects() == {"a.txt": b"acknowledged"}


def test_crash_after_put_before_commit(tmp_path, file_source, cleanup):
    m = crashing_mount(tmp_path, file_source, "after-put")
    cleanup(m)
    pid = daemon_pid(m)
    with open(m.p("a.txt"), "wb") as f:
        f.write(b"landed")
    wait_dead(pid)
    assert m.objects() == {"a.txt": b"landed"}  # in the bucket, unknown to the journal
    remount_clean(m)
    m.sync()
    status = subprocess.run([sys.executable, "-m", "s3fuse.cli", "status", "--json", m.path],
                            capture_output=True, text=True, timeout=30)
    assert '"errors": []' in status.stdout  # our own object: adopted, not a conflict
    m.umount()
    assert m.objects() == {"a.txt": b"landed"}


def test_crash_between_copy_and_delete_of_a_rename(tmp_path, file_source, cleanup):
    m = crashing_mount(tmp_path, file_source, "after-copy")
    cleanup(m)
    pid = daemon_pid(m)
    with open(m.p("old"), "wb") as f:
        f.write(b"payload")
    m.sync()
    os.rename(m.p("old"), m.p("new"))
    wait_dead(pid)
    assert m.objects() == {"old": b"payload", "new": b"payload"}
    remount_clean(m)
    assert os.listdir(m.path) == ["new"]
    m.umount()
    assert m.objects() == {"new": b"payload"}


def test_crash_before_delete(tmp_path, file_source, cleanup):
    m = crashing_mount(tmp_path, file_source, "before-delete")
    cleanup(m)
    pid = daemon_pid(m)
    for name in ("keep", "gone"):
        with open(m.p(name), "wb") as f:
            f.write(name.encode())
    m.sync()
    os.unlink(m.p("gone"))
    wait_dead(pid)
    remount_clean(m)
    assert os.listdir(m.path) == ["keep"]
    m.umount()
    assert m.objects() == {"keep": b"keep"}


def test_crash_in_the_middle_of_a_directory_rename(tmp_path, file_source, cleanup):
    m = crashing_mount(tmp_path, file_source, "mid-rename")
    cleanup(m)
    pid = daemon_pid(m)
    os.makedirs(m.p("dir/sub"))
    for rel in ("dir/a", "dir/sub/b", "dir/sub/c"):
        with open(m.p(rel), "wb") as f:
            f.write(rel.encode())
    m.sync()
    before = tree(m.path)
    with pytest.raises(OSError):
        os.rename(m.p("dir"), m.p("renamed"))
    wait_dead(pid)
    remount_clean(m)
    after = tree(m.path)
    moved = {k.replace("dir", "renamed", 1): v for k, v in before.items()}
    assert after in (before, moved)  # the old tree or the new one, never a mix
    m.umount()
    assert bucket_tree(m.objects()) == after


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2


def exchange(a: str, b: str) -> None:
    """renameat2(a, b, RENAME_EXCHANGE)."""
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def exchange_fixture(m: Mount) -> tuple[dict, dict]:
    """Clean files and directories in the bucket, and one dirty file; returns (the
    tree now, the tree after ``exchange_all``)."""
    os.makedirs(m.p("d/sub"))
    os.makedirs(m.p("e/only_e"))
    files = {"f": b"clean f", "g": b"clean g, longer", "d/x": b"d/x", "d/sub/y": b"d/sub/y",
             "e/x": b"e/x, longer", "p": b"clean p"}
    for rel, body in files.items():
        with open(m.p(rel), "wb") as f:
            f.write(body)
    m.sync()
    with open(m.p("h"), "wb") as f:
        f.write(b"dirty h, never uploaded")
    before = tree(m.path)
    after = {"f": b"clean g, longer", "g": b"clean f", "h": b"clean p",
             "p": b"dirty h, never uploaded", "d": None, "e": None, "d/x": b"e/x, longer",
             "d/only_e": None, "e/x": b"d/x", "e/sub": None, "e/sub/y": b"d/sub/y"}
    return before, after


def exchange_all(m: Mount) -> None:
    exchange(m.p("f"), m.p("g"))  # two clean files: a pinned copy and a PUT
    exchange(m.p("d"), m.p("e"))  # two trees with a name in common
    exchange(m.p("h"), m.p("p"))  # a dirty file with a clean one


def test_kill_right_after_an_exchange_then_replay(tmp_path, file_source, cleanup):
    m = make_mount(tmp_path, file_source, None)
    cleanup(m)
    m.mount()
    _, after = exchange_fixture(m)
    pid = daemon_pid(m)
    exchange_all(m)
    os.kill(pid, signal.SIGKILL)  # the op log and the uploads have barely started
    wait_dead(pid)
    m.mount()
    assert tree(m.path) == after
    m.sync()
    assert tree(m.path) == after
    m.umount()  # (and fsck)
    assert bucket_tree(m.objects()) == after


@pytest.mark.parametrize("point", ["mid-exchange", "after-copy", "before-put"])
def test_crash_in_an_exchange(tmp_path, file_source, cleanup, point):
    """``mid-exchange``: the transaction never commits, the old tree stays;
    ``after-copy``: the pair's copy is done, its op still pending; ``before-put``:
    the copy is done, the local side's upload is not."""
    m = make_mount(tmp_path, file_source, None)
    cleanup(m)
    m.mount()
    before, after = exchange_fixture(m)
    m.umount()
    # no upload or op starts before the three exchanges are made (else the crash
    # point may be reached, and the daemon gone, in the middle of them)
    hold = tmp_path / "hold"
    hold.touch()
    m.env = {FAULTS: f"crash@{point},hold@bucket-work={hold}"}
    m.mount()
    pid = daemon_pid(m)
    if point == "mid-exchange":
        with pytest.raises(OSError):
            exchange(m.p("f"), m.p("g"))
        expect = before
    else:
        exchange_all(m)
        expect = after
    hold.unlink()
    wait_dead(pid)
    remount_clean(m)
    assert tree(m.path) == expect
    m.sync()
    m.umount()
    assert bucket_tree(m.objects()) == expect


WORKLOAD = r"""
import ctypes, os, sys, random
libc = ctypes.CDLL(None, use_errno=True)
root, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
log = open(log_path, "a", buffering=1)
os.makedirs(root, exist_ok=True)
names = [f"f{i}" for i in range(12)]
for step in range(100000):
    kind = rng.choice(["write", "write", "write", "rename", "unlink", "link", "append",
                       "exchange"])
    a, b = rng.choice(names), rng.choice(names)
    body = f"{seed}-{step}-{rng.random()}".encode() * rng.randint(1, 300)
    log.write(f"start {step} {kind} {a} {b} {body.hex()}\n")
    try:
        if kind == "write":
            tmp = os.path.join(root, f"tmp.{step}")
            with open(tmp, "wb") as f:
                f.write(body)
                if rng.random() < 0.3:
                    f.flush(); os.fsync(f.fileno())
            os.replace(tmp, os.path.join(root, a))
        elif kind == "rename":
            os.rename(os.path.join(root, a), os.path.join(root, b))
        elif kind == "unlink":
            os.unlink(os.path.join(root, a))
        elif kind == "exchange":  # renameat2(RENAME_EXCHANGE)
            if libc.renameat2(-100, os.path.join(root, a).encode(), -100,
                              os.path.join(root, b).encode(), 2) < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        elif kind == "link":
            os.link(os.path.join(root, a), os.path.join(root, b))
        else:  # append through one name: every name of the inode sees it
            with open(os.path.join(root, a), "r+b") as f:
                f.seek(0, 2)
                f.write(body[:64])
        log.write(f"ok {step}\n")
    except (FileNotFoundError, FileExistsError):
        log.write(f"noop {step}\n")
    except OSError:
        sys.exit(0)  # the daemon is gone
"""


class Model:
    """Names -> inodes -> bytes: what the workload's acknowledged steps left."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.data: dict[int, bytes] = {}
        self.next = 0

    def copy(self) -> Model:
        m = Model()
        m.names, m.data, m.next = dict(self.names), dict(self.data), self.next
        return m

    def apply(self, kind: str, a: str, b: str, body: bytes) -> None:
        if kind == "write":
            self.next += 1
            self.names[a] = self.next
            self.data[self.next] = body
        elif kind == "rename" and a in self.names:
            if self.names.get(b) != self.names[a]:  # two names of one inode: no-op
                self.names[b] = self.names.pop(a)
        elif kind == "unlink":
            self.names.pop(a, None)
        elif kind == "exchange" and a in self.names and b in self.names:
            self.names[a], self.names[b] = self.names[b], self.names[a]
        elif kind == "link" and a in self.names and b not in self.names:
            self.names[b] = self.names[a]
        elif kind == "append" and a in self.names:
            self.data[self.names[a]] += body[:64]

    def files(self) -> dict[str, bytes]:
        return {name: self.data[ino] for name, ino in self.names.items()}

    def links(self) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for name, ino in self.names.items():
            groups.setdefault(ino, []).append(name)
        return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def replay_log(lines: list[str]) -> tuple[Model, Model | None]:
    """(the model after every acknowledged step, the model if the step in flight at
    the kill also happened, or None if no step was in flight)."""
    model = Model()
    pending: list[str] | None = None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "start":
            pending = parts
        elif parts[0] == "ok":
            assert pending is not None and pending[1] == parts[1]
            model.apply(pending[2], pending[3], pending[4], bytes.fromhex(pending[5]))
            pending = None
        else:
            pending = None
    if pending is None or len(pending) < 6:
        return model, None
    other = model.copy()
    other.apply(pending[2], pending[3], pending[4], bytes.fromhex(pending[5]))
    return model, other


def link_groups(root: str) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name in os.listdir(root):
        if not name.startswith("tmp."):
            groups.setdefault(os.lstat(os.path.join(root, name)).st_ino, []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def test_random_kills_lose_nothing_acknowledged(tmp_path, file_source, cleanup):
    m = make_mount(tmp_path, file_source, None)
    cleanup(m)
    m.mount()
    rng = random.Random(1234)
    models: dict[str, Model] = {}
    kills = 0
    for cycle in range(8):
        sub = f"c{cycle}"
        log_path = str(tmp_path / f"log{cycle}")
        pid = daemon_pid(m)
        child = subprocess.Popen([sys.executable, "-c", WORKLOAD, m.p(sub), log_path,
                                  str(cycle)])
        time.sleep(rng.uniform(0.5, 2.5))
        os.kill(pid, signal.SIGKILL)
        kills += 1
        child.wait(timeout=60)
        wait_dead(pid)
        m.mount()  # stale mount cleaned, journal replayed
        with open(log_path) as f:
            acked, in_flight = replay_log(f.read().splitlines())
        seen = {k: v for k, v in tree(m.p(sub)).items() if not k.startswith("tmp.")}
        # the step in flight at the kill may or may not have happened; nothing else
        if in_flight is not None and seen == in_flight.files():
            acked = in_flight
        models[sub] = acked
        # every cycle's files (and hard links) are exactly as acknowledged, also
        # the earlier cycles' after this kill
        for name, expect in models.items():
            seen = {k: v for k, v in tree(m.p(name)).items() if not k.startswith("tmp.")}
            assert seen == expect.files(), f"cycle {name} differs after kill {kills}"
            assert link_groups(m.p(name)) == expect.links(), \
                f"cycle {name}: hard links differ after kill {kills}"
    m.sync()
    final = tree(m.path)
    m.umount()
    assert bucket_tree(m.objects()) == final
    files = sum(len(model.names) for model in models.values())
    checked = sum(len(body) for model in models.values() for body in model.files().values())
    linked = sum(len(g) for model in models.values() for g in model.links())
    print(f"\n{kills} kills survived; {files} files ({linked} hard-linked names), "
          f"{checked} bytes checked")
    assert kills == 8 and files >= 40  # the workload really ran between kills
