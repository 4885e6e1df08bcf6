"""The journal's decoded-record cache and write-back of inode records: a transaction
reads its own writes, callers never share objects, an abort writes nothing."""

from __future__ import annotations

import pytest

from s3fuse.journal import Inode, Journal


def _inode(ino: int, **kw) -> Inode:
    return Inode(ino=ino, mode=0o100644, uid=1, gid=2, parent=1, name=f"n{ino}", **kw)


def test_records_read_back_equal_and_unshared(tmp_path):
    j = Journal(str(tmp_path / "j"))
    with j.write() as txn:
        txn.put(_inode(5, xattrs={"user.a": "eA=="}))
    with j.read() as txn:
        a, b = txn.get(5), txn.get(5)
    assert a == b == _inode(5, xattrs={"user.a": "eA=="})
    assert a is not b and a.xattrs is not b.xattrs
    a.xattrs["user.b"] = "x"
    a.size = 99
    with j.read() as txn:
        assert txn.get(5) == _inode(5, xattrs={"user.a": "eA=="})
    j.close()


def test_a_transaction_reads_its_own_writes_and_later_changes_need_a_put(tmp_path):
    j = Journal(str(tmp_path / "j"))
    with j.write() as txn:
        inode = _inode(7)
        txn.put(inode)
        inode.size = 123  # changed after put, never put again: not written
        assert txn.get(7).size == 0
        again = txn.get(7)
        again.size = 10
        txn.put(again)
        assert txn.get(7).size == 10
        assert [i.ino for i in txn.all_inodes()] == [7]
        txn.delete_inode(7)
        assert txn.get(7) is None
        txn.put(_inode(8, size=1))
    with j.read() as txn:
        assert txn.get(7) is None and txn.get(8).size == 1
    j.close()


def test_an_aborted_transaction_writes_no_inode(tmp_path):
    j = Journal(str(tmp_path / "j"))
    with pytest.raises(RuntimeError), j.write() as txn:
        txn.put(_inode(9))
        raise RuntimeError("abort")
    with j.read() as txn:
        assert txn.get(9) is None
    j.close()


def test_peek_sees_unwritten_puts_and_get_never_returns_the_shared_record(tmp_path):
    j = Journal(str(tmp_path / "j"))
    with j.write() as txn:
        txn.put(_inode(3, size=5))
        assert txn.peek(3).size == 5 and txn.peek(4) is None
    with j.read() as txn:
        shared = txn.peek(3)
        assert txn.peek(3) is shared and txn.get(3) is not shared
        assert txn.get(3) == shared
    j.close()


def test_sync_writes_only_after_a_commit(tmp_path, monkeypatch):
    from s3fuse.journal import Journal

    journal = Journal(str(tmp_path / "j"))
    calls = []
    real = journal.env.sync
    monkeypatch.setattr(journal, "env", type("E", (), {
        "sync": staticmethod(lambda force: calls.append(force) or real(force)),
        "begin": journal.env.begin, "close": journal.env.close,
        "info": journal.env.info})())
    journal.sync()
    journal.sync()  # nothing committed since
    with journal.read() as txn:
        txn.get_meta(b"x")
    journal.sync()  # a read commits nothing
    with journal.write() as txn:
        txn.put_meta(b"x", b"1")
    journal.sync()
    journal.set_meta(b"y", b"2")
    journal.sync()
    assert calls == [True, True, True]
    journal.close()


def test_the_op_index_follows_a_retarget_without_other_op_changes(tmp_path):
    """A transaction whose only op change moves copies to another inode (same keys,
    same count) still updates the index."""
    from s3fuse.journal import Journal
    from s3fuse.oplog import CopyOp

    journal = Journal(str(tmp_path / "j"))
    with journal.write() as txn:
        txn.append_op(CopyOp(src="a", dst="b", etag="e", ino=7))
    with journal.write() as txn:
        txn.retarget_ops(7, 3)
    assert journal.ops_index.copy_inos == {3: 1}
    assert journal.ops_index.keys == {"a": 1, "b": 1} and journal.ops_index.count == 1
    journal.close()
    assert Journal(str(tmp_path / "j")).ops_index.copy_inos == {3: 1}  # as rebuilt


def _on_disk(j: Journal, ino: int) -> Inode | None:
    """The record as committed in LMDB, deferred records aside."""
    with j.env.begin() as raw:
        data = raw.get(ino.to_bytes(8, "big"), db=j.db_inodes)
    return Inode.decode(data) if data is not None else None


def test_a_deferred_record_is_read_at_once_and_written_by_the_next_commit(tmp_path):
    j = Journal(str(tmp_path / "j"))
    with j.write() as txn:
        txn.put(_inode(5, size=1, dirty=1))
    j.defer(_inode(5, size=2, dirty=1))
    with j.read() as txn:
        assert txn.get(5).size == 2 and txn.peek(5).size == 2
        assert [i.size for i in txn.all_inodes()] == [2]
    assert _on_disk(j, 5).size == 1
    with j.write() as txn:  # any commit writes it
        txn.put(_inode(6))
    assert _on_disk(j, 5).size == 2 and not j.deferred
    j.defer(_inode(5, size=3, dirty=1))
    j.sync()
    assert _on_disk(j, 5).size == 3
    j.defer(_inode(5, size=4, dirty=1))
    j.close()
    assert _on_disk(Journal(str(tmp_path / "j")), 5).size == 4


def test_a_transaction_sees_no_deferred_record_of_what_it_deleted_and_an_abort_keeps_it(
        tmp_path):
    j = Journal(str(tmp_path / "j"))
    with j.write() as txn:
        txn.put(_inode(5, dirty=1))
    j.defer(_inode(5, size=2, dirty=1))
    with pytest.raises(RuntimeError), j.write() as txn:
        txn.delete_inode(5)
        assert txn.get(5) is None
        raise RuntimeError("abort")
    with j.read() as txn:
        assert txn.get(5).size == 2  # still deferred, still seen
    with j.write() as txn:
        txn.delete_inode(5)
        assert txn.get(5) is None
    with j.read() as txn:
        assert txn.get(5) is None
    assert _on_disk(j, 5) is None and not j.deferred
    j.close()


def test_a_deferred_record_waits_at_most_defer_s(tmp_path, monkeypatch):
    j = Journal(str(tmp_path / "j"))
    with j.write() as txn:
        txn.put(_inode(5, dirty=1))
    monkeypatch.setattr(Journal, "DEFER_S", 0.0)
    j.defer(_inode(5, size=9, dirty=1))
    assert _on_disk(j, 5).size == 9 and not j.deferred
    j.close()


def test_the_journal_keeps_disk_space_allocated_ahead_of_its_last_page(tmp_path):
    j = Journal(str(tmp_path / "j"))
    data = tmp_path / "j" / "data.mdb"
    assert data.stat().st_blocks * 512 >= Journal.RESERVE_BYTES
    with j.write() as txn:
        for ino in range(2, 40_000):
            txn.put(_inode(ino, xattrs={"user.pad": "x" * 200}))
    used = (j.env.info()["last_pgno"] + 1) * j.env.stat()["psize"]
    assert used > Journal.RESERVE_BYTES  # it grew past the first reserve ...
    assert data.stat().st_blocks * 512 >= used + Journal.RESERVE_BYTES // 2  # ... and kept one
    j.close()
