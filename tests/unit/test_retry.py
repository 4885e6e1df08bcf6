"""The one retry policy: what is temporary, and the budgets README and docs state."""

from s3fuse import retry
from s3fuse.errors import AccessDenied, NoSuchKey, PreconditionFailed, TransientStoreError
from s3fuse.remote import Remote
from s3fuse.store.memory import MemoryStore


def test_only_transient_store_errors_are_retried():
    assert retry.is_temporary(TransientStoreError("503"))
    for answer in (NoSuchKey("k"), PreconditionFailed("k"), AccessDenied("k"), OSError()):
        assert not retry.is_temporary(answer)


def test_background_backoff_starts_at_one_second_and_doubles_to_its_cap():
    delays, d = [], 0.0
    for _ in range(8):
        d = retry.next_backoff(d)
        delays.append(d)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_foreground_read_makes_at_most_twenty_http_attempts():
    assert retry.FOREGROUND_HTTP_BUDGET == 20
    assert Remote(MemoryStore()).read_attempts == retry.FOREGROUND_ATTEMPTS


def test_a_refused_condition_on_what_was_expected_is_a_final_store_error_and_eio():
    """ConditionMismatch (the server refused If-Match although it holds the version
    named): a store error, not temporary for the retry policy (the flusher waits its
    backoff and tries again), and EIO for a request, as any store error not tabled."""
    import errno

    from s3fuse.errors import ConditionMismatch, StoreError, to_errno

    exc = ConditionMismatch("k: refused")
    assert isinstance(exc, StoreError)
    assert not retry.is_temporary(exc)
    assert to_errno(exc) == errno.EIO
