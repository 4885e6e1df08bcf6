"""A TCP proxy in front of the S3 server that counts requests by method (HEAD, GET,
...) on their way up: how the mount tests see which requests a step made; and one
that can also hold chosen requests at a gate (``GatedProxy``). Shared by the test
modules (which import it, never each other)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable

from servers import FaultProxy

_REQUEST = re.compile(rb"(?:^|\r\n\r\n)(HEAD|GET|PUT|POST|DELETE) /")


class _Counted:
    """A client socket whose received bytes are scanned for request lines."""

    def __init__(self, sock: socket.socket, proxy: CountingProxy) -> None:
        self.sock, self.proxy = sock, proxy

    def recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        self.proxy.seen(data)
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class CountingProxy(FaultProxy):
    """The fault proxy in "pass" mode, counting requests by method on their way up
    (bodies here are small and never contain a request line)."""

    def __init__(self, upstream_port: int) -> None:
        self.counts: dict[str, int] = {}
        self.count_lock = threading.Lock()
        super().__init__(upstream_port)

    def _pipe(self, src, dst) -> None:  # the base class's static helper, per direction
        if src.getsockname()[1] == self.port:  # client -> server: requests
            src = _Counted(src, self)
        FaultProxy._pipe(src, dst)

    def seen(self, data: bytes) -> None:
        """Bytes on their way up (a request's head, or part of a body): count the
        request lines in them."""
        with self.count_lock:
            for m in _REQUEST.finditer(data):
                method = m.group(1).decode()
                self.counts[method] = self.counts.get(method, 0) + 1

    def heads(self) -> int:
        with self.count_lock:
            return self.counts.get("HEAD", 0)


def is_put(data: bytes) -> bool:
    return data.startswith(b"PUT /")


class GatedProxy(CountingProxy):
    """The counting proxy, also counting the bytes sent up (``sent``), and holding
    each request whose first bytes ``hold`` accepts (by default every PUT: an upload's
    parts) while ``gate`` is clear; ``held`` is set once one waited there."""

    def __init__(self, upstream_port: int, hold: Callable[[bytes], bool] = is_put) -> None:
        self.sent = 0
        self.hold = hold
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        super().__init__(upstream_port)

    def seen(self, data: bytes) -> None:
        super().seen(data)
        if not self.gate.is_set() and self.hold(data):
            self.held.set()
            assert self.gate.wait(60), "the gate never opened"
        with self.count_lock:
            self.sent += len(data)
