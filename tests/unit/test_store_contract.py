"""The ObjectStore contract (tests/store_contract.py) on the memory and file stores.

tests/s3/test_s3_contract.py runs the same test functions on S3.
"""

from __future__ import annotations

import pytest
import store_contract

from s3fuse.store.file import FileStore
from s3fuse.store.memory import MemoryStore

store_contract.collect_into(globals())


# --- fixtures for this module's backends --------------------------------------------------


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore()
    else:
        root = tmp_path / "bucket"
        root.mkdir()
        # No fsyncs: thousands of puts would spend seconds on them. test_store_file.py
        # runs the durable default.
        s = FileStore(root, durable=False)
        s.check()
    yield s
    s.close()


@pytest.fixture
def many_keys():
    return 2500


@pytest.fixture
def atomic_conditions():
    return True


@pytest.fixture
def enable_versioning(store):
    return store.enable_versioning


@pytest.fixture
def tick():
    return lambda: None
