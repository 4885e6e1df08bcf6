"""Numbers in words, as status, sync and umount print them."""

from s3fuse import words


def test_sizes_and_counts_read_as_a_person_reads_them():
    assert [words.size(n) for n in (0, 1, 1023, 1024, 1536, 3 << 20, 150 << 20, 10 << 30)] \
        == ["0 bytes", "1 byte", "1023 bytes", "1.0 KiB", "1.5 KiB", "3.0 MiB", "150 MiB",
            "10.0 GiB"]
    assert words.plural(1, "file") == "1 file" and words.plural(0, "file") == "0 files"
    assert words.pending(1, 5) == "1 file (5 bytes)"
    assert words.pending(2, 3 << 20, 1) == "2 files (3.0 MiB) and 1 bucket operation"
    assert [words.duration(s) for s in (0.4, 12, 185, 600, 7300)] == \
        ["0.4 s", "12 s", "3 min 5 s", "10 min", "2 h 1 min"]
