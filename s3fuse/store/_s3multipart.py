"""The S3 store's multipart transfers: large puts as multipart uploads, their parts
read from memory or a file and sent several at once; copies beyond CopyObject's limit
part by part (UploadPartCopy); the ETag of a multipart object. A helper module of
``s3.py`` (which stays the only boto3 user: this module calls the store's client).
The ETag quoting the store sends in conditions lives here too, as the lower module.

``S3Multipart`` is a part of ``s3.S3Store`` (its base class): its methods use the
store's ``_client``, ``bucket``, ``part_size``, ``copy_part_size`` and
``multipart_concurrency``, and its requests (``_op``, ``_where``, ``_precheck``,
``_conditional_write``, ``_head_pinned``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from s3fuse.errors import BodyChanged, StoreError
from s3fuse.store._body import is_bytes
from s3fuse.store.base import Body

log = logging.getLogger("s3fuse.store.s3")  # (the store's log lines keep its name)

MAX_PARTS = 10_000


def _quote(etag: str) -> str:
    return f'"{etag}"'


def _unquote(etag: str) -> str:
    return etag.strip('"')


class S3Multipart:
    """The multipart half of ``S3Store`` (see the module docstring)."""

    def _put_multipart(self, key: str, body: Body, size: int, metadata: dict[str, str],
                       if_match: str | None, if_none_match: bool,
                       unchanged: Callable[[], bool] | None = None) -> str:
        self._precheck(key, if_match, if_none_match)
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        count = max(1, math.ceil(size / part_size))
        with contextlib.ExitStack() as stack:
            if is_bytes(body):
                view = memoryview(body)  # type: ignore[arg-type]

                def read_part(offset: int, length: int) -> bytes:
                    return bytes(view[offset:offset + length])
            else:
                fd = os.open(body, os.O_RDONLY | os.O_CLOEXEC)  # type: ignore[arg-type]
                stack.callback(os.close, fd)

                def read_part(offset: int, length: int) -> bytes:
                    return _pread_exact(fd, length, offset)

            def upload(upload_id: str, number: int) -> dict:
                if unchanged is not None:
                    # written since the upload began: it will not be completed, so
                    # stop sending parts now (a file still being written)
                    _check_unchanged(unchanged, self._where(key))
                offset = (number - 1) * part_size
                data = read_part(offset, min(part_size, size - offset))
                r = self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumber=number, Body=data)
                return {"PartNumber": number, "ETag": r["ETag"]}

            return self._multipart(key, {"Metadata": dict(metadata)}, count, upload,
                                   (if_match, if_none_match), unchanged=unchanged)

    def _multipart(self, key: str, create_args: dict, count: int, upload_part,
                   complete_cond: tuple[str | None, bool] = (None, False),
                   op: str = "PUT", unchanged: Callable[[], bool] | None = None) -> str:
        """Create a multipart upload, run ``upload_part(upload_id, n)`` for parts
        1..count (some in parallel), and complete it under the conditions
        ``(if_match, if_none_match)`` if ``unchanged()`` still holds; abort it on any
        failure."""
        with self._op(op, key):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **create_args)["UploadId"]
        try:
            with self._op(op, key):
                parts = self._run_parts(count, lambda n: upload_part(upload_id, n))
            if unchanged is not None:
                _check_unchanged(unchanged, self._where(key))
            if_match, if_none_match = complete_cond

            def complete(cond: dict[str, str]) -> dict:
                with self._op(op, key, conditional=bool(cond)):
                    return self._client.complete_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": parts}, **cond)

            r = self._conditional_write(key, if_match, if_none_match, complete)
            etag = _unquote(r.get("ETag") or "")
            if not etag:
                # Ceph RGW 16 completes with an empty <ETag>. The ETag of a multipart
                # object is the MD5 of its parts' MD5s, "-", the number of parts.
                etag = _multipart_etag(parts) or _unquote(
                    self._head_pinned(key, None, op=op)["ETag"])
            return etag
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                    UploadId=upload_id)
            except Exception as exc:  # the bucket's lifecycle rules must clean it up
                log.warning("could not abort multipart upload of %s: %s",
                            self._where(key), type(exc).__name__)
            raise

    def _run_parts(self, count: int, one: Callable[[int], dict]) -> list[dict]:
        """``one(n)`` for parts 1..count, up to ``multipart_concurrency`` at once;
        their results in part order. The first failure stops the parts not yet
        started (the ones in flight finish) and is raised."""
        if count == 1:
            return [one(1)]
        with ThreadPoolExecutor(max_workers=min(self.multipart_concurrency, count),
                                thread_name_prefix="s3fuse-part") as pool:
            futures = [pool.submit(one, n) for n in range(1, count + 1)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception()), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                raise failed.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def _copy_multipart(self, dst_key: str, source: dict, size: int, pin: str,
                        create_args: dict) -> str:
        part_size = max(self.copy_part_size, math.ceil(size / MAX_PARTS))
        count = max(1, math.ceil(size / part_size))

        def copy_part(upload_id: str, number: int) -> dict:
            first = (number - 1) * part_size
            last = min(first + part_size, size) - 1
            r = self._client.upload_part_copy(
                Bucket=self.bucket, Key=dst_key, UploadId=upload_id, PartNumber=number,
                CopySource=source, CopySourceRange=f"bytes={first}-{last}",
                CopySourceIfMatch=_quote(pin))
            return {"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]}

        return self._multipart(dst_key, create_args, count, copy_part, op="COPY")


def _multipart_etag(parts: list[dict]) -> str | None:
    """The ETag S3 gives the object completed from ``parts`` (their ETags in order),
    or None where a part's ETag is not an MD5."""
    try:
        digests = [bytes.fromhex(_unquote(p["ETag"])) for p in parts]
    except (ValueError, KeyError, TypeError):
        return None
    if not digests or any(len(d) != 16 for d in digests):
        return None
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def _check_unchanged(unchanged: Callable[[], bool], where: str) -> None:
    if not unchanged():
        raise BodyChanged(f"PUT {where}: the body changed while it was read")


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        block = os.pread(fd, length, offset)
        if not block:
            raise StoreError("upload body file shrank while uploading")
        parts.append(block)
        length -= len(block)
        offset += len(block)
    return b"".join(parts)
