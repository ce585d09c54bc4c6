"""Proves, between real node processes of one region (TLS and tokens on), that a follower names
its region group's leader in ``X-Geostore-Leader`` on the answers it forwarded and on its
``not_leader`` refusals, and that a client that starts on a follower sends its later calls to
the leader after one forwarded call (the followers' ``geostore_forwarded_total`` stops
growing), while a client that does not know the named node stays where it is and keeps paying
the forward; the OpenAPI document describes the header."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geostore.client import GeostoreClient
from geostore.client.tls import client_ssl
from geostore.runtime.api import FORWARDED_HEADER, LEADER_HEADER, openapi_document
from geostore.transport.certs import CA_CERT, node_files
from tests.integration import secure
from tests.integration.clusterkit import DEADLINE_S, cluster_up, nodes, ok, topology_toml

pytestmark = pytest.mark.timeout(120)

TOPOLOGY = topology_toml("leader-hint", {"r1": ["n1", "n2", "n3"]}, {})
APPENDS = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with cluster_up(tmp_path_factory.mktemp("leader-hint"), TOPOLOGY, "--no-netem") as info:
        yield info


def leader_of(info: dict[str, Any]) -> str:
    """The data group's leader as its nodes see it (waits until one is known)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for n in nodes(info).values():
            leader = ok(n["api"] + "/v1/status")["groups"]["data-r1"].get("leader")
            if leader is not None:
                return str(leader)
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.2)


def forwarded(api: str) -> float:
    """Requests the node at ``api`` forwarded to a leader since it started (every route)."""
    with secure.urlopen(api + "/metrics", timeout=20) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("geostore_forwarded_total")
    )


def client(info: dict[str, Any], first: str, ids: dict[str, str]) -> GeostoreClient:
    """A client of the region that starts on node ``first``; ``ids`` renames the node ids it
    is told (to make it not know one)."""
    by_id = nodes(info)
    order = [first, *sorted(n for n in by_id if n != first)]
    ctx, token = secure.credentials(info["folder"])
    return GeostoreClient(
        [by_id[n]["api"] for n in order],
        "r1",
        node_ids=[ids.get(n, n) for n in order],
        ssl=ctx,
        token=token,
        timeout_s=DEADLINE_S,
    )


async def test_a_forwarded_answer_names_the_leader(cluster: dict[str, Any]) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in nodes(cluster) if n != leader)
    async with aiohttp.ClientSession(**secure.aiohttp_kwargs(cluster["folder"])) as http:
        async with http.post(
            nodes(cluster)[follower]["api"] + "/v1/streams", json={"name": "hinted"}
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
            assert resp.headers.get(LEADER_HEADER) == leader
        # the leader serves it itself: nothing to name
        async with http.post(
            nodes(cluster)[leader]["api"] + "/v1/streams", json={"name": "hinted"}
        ) as resp:
            assert resp.status == 200 and LEADER_HEADER not in resp.headers


async def test_a_not_leader_refusal_names_the_leader(cluster: dict[str, Any]) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in nodes(cluster) if n != leader)
    folder = Path(cluster["folder"]) / "certs"
    # a request marked forwarded reaches a node that does not lead: only a node may send
    # that mark, so the test presents a node's certificate
    ctx = client_ssl(folder / CA_CERT, *node_files(folder, follower))
    _, token = secure.credentials(cluster["folder"])
    url = nodes(cluster)[follower]["api"] + "/v1/streams/hinted/events"
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.post(
            url, json={"events": [{"body": 1}]}, headers={FORWARDED_HEADER: leader}, ssl=ctx
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "not_leader", body
        assert resp.headers.get(LEADER_HEADER) == leader_of(cluster)


async def test_a_client_on_a_follower_moves_to_the_leader(cluster: dict[str, Any]) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in nodes(cluster) if n != leader)
    apis = [n["api"] for n in nodes(cluster).values()]
    async with client(cluster, follower, {}) as c:
        await c.create_stream("moves", 1)  # forwarded by the follower: names the leader
        before = sum(forwarded(a) for a in apis)
        for i in range(APPENDS):
            await c.append("moves", [{"body": i}])
        await c.read("moves", 0, consistency="regional")
        after = sum(forwarded(a) for a in apis)
        assert c.urls[c._current] == nodes(cluster)[leader_of(cluster)]["api"]
    # at most one more forward (a leader change under load); before the hint, every one
    assert after - before <= 1, (before, after)


async def test_a_leader_the_client_does_not_know_is_ignored(cluster: dict[str, Any]) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in nodes(cluster) if n != leader)
    api = nodes(cluster)[follower]["api"]
    async with client(cluster, follower, {leader: "ghost"}) as c:
        await c.create_stream("stays", 1)
        before = forwarded(api)
        for i in range(APPENDS):
            await c.append("stays", [{"body": i}])
        after = forwarded(api)
        assert c.urls[c._current] == api
    # every append paid the hop (a leader change might have saved a few)
    assert after - before >= APPENDS // 2, (before, after)


def test_the_openapi_document_describes_the_header() -> None:
    doc = openapi_document()
    append = doc["paths"]["/v1/streams/{s}/events"]["post"]["responses"]
    status = doc["paths"]["/v1/status"]["get"]["responses"]
    ref = {"$ref": "#/components/headers/Leader"}
    assert append["200"]["headers"] == {LEADER_HEADER: ref}
    assert append["503"]["headers"] == {LEADER_HEADER: ref}
    # the leader's refusals come back forwarded too, naming it like its 200 does
    for code in ("400", "404", "421", "504"):
        assert append[code]["headers"] == {LEADER_HEADER: ref}, code
    assert "headers" not in status["200"]  # never forwarded
    assert doc["components"]["headers"]["Leader"]["schema"] == {"type": "string"}
