"""Baselines outside the table: reffs --discard and plain boto3 for the big file."""

from __future__ import annotations

import contextlib
import time

from benchlib.common import ACCESS_KEY, HOST, SECRET_KEY, StepFailed, diff_counts, drop_caches, run
from benchlib.inputs import Inputs
from benchlib.systems import Ctx, Ref

# ======================================================================================
# Baselines: reffs --discard for the big write, boto3 for the big object
# ======================================================================================

def run_baselines(ctx: Ctx, inp: Inputs, only: list[str]) -> dict:
    out: dict = {}
    timeout = inp.sizes.step_timeout
    if "ref" in only:
        s = Ref(ctx, ctx.workdir / "mnt" / "ref-discard", discard=True)
        try:
            s.start()
            t, _ = run(["dd", f"if={inp.seq}", f"of={s.root / 'big.bin'}", "bs=1M",
                        "conv=fsync", "status=none"], timeout)
            out["ref_discard_write_s"] = t
        except StepFailed as exc:
            out["ref_discard_write_error"] = str(exc)
        finally:
            s.stop()
    if "boto3" in only:
        import boto3
        from boto3.s3.transfer import TransferConfig
        client = boto3.client(
            "s3", endpoint_url=f"http://{HOST}:{ctx.proxy_ports['boto3']}",
            region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY)
        ctx.client().create_bucket(Bucket="bench-boto3")
        tmp = ctx.workdir / "tmp" / "boto3-download.bin"
        try:
            c0 = ctx.counts().get("boto3", {})
            t0 = time.perf_counter()
            client.upload_file(str(inp.seq), "bench-boto3", "big.bin", Config=TransferConfig())
            out["boto3_put_s"] = time.perf_counter() - t0
            c1 = ctx.counts().get("boto3", {})
            drop_caches()
            t0 = time.perf_counter()
            client.download_file("bench-boto3", "big.bin", str(tmp), Config=TransferConfig())
            out["boto3_get_s"] = time.perf_counter() - t0
            c2 = ctx.counts().get("boto3", {})
            out["boto3_put_requests"] = diff_counts(c1, c0)
            out["boto3_get_requests"] = diff_counts(c2, c1)
            run(["cmp", str(inp.seq), str(tmp)], 300)
        except Exception as exc:  # noqa: BLE001
            out["boto3_error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return out

