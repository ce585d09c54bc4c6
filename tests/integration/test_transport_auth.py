"""Proves the HTTP API guard over real HTTPS: without a token, with a wrong token, or with a
token lacking the role a request is answered 401/403 before its handler runs (so it changes
nothing) and the secret is never echoed; a token with the role, an operator's or a node's
client certificate is let through; open paths need nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from geostore.config.tokens import hash_secret, parse_tokens, token_toml
from geostore.config.topology import make_topology
from geostore.transport.auth import PRINCIPAL, default_role_for
from geostore.transport.certs import (
    CA_CERT,
    client_files,
    client_ssl_context,
    init_certs,
    node_files,
)
from tests.integration.guardkit import guarded_server

pytestmark = pytest.mark.timeout(60)

READER, WRITER, ADMIN = "gst_reader-0123456789abcdef", "gst_writer-0123456789", "gst_admin-012345"


class Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        principal = request.get(PRINCIPAL)
        return web.json_response({"principal": principal.name if principal else None})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Api, Path]]:
    certs = tmp_path / "certs"
    init_certs(make_topology({"r1": ["a", "b"]}, 0.0, name="c1"), certs, clients=["op"])
    tokens = parse_tokens(
        token_toml("reader", hash_secret(READER), ["read"])
        + token_toml("writer", hash_secret(WRITER), ["read", "write"])
        + token_toml("admin", hash_secret(ADMIN), ["admin"])
    )
    api = Api()

    def routes(app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", api.handle)

    async with guarded_server(certs, tokens, routes) as base:
        yield base, api, certs


async def _call(
    base: str, ctx: Any, method: str, path: str, token: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, ssl=ctx, headers=headers) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


async def test_tokens_and_roles_over_https(server: tuple[str, Api, Path]) -> None:
    base, api, certs = server
    ctx = client_ssl_context(certs / CA_CERT)  # an HTTPS client that trusts the cluster CA
    status, body, headers = await _call(base, ctx, "POST", "/v1/streams/s/events")
    assert status == 401 and '"unauthorized"' in body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    wrong = WRITER + "-not"
    status, body, _ = await _call(base, ctx, "POST", "/v1/streams/s/events", wrong)
    assert status == 401 and wrong not in body and hash_secret(wrong) not in body
    status, body, _ = await _call(base, ctx, "POST", "/v1/streams/s/events", READER)
    assert status == 403 and '"forbidden"' in body and READER not in body
    status, _, _ = await _call(base, ctx, "POST", "/v1/admin/members", WRITER)
    assert status == 403
    assert api.calls == []  # nothing refused reached a handler
    assert (await _call(base, ctx, "GET", "/v1/streams/s/events", READER))[0] == 200
    assert (await _call(base, ctx, "POST", "/v1/streams/s/events", WRITER))[0] == 200
    assert (await _call(base, ctx, "POST", "/v1/admin/members", ADMIN))[0] == 200
    assert (await _call(base, ctx, "GET", "/v1/health"))[0] == 200
    assert api.calls == [
        ("GET", "/v1/streams/s/events"),
        ("POST", "/v1/streams/s/events"),
        ("POST", "/v1/admin/members"),
        ("GET", "/v1/health"),
    ]


async def test_cluster_certificates_authenticate_without_token(
    server: tuple[str, Api, Path],
) -> None:
    base, api, certs = server
    assert api.calls == []
    op = client_ssl_context(certs / CA_CERT, *client_files(certs, "op"))
    status, body, _ = await _call(base, op, "POST", "/v1/admin/members")
    assert status == 200 and "client:op" in body
    node_b = client_ssl_context(certs / CA_CERT, *node_files(certs, "b"))
    status, body, _ = await _call(base, node_b, "POST", "/v1/streams")
    assert status == 200 and "node:b" in body
    assert api.calls == [("POST", "/v1/admin/members"), ("POST", "/v1/streams")]


def test_default_roles() -> None:
    assert default_role_for("GET", "/v1/streams/x/events") == "read"
    assert default_role_for("POST", "/v1/streams") == "write"
    assert default_role_for("POST", "/v1/admin/leader/transfer") == "admin"
    assert default_role_for("GET", "/v1/debug/partitions") == "admin"
    assert default_role_for("GET", "/v1/health") is None
    assert default_role_for("GET", "/v1/peer") is None
