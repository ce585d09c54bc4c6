"""What the tests of the HTTP API guard over real HTTPS share: an aiohttp server of node
``a`` with its cluster certificate (client certificates optional, as on the API port) behind
the token guard (:func:`geostore.transport.auth.auth_middleware`), on a free local port, with
the routes a test gives it; refusals are answered with the error's own body and status."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from geostore.config.tokens import AuthError, TokenTable
from geostore.transport.auth import auth_middleware
from geostore.transport.certs import load_node_tls


def on_auth_error(request: web.Request, err: AuthError) -> web.Response:
    return web.json_response(err.to_body(), status=err.http_status)


@contextlib.asynccontextmanager
async def guarded_server(
    certs: Path, tokens: TokenTable, add_routes: Callable[[web.Application], None]
) -> AsyncIterator[str]:
    """The server's base URL (``https://127.0.0.1:PORT``) while it runs."""
    tls = load_node_tls(certs, "a", require_client_cert=False)
    app = web.Application(middlewares=[auth_middleware(tokens, "c1", on_auth_error)])
    add_routes(app)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=tls.server_ctx).start()
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
