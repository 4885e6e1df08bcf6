"""Random interleavings of mount operations and outside PUTs/DELETEs, against a model.

After each example the mount is given time to converge, then:

R1  the mount shows exactly what the bucket holds (S3 wins, the mount follows);
R2  every version the mount wrote last at a path is at that path in the bucket or
    kept in lost+found, unless an outside write replaced it after it was uploaded;
R3  every version written outside last at a path is at that path in the bucket,
    unless the mount wrote or removed that path afterwards;
R4  lost+found holds nothing but versions the mount wrote.

Each example works in its own directory of one long-lived mount.
"""

from __future__ import annotations

import itertools
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mounts import make_mount

NAMES = ["a", "b", "c"]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("mount_write"), st.sampled_from(NAMES)),
        st.tuples(st.just("mount_delete"), st.sampled_from(NAMES)),
        st.tuples(st.just("outside_put"), st.sampled_from(NAMES)),
        st.tuples(st.just("outside_delete"), st.sampled_from(NAMES)),
        st.tuples(st.just("sync"), st.just("")),
        st.tuples(st.just("pause"), st.just("")),
    ),
    min_size=1, max_size=14)

_counter = itertools.count()


def read_tree(root: str) -> dict[str, bytes]:
    out = {}
    if os.path.isdir(root):
        for name in os.listdir(root):
            with open(os.path.join(root, name), "rb") as f:
                out[name] = f.read()
    return out


def test_outside_writers_interleaved(tmp_path, file_source):
    m = make_mount(tmp_path, file_source, None)
    # uploads only at explicit syncs, so the model knows exactly what reached the bucket
    m.extra_args = ["--flush-window", "3600", "--poll-interval", "0.2", "--metadata-ttl",
                    "0.1"]
    m.mount()
    store, prefix = m.store()
    examples = []

    @settings(max_examples=15, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(ops=OPS)
    def run(ops):
        ex = f"ex{next(_counter)}"
        root = m.p(ex)
        os.mkdir(root)
        m.sync()
        mount_last: dict[str, bytes] = {}  # name -> last version the mount wrote
        mount_last_synced: dict[str, bool] = {}
        superseded_by_outside: set[str] = set()
        outside_last: dict[str, bytes | None] = {}
        touched_by_mount_after_outside: set[str] = set()
        written: set[bytes] = set()
        for kind, name in ops:
            path = os.path.join(root, name)
            key = f"{prefix}{ex}/{name}"
            if kind == "mount_write":
                body = f"mount-{ex}-{next(_counter)}".encode()
                try:
                    with open(path, "wb") as f:
                        f.write(body)
                except FileNotFoundError:
                    continue
                written.add(body)
                mount_last[name] = body
                mount_last_synced[name] = False
                superseded_by_outside.discard(name)
                touched_by_mount_after_outside.add(name)
            elif kind == "mount_delete":
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                mount_last.pop(name, None)
                touched_by_mount_after_outside.add(name)
            elif kind == "outside_put":
                body = f"outside-{ex}-{next(_counter)}".encode()
                store.put(key, body, {})
                outside_last[name] = body
                touched_by_mount_after_outside.discard(name)
                if mount_last_synced.get(name):
                    superseded_by_outside.add(name)
            elif kind == "outside_delete":
                store.delete(key)
                outside_last[name] = None
                touched_by_mount_after_outside.discard(name)
                if mount_last_synced.get(name):
                    superseded_by_outside.add(name)
            elif kind == "sync":
                m.sync()
                for n in mount_last:
                    mount_last_synced[n] = True
            else:
                time.sleep(0.3)  # let polling and revalidation see outside changes

        # converge: upload, let polling catch up, upload what that caused
        deadline = time.monotonic() + 20
        while True:
            m.sync()
            time.sleep(0.5)
            bucket = {k[len(prefix) + len(ex) + 1:]: v for k, v in m.objects().items()
                      if k.startswith(f"{ex}/") and not k.endswith("/")}
            seen = read_tree(root)
            if seen == bucket or time.monotonic() > deadline:
                break
        assert seen == bucket, "R1: the mount does not show what the bucket holds"

        lf_dir = m.p(".s3fuse/lost+found")
        kept = {body for name, body in read_tree(lf_dir).items()
                if name.startswith(f"{ex}%2F")} if os.path.isdir(lf_dir) else set()
        for name, body in mount_last.items():
            if name in superseded_by_outside:
                continue
            assert bucket.get(name) == body or body in kept, \
                f"R2: the mount's last version of {name} was lost"
        for name, body in outside_last.items():
            if name in touched_by_mount_after_outside or body is None:
                continue
            assert bucket.get(name) == body, f"R3: the outside version of {name} was lost"
        assert kept <= written, "R4: lost+found holds something the mount never wrote"
        examples.append((len(ops), len(kept)))

    try:
        run()
    finally:
        store.close()
        m.cleanup()
    conflicts = sum(k for _, k in examples)
    print(f"\n{len(examples)} examples, {sum(n for n, _ in examples)} operations, "
          f"{conflicts} conflict copies checked")
    assert examples
