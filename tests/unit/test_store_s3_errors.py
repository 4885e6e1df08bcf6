"""S3 backend error translation, without a server: botocore errors -> s3fuse.errors."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from s3fuse.errors import (
    AccessDenied,
    InvalidKey,
    NoSuchBucket,
    NoSuchKey,
    NotSupported,
    PreconditionFailed,
    StoreError,
    TransientStoreError,
)
from s3fuse.store.s3 import S3Store, safe_endpoint

SECRET = "SENTINEL-secret-0123456789abcdef"
ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def store():
    # One store for the module: making a boto3 client takes a good fraction of a second.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s = S3Store("bkt", endpoint_url=ENDPOINT)
        yield s
        s.close()


def client_error(code, status, message="some message"):
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("code, status, expected", [
    ("NoSuchKey", 404, NoSuchKey),
    ("404", 404, NoSuchKey),
    ("NoSuchBucket", 404, NoSuchBucket),
    ("AccessDenied", 403, AccessDenied),
    ("InvalidAccessKeyId", 403, AccessDenied),
    ("SignatureDoesNotMatch", 403, AccessDenied),
    ("403", 403, AccessDenied),
    ("Unauthorized", 401, AccessDenied),
    ("PreconditionFailed", 412, PreconditionFailed),
    ("412", 412, PreconditionFailed),
    ("ConditionalRequestConflict", 409, TransientStoreError),
    ("InternalError", 500, TransientStoreError),
    ("ServiceUnavailable", 503, TransientStoreError),
    ("SlowDown", 503, TransientStoreError),
    ("503", 503, TransientStoreError),
    ("Throttling", 400, TransientStoreError),
    ("RequestTimeout", 400, TransientStoreError),
    ("NoSuchUpload", 404, TransientStoreError),
    ("NotImplemented", 501, NotSupported),
    ("501", 501, NotSupported),
    ("KeyTooLongError", 400, InvalidKey),
    ("InvalidArgument", 400, StoreError),
])
def test_client_errors(store, code, status, expected):
    exc = store._map(client_error(code, status), "GET", "some/key")
    assert type(exc) is expected
    text = str(exc)
    assert text.startswith("GET s3://bkt/some/key: ") and "\n" not in text


def test_conditional_404_is_a_failed_condition(store):
    exc = store._map(client_error("NoSuchKey", 404), "PUT", "k", conditional=True)
    assert isinstance(exc, PreconditionFailed)


@pytest.mark.parametrize("error, expected", [
    (EndpointConnectionError(endpoint_url=ENDPOINT + "/bkt/k"), TransientStoreError),
    (ConnectTimeoutError(endpoint_url=ENDPOINT), TransientStoreError),
    (ReadTimeoutError(endpoint_url=ENDPOINT), TransientStoreError),
    (ConnectionClosedError(endpoint_url=ENDPOINT), TransientStoreError),
    (ConnectionResetError(104, "reset"), TransientStoreError),
    (NoCredentialsError(), AccessDenied),
    (ParamValidationError(report="bad parameter"), StoreError),
])
def test_other_errors(store, error, expected):
    exc = store._map(error, "GET", "k")
    assert type(exc) is expected
    assert "s3://bkt/k" in str(exc) and "\n" not in str(exc)


def test_unrelated_exceptions_pass_through(store):
    bug = TypeError("a bug")
    assert store._map(bug, "GET", "k") is bug


def test_secret_is_scrubbed_from_server_messages(store):
    exc = store._map(client_error("SignatureDoesNotMatch", 403,
                                  f"we computed a signature with {SECRET}\nand more"),
                     "PUT", "k")
    assert isinstance(exc, AccessDenied)
    assert SECRET not in str(exc) and "\n" not in str(exc)


def test_endpoint_userinfo_is_never_shown(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert safe_endpoint("https://user:pa55word@minio.local:9000/") == \
        "https://minio.local:9000/"
    assert safe_endpoint(None) == "AWS S3"
    s = S3Store("bkt", endpoint_url="http://user:pa55word@127.0.0.1:9")
    try:
        assert "pa55word" not in s.description
        assert "pa55word" not in str(s._map(client_error("NoSuchKey", 404), "GET", "k"))
        assert "pa55word" not in str(s._map(EndpointConnectionError(endpoint_url="x"),
                                            "GET", "k"))
    finally:
        s.close()


def test_part_size_floor(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ValueError):
        S3Store("bkt", endpoint_url=ENDPOINT, part_size=1024)
