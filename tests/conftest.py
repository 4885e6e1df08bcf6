"""Fixtures shared by every test directory: the moto S3 server, a Ceph RGW cluster
(where Ceph is installed), fresh buckets, and real mounts (the Mount helper is in
tests/mounts.py).

Which tests run on Ceph RGW: everything in tests/s3 that takes ``s3_target``, and the
``mount``/``unmounted`` tests of the modules in ``RGW_FUSE_MODULES``, but those marked
``moto_only`` (long tests of the mount's own logic, whose calls to the server's
versions the restore, fork and lifecycle tests make on RGW too). The environment
variable S3FUSE_TEST_RGW=all runs every ``mount``/``unmounted`` test on RGW too,
S3FUSE_TEST_RGW=0 none at all.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest
from mounts import make_mount, require_fuse
from rgw import RgwServer
from rgw import unavailable as rgw_unavailable
from servers import MotoServer

# helper modules that test modules import, with asserts of their own: rewritten as a
# test module's are, so that their failures show the values compared
pytest.register_assert_rewrite("store_contract", "programs", "counting_proxy")

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


#: FUSE test modules whose ``mount``/``unmounted`` tests also run on Ceph RGW
RGW_FUSE_MODULES = {"test_ops.py", "test_outside.py", "test_stress_outside.py",
                    "test_timetravel.py", "test_views.py", "test_forklive.py"}


@pytest.fixture(scope="session")
def fake_aws_env():
    """Fake credentials in os.environ for the whole session (moto takes any; the RGW
    cluster's S3 user is created with exactly these)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _HOST_AWS_VARS:
            mp.delenv(name, raising=False)
        for name, value in FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def moto_server(fake_aws_env):
    """A moto S3 server on 127.0.0.1, started once per session.

    Fake credentials are in os.environ for the whole session.
    """
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint(moto_server):
    """URL of the session's moto S3 server."""
    return moto_server.endpoint


@pytest.fixture(scope="session")
def rgw_server(fake_aws_env, tmp_path_factory):
    """A single-node Ceph cluster with RGW on 127.0.0.1 (scripts/ceph-rgw), started
    once per session; skipped where Ceph is not installed."""
    reason = rgw_unavailable()
    if reason:
        pytest.skip(reason)
    with RgwServer(tmp_path_factory.mktemp("rgw"),
                   access_key=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
                   secret_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"]) as server:
        yield server


@pytest.fixture(scope="session")
def rgw_endpoint(rgw_server):
    """URL of the session's Ceph RGW."""
    return rgw_server.endpoint


def s3_client(endpoint: str):
    """A boto3 client for a test server, set up like S3Store's (path-style, checksums
    only where S3 requires them)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def new_bucket(endpoint: str) -> str:
    name = f"s3fuse-test-{uuid.uuid4().hex[:16]}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket=name)
    client.close()
    return name


@pytest.fixture
def s3_bucket(moto_endpoint):
    """Name of a new, empty bucket on the moto server."""
    yield new_bucket(moto_endpoint)


@dataclass
class S3Target:
    server: str  # "moto" or "rgw"
    endpoint: str
    bucket: str  # new and empty


@pytest.fixture(params=["moto", "rgw"])
def s3_target(request) -> S3Target:
    """A new bucket on each S3 server: moto, and Ceph RGW where it is installed."""
    endpoint = request.getfixturevalue(f"{request.param}_endpoint")
    return S3Target(request.param, endpoint, new_bucket(endpoint))


def pytest_collection_modifyitems(config, items):
    """Run ``mount``/``unmounted`` tests on RGW only for RGW_FUSE_MODULES and not
    marked ``moto_only`` (unless S3FUSE_TEST_RGW=all), and nothing on RGW with
    S3FUSE_TEST_RGW=0."""
    mode = os.environ.get("S3FUSE_TEST_RGW", "").lower()
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("unmounted") == "rgw":
            on_rgw = mode == "all" or (mode not in ("0", "off", "no")
                                       and item.path.name in RGW_FUSE_MODULES
                                       and item.get_closest_marker("moto_only") is None)
        elif params.get("s3_target") == "rgw":
            on_rgw = mode not in ("0", "off", "no")
        else:
            on_rgw = True
        (keep if on_rgw else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --- real mounts (tests/fuse, tests/crash) ----------------------------------------


@pytest.fixture
def file_source(tmp_path) -> str:
    root = tmp_path / "bucket"
    root.mkdir()
    return f"file://{root}"


@pytest.fixture(params=["file", "s3", "rgw"])
def unmounted(request, tmp_path):
    """A Mount not mounted yet, on each backend (pre-seed the bucket, then mount()):
    the file store, S3 on moto, S3 on Ceph RGW (see RGW_FUSE_MODULES)."""
    if request.param == "file":
        root = tmp_path / "bucket"
        root.mkdir()
        m = make_mount(tmp_path, f"file://{root}", None)
    elif request.param == "rgw":
        endpoint = request.getfixturevalue("rgw_endpoint")
        m = make_mount(tmp_path, f"s3://{new_bucket(endpoint)}/data", endpoint)
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
