"""The ObjectStore contract (tests/store_contract.py) on S3: on moto, and on Ceph RGW
where it is installed (``s3_target``).

The test functions are those of tests/store_contract.py, collected here with this
module's fixtures: pytest resolves ``store`` where a test is collected.
"""

from __future__ import annotations

import time

import pytest
import store_contract

from s3fuse.store.s3 import S3Store

pytestmark = pytest.mark.s3

store_contract.collect_into(globals())


@pytest.fixture
def store(s3_target):
    s = S3Store(s3_target.bucket, endpoint_url=s3_target.endpoint)
    yield s
    s.close()


@pytest.fixture
def many_keys():
    return 150


@pytest.fixture
def atomic_conditions(s3_target):
    # moto on its own looks at the current object and writes the new one in two
    # steps; the suite's moto runs its writes one at a time (tests/moto_serial.py).
    # RGW guards the write of the object's head with the state it checked.
    return True


@pytest.fixture
def enable_versioning(s3_target):
    def enable():
        from conftest import s3_client

        client = s3_client(s3_target.endpoint)
        client.put_bucket_versioning(Bucket=s3_target.bucket,
                                     VersioningConfiguration={"Status": "Enabled"})
        client.close()

    return enable


@pytest.fixture
def tick(s3_target):
    def tick():
        if s3_target.server == "moto":
            time.sleep(1.02 - time.time() % 1)  # into the next whole second
        else:
            time.sleep(0.005)  # RGW: milliseconds

    return tick
