"""Fixtures shared by every test directory: the moto S3 server, fresh buckets, and
real mounts (the Mount helper is in tests/mounts.py).
"""

from __future__ import annotations

import uuid

import pytest
from mounts import make_mount, require_fuse
from servers import MotoServer

#: credentials moto accepts; nothing from the host's AWS configuration leaks in
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/s3fuse-tests/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/s3fuse-tests/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    # The test server is local: never send its traffic through a proxy.
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
_HOST_AWS_VARS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                  "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@pytest.fixture(scope="session")
def moto_server():
    """A moto S3 server on 127.0.0.1, started once per session.

    Fake credentials are in os.environ for the whole session.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in _HOST_AWS_VARS:
            mp.delenv(name, raising=False)
        for name, value in FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        with MotoServer() as server:
            yield server


@pytest.fixture(scope="session")
def moto_endpoint(moto_server):
    """URL of the session's moto S3 server."""
    return moto_server.endpoint


@pytest.fixture
def s3_bucket(moto_endpoint):
    """Name of a new, empty bucket on the moto server."""
    import boto3

    name = f"s3fuse-test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    client.close()
    yield name


# --- real mounts (tests/fuse, tests/crash) ----------------------------------------


@pytest.fixture
def file_source(tmp_path) -> str:
    root = tmp_path / "bucket"
    root.mkdir()
    return f"file://{root}"


@pytest.fixture(params=["file", "s3"])
def unmounted(request, tmp_path):
    """A Mount not mounted yet, on each backend (pre-seed the bucket, then mount())."""
    if request.param == "file":
        root = tmp_path / "bucket"
        root.mkdir()
        m = make_mount(tmp_path, f"file://{root}", None)
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        m = make_mount(tmp_path, f"s3://{bucket}/data", endpoint)
    yield m
    m.cleanup()


@pytest.fixture
def mount(unmounted):
    require_fuse()
    unmounted.mount()
    return unmounted


@pytest.fixture
def file_mount(tmp_path, file_source):
    require_fuse()
    m = make_mount(tmp_path, file_source, None)
    m.mount()
    yield m
    m.cleanup()
