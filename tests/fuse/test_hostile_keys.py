"""Keys that cannot be paths (§1): never fatal, never an entry, never a path outside.

S3 can hold any key, so on S3 the bucket is seeded with hostile keys next to normal
ones (and a real object at the bucket root that ``data/../x`` would name if anything
normalized it). The mount must come up, show exactly the normal tree (``both`` is a
directory: "the directory wins"), create nothing outside the mount point, the cache
directory or the store, list the skipped keys in ``s3fuse status --json`` and log each
once, and leave every hostile object untouched when it writes and unmounts.

The file:// store cannot hold such keys at all: it must refuse them (``InvalidKey``,
``KeyConflict`` for a file next to a directory of the same name), and what a person
can plant in its root by hand instead (symlinks out of the root, a FIFO) must not
become entries or let a write escape.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from mounts import S3FUSE, require_fuse

from s3fuse.errors import InvalidKey, KeyConflict

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(300)]

LONG = "L" * 300
#: relative to the mount's prefix; none of these can be a path
HOSTILE = [
    "../x",
    "a/../../b",
    "/abs",
    "a//b",
    ".",
    "./y",
    "..",
    LONG,
    "d/" + "M" * 300,
    "N" * 300 + "/f",
    ".s3fuse/lost+found/z",  # the mount's own local directory is reserved
    "both",  # a file and a prefix at once: the directory wins
]
NORMAL = {
    "ok.txt": b"fine\n",
    "dir/f.txt": b"in a directory\n",
    "deep/er/g.bin": bytes(range(256)),
    "both/inner": b"inner\n",
    "empty/": b"",  # a directory marker
}
#: names the hostile keys would produce if they were turned into paths
ESCAPE_NAMES = {"x", "b", "abs", "y", "z", "f", LONG}


def tree(root: Path, exclude: set[Path]) -> dict[str, str]:
    """rel path -> kind for everything under ``root``, not entering ``exclude``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in exclude]
        for name in dirnames + filenames:
            p = here / name
            out[str(p.relative_to(root))] = stat.filemode(os.lstat(p).st_mode)
    return out


def mount_tree(root: str) -> dict[str, bytes | None]:
    """rel path -> bytes (None for a directory) of everything on the mount."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            assert name not in ("", ".", "..") and "/" not in name, name
            assert len(os.fsencode(name)) <= 255, f"a {len(name)}-byte name is an entry"
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


def status(m) -> dict:
    res = subprocess.run([S3FUSE, "status", "--json", m.path], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, f"status failed: {res.stdout} {res.stderr}"
    return json.loads(res.stdout)


def expected_tree(extra_dirs: set[str]) -> dict[str, bytes | None]:
    want: dict[str, bytes | None] = {d: None for d in extra_dirs}
    for key, body in NORMAL.items():
        parts = key.rstrip("/").split("/")
        for i in range(1, len(parts)):
            want["/".join(parts[:i])] = None
        want[key.rstrip("/")] = None if key.endswith("/") else body
    return want


def outside(tmp_path: Path, m) -> tuple[dict[str, str], set[Path]]:
    """What exists outside the mount point, its cache directory and the store root:
    the test's temp tree, and names the hostile keys would make in likely places."""
    allowed = {Path(m.path), Path(m.cache_dir), tmp_path / "bucket"}
    names = {base / name for base in (Path("/"), Path.cwd(), tmp_path, tmp_path.parent)
             for name in ESCAPE_NAMES}
    return tree(tmp_path.parent, allowed), {p for p in names if os.path.lexists(p)}


def assert_nothing_outside(before: tuple[dict[str, str], set[Path]], tmp_path: Path,
                           m) -> None:
    after = outside(tmp_path, m)
    assert after[0] == before[0], (
        "files appeared or vanished outside the mount, cache and store: "
        f"new {sorted(set(after[0]) - set(before[0]))}, "
        f"gone {sorted(set(before[0]) - set(after[0]))}")
    assert after[1] == before[1], f"created: {sorted(after[1] - before[1])}"


# --- S3: the bucket holds the hostile keys ---------------------------------------------------
def s3_client(m):
    import boto3

    return boto3.client("s3", endpoint_url=m.endpoint, region_name="us-east-1")


def whole_bucket(m) -> dict[str, tuple[str, bytes]]:
    """Every key of the bucket (not only under the prefix): key -> (etag, body)."""
    bucket = m.source[len("s3://"):].split("/", 1)[0]
    client = s3_client(m)
    try:
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if ".s3fuse-probe" in obj["Key"]:
                    continue
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                out[obj["Key"]] = (obj["ETag"], body)
        return out
    finally:
        client.close()


def check_s3(m, tmp_path: Path, server: str) -> None:
    bucket, prefix = m.source[len("s3://"):].split("/", 1)
    prefix = prefix.rstrip("/") + "/"
    before_outside = outside(tmp_path, m)

    client = s3_client(m)
    try:
        # the object "../x" would name if anything normalized keys
        client.put_object(Bucket=bucket, Key="x", Body=b"bucket root x\n")
    finally:
        client.close()
    for key in HOSTILE:
        m.put(key, f"hostile {key[:20]}\n".encode())
    for key, body in NORMAL.items():
        m.put(key, body)
    seeded = whole_bucket(m)
    missing = [key for key in HOSTILE if prefix + key not in seeded]
    if missing and server != "s3":
        pytest.skip(f"{server} does not keep the keys {missing} as given")
    assert not missing, f"the test server did not keep the keys {missing}"

    m.mount()
    # "a/" and "d/" are common prefixes (of a//b, a/../../b and d/<long>): directories,
    # with none of the odd keys under them as entries
    want = expected_tree({"a", "d"})
    assert mount_tree(m.path) == want
    assert os.path.isdir(m.p("both"))
    assert os.listdir(m.p("both")) == ["inner"]
    assert os.listdir(m.p("a")) == [] and os.listdir(m.p("d")) == []

    skipped = [e["key"] for e in status(m)["skipped_keys"]]

    def covers(entry: str, full: str) -> bool:
        return entry == full or (entry.endswith("/") and entry != prefix
                                 and full.startswith(entry))

    for key in HOSTILE:
        assert any(covers(e, prefix + key) for e in skipped), \
            f"hostile key {key!r} is not among the skipped keys {skipped}"
    for key in NORMAL:
        assert not any(covers(e, prefix + key) for e in skipped), \
            f"normal key {key!r} was skipped: {skipped}"
    log = Path(m.cache_dir, "s3fuse.log").read_text(errors="replace")
    for entry in skipped:
        n = log.count(f"skipping key {entry!r}")
        assert n == 1, f"skipped key {entry!r} logged {n} times"

    # writing on the mount touches none of the hostile objects, nor the root "x"
    with open(m.p("new.txt"), "wb") as f:
        f.write(b"new\n")
    with open(m.p("x"), "wb") as f:
        f.write(b"mount x\n")
    with open(m.p("both/more"), "wb") as f:
        f.write(b"more\n")
    assert mount_tree(m.path) == {**want, "new.txt": b"new\n", "x": b"mount x\n",
                                  "both/more": b"more\n"}
    m.umount()
    after = whole_bucket(m)
    added = {prefix + "new.txt": b"new\n", prefix + "x": b"mount x\n",
             prefix + "both/more": b"more\n"}
    assert set(after) == set(seeded) | set(added)
    for key, (etag, body) in seeded.items():
        assert after[key] == (etag, body), f"{key!r} changed in the bucket"
    for key, body in added.items():
        assert after[key][1] == body

    assert_nothing_outside(before_outside, tmp_path, m)


# --- file://: the store refuses hostile keys; planted entries stay out -----------------------
def check_file(m, tmp_path: Path) -> None:
    root = Path(m.source[len("file://"):])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_bytes(b"outside x\n")
    for key, body in NORMAL.items():
        m.put(key, body)
    m.put(".s3fuse/lost+found/z", b"reserved\n")  # a key the file store can hold
    for key in HOSTILE:
        if key in (".s3fuse/lost+found/z", "both"):
            continue
        with pytest.raises(InvalidKey):
            m.put(key, b"hostile\n")
    with pytest.raises(KeyConflict):
        m.put("both", b"hostile\n")
    # what a person can plant in the store's root by hand
    os.symlink(elsewhere, root / "escape")
    os.symlink(elsewhere / "x", root / "x-link")
    os.symlink(elsewhere, root / "dir" / "escape")
    os.mkfifo(root / "fifo")
    before_outside = outside(tmp_path, m)
    before_store = tree(root, {root / ".s3fuse-store"})

    m.mount()
    want = expected_tree(set())
    assert mount_tree(m.path) == want
    skipped = [e["key"] for e in status(m)["skipped_keys"]]
    assert any(e in (".s3fuse/", ".s3fuse/lost+found/z") for e in skipped), skipped

    # a directory named like the planted symlink: its objects must not go through it
    os.mkdir(m.p("escape"))
    with open(m.p("escape/x"), "wb") as f:
        f.write(b"through the mount\n")
    with open(m.p("new.txt"), "wb") as f:
        f.write(b"new\n")
    # the uploads under "escape/" cannot succeed: give them time to try, then check
    subprocess.run([S3FUSE, "sync", "--timeout", "3", m.path], capture_output=True,
                   timeout=60, check=False)
    time.sleep(1)
    assert (elsewhere / "x").read_bytes() == b"outside x\n"
    assert os.listdir(elsewhere) == ["x"]
    # nothing can be uploaded under the planted symlink: remove it again, then leave
    os.unlink(m.p("escape/x"))
    os.rmdir(m.p("escape"))
    m.sync()
    m.umount()
    assert (elsewhere / "x").read_bytes() == b"outside x\n"
    assert os.listdir(elsewhere) == ["x"]
    assert (root / "new.txt").read_bytes() == b"new\n"
    after_store = tree(root, {root / ".s3fuse-store"})
    assert set(after_store) == set(before_store) | {"new.txt"}
    for key, body in NORMAL.items():
        if not key.endswith("/"):
            assert (root / key).read_bytes() == body
    assert os.path.islink(root / "escape") and os.path.islink(root / "x-link")
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert_nothing_outside(before_outside, tmp_path, m)


def test_hostile_keys(unmounted, tmp_path, request):
    require_fuse()
    if unmounted.source.startswith("s3://"):
        check_s3(unmounted, tmp_path, request.node.callspec.params["unmounted"])
    else:
        check_file(unmounted, tmp_path)
