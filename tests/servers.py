"""Test servers run as subprocesses, on 127.0.0.1 only."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port that refuses connections (bound once, then released)."""
    return free_port()


class MotoServer:
    """moto's S3 server from this virtualenv, listening on 127.0.0.1:<free port>, with
    its writes serialised as S3's are (``moto_serial.py``).

    Use as a context manager or call ``start()`` / ``stop()``. ``env`` adds variables
    for the server process (e.g. ``INITIAL_NO_AUTH_ACTION_COUNT=0`` makes moto check
    credentials).
    """

    def __init__(self, env: dict[str, str] | None = None, start_timeout: float = 30) -> None:
        self.env = env or {}
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log: tempfile._TemporaryFileWrapper | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> MotoServer:
        launcher = Path(__file__).with_name("moto_serial.py")
        self.port = free_port()
        env = {**os.environ, **self.env}
        # The server's output goes to a temp file (quoted if it fails to start), which
        # lives as long as the server: stop() closes it.
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(launcher), "-H", HOST, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._tail()
                self.stop()
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {tail}")
            if self._answers():
                return self
            time.sleep(0.1)
        tail = self._tail()
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} "
                           f"within {self.start_timeout:.0f} s: {tail}")

    def _tail(self) -> str:
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as r:
                return r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StubS3Server:
    """A fake S3 endpoint on 127.0.0.1 that answers every request with one canned
    error, or (``hang=True``) accepts requests and never answers them.

    ``requests`` counts the requests received (to observe client retries).
    """

    def __init__(self, status: int = 503, code: str = "SlowDown", hang: bool = False) -> None:
        self.status = status
        self.code = code
        self.hang = hang
        self.requests = 0
        self._release = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> StubS3Server:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                stub.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if stub.hang:
                    stub._release.wait(30)  # bounded: stop() releases it at once
                    self.close_connection = True
                    return
                body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{stub.code}"
                        f"</Code><Message>canned {stub.code}</Message></Error>").encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", "0" if self.command == "HEAD"
                                 else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> StubS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of a test server, to stage outages.

    ``mode``: "pass" forwards; "refuse" closes every new connection at once and cuts
    the open ones (a server that went away); "hang" accepts and never answers.
    """

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.upstream_port = upstream_port
        self.mode = "pass"
        self._lock = threading.Lock()
        self._conns: list = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "refuse", "hang")
        self.mode = mode
        if mode != "pass":
            with self._lock:
                conns, self._conns = self._conns, []
            for c in conns:
                try:
                    c.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stopped:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            if self.mode == "hang":
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped = True
        self._sock.close()
        self.set_mode("refuse")
