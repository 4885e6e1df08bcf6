"""Baselines outside the table: reffs --discard and plain boto3 for the big file, the
checkpoint and the dataset."""

from __future__ import annotations

import contextlib
import time

from benchlib.common import (
    ACCESS_KEY,
    HOST,
    SECRET_KEY,
    MiB,
    StepFailed,
    diff_counts,
    drop_caches,
    run,
)
from benchlib.inputs import Inputs
from benchlib.ops import ckpt_chunks, dataset_content, dataset_name
from benchlib.systems import Ctx, Ref

# ======================================================================================
# Baselines: reffs --discard for the big write, boto3 for the big object
# ======================================================================================

def run_baselines(ctx: Ctx, inp: Inputs, only: list[str], ran: set[str]) -> dict:
    """``ran``: the workloads that ran (the ML baselines go with the ML workloads)."""
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
        if "ml_ckpt" in ran:
            _boto3_checkpoint(ctx, inp, client, out)
        if "ml_parread" in ran:
            _boto3_parallel_read(ctx, inp, client, out)
    return out


def _boto3_checkpoint(ctx: Ctx, inp: Inputs, client, out: dict) -> None:
    """upload_file of the checkpoint's bytes (from a local file written untimed)."""
    from boto3.s3.transfer import TransferConfig
    z = inp.sizes
    tmp = ctx.workdir / "tmp" / "boto3-ckpt.bin"
    try:
        with open(tmp, "wb") as f:
            for piece in ckpt_chunks(inp.chunk.read_bytes(), z.ckpt_mib * MiB):
                f.write(piece)
        c0 = ctx.counts().get("boto3", {})
        t0 = time.perf_counter()
        client.upload_file(str(tmp), "bench-boto3", "model.ckpt", Config=TransferConfig())
        out["boto3_ckpt_put_s"] = time.perf_counter() - t0
        out["boto3_ckpt_put_requests"] = diff_counts(ctx.counts().get("boto3", {}), c0)
        head = ctx.client().head_object(Bucket="bench-boto3", Key="model.ckpt")
        if head["ContentLength"] != z.ckpt_mib * MiB:
            raise StepFailed(f"boto3 checkpoint has {head['ContentLength']} bytes")
    except Exception as exc:  # noqa: BLE001
        out["boto3_ckpt_error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _boto3_parallel_read(ctx: Ctx, inp: Inputs, client, out: dict) -> None:
    """The dataset's objects (put untimed) read with as many threads as the readers,
    each checked."""
    from concurrent.futures import ThreadPoolExecutor
    z = inp.sizes
    keys = [f"dataset/{dataset_name(i)}" for i in range(z.dataset_files)]
    try:
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda ik: ctx.client().put_object(
                Bucket="bench-boto3", Key=ik[1], Body=dataset_content(ik[0])),
                enumerate(keys)))

        def get(ik: tuple[int, str]) -> None:
            body = client.get_object(Bucket="bench-boto3", Key=ik[1])["Body"].read()
            if body != dataset_content(ik[0]):
                raise StepFailed(f"boto3 read wrong bytes of {ik[1]}")
        drop_caches()
        c0 = ctx.counts().get("boto3", {})
        t0 = time.perf_counter()
        with ThreadPoolExecutor(z.readers) as ex:
            list(ex.map(get, enumerate(keys)))
        out["boto3_parread_s"] = time.perf_counter() - t0
        out["boto3_parread_requests"] = diff_counts(ctx.counts().get("boto3", {}), c0)
    except Exception as exc:  # noqa: BLE001
        out["boto3_parread_error"] = f"{type(exc).__name__}: {exc}"[:300]

