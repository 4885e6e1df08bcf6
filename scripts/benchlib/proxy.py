"""The counting proxy, in its own process (``bench.py proxy ...``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from benchlib.common import HOST

# ======================================================================================
# The counting proxy (runs as its own process: ``bench.py proxy ...``)
# ======================================================================================

class CountingProxy:
    """Forwards bytes unchanged to the upstream server; parses only the request heads
    (and request body framing, to find the next request on a kept-alive connection)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.counts: dict[str, dict[str, int]] = {}

    def count(self, name: str, method: str, target: str, headers: dict[bytes, bytes]) -> None:
        path = target.split("?", 1)[0]
        if path.startswith("http://"):
            path = "/" + path.split("/", 3)[-1]
        parts = path.lstrip("/").split("/", 1)
        has_key = len(parts) == 2 and parts[1] != ""
        if method == "GET":
            kind = "GET" if has_key else "LIST"
        elif method == "PUT":
            kind = "COPY" if b"x-amz-copy-source" in headers else "PUT"
        elif method in ("HEAD", "POST", "DELETE"):
            kind = method
        else:
            kind = "OTHER"
        c = self.counts.setdefault(name, {})
        c[kind] = c.get(kind, 0) + 1

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(1 << 18)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> None:
        while n > 0:
            data = await reader.read(min(n, 1 << 18))
            if not data:
                raise ConnectionError("client closed inside a request body")
            writer.write(data)
            n -= len(data)
            await writer.drain()

    async def client(self, name: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(HOST, self.upstream, limit=1 << 20)
        except OSError:
            writer.close()
            return
        pump = asyncio.ensure_future(self._pump(up_r, writer))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    break
                lines = head.split(b"\r\n")
                try:
                    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
                except ValueError:
                    break
                headers: dict[bytes, bytes] = {}
                for h in lines[1:]:
                    k, sep, v = h.partition(b":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                self.count(name, method.upper(), target, headers)
                up_w.write(head)
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        up_w.write(size_line)
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while True:
                                trailer = await reader.readuntil(b"\r\n")
                                up_w.write(trailer)
                                if trailer == b"\r\n":
                                    break
                            break
                        await self._copy(reader, up_w, size + 2)
                else:
                    await self._copy(reader, up_w, int(headers.get(b"content-length") or 0))
                await up_w.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                up_w.close()
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            with contextlib.suppress(Exception):
                writer.close()

    async def control(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            body = json.dumps(self.counts).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)
            await writer.drain()
        writer.close()


async def _proxy_serve(upstream: int, listens: list[tuple[str, int]], control: int) -> None:
    proxy = CountingProxy(upstream)
    servers = []
    for name, port in listens:
        proxy.counts[name] = {}

        async def handler(r, w, name=name):
            await proxy.client(name, r, w)
        servers.append(await asyncio.start_server(handler, HOST, port, limit=1 << 20,
                                                  backlog=512))
    servers.append(await asyncio.start_server(proxy.control, HOST, control))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def proxy_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.py proxy")
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--listen", action="append", default=[], help="NAME:PORT")
    p.add_argument("--control", type=int, required=True)
    a = p.parse_args(argv)
    listens = [(x.split(":")[0], int(x.split(":")[1])) for x in a.listen]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_proxy_serve(a.upstream, listens, a.control))
    return 0
