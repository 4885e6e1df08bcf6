"""``--rgw``: the large-file workloads and the boto3 baselines again, on a private Ceph
RGW started by ``tests/rgw.py`` (which runs ``scripts/ceph-rgw``). moto reads a whole
object for every ranged GET; RGW serves ranges as S3 does."""

from __future__ import annotations

import sys
import traceback
from dataclasses import replace
from urllib.parse import urlsplit

from benchlib.baselines import run_baselines
from benchlib.common import ACCESS_KEY, REPO, S3_SYSTEMS, SECRET_KEY, log
from benchlib.inputs import Inputs, Sizes
from benchlib.procs import kill_pid
from benchlib.runner import LARGE_FILE_KEYS, Runner
from benchlib.servers import start_proxy
from benchlib.systems import Ctx


def run_rgw(base: Ctx, inp: Inputs, sizes: Sizes, only: list[str]) -> dict:
    """{"runner", "baselines", "error"} of the run on RGW (S3 systems and boto3 only)."""
    sys.path.insert(0, str(REPO / "tests"))
    from rgw import RgwServer, unavailable

    ctx = replace(base, proxy_ports={}, control_port=0, _client=None)
    systems = [n for n in only if n in S3_SYSTEMS]
    runner = Runner(ctx, sizes, systems)
    out: dict = {"runner": runner, "baselines": {}, "error": unavailable()}
    if out["error"]:
        log(f"rgw: skipped: {out['error']}")
        return out
    server = RgwServer(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    proxy = None
    try:
        log("rgw: starting a private Ceph RGW (scripts/ceph-rgw)")
        server.start()
        ctx.s3_port = urlsplit(server.endpoint).port or 80
        proxy = start_proxy(ctx, ctx.s3_port, [*systems, "boto3"], "proxy-rgw.log")
        log(f"rgw: {server.endpoint}; counting proxy ports {ctx.proxy_ports}")
        runner.build_systems()
        runner.run_workloads(inp, LARGE_FILE_KEYS)
        runner.stop_systems()
        out["baselines"] = run_baselines(ctx, inp, [n for n in only if n == "boto3"],
                                         set(runner.results))
    except Exception as exc:  # noqa: BLE001 - the moto figures stand without these
        out["error"] = f"{type(exc).__name__}: {exc}"[:400]
        log(f"rgw: FAILED: {out['error']}\n{traceback.format_exc()}")
        runner.stop_systems()
    finally:
        if proxy is not None:
            kill_pid(proxy.pid, None, grace=5)
            ctx.reg.remove(proxy.pid)
        if server.started:
            log("rgw: stopping")
            server.stop()
    return out


def rgw_report(rgw: dict, ctx: Ctx, sizes: Sizes, inp: Inputs) -> str:
    from benchlib.report import render
    head = "=== The large-file workloads on Ceph RGW (private, one OSD, 127.0.0.1) ==="
    if rgw.get("error") and not rgw["runner"].results:
        return f"{head}\nnot run: {rgw['error']}"
    body = render(rgw["runner"], rgw["baselines"], None, ctx, sizes, inp)
    return f"{head}\n{body}" + (f"\nerror: {rgw['error']}" if rgw.get("error") else "")
