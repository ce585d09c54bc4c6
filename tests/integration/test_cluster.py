"""Proves a real 3-node region of separate processes: ``geostore cluster up`` elects a
leader and writes cluster.json; a stream is created and appended to through a follower
(forwarded to the leader) and read back by seq (regional and local), by time range and as
an aggregate; SIGKILL of the leader elects a new one and every acknowledged event is still
there; bad input gets the catalogue's answer while the nodes keep serving; ``cluster
status`` shows the table and ``cluster down`` stops every process. The cluster runs as
``cluster up`` starts it by default: HTTPS, node certificates, an admin token."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.integration import clusterkit, secure
from tests.integration.clusterkit import alive, topology_toml

pytestmark = pytest.mark.timeout(240)

TOPOLOGY = topology_toml("one-region", {"r1": ["n1", "n2", "n3"]}, {})
# Generous timing for a loaded 2-core machine: heartbeats every 100 ms, elections 1-2 s.
CONFIG = """
[raft]
tick_ms = 20
heartbeat_ticks = 5
election_ticks = 50
[limits]
body_bytes_max = 65536
event_bytes_max = 16384
"""
SCHEMA = {"attributes": [{"name": "delay", "type": "int", "indexed": True}]}


geostore = partial(clusterkit.geostore, timeout=150)


def call(url: str, method: str = "GET", body: Any = None, raw: bytes | None = None,
         ctype: str = "application/json") -> tuple[int, Any]:  # fmt: skip
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with secure.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def eventually(what: str, fn: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


def statuses(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in nodes:
        try:
            _, st = call(n["api"] + "/v1/status")
            out[n["id"]] = st["groups"]["data-r1"]
        except (OSError, ValueError):
            pass
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("cluster")
    (root / "topo.toml").write_text(TOPOLOGY)
    (root / "cfg.toml").write_text(CONFIG)
    folder = root / "c"
    up = geostore("cluster", "up", "--topology", str(root / "topo.toml"), "--dir", str(folder),
                  "--config", str(root / "cfg.toml"), "--no-netem", "--timeout", "120")  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        data = secure.register(folder)  # the default: TLS and an admin token
        assert data["tls"] is True and all(
            n["api"].startswith("https://") for n in data["regions"]["r1"]["nodes"]
        )
        data["_dir"] = str(folder)
        yield data
    finally:
        down = geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
        assert down.returncode == 0, down.stdout + down.stderr


def nodes_of(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = cluster["regions"]["r1"]["nodes"]
    return nodes


def leader_and_follower(cluster: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    nodes = [n for n in nodes_of(cluster) if alive(n["pid"])]

    def find() -> tuple[dict[str, Any], dict[str, Any]] | None:
        st = statuses(nodes)
        leaders = [n for n in nodes if st.get(n["id"], {}).get("role") == "leader"]
        followers = [n for n in nodes if st.get(n["id"], {}).get("role") == "follower"]
        if len(leaders) == 1 and followers:
            return leaders[0], followers[0]
        return None

    found: tuple[dict[str, Any], dict[str, Any]] = eventually("a leader and a follower", find)
    return found


def test_cluster_json_has_the_contract_fields(cluster: dict[str, Any]) -> None:
    assert cluster["mode"] == "multi-leader"
    assert cluster["topology"].endswith("topo.toml")
    assert cluster["netem"] is None
    nodes = nodes_of(cluster)
    assert [n["id"] for n in nodes] == ["n1", "n2", "n3"]
    for n in nodes:
        assert n["api"].startswith("https://127.0.0.1:")
        assert isinstance(n["pid"], int) and alive(n["pid"])
    leader, _ = leader_and_follower(cluster)
    assert cluster["leaders"]["r1"] in {n["id"] for n in nodes}
    assert leader["id"]


def test_forwarded_writes_and_reads(cluster: dict[str, Any]) -> None:
    _, follower = leader_and_follower(cluster)
    f = follower["api"]
    status, info = call(f + "/v1/streams", "POST",
                        {"name": "flights", "key_field": "origin", "schema": SCHEMA})  # fmt: skip
    assert status == 201, info
    for n in nodes_of(cluster):  # acknowledged, so every regional read sees it at once
        status, page = call(n["api"] + "/v1/streams/flights/events")
        assert status == 200 and page["events"] == [], (n["id"], page)
    events = [{"ts": 1_000_000 * i, "body": {"origin": "JFK", "delay": i}} for i in range(50)]
    status, res = call(f + "/v1/streams/flights/events", "POST", {"events": events})
    assert status == 200, res
    assert res["results"][0]["first_seq"] == 0 and res["results"][0]["last_seq"] == 49
    status, page = call(f + "/v1/streams/flights/events?from_seq=0&limit=100")
    assert status == 200 and [e["seq"] for e in page["events"]] == list(range(50))
    token = res["token"]
    status, page = call(
        f + f"/v1/streams/flights/events?consistency=local&after={token}&wait_ms=10000"
    )
    assert status == 200 and len(page["events"]) == 50, page
    status, page = call(f + "/v1/streams/flights/events?from_ts=10000000&to_ts=20000000")
    assert [e["body"]["delay"] for e in page["events"]] == list(range(10, 20)), page
    status, agg = call(f + "/v1/streams/flights/aggregate?field=delay&from_ts=0&to_ts=50000000")
    assert status == 200, agg
    assert (agg["count"], agg["min"], agg["max"], agg["sum"]) == (50, 0, 49, sum(range(50)))


def test_bad_input_and_the_nodes_keep_serving(cluster: dict[str, Any]) -> None:
    _, follower = leader_and_follower(cluster)
    f = follower["api"]
    call(f + "/v1/streams", "POST", {"name": "bad"})
    ev = f + "/v1/streams/bad/events"
    cases = [
        (call(ev, "POST", raw=b"{not json"), 400, "malformed"),
        (call(ev, "POST", raw=b"\xbf\x61", ctype="application/cbor"), 400, "malformed"),
        (call(ev, "POST", {"events": [{"body": 1, "ts": "yesterday"}]}), 400, "malformed"),
        (call(ev, "POST", raw=b"[" + b"1," * 40_000 + b"1]"), 413, "too_large"),
        (call(f + "/v1/streams/nope/events"), 404, "unknown_stream"),
        (call(f + "/v1/streams/nope/events", "POST", {"events": [{"body": 1}]}), 404,
         "unknown_stream"),
    ]  # fmt: skip
    for (status, body), want_status, want_code in cases:
        assert status == want_status, (body, want_status)
        assert body["error"]["code"] == want_code and body["error"]["message"], body
    status, page = call(ev)
    assert status == 200 and page["events"] == []
    for n in nodes_of(cluster):
        assert call(n["api"] + "/v1/health")[0] == 200


def test_openapi_and_metrics_from_a_process(cluster: dict[str, Any]) -> None:
    n = nodes_of(cluster)[0]
    status, doc = call(n["api"] + "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/streams", "/v1/streams/{s}/events", "/metrics"} <= set(doc["paths"])
    with secure.urlopen(n["api"] + "/metrics", timeout=30) as r:
        text = r.read().decode()
    assert "# TYPE geostore_raft_commit_index gauge" in text
    assert 'geostore_raft_term{group="data-r1"}' in text


def test_status_command_prints_the_table(cluster: dict[str, Any]) -> None:
    out = geostore("cluster", "status", "--dir", cluster["_dir"], timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["region", "node", "role", "leader", "term"]
    assert sum("leader" in ln.split()[2:3] for ln in lines[2:]) == 1, out.stdout


def test_sigkill_leader_loses_nothing_acknowledged(cluster: dict[str, Any]) -> None:
    leader, follower = leader_and_follower(cluster)
    f = follower["api"]
    call(f + "/v1/streams", "POST", {"name": "acks"})
    acked: list[int] = []
    for i in range(30):
        status, res = call(f + "/v1/streams/acks/events", "POST", {"events": [{"body": i}]})
        assert status == 200, res
        acked.append(i)
    os.kill(leader["pid"], signal.SIGKILL)
    survivors = [n for n in nodes_of(cluster) if n["id"] != leader["id"]]

    def new_leader() -> str | None:
        st = statuses(survivors)
        roles = {nid: g["role"] for nid, g in st.items()}
        leaders = [nid for nid, role in roles.items() if role == "leader"]
        return leaders[0] if len(leaders) == 1 and leaders[0] != leader["id"] else None

    eventually("a new leader", new_leader, 90)
    for n in survivors:
        status, page = eventually(
            "a regional read", lambda n=n: (lambda r: r if r[0] == 200 else None)(
                call(n["api"] + "/v1/streams/acks/events?limit=1000")), 60)  # fmt: skip
        assert [e["body"] for e in page["events"]] == acked
    # the region still takes writes with one node down
    status, res = eventually(
        "an append after failover",
        lambda: (lambda r: r if r[0] == 200 else None)(
            call(survivors[0]["api"] + "/v1/streams/acks/events", "POST",
                 {"events": [{"body": "after"}]})),
        60,
    )  # fmt: skip
    assert res["results"][0]["first_seq"] == len(acked)


def test_down_stops_every_process(cluster: dict[str, Any]) -> None:
    out = geostore("cluster", "down", "--dir", cluster["_dir"], "--timeout", "20")
    assert out.returncode == 0, out.stderr
    for n in nodes_of(cluster):
        eventually(f"{n['id']} gone", lambda n=n: not alive(n["pid"]), 30)
    saved = json.loads((Path(cluster["_dir"]) / "cluster.json").read_text())
    assert saved["stopped"] is True
