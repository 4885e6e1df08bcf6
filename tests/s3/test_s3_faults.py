"""S3 backend against a stub endpoint that fails every request in one way:
server errors are retried and end as the right s3fuse error, hangs time out."""

from __future__ import annotations

import time

import pytest
from servers import StubS3Server

from s3fuse.errors import AccessDenied, NotSupported, PreconditionFailed, TransientStoreError
from s3fuse.store.s3 import S3Store

pytestmark = pytest.mark.s3


@pytest.fixture(autouse=True)
def _fake_credentials(moto_endpoint):
    """(The session fixture puts fake credentials into the environment.)"""


def stub_store(stub: StubS3Server, **kwargs) -> S3Store:
    return S3Store("bucket", endpoint_url=stub.endpoint, **kwargs)


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError")])
def test_server_errors_are_retried_then_transient(status, code):
    with StubS3Server(status, code) as stub:
        store = stub_store(stub, max_attempts=2)
        for call in (lambda: store.get("k"), lambda: store.put("k", b"x", {}),
                     lambda: store.list(""), lambda: store.delete("k")):
            before = stub.requests
            with pytest.raises(TransientStoreError) as e:
                call()
            assert stub.requests - before == 2  # one retry, as configured
            assert "s3://bucket/" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(TransientStoreError):
            store.check()
        store.close()


@pytest.mark.parametrize("status, code, expected", [
    (501, "NotImplemented", NotSupported),
    (403, "AccessDenied", AccessDenied),
    (412, "PreconditionFailed", PreconditionFailed),
    (409, "ConditionalRequestConflict", TransientStoreError),
])
def test_final_and_conflict_errors(status, code, expected):
    with StubS3Server(status, code) as stub:
        store = stub_store(stub, max_attempts=3)
        with pytest.raises(expected) as e:
            store.put("k", b"x", {}, if_match="0" * 32)
        assert code in str(e.value) and "PUT s3://bucket/k" in str(e.value)
        store.close()


def test_check_reports_refused_access():
    with StubS3Server(403, "AccessDenied") as stub:
        store = stub_store(stub)
        with pytest.raises(AccessDenied, match="denied"):
            store.check()
        store.close()


def test_a_hanging_server_times_out():
    with StubS3Server(hang=True) as stub:
        store = stub_store(stub, max_attempts=1, read_timeout=1)
        started = time.monotonic()
        with pytest.raises(TransientStoreError, match="timed out"):
            store.get("k")
        assert time.monotonic() - started < 10
        store.close()
