"""Proves the client's credentials against the real API guard over real HTTPS: the client
trusts the cluster CA (given, or named by cluster.json), sends its bearer token, and turns a
refusal into a typed error (no token or a wrong one: Unauthenticated/401; a token lacking
the role: Forbidden/403) that never reached a handler; the token never shows in an exception,
the client's repr, a log record or the CLI's error line, which says what to do next."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from geostore.cli.main import main as cli_main
from geostore.client import GeostoreClient
from geostore.client.errors import Forbidden, TlsFailed, Unauthenticated
from geostore.config.tokens import hash_secret, parse_tokens, token_toml
from geostore.config.topology import make_topology
from geostore.errors import ApiError, ErrorCode
from geostore.transport.certs import CA_CERT, client_files, init_certs
from tests.integration.guardkit import guarded_server

pytestmark = pytest.mark.timeout(60)

READER = "gst_reader-secret-0123456789abcdef"
WRITER = "gst_writer-secret-fedcba9876543210"
WRONG = "gst_wrong-secret-00112233445566778899"
SECRETS = (READER, WRITER, WRONG)


class Api:
    """Just enough of the API for the client's parsers; records what reached a handler."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def append(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        body = {"results": [{"partition": 0, "first_seq": 0, "last_seq": 0, "epoch": 1}]}
        return web.json_response({**body, "token": "tok-1"})

    async def read(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        return web.json_response({"events": [], "next_seq": 0})

    async def tail(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = {"seq": 0, "ts": 1, "key": None, "body": {"x": 1}, "epoch": 1}
        await resp.write(f"event: event\ndata: {json.dumps(event)}\n\n".encode())
        await asyncio.sleep(0.5)  # a live tail stays open a while; the client hangs up first
        return resp


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Api, Path]]:
    certs = tmp_path / "certs"
    init_certs(make_topology({"r1": ["a"]}, 0.0, name="c1"), certs, clients=["op"])
    tokens = parse_tokens(
        token_toml("reader", hash_secret(READER), ["read"])
        + token_toml("writer", hash_secret(WRITER), ["read", "write"])
    )
    api = Api()

    def routes(app: web.Application) -> None:
        app.router.add_post("/v1/streams/{name}/events", api.append)
        app.router.add_get("/v1/streams/{name}/events", api.read)
        app.router.add_get("/v1/streams/{name}/tail", api.tail)

    async with guarded_server(certs, tokens, routes) as base:
        yield base, api, certs


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text and hash_secret(secret) not in text


async def test_refusals_are_typed_and_change_nothing(
    server: tuple[str, Api, Path], caplog: pytest.LogCaptureFixture
) -> None:
    base, api, certs = server
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's access and client logs included
    ca = certs / CA_CERT
    seen: list[ApiError] = []
    async with GeostoreClient([base], ca=ca, timeout_s=5) as anonymous:
        with pytest.raises(Unauthenticated) as no_token:
            await anonymous.append("s", [{"body": {"x": 1}}])
        seen.append(no_token.value)
    for token, method, expected in (
        (WRONG, "append", Unauthenticated),
        (WRONG, "read", Unauthenticated),
        (READER, "append", Forbidden),
    ):
        async with GeostoreClient([base], ca=ca, token=token, timeout_s=5) as client:
            _no_secret(repr(client))
            with pytest.raises(expected) as refused:
                if method == "append":
                    await client.append("s", [{"body": {"x": 1}}])
                else:
                    await client.read("s")
            seen.append(refused.value)
    assert [e.status for e in seen] == [401, 401, 401, 403]  # type: ignore[attr-defined]
    assert [e.code for e in seen] == [ErrorCode.UNAUTHORIZED] * 3 + [ErrorCode.FORBIDDEN]
    assert seen[-1].details.get("role") == "write"
    assert api.calls == []  # every refusal was answered before a handler ran
    for err in seen:
        _no_secret(str(err) + repr(err) + repr(err.details) + json.dumps(err.to_body()))
    async with GeostoreClient([base], ca=ca, token=READER, timeout_s=5) as reader:
        assert (await reader.read("s")).events == ()
    async with GeostoreClient([base], ca=ca, token=WRITER, timeout_s=5) as writer:
        assert (await writer.append("s", [{"body": {"x": 1}}])).token == "tok-1"
    assert api.calls == [("GET", "/v1/streams/s/events"), ("POST", "/v1/streams/s/events")]
    assert caplog.records, "the server logged its access lines"
    _no_secret("\n".join(r.getMessage() + repr(r.args) for r in caplog.records))


async def test_tail_carries_the_token(server: tuple[str, Api, Path]) -> None:
    base, api, certs = server
    ca = certs / CA_CERT
    async with GeostoreClient([base], ca=ca, timeout_s=5) as anonymous:
        with pytest.raises(Unauthenticated):
            await anext(aiter(anonymous.tail("s")))
    async with GeostoreClient([base], token=READER, timeout_s=5) as untrusting:
        with pytest.raises(TlsFailed):
            await anext(aiter(untrusting.tail("s")))
    assert api.calls == []
    async with GeostoreClient([base], ca=ca, token=READER, timeout_s=5) as reader:
        tail = reader.tail("s")
        first = await anext(aiter(tail))
        await tail.aclose()  # type: ignore[attr-defined]
    assert first.seq == 0 and first.body == {"x": 1}
    assert api.calls == [("GET", "/v1/streams/s/tail")]


async def test_tls_trust_comes_from_the_cluster_ca(
    server: tuple[str, Api, Path], tmp_path: Path
) -> None:
    base, api, certs = server
    # Without the cluster CA the node's certificate is not trusted: a typed, unretried error.
    async with GeostoreClient([base], token=READER, timeout_s=5) as untrusting:
        with pytest.raises(TlsFailed) as failed:
            await untrusting.read("s")
    assert "TLS" in str(failed.value)
    _no_secret(str(failed.value))
    # cluster.json names the CA (relative to its folder) and says tls: http becomes https.
    port = base.rsplit(":", 1)[1]
    doc = {
        "tls": True,
        "ca": "certs/" + CA_CERT,
        "regions": {"r1": {"nodes": [{"id": "a", "api": f"http://127.0.0.1:{port}"}]}},
    }
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    async with GeostoreClient.from_cluster(tmp_path, token=READER, timeout_s=5) as client:
        assert client.urls == [base]
        assert (await client.read("s")).next_seq == 0
    # An operator's client certificate of the cluster is a credential of its own.
    cert, key = client_files(certs, "op")
    async with GeostoreClient.from_cluster(tmp_path, cert=cert, key=key, timeout_s=5) as op:
        assert (await op.append("s", [{"body": 1}])).token == "tok-1"
    assert api.calls == [("GET", "/v1/streams/s/events"), ("POST", "/v1/streams/s/events")]


async def test_cli_says_what_to_do_and_hides_the_token(
    server: tuple[str, Api, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, api, certs = server
    doc = {"regions": {"r1": {"nodes": [{"id": "a", "api": base}]}}}
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    common = ["--cluster", str(tmp_path), "--ca", str(certs / CA_CERT), "--timeout", "5"]

    def run(argv: list[str]) -> tuple[int, str, str]:
        code = cli_main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    monkeypatch.delenv("GEOSTORE_TOKEN", raising=False)
    code, _, err = await asyncio.to_thread(run, ["read", *common, "s"])
    assert code == 1 and "401" in err and "--token" in err and "GEOSTORE_TOKEN" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = await asyncio.to_thread(run, ["read", *common, "--token", WRONG, "s"])
    assert code == 1 and "401" in err
    _no_secret(err)
    monkeypatch.setenv("GEOSTORE_TOKEN", READER)
    code, _, err = await asyncio.to_thread(run, ["append", *common, "--body", "{}", "s"])
    assert code == 1 and "403" in err and "'write'" in err and "role" in err
    _no_secret(err)
    assert api.calls == []
    code, out, _ = await asyncio.to_thread(run, ["read", *common, "s"])  # token from the env
    assert code == 0
    _no_secret(out)
    assert api.calls == [("GET", "/v1/streams/s/events")]
    code, _, err = await asyncio.to_thread(run, ["read", "--cluster", str(tmp_path), "s"])
    assert code == 1 and "--ca" in err  # an untrusted certificate: pass the cluster CA
