"""The one retry policy: which store errors are temporary, and how often each kind of
caller tries again.

Temporary (``is_temporary``): ``TransientStoreError``, the store's own word for
timeouts, refused connections, 5xx and throttling. Every other ``StoreError`` is an
answer (404, 412, 403...) and is never retried.

Three layers retry, each with its own bounded budget:

* **per HTTP request** (the S3 store, botocore's "standard" mode): up to
  ``HTTP_ATTEMPTS`` tries, the first included, with botocore's jittered backoff.
  The ``file://`` and memory stores make no HTTP requests and do not retry.
* **foreground reads** (``Remote._read``: HEAD, GET, LIST for a FUSE request): up to
  ``FOREGROUND_ATTEMPTS`` calls, sleeping ``FOREGROUND_FIRST_DELAY_S`` then twice as
  long before each next one, then the request answers EIO. So one foreground read
  makes at most ``FOREGROUND_HTTP_BUDGET`` (20) HTTP attempts and sleeps about
  1.4 s besides botocore's own backoff. After a read found the bucket unreachable,
  reads try once (``HTTP_ATTEMPTS`` requests) for ``OUTAGE_MEMORY_S``, so that
  each request of a mount whose bucket is away does not wait seconds. Foreground
  writes do not exist: every change reaches the bucket in the background.
* **background work** (the flusher's uploads and ops): retried without a limit on
  the count (nothing acknowledged may be dropped), each file, and the op log, waiting
  ``next_backoff`` after a failure: 1 s, doubling up to ``BACKGROUND_MAX_DELAY_S``.
"""

from __future__ import annotations

from .errors import TransientStoreError

#: tries of one HTTP request by the S3 store, the first one included
HTTP_ATTEMPTS = 5
#: calls of a foreground read (``Remote._read``), the first one included
FOREGROUND_ATTEMPTS = 4
FOREGROUND_FIRST_DELAY_S = 0.2
#: HTTP attempts one foreground read can make at most before answering EIO
FOREGROUND_HTTP_BUDGET = FOREGROUND_ATTEMPTS * HTTP_ATTEMPTS
#: how long a read that found the bucket unreachable makes later reads try only once
OUTAGE_MEMORY_S = 10.0
BACKGROUND_MIN_DELAY_S = 1.0
BACKGROUND_MAX_DELAY_S = 30.0


def is_temporary(exc: BaseException) -> bool:
    """Worth trying again later (the bucket did not answer, or answered 5xx/503)."""
    return isinstance(exc, TransientStoreError)


def next_backoff(previous_s: float) -> float:
    """The wait of background work after another failure, given the last one (0: the
    first failure): 1 s, then doubling, at most ``BACKGROUND_MAX_DELAY_S``."""
    return min(BACKGROUND_MAX_DELAY_S, max(BACKGROUND_MIN_DELAY_S, previous_s * 2))
