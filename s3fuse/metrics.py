"""Prometheus metrics (``--metrics-addr HOST:PORT``), with the ``prometheus-client``
library: every figure is defined here, once; the code that knows a figure calls one
small method (the S3 calls in ``remote``, FUSE handlers in ``fuse_ops._guard``,
retries and conflicts in ``flusher``), and the daemon copies its pending figures into
the gauges once a second.

Conventions: the ``s3fuse_`` prefix, base units (seconds, bytes), ``_total`` on
counters (the library adds it), and no paths or keys as labels: labels are the S3
operation, the FUSE operation, a status or an errno name, all from small fixed sets.
Each daemon has its own ``CollectorRegistry`` (tests run several in one process).
"""

from __future__ import annotations

import errno as errno_mod
import platform
from wsgiref.simple_server import WSGIServer

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, start_http_server)

from . import __version__
from .errors import StoreError, TransientStoreError

#: request latencies from a fast local store to a slow, far bucket
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


def store_status(exc: BaseException) -> str:
    """The ``status`` label of a failed store request: the HTTP status when the server
    answered, ``unreachable`` when it did not, else the kind of error."""
    http = getattr(exc, "http_status", None)
    if http:
        return str(http)
    if isinstance(exc, TransientStoreError):
        return "unreachable"
    if isinstance(exc, StoreError):
        return type(exc).__name__
    return "error"


class Metrics:
    """The metrics of one daemon, in their own registry."""

    def __init__(self) -> None:
        # no ``_created`` series beside each counter: noise for an operator
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.s3_requests = Counter(
            "s3fuse_s3_requests", "Requests made to the object store, by operation",
            ["operation"], registry=r)
        self.s3_errors = Counter(
            "s3fuse_s3_request_errors", "Requests to the object store that failed, by "
            "operation and status (HTTP status, or unreachable)", ["operation", "status"],
            registry=r)
        self.s3_latency = Histogram(
            "s3fuse_s3_request_duration_seconds", "Time a request to the object store "
            "took, by operation", ["operation"], buckets=_LATENCY_BUCKETS, registry=r)
        self.fuse_latency = Histogram(
            "s3fuse_fuse_operation_duration_seconds", "Time the daemon took to answer a "
            "FUSE request, by operation", ["operation"], buckets=_LATENCY_BUCKETS,
            registry=r)
        self.fuse_errors = Counter(
            "s3fuse_fuse_operation_errors", "FUSE requests answered with an error, by "
            "operation and errno", ["operation", "errno"], registry=r)
        self.retries = Counter(
            "s3fuse_retries", "Store work tried again after a failure: read (a foreground "
            "read retried at once), upload, operation (a pending copy or delete)",
            ["kind"], registry=r)
        self.conflicts = Counter(
            "s3fuse_conflicts", "Files changed both in the bucket and on the mount (the "
            "mount's version went to lost+found)", registry=r)
        self.dirty_files = Gauge(
            "s3fuse_dirty_files", "Files (and directory markers) changed on the mount and "
            "not yet in the bucket", registry=r)
        self.dirty_bytes = Gauge(
            "s3fuse_dirty_bytes", "Bytes of changed file data not yet in the bucket",
            registry=r)
        self.pending_operations = Gauge(
            "s3fuse_pending_operations", "Server-side copies and deletes (renames, "
            "unlinks) not yet carried out in the bucket", registry=r)
        self.oldest_pending_age = Gauge(
            "s3fuse_oldest_pending_age_seconds", "Age of the oldest change not yet in the "
            "bucket (0 when nothing is pending): the data at risk", registry=r)
        self.uploads_in_flight = Gauge(
            "s3fuse_uploads_in_flight", "Uploads running now", registry=r)
        self.cache_bytes = Gauge(
            "s3fuse_cache_bytes", "Bytes in the local cache", registry=r)
        self.cache_limit_bytes = Gauge(
            "s3fuse_cache_limit_bytes", "The cache size limit (--cache-size)", registry=r)
        self.build_info = Gauge(
            "s3fuse_build_info", "Always 1; the labels say which s3fuse runs",
            ["version", "python"], registry=r)
        self.build_info.labels(version=__version__,
                               python=platform.python_version()).set(1)
        self._server: WSGIServer | None = None

    # --- hooks ------------------------------------------------------------------------
    def s3_request(self, operation: str, seconds: float,
                   error: BaseException | None = None) -> None:
        self.s3_requests.labels(operation).inc()
        self.s3_latency.labels(operation).observe(seconds)
        if error is not None:
            self.s3_errors.labels(operation, store_status(error)).inc()

    def fuse_request(self, operation: str, seconds: float, err: int = 0) -> None:
        self.fuse_latency.labels(operation).observe(seconds)
        if err:
            self.fuse_errors.labels(operation, errno_mod.errorcode.get(err, str(err))).inc()

    def retry(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def conflict(self) -> None:
        self.conflicts.inc()

    def set_state(self, pending: dict, cache_bytes: int, cache_limit_bytes: int) -> None:
        """Copy the daemon's figures (``Flusher.pending()`` and the cache's) in."""
        self.dirty_files.set(pending["dirty_files"])
        self.dirty_bytes.set(pending["dirty_bytes"])
        self.pending_operations.set(pending["pending_ops"])
        self.oldest_pending_age.set(pending["oldest_pending_age_s"])
        self.uploads_in_flight.set(pending["uploads_in_flight"])
        self.cache_bytes.set(cache_bytes)
        self.cache_limit_bytes.set(cache_limit_bytes)

    # --- the HTTP endpoint ------------------------------------------------------------
    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` at HOST:PORT from a thread; raises OSError if the address
        cannot be bound."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
