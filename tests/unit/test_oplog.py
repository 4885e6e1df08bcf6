"""The op log's typed operations: the stored form, and the one rule for their keys."""

import pytest

from s3fuse import oplog
from s3fuse.oplog import CopyOp, DeleteOp


def test_ops_are_stored_as_the_json_objects_earlier_journals_hold():
    assert oplog.record(CopyOp("a", "b", "e1", 7)) == {
        "op": "copy", "src": "a", "dst": "b", "etag": "e1", "ino": 7}
    assert oplog.record(DeleteOp("k", None, 3)) == {
        "op": "delete", "key": "k", "etag": None, "ino": 3}
    for op in (CopyOp("a", "b", "e1", 7), DeleteOp("k", "e2", 3)):
        assert oplog.parse(oplog.record(op)) == op


def test_the_keys_an_op_names():
    assert CopyOp("a", "b", None, 1).keys == ("a", "b")
    assert DeleteOp("k", None, 1).keys == ("k",)


def test_a_record_without_ino_parses_and_an_unknown_one_does_not():
    assert oplog.parse({"op": "delete", "key": "k", "etag": "e"}) == DeleteOp("k", "e", 0)
    for bad in ({"op": "move", "key": "k"}, {"key": "k"}, ["delete", "k"], None):
        with pytest.raises(oplog.BadOp):
            oplog.parse(bad)
