"""Single-leader mode end to end with real node processes through the WAN emulator (two
regions, 20 ms): one global group whose voters are every node, led from the preferred region;
Raft traffic and forwards to the other region take its netem proxies; an append sent to a node
of the other region is forwarded to the leader and reads back regionally in both regions and
locally once applied; after the leader's SIGKILL a new leader is elected and nothing acknowledged
is lost; with the preferred region down the other region leads, and when its nodes return the
leadership is handed back to it; ``cluster status`` shows the mode and the group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import clusterkit, secure
from tests.integration.clusterkit import (
    DEADLINE_S,
    call,
    cluster_up,
    geostore,
    nodes,
    topology_toml,
)

pytestmark = pytest.mark.timeout(180)

# region a (preferred: the first) has two voters, b three: a quorum of 3 of 5 always needs b,
# and b alone is a quorum, so the preferred region can be taken down entirely
TOPOLOGY = topology_toml(
    "single-leader-test",
    {"a": ["a1", "a2"], "b": ["b1", "b2", "b3"]},
    {("a", "b"): 20.0},
    streams={"s": ["a", "b"]},
)

GROUP = "data-global"


def ok(url: str, body: Any = None) -> Any:
    """A call that must succeed, made again while a node is killed, restarting or electing."""
    return clusterkit.ok(url, body, retry=(503, 504), through_restarts=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("single")
    with cluster_up(root, TOPOLOGY, "--mode", "single-leader", timeout_s=60) as info:
        yield info


def region_of(node: str) -> str:
    return node[0]


def status(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = ok(f"{url}/v1/status")
    return answer


def leader_seen(cluster: dict[str, Any], among: list[str]) -> str | None:
    """The leader every live node in ``among`` agrees on, that itself says it leads."""
    all_nodes = nodes(cluster)
    seen = set()
    for nid in among:
        try:
            _, st = call(all_nodes[nid]["api"] + "/v1/status", timeout=2.0)
        except OSError:
            return None
        seen.add(st["groups"][GROUP]["leader"])
    if len(seen) != 1 or None in seen:
        return None
    (leader,) = seen
    return str(leader) if leader in among else None


def wait_leader(cluster: dict[str, Any], among: list[str], where: str | None = None) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        leader = leader_seen(cluster, among)
        if leader is not None and (where is None or region_of(leader) == where):
            return leader
        time.sleep(0.2)
    raise AssertionError(f"no leader{' in ' + where if where else ''} among {among}")


def wait_caught_up(cluster: dict[str, Any], node: str) -> None:
    """Until the leader sees ``node`` replicating, answering, and at its last index."""
    n = nodes(cluster)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        leader = leader_seen(cluster, [x for x in n if x != node])
        if leader is not None:
            g = status(n[leader]["api"])["groups"][GROUP]
            f = g.get("followers", {}).get(node, {})
            if f.get("state") == "replicate" and f.get("match") == g["last_index"]:
                return
        time.sleep(0.2)
    raise AssertionError(f"{node} did not catch up")


def events(url: str, partition: int, consistency: str, **q: Any) -> list[Any]:
    return clusterkit.events(url, partition, consistency, read=ok, **q)


def kill(node: dict[str, Any]) -> None:
    os.kill(node["pid"], signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            os.kill(node["pid"], 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def restart(cluster: dict[str, Any], node: dict[str, Any]) -> None:
    """Start a killed node again on its own storage (no --bootstrap), as cluster up would."""
    folder = Path(cluster["folder"])
    cmd = [sys.executable, "-m", "geostore", "node", "--topology", cluster["topology_resolved"],
           "--node", node["id"], "--dir", node["dir"], "--mode", "single-leader",
           "--wan", str(folder / "wan.json")]  # fmt: skip
    if cluster.get("tls"):  # as cluster up started it: its certificate and the token table
        cmd += ["--certs", str(folder / "certs"), "--tokens", str(folder / cluster["tokens"])]
    with open(os.path.join(node["dir"], "process.log"), "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    node["pid"] = proc.pid
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it exits
    # cluster down stops what cluster.json names: keep the new pid there
    data = secure.register(folder)
    for info in data["regions"].values():
        for n in info["nodes"]:
            if n["id"] == node["id"]:
                n["pid"] = proc.pid
    (folder / "cluster.json").write_text(json.dumps(data, indent=2))


def test_one_global_group_of_every_node_led_from_the_preferred_region(
    cluster: dict[str, Any],
) -> None:
    assert cluster["mode"] == "single-leader" and cluster["leader_region"] == "a"
    everyone = sorted(nodes(cluster))
    assert region_of(cluster["leaders"]["global"]) == "a", cluster["leaders"]
    for nid, node in nodes(cluster).items():
        st = status(node["api"])
        assert st["mode"] == "single-leader"
        assert list(st["groups"]) == [GROUP], st["groups"].keys()
        g = st["groups"][GROUP]
        assert g["voters"] == everyone and g["spans"] == ["a", "b"]
        assert st["geo"]["role"] == "idle" and st["replication_lag"] == []
        assert st["placement"]["preferred_region"] == "a"
        # Raft peers of the other region are reached through that link's netem proxy
        peers = st["peers"]["peers"]
        for other_id, other in nodes(cluster).items():
            if other_id == nid:
                continue
            want = other["api"] if region_of(other_id) == region_of(nid) else (
                other["proxies"][region_of(nid)])  # fmt: skip
            assert peers[other_id]["url"] == want, (nid, other_id, peers[other_id])
    assert wait_leader(cluster, everyone, "a") == cluster["leaders"]["global"]
    shown = geostore("cluster", "status", "--dir", cluster["folder"])
    assert shown.returncode == 0, shown.stderr
    assert "single-leader" in shown.stdout and GROUP in shown.stdout


def test_append_in_the_other_region_is_forwarded_and_reads_back(cluster: dict[str, Any]) -> None:
    n = nodes(cluster)
    leader = wait_leader(cluster, sorted(n))
    b1 = n["b1"]["api"]
    assert leader != "b1"
    batch = [{"partition": 0, "body": {"k": 0}}, {"partition": 1, "body": {"k": 1}}]
    answer = ok(f"{b1}/v1/streams/s/events", {"events": batch,
                                              "producer": {"id": "t", "seq": 1}})  # fmt: skip
    by_part = {r["partition"]: r for r in answer["results"]}
    assert sorted(by_part) == [0, 1] and "error" not in by_part[0] and "error" not in by_part[1]
    # both partitions committed in the one group, whatever their home region says
    for p in (0, 1):
        want = (by_part[p]["last_seq"], {"k": p})
        assert want in events(n["a1"]["api"], p, "regional")
        assert want in events(n["b2"]["api"], p, "regional")
        assert want in events(n["b3"]["api"], p, "strong")
        assert want in events(n["b3"]["api"], p, "local", after=answer["token"], wait_ms=20_000)
    # homes are still reported
    st = status(n["a1"]["api"])
    homes = {(p["stream"], p["partition"]): p.get("home") for p in st["partitions"]}
    assert homes[("s", 0)] == "a" and homes[("s", 1)] == "b"
    # a retry of the same producer seq is deduplicated by the one leader
    again = ok(f"{b1}/v1/streams/s/events", {"events": batch,
                                             "producer": {"id": "t", "seq": 1}})  # fmt: skip
    assert all(r.get("duplicate") for r in again["results"]), again


def test_leader_loss_and_the_preferred_region_getting_it_back(cluster: dict[str, Any]) -> None:
    n = nodes(cluster)
    everyone = sorted(n)
    acked: list[tuple[int, int, Any]] = []

    def append(via: str, k: int) -> None:
        answer = ok(f"{n[via]['api']}/v1/streams/s/events",
                    {"events": [{"partition": k % 2, "body": {"ack": k}}]})  # fmt: skip
        (res,) = answer["results"]
        acked.append((k % 2, res["last_seq"], {"ack": k}))

    for k in range(4):
        append("b2", k)
    first = wait_leader(cluster, everyone, "a")
    kill(n[first])
    survivors = [x for x in everyone if x != first]
    second = wait_leader(cluster, survivors)  # any region: Raft decides
    for k in range(4, 8):
        append("b3", k)
    # take the rest of the preferred region down: only b can lead now
    (other_a,) = [x for x in survivors if region_of(x) == "a"]
    kill(n[other_a])
    b_only = [x for x in survivors if region_of(x) == "b"]
    third = wait_leader(cluster, b_only)
    assert region_of(third) == "b", (second, third)
    for k in range(8, 12):
        append("b1", k)
    for p, seq, body in acked:  # nothing acknowledged is lost across two failovers
        assert (seq, body) in events(n["b1"]["api"], p, "regional"), (p, seq, body)
    # the preferred region returns: its voters catch up and the leadership is handed back
    restart(cluster, n[first])
    restart(cluster, n[other_a])
    back = wait_leader(cluster, everyone, "a")
    st = status(n[third]["api"])
    assert st["placement"]["leader_region"] == "a"
    transfers = sum(status(n[x]["api"])["placement"]["transfers_attempted"] for x in b_only)
    assert transfers >= 1, "b's leader handed over by a transfer"
    for p, seq, body in acked:
        assert (seq, body) in events(n[back]["api"], p, "regional"), (p, seq, body)
    # a graceful stop of the leader hands over to the live voter of the preferred region
    (peer_a,) = [x for x in everyone if region_of(x) == "a" and x != back]
    wait_caught_up(cluster, peer_a)
    os.kill(n[back]["pid"], signal.SIGTERM)
    deadline = time.monotonic() + DEADLINE_S
    handed = f"leadership handed to {peer_a}"
    log_path = Path(n[back]["dir"]) / "node.log"
    while handed not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert handed in log_path.read_text(), "the handover chose the preferred region's voter"
    everyone = [x for x in everyone if x != back]
    assert wait_leader(cluster, everyone, "a") == peer_a
    # every node converges to the same copy, the restarted ones included
    deadline = time.monotonic() + DEADLINE_S
    while True:
        views = [ok(f"{n[x]['api']}/v1/debug/partitions")["partitions"] for x in everyone]
        hashes = [{(p["stream"], p["partition"]): p["hash"] for p in v} for v in views]
        if all(h == hashes[0] for h in hashes) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(h == hashes[0] for h in hashes), hashes
