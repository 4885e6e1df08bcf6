"""The S3 server (moto) and the counting proxy in front of it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

from benchlib.common import HERE, HOST, VENV_BIN
from benchlib.procs import free_port, kill_pid
from benchlib.systems import Ctx


def start_proxy(ctx: Ctx, upstream: int, names: list[str], logname: str) -> subprocess.Popen:
    """A counting proxy in front of ``upstream``, one port per name (``ctx.proxy_ports``);
    returns once it answers on its control port."""
    ctx.proxy_ports = {n: free_port() for n in names}
    ctx.control_port = free_port()
    cmd = [sys.executable, str(HERE / "bench.py"), "proxy", "--upstream", str(upstream),
           "--control", str(ctx.control_port)]
    for n, p in ctx.proxy_ports.items():
        cmd += ["--listen", f"{n}:{p}"]
    logf = open(ctx.workdir / "logs" / logname, "ab")  # noqa: SIM115
    proxy = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()
    ctx.reg.add(proxy.pid, "counting proxy")
    deadline = time.monotonic() + 60
    while True:
        try:
            ctx.counts()
            return proxy
        except (OSError, urllib.error.URLError, ValueError):
            if proxy.poll() is not None or time.monotonic() > deadline:
                kill_pid(proxy.pid, None, grace=5)
                raise SystemExit("bench: the counting proxy did not start; see "
                                 f"{ctx.workdir / 'logs' / logname}") from None
            time.sleep(0.2)


def start_servers(ctx: Ctx, names: list[str]) -> tuple[subprocess.Popen, subprocess.Popen]:
    """moto on a free port (``ctx.s3_port``) and the counting proxy in front of it."""
    ctx.s3_port = free_port()
    logf = open(ctx.workdir / "logs" / "moto.log", "ab")  # noqa: SIM115
    moto = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", HOST, "-p",
                             str(ctx.s3_port)], stdin=subprocess.DEVNULL, stdout=logf,
                            stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()
    ctx.reg.add(moto.pid, "moto_server")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{ctx.s3_port}/moto-api/",
                                        timeout=2):
                break
        except (OSError, urllib.error.URLError, ValueError):
            if moto.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the moto server did not start; see "
                                 f"{ctx.workdir / 'logs' / 'moto.log'}") from None
            time.sleep(0.2)
    return moto, start_proxy(ctx, ctx.s3_port, names, "proxy.log")
