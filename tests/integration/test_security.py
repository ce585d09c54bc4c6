"""Proves that a cluster started by ``geostore cluster up`` (TLS and tokens by default) lets no
one in where they don't belong, against real node processes and sockets: a process without a
certificate, with a certificate of another cluster's CA, or with the cluster's certificate of a
non-node, cannot hold a peer link, send a Raft message or inject a geo batch; a node's genuine
certificate cannot carry Raft messages for another region, spoof another sender, or a geo
envelope of a region it does not belong to; each attempt is refused and counted, and the
cluster's Raft state and data are unchanged afterwards. Client calls without a token, with a
wrong one, or with a token lacking the role get 401/403, change nothing, and the secret never
shows in answers, logs or metrics. ``geostore append``/``read`` work through cluster.json, and
``--insecure`` starts a plain-HTTP cluster with a loud warning."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geostore.config import load_topology
from geostore.config.tokens import hash_secret, token_toml
from geostore.geo import GeoEnvelope
from geostore.ids import GroupId, NodeId, RegionId
from geostore.raft.messages import RequestVote
from geostore.runtime.wire import encode_peer_message
from geostore.transport.certs import CA_CERT, client_files, ensure_certs, init_certs, node_files
from geostore.transport.wire import PEER_PATH, encode_batch, hello_text
from tests.integration import secure
from tests.integration.clusterkit import cluster_up, geostore, nodes, topology_toml

pytestmark = pytest.mark.timeout(180)

TOPOLOGY = topology_toml(
    "sec",
    {"a": ["a1"], "b": ["b1"], "c": ["c1"]},
    {("a", "b"): 0.0, ("a", "c"): 0.0, ("b", "c"): 0.0},
)
READER = "gst_reader-0123456789abcdef0123456789"
WRONG = "gst_wrong-0123456789abcdef0123456789ab"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("sec")
    folder = root / "c"
    folder.mkdir()
    # an operator's read-only token, listed before the first start (cluster up keeps it)
    (folder / "tokens.toml").write_text(token_toml("reader", hash_secret(READER), ["read"]))
    with cluster_up(root, TOPOLOGY, "--no-netem") as doc:
        doc["_dir"] = folder
        doc["_root"] = root
        doc["_admin"] = (folder / "admin.token").read_text().strip()
        yield doc


def api(cluster: dict[str, Any], node: str) -> str:
    return str(nodes(cluster)[node]["api"])


def call(url: str, *, token: str | None, method: str = "GET", body: Any = None,
         ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def status(cluster: dict[str, Any], node: str) -> dict[str, Any]:
    with secure.urlopen(api(cluster, node) + "/v1/status", timeout=30) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def raft_state(cluster: dict[str, Any], node: str) -> tuple[Any, ...]:
    g = status(cluster, node)["groups"][f"data-{node[0]}"]
    return g["term"], g["commit"], g["leader"], tuple(g.get("voters") or ())


def metrics(cluster: dict[str, Any], node: str) -> str:
    with secure.urlopen(api(cluster, node) + "/metrics", timeout=30) as r:
        return str(r.read().decode())


def refused_metric(cluster: dict[str, Any], node: str, reason: str) -> int:
    want = f'geostore_peer_messages_refused_total{{reason="{reason}"}} '
    for line in metrics(cluster, node).splitlines():
        if line.startswith(want):
            return int(float(line.split()[-1]))
    return 0


def ctx_with(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


async def peer_attempt(url: str, ctx: ssl.SSLContext, hello: str, frames: list[bytes]) -> str:
    """Dial the peer endpoint, send ``hello`` then ``frames``; what came back, in words."""
    wss = url.replace("https://", "wss://") + PEER_PATH
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(wss, ssl=ctx, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws,
        ):
            await ws.send_str(hello)
            answer = await ws.receive(timeout=15)
            for frame in frames:
                if ws.closed:
                    break
                await ws.send_bytes(frame)
            await asyncio.sleep(0.5)
            if answer.type is aiohttp.WSMsgType.TEXT:
                doc = json.loads(answer.data)
                return str(doc.get("reason") or doc["type"])
            return f"closed ({answer.type.name})"
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as exc:
        return f"tls: {type(exc).__name__}"


def raft_frames(src: str, dst: str, group: str) -> list[bytes]:
    vote = RequestVote(GroupId(group), NodeId(src), NodeId(dst), 10_000, 10_000, 10_000,
                       False, False)  # fmt: skip
    return [encode_batch([encode_peer_message(vote)])]


def test_cluster_up_made_owner_only_credentials(cluster: dict[str, Any]) -> None:
    folder: Path = cluster["_dir"]
    assert cluster["tls"] is True and cluster["ca"] == "certs/ca.crt"
    for path in [folder / "admin.token", folder / "tokens.toml", *(folder / "certs").iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path
    assert (folder / "certs").stat().st_mode & 0o777 == 0o700
    assert all(n["api"].startswith("https://") for i in cluster["regions"].values()
               for n in i["nodes"])  # fmt: skip
    st = status(cluster, "a1")  # the node says how it serves, as cluster.json does
    assert st["tls"] is True and st["api"].startswith("https://"), st["api"]


def test_a_process_without_a_node_certificate_cannot_join_or_send(
    cluster: dict[str, Any],
) -> None:
    folder: Path = cluster["_dir"]
    ca = folder / "certs" / CA_CERT
    a1 = api(cluster, "a1")
    before = raft_state(cluster, "a1")
    refused_before = status(cluster, "a1")["peers"]["refused_in"]
    # an operator client certificate of this very CA: valid TLS, but not a node
    ensure_certs(load_topology(topology_file(cluster)), folder / "certs", clients=["intruder"])
    intruder = client_files(folder / "certs", "intruder")
    # another cluster with the same name and node ids: its own CA
    foreign_dir = cluster["_root"] / "foreign"
    init_certs(load_topology(topology_file(cluster)), foreign_dir)
    attempts = {
        "no certificate": (ctx_with(ca, None), "a1"),
        "client certificate of the cluster": (ctx_with(ca, intruder), "a1"),
        "node certificate of another CA": (
            ctx_with(ca, node_files(foreign_dir, "b1")),
            "a1",
        ),
    }
    got = {}
    for what, (ctx, dst) in attempts.items():
        hello = hello_text("sec", NodeId("b1"), NodeId(dst))
        got[what] = asyncio.run(peer_attempt(a1, ctx, hello, raft_frames("b1", dst, "data-a")))
    assert got["no certificate"] == "unauthenticated", got
    assert got["client certificate of the cluster"] == "identity_mismatch", got
    assert got["node certificate of another CA"].startswith(("tls:", "closed")), got
    st = status(cluster, "a1")["peers"]
    assert st["refused_in"].get("unauthenticated", 0) > refused_before.get("unauthenticated", 0)
    assert st["refused_in"].get("identity_mismatch", 0) >= 1
    assert sum(st["tls_refused"].values()) >= 1, st["tls_refused"]
    # no Raft message got through: a vote for term 10,000 would have moved the term
    assert raft_state(cluster, "a1") == before


def topology_file(cluster: dict[str, Any]) -> str:
    return str(cluster["topology_resolved"])


def test_a_node_certificate_cannot_speak_for_another_region_or_node(
    cluster: dict[str, Any],
) -> None:
    folder: Path = cluster["_dir"]
    ca = folder / "certs" / CA_CERT
    c1_cert = node_files(folder / "certs", "c1")
    a1 = api(cluster, "a1")
    ctx = ctx_with(ca, None)
    # a stream with one event, to compare afterwards
    admin = cluster["_admin"]
    s, _, body = call(a1 + "/v1/streams", token=admin, method="POST",
                      body={"name": "guarded", "partitions": 1}, ctx=ctx)  # fmt: skip
    assert s in (200, 201), body
    s, _, body = call(a1 + "/v1/streams/guarded/events", token=admin, method="POST",
                      body={"events": [{"body": {"n": 1}}]}, ctx=ctx)  # fmt: skip
    assert s == 200, body
    before_state = raft_state(cluster, "a1")
    before_data = call(a1 + "/v1/streams/guarded/events", token=admin, ctx=ctx)[2]
    foreign0 = refused_metric(cluster, "a1", "foreign_region")
    spoof0 = refused_metric(cluster, "a1", "src_mismatch")
    geo0 = refused_metric(cluster, "a1", "geo_wrong_region")
    envelope = GeoEnvelope(RegionId("b"), RegionId("a"), ())  # c1 claims to ship b's data
    frames = [
        *raft_frames("c1", "a1", "data-a"),  # a Raft vote for a's group from region c
        *raft_frames("b1", "a1", "data-a"),  # ... naming another node as its sender
        encode_batch([encode_peer_message(envelope)]),
    ]
    hello = hello_text("sec", NodeId("c1"), NodeId("a1"))
    answer = asyncio.run(peer_attempt(a1, ctx_with(ca, c1_cert), hello, frames))
    assert answer == "welcome", answer  # c1 is a node of the cluster: its link is accepted

    def counted() -> bool:
        return (
            refused_metric(cluster, "a1", "foreign_region") > foreign0
            and refused_metric(cluster, "a1", "src_mismatch") > spoof0
            and refused_metric(cluster, "a1", "geo_wrong_region") > geo0
        )

    deadline = time.monotonic() + 30
    while not counted():
        assert time.monotonic() < deadline, metrics(cluster, "a1")
        time.sleep(0.2)
    assert raft_state(cluster, "a1") == before_state
    assert call(a1 + "/v1/streams/guarded/events", token=admin, ctx=ctx)[2] == before_data
    log = (folder / "nodes" / "a1" / "node.log").read_text()
    assert "geo_wrong_region" in log and "foreign_region" in log


def test_clients_need_a_token_with_the_role(cluster: dict[str, Any]) -> None:
    folder: Path = cluster["_dir"]
    ctx = ctx_with(folder / "certs" / CA_CERT, None)
    a1 = api(cluster, "a1")
    admin = cluster["_admin"]
    s, _, _ = call(a1 + "/v1/streams", token=admin, method="POST", body={"name": "tok"}, ctx=ctx)
    assert s in (200, 201)
    events = a1 + "/v1/streams/tok/events"
    append = {"events": [{"body": {"x": 1}}]}
    for token, want in ((None, 401), (WRONG, 401), ("", 401), (READER, 403)):
        s, headers, body = call(events, token=token, method="POST", body=append, ctx=ctx)
        assert s == want, (token, s, body)
        assert json.loads(body)["error"]["code"] == ("unauthorized" if want == 401 else "forbidden")
        if want == 401:
            assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert READER.encode() not in body and WRONG.encode() not in body
    for token in (None, WRONG):
        assert call(events, token=token, ctx=ctx)[0] == 401
    # admin routes need the admin role; membership is not changed by the reader
    s, _, body = call(a1 + "/v1/admin/members", token=READER, method="POST",
                      body={"op": "remove", "node": "a1"}, ctx=ctx)  # fmt: skip
    assert s == 403, body
    # open routes stay open (probes, scraping)
    assert call(a1 + "/v1/health", token=None, ctx=ctx)[0] == 200
    # nothing was written: the reader reads an empty stream
    s, _, body = call(events, token=READER, ctx=ctx)
    assert s == 200 and json.loads(body)["events"] == [], body
    # a client may not pose as a node forwarding a request
    s, _, body = call(events, token=admin, method="POST", body=append, ctx=ctx)
    assert s == 200, body
    req = urllib.request.Request(events, data=json.dumps(append).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {admin}",
                                          "X-Geostore-Forwarded": "b1"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30, context=ctx)
    assert refused.value.code == 403
    s, _, body = call(events, token=READER, ctx=ctx)
    assert len(json.loads(body)["events"]) == 1
    # the secrets never reach a log or the metrics
    logs = "".join(p.read_text() for p in folder.glob("nodes/*/*.log"))
    for secret in (READER, WRONG, admin):
        assert secret not in logs
        assert secret not in metrics(cluster, "a1")


def test_the_append_lane_asks_for_a_write_token_too(cluster: dict[str, Any]) -> None:
    """Keep-alive appends to the region's leader (what the append lane serves): a token with
    the write role is served there, one without it is handed to the general path for its
    401 or 403, and nothing is written by it."""
    folder: Path = cluster["_dir"]
    ctx = ctx_with(folder / "certs" / CA_CERT, None)
    admin = cluster["_admin"]
    s, _, _ = call(api(cluster, "a1") + "/v1/streams", token=admin, method="POST",
                   body={"name": "lanetok"}, ctx=ctx)  # fmt: skip
    assert s in (200, 201)
    leader = status(cluster, "a1")["groups"]["data-a"]["leader"]
    url = urllib.parse.urlsplit(api(cluster, leader))
    before = status(cluster, leader)["security"]["guard"]
    conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=ctx, timeout=30)
    try:
        answers = []
        for token in (admin, READER, WRONG, None, admin):
            headers = {"Content-Type": "application/json"}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            conn.request("POST", "/v1/streams/lanetok/events",
                         body=b'{"events": [{"body": {"x": 1}}]}', headers=headers)  # fmt: skip
            r = conn.getresponse()
            answers.append((r.status, json.loads(r.read())))
            if r.status != 200:  # the general path answered: a fresh connection for the next
                conn.close()
                conn = http.client.HTTPSConnection(
                    url.hostname or "", url.port, context=ctx, timeout=30
                )
    finally:
        conn.close()
    # an operator's client certificate of the cluster, no token: served by the lane too
    ensure_certs(load_topology(topology_file(cluster)), folder / "certs", clients=["op"])
    op_ctx = ctx_with(folder / "certs" / CA_CERT, client_files(folder / "certs", "op"))
    conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=op_ctx, timeout=30)
    try:
        conn.request("POST", "/v1/streams/lanetok/events", body=b'{"events": [{"body": {}}]}',
                     headers={"Content-Type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        answers.append((r.status, json.loads(r.read())))
    finally:
        conn.close()
    assert [a[0] for a in answers] == [200, 403, 401, 401, 200, 200], answers
    after = status(cluster, leader)["security"]["guard"]
    assert after["lane_requests"] >= before["lane_requests"] + 3
    assert after["lane_handovers"] >= before["lane_handovers"] + 3
    s, _, body = call(api(cluster, leader) + "/v1/streams/lanetok/events", token=READER, ctx=ctx)
    assert s == 200 and len(json.loads(body)["events"]) == 3, body


def test_cli_append_and_read_through_cluster_json(cluster: dict[str, Any]) -> None:
    folder = str(cluster["_dir"])
    assert geostore("stream", "create", "--cluster", folder, "--region", "a", "cli").returncode == 0
    out = geostore("append", "--cluster", folder, "--region", "a", "cli", "--body", '{"v": 7}')
    assert out.returncode == 0, out.stdout + out.stderr
    out = geostore("read", "--cluster", folder, "--region", "a", "cli", "--json")
    assert out.returncode == 0 and '"v"' in out.stdout and "7" in out.stdout, out


def test_insecure_cluster_serves_plain_http(tmp_path: Path) -> None:
    topo = tmp_path / "one.toml"
    topo.write_text('name = "plain"\n[[regions]]\nname = "r1"\nintra_rtt_ms = 0.0\n'
                    'nodes = ["n1"]\n')  # fmt: skip
    folder = tmp_path / "c"
    up = geostore("cluster", "up", "--topology", str(topo), "--dir", str(folder), "--insecure",
                  "--timeout", "60")  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "WARNING" in up.stderr and "--insecure" in up.stderr
        doc = json.loads((folder / "cluster.json").read_text())
        assert not doc.get("tls") and doc["regions"]["r1"]["nodes"][0]["api"].startswith("http:")
        assert not (folder / "certs").exists() and not (folder / "admin.token").exists()
        out = geostore("append", "--cluster", str(folder), "s", "--body", '{"v": 1}')
        assert out.returncode != 0  # no such stream yet: the node answered, over plain HTTP
        assert "unknown_stream" in out.stderr, out.stderr
    finally:
        geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
