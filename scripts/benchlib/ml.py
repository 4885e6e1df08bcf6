"""ML workloads: a checkpoint written in chunks, fsynced and renamed over the previous
one; a dataset of 1 MiB files read cold by parallel readers; a model downloaded the way
huggingface_hub does it. Everything lives under ``ml/``."""

from __future__ import annotations

import hashlib
import os

from benchlib.common import MiB, run
from benchlib.ops import ckpt_sha256, dataset_name
from benchlib.systems import System
from benchlib.workloads import Workload, expect, op_cmd


def bucket_sha256(s: System, key: str) -> tuple[int, str]:
    """(size, SHA-256) of an object, streamed from the server (not through the proxy)."""
    body = s.ctx.client().get_object(Bucket=s.bucket, Key=key)["Body"]
    h = hashlib.sha256()
    n = 0
    for block in body.iter_chunks(8 * MiB):
        h.update(block)
        n += len(block)
    return n, h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


class MlWorkload(Workload):
    def dir(self, s: System):
        return s.root / "ml" / self.key

    def prefix(self) -> str:
        return f"ml/{self.key}/"


class Checkpoint(MlWorkload):
    key = "ml_ckpt"

    @property
    def title(self) -> str:
        z = self.sizes
        return (f"checkpoint {z.ckpt_mib:,} MiB in {z.ckpt_chunk_mib} MiB chunks + fsync "
                f"+ os.replace")

    def total(self) -> int:
        return self.sizes.ckpt_mib * MiB

    def prepare(self, s):
        # the previous checkpoint (one chunk), in the bucket before the timed one
        d = self.dir(s)
        d.mkdir(parents=True, exist_ok=True)
        run(["cp", str(self.inp.chunk), str(d / "model.ckpt")], 600)
        if s.s3:
            s.catch_up(600)

    def command(self, s):
        return op_cmd("ckpt", self.dir(s), self.inp.chunk, self.total()), None, True

    def want(self) -> str:
        return ckpt_sha256(self.inp.chunk.read_bytes(), self.total())

    def verify(self, s):
        names = sorted(os.listdir(self.dir(s)))
        expect(names == ["model.ckpt"], f"directory holds {names}")
        expect(file_sha256(self.dir(s) / "model.ckpt") == self.want(), "wrong checkpoint")

    def verify_bucket(self, s):
        keys = [k for k in s.ctx.keys(s.bucket, self.prefix()) if not k.endswith("/")]
        expect(keys == [self.prefix() + "model.ckpt"], f"bucket holds {keys}")
        size, digest = bucket_sha256(s, keys[0])
        expect(size == self.total() and digest == self.want(),
               f"bucket: wrong checkpoint ({size} bytes)")


class Dataset(MlWorkload):
    key = "ml_dataset"

    @property
    def title(self) -> str:
        return f"write a dataset of {self.sizes.dataset_files:,} files of 1 MiB"

    def command(self, s):
        return op_cmd("dataset", self.dir(s), self.sizes.dataset_files), None, True

    def verify(self, s):
        n = sum(len(f) for _, _, f in os.walk(self.dir(s)))
        expect(n == self.sizes.dataset_files, f"{n} files")

    def verify_bucket(self, s):
        keys = [k for k in s.ctx.keys(s.bucket, self.prefix()) if not k.endswith("/")]
        want = sorted(self.prefix() + dataset_name(i) for i in range(self.sizes.dataset_files))
        expect(sorted(keys) == want, f"bucket has {len(keys)} files")


class ParallelRead(MlWorkload):
    key = "ml_parread"
    cold = True
    remount = True
    writes = False

    @property
    def title(self) -> str:
        return (f"read the dataset cold, {self.sizes.readers} readers "
                f"(S3: fresh mount)")

    def dir(self, s):
        return s.root / "ml" / "ml_dataset"

    def prepare(self, s):
        expect(self.dir(s).is_dir(), "no dataset from the write step")

    def command(self, s):
        # the op checks every file's bytes; it fails on the first wrong one
        return op_cmd("parread", self.dir(s), self.sizes.dataset_files,
                      self.sizes.readers), None, True


class HubDownload(MlWorkload):
    key = "ml_hub"

    @property
    def title(self) -> str:
        return f"hub-style download, {self.sizes.seq_mib} MiB (.incomplete, rename, symlink)"

    def link(self, s):
        return self.dir(s) / "snapshots" / "rev1" / "model.safetensors"

    def command(self, s):
        return op_cmd("hub", self.dir(s), self.inp.seq), None, True

    def verify(self, s):
        blobs = sorted(os.listdir(self.dir(s) / "blobs"))
        expect(blobs == ["0123abcd"], f"blobs/ holds {blobs}")
        run(["cmp", str(self.inp.seq), str(self.link(s))], 600)

    def verify_bucket(self, s):
        keys = sorted(s.ctx.keys(s.bucket, self.prefix()))
        want = [self.prefix() + "blobs/0123abcd",
                self.prefix() + "snapshots/rev1/model.safetensors"]
        expect([k for k in keys if not k.endswith("/")] == want, f"bucket holds {keys}")
        head = s.ctx.client().head_object(Bucket=s.bucket, Key=want[0])
        expect(head["ContentLength"] == self.sizes.seq_mib * MiB,
               f"bucket blob has {head['ContentLength']} bytes")


class RmMl(MlWorkload):
    key = "ml_rmrf"
    title = "rm -rf of the ML files"

    def dir(self, s):
        return s.root / "ml"

    def prepare(self, s):
        expect(self.dir(s).is_dir(), "nothing to remove")

    def command(self, s):
        return ["rm", "-rf", str(self.dir(s))], None, False

    def verify(self, s):
        expect(not self.dir(s).exists(), "ml/ still there")

    def verify_bucket(self, s):
        left = s.ctx.keys(s.bucket, "ml/")
        expect(not left, f"bucket still holds {len(left)} keys under ml/, e.g. {left[:3]}")


def ml_workloads(inp) -> list[Workload]:
    return [Checkpoint(inp), Dataset(inp), ParallelRead(inp), HubDownload(inp), RmMl(inp)]
