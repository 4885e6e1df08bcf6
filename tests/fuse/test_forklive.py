"""A fork's DEST mounted and used while ``s3fuse fork`` still copies (SPEC §9, "Fork"),
through real mounts on S3 (moto; on Ceph RGW with S3FUSE_TEST_RGW=all).

The fork runs as a user runs it, slowed and then held by the test-only faults
``sleep@fork-copy`` and ``hold@fork-copy`` once a part is copied, so that most of it
is still to copy when DEST is mounted:
``ls -R`` and byte-for-byte reads there equal the snapshot; one file not copied yet
is rewritten, one deleted, one renamed; and when the fork has finished, DEST holds
exactly what the mount did (the deleted file does not come back, the written one
keeps the mount's bytes) and the source is untouched. A remount of DEST midway
(with fsck after the unmount) shows what the mount did, not the fork's snapshot.

(The file:// store has no prefixes, so a fork within one file:// store has no DEST a
mount could show apart from its source; its part is in tests/unit/test_forkstore.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from mounts import S3FUSE, make_mount, require_fuse, tree

from s3fuse.errors import NoSuchKey
from s3fuse.forkstore import FORK_RECORD

TIMEOUT = 120
FILES = 300


def cli(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([S3FUSE, *args], capture_output=True, text=True, timeout=TIMEOUT,
                         check=False)
    assert res.returncode == 0, f"s3fuse {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def rel_of(i: int) -> str:
    return f"d{i % 6}/f{i:03d}"


def body_of(i: int) -> bytes:
    return f"body {i} ".encode() * (1 + i % 40)


def listing(store, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` but s3fuse's records: relative key -> bytes."""
    out, token = {}, None
    for _ in range(1000):
        page = store.list(prefix, None, token)
        for o in page.objects:
            rel = o.key[len(prefix):]
            if not rel.startswith(".s3fuse"):
                out[rel] = store.get(o.key)
        token = page.next_token
        if token is None:
            return out
    raise AssertionError("listing never ended")


def shown(root: str) -> dict[str, bytes | None]:
    """``ls -R`` of a mount and every file's bytes, without the views in .s3fuse."""
    return {k: v for k, v in tree(root).items() if not k.startswith(".s3fuse")}


@pytest.mark.moto_only  # (a fork on RGW: test_timetravel's two forks)
def test_dest_of_a_running_fork_is_usable_and_ends_as_the_mount_left_it(
        unmounted, tmp_path: Path) -> None:
    require_fuse()
    m = unmounted
    if not m.source.startswith("s3://"):
        pytest.skip("a file:// store has no prefixes: no DEST to mount apart from SOURCE")
    endpoint = ["--endpoint-url", m.endpoint]
    bucket = m.source[len("s3://"):].split("/")[0]
    cli("versioning", "enable", f"s3://{bucket}", *endpoint)
    store, prefix = m.store()
    try:
        for i in range(FILES):
            store.put(prefix + rel_of(i), body_of(i), {"mode": "33188"})
        time.sleep(1.1)  # (moto's times are whole seconds)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        time.sleep(1.1)
        for i in (0, FILES - 1, FILES - 2):  # after the point: not forked
            store.put(prefix + rel_of(i), b"changed after the point", {})
        source_after = listing(store, prefix)
        snap = {rel_of(i): body_of(i) for i in range(FILES)}
        dest_prefix = "forked/"
        hold = tmp_path / "hold-the-fork"
        env = {**os.environ,
               "S3FUSE_TEST_FAULTS": f"sleep@fork-copy=0.05,hold@fork-copy={hold}"}
        proc = subprocess.Popen([S3FUSE, "fork", m.source, "--at", when,
                                 f"s3://{bucket}/forked", "--jobs", "2", *endpoint],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        (tmp_path / "dest").mkdir()
        dm = make_mount(tmp_path / "dest", f"s3://{bucket}/forked", m.endpoint)
        try:
            deadline = time.monotonic() + 60
            while True:  # hold the fork once a part is copied (and the record says so)
                try:
                    record = json.loads(store.get(dest_prefix + FORK_RECORD))
                except NoSuchKey:
                    record = {}
                if (record.get("copied_through") or "") >= "d1/":
                    hold.touch()
                    break
                assert time.monotonic() < deadline and proc.poll() is None, \
                    f"the fork did not get far enough: {record.get('copied_through')}"
                time.sleep(0.05)
            dm.mount()
            # the last keys are copied last: these three are still pending
            write, delete, rename = rel_of(293), rel_of(287), rel_of(281)
            seen = shown(dm.path)
            assert {k: v for k, v in seen.items() if v is not None} == snap  # every byte
            assert {k for k, v in seen.items() if v is None} == {f"d{j}" for j in range(6)}
            record = json.loads(store.get(dest_prefix + FORK_RECORD))
            assert proc.poll() is None and record["finished"] is None
            assert (record["copied_through"] or "") < rename, "the fork went too fast"
            with open(dm.p(write), "wb") as f:
                f.write(b"written in DEST while the fork ran")
            os.unlink(dm.p(delete))
            os.rename(dm.p(rename), dm.p("d5/renamed"))
            dm.sync()
            status = json.loads(cli("status", "--json", dm.path).stdout)
            assert status["fork"]["total"] == FILES
            assert "fork: " in cli("status", dm.path).stdout
            want = dict(snap)
            want[write] = b"written in DEST while the fork ran"
            del want[delete]
            want["d5/renamed"] = want.pop(rename)
            # unmounted (fsck finds DEST and the journal in agreement mid-fork) and
            # mounted again: the deleted and renamed files stay away
            dm.remount()
            assert {k: v for k, v in shown(dm.path).items() if v is not None} == want
            assert proc.poll() is None, "the fork ended before the changes were made"
            hold.unlink()
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err.decode()
            # the deleted and the renamed file's copies were made over delete markers;
            # the written one's too where the server ignores If-None-Match on copies
            assert re.search(rb"objects? copied.*; removed [23] of its copies", out), out
            assert listing(store, dest_prefix) == want  # the delete did not come back
            record = json.loads(store.get(dest_prefix + FORK_RECORD))
            assert record["finished"] and record["copied_through"] == max(snap)
            assert listing(store, prefix) == source_after  # the source is untouched
            dm.sync()
            assert {k: v for k, v in shown(dm.path).items() if v is not None} == want
            dm.umount()  # and fsck finds the journal and DEST in agreement
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            dm.cleanup()
    finally:
        store.close()
