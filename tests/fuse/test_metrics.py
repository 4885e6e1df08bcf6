"""--metrics-addr: Prometheus metrics over HTTP, scraped as Prometheus scrapes them and
parsed by the client library's own parser, before and after a workload."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import pytest
from mounts import S3FUSE, make_mount, require_fuse
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

pytestmark = pytest.mark.fuse


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(port: int, check, timeout: float = 10.0) -> dict:
    """Scrape until ``check(samples)`` holds (the gauges are sampled once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.3)


def test_metrics_move_with_a_workload(tmp_path, moto_endpoint, s3_bucket):
    require_fuse()
    port = free_port()
    m = make_mount(tmp_path, f"s3://{s3_bucket}", moto_endpoint)
    m.extra_args = ["--flush-window", "3600", "-o", f"metrics_addr=127.0.0.1:{port}"]
    m.fsck_allow = ("changed-outside",)
    try:
        m.mount()
        before = scrape(port)
        names = {name for name, _ in before}
        for needed in ("s3fuse_dirty_files", "s3fuse_dirty_bytes",
                       "s3fuse_oldest_pending_age_seconds", "s3fuse_uploads_in_flight",
                       "s3fuse_cache_bytes", "s3fuse_cache_limit_bytes",
                       "s3fuse_pending_operations"):
            assert needed in names, needed
        assert all(not n.endswith("_created") for n in names)
        info = [k for k in before if k[0] == "s3fuse_build_info"]
        assert len(info) == 1 and before[info[0]] == 1.0
        assert dict(info[0][1])["version"]

        # three new files, held back by the window: the gauges show them
        for i in range(3):
            with open(m.p(f"f{i}"), "wb") as f:
                f.write(b"x" * 1000)
        during = settled(port, lambda s: value(s, "s3fuse_dirty_files") == 3)
        assert value(during, "s3fuse_dirty_files") == 3
        assert value(during, "s3fuse_dirty_bytes") == 3000
        time.sleep(1.5)
        during = settled(port, lambda s: value(s, "s3fuse_oldest_pending_age_seconds") >= 1)
        assert 1 <= value(during, "s3fuse_oldest_pending_age_seconds") < 600

        m.sync()  # three PUTs
        os.rename(m.p("f0"), m.p("g0"))
        m.sync()  # one server-side copy, one delete
        # a conflict: the bucket changes f1 while the mount has it changed too
        with open(m.p("f1"), "wb") as f:
            f.write(b"mine")
        m.put("f1", b"theirs")
        res = subprocess.run([S3FUSE, "sync", m.path], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr

        after = settled(port, lambda s: value(s, "s3fuse_dirty_files") == 0)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        # 3 first uploads, then the conditional PUT of f1 refused by the bucket (412)
        assert moved("s3fuse_s3_requests_total", operation="put") == 4
        assert moved("s3fuse_s3_request_errors_total", operation="put", status="412") == 1
        assert moved("s3fuse_s3_requests_total", operation="copy") == 1
        assert moved("s3fuse_s3_requests_total", operation="delete") == 1
        assert moved("s3fuse_conflicts_total") == 1
        assert moved("s3fuse_s3_request_duration_seconds_count", operation="put") == 4
        assert moved("s3fuse_s3_request_duration_seconds_sum", operation="put") > 0
        assert moved("s3fuse_fuse_operation_duration_seconds_count", operation="create") >= 3
        assert moved("s3fuse_fuse_operation_duration_seconds_count", operation="rename") == 1
        assert value(after, "s3fuse_dirty_files") == 0
        assert value(after, "s3fuse_dirty_bytes") == 0
        assert value(after, "s3fuse_oldest_pending_age_seconds") == 0
        assert value(after, "s3fuse_cache_limit_bytes") == 10 << 30
        # no paths or keys as labels
        for _, labels in after:
            for _, v in labels:
                assert "f0" not in v and "g0" not in v and "f1" not in v
    finally:
        m.cleanup()


def test_metrics_address_in_use_fails_before_mounting(tmp_path, file_source):
    require_fuse()
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        m = make_mount(tmp_path, file_source, None)
        res = subprocess.run(m.args() + ["--metrics-addr", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert f"cannot serve metrics at 127.0.0.1:{port}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with open("/proc/self/mounts") as f:
        assert m.path not in f.read()
