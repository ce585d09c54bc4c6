"""Running the emulator: the HTTP API on one address, until SIGINT or SIGTERM.

Theory of operation
-------------------
:func:`serve` starts the aiohttp site, reports the bound address through ``on_ready`` (the
CLI prints it, so a caller that asked for port 0 learns the port), then waits for a stop
event set by SIGINT/SIGTERM (or by the caller). Shutdown runs in reverse: the HTTP site
first (no new requests), then every proxy (listeners, then connections).
:func:`run` installs uvloop when it is available and runs :func:`serve` to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from netem.api import Netem, make_app
from netem.proxy import format_hostport

__all__ = ["DEFAULT_PORT", "run", "serve", "spawn"]

#: Toxiproxy's port.
DEFAULT_PORT = 8474


async def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the Toxiproxy API on ``host:port`` until ``stop`` is set or a signal arrives."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    netem = Netem()
    runner = web.AppRunner(make_app(netem), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        server = site._server  # the bound port when port is 0
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, port)
        if on_ready is not None:
            on_ready(f"http://{format_hostport(str(bound[0]), int(bound[1]))}")
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await netem.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (faster sockets), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
        return
    uvloop.run(main)


def run(host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, quiet: bool = False) -> int:
    """Serve until a signal; 0 on a clean stop, 1 when the address cannot be bound."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    def ready(url: str) -> None:
        if not quiet:
            print(f"netem: Toxiproxy API {url} (Toxiproxy 2.x compatible)", flush=True)

    try:
        _run_loop(serve(host, port, on_ready=ready))
    except OSError as exc:
        print(f"netem: cannot serve on {format_hostport(host, port)}: {exc}", file=sys.stderr)
        return 1
    return 0


def spawn(
    host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m netem`` as a child process; returns it and its API URL once it
    serves (port 0: any free port). Stop it with ``terminate()`` (SIGTERM: clean shutdown).

    RuntimeError when it exits or stays silent for ``timeout_s``.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "netem", "--host", host, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def read(stream: Any) -> None:
        # Keep draining after the ready line so the child never blocks on a full pipe.
        for line in stream:
            match = re.search(r"http://\S+", line)
            if match and not found:
                found.append(match.group(0))
                ready.set()
        ready.set()

    threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            break
    if not found:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"netem did not start (exit status {proc.poll()})")
    return proc, found[0]
