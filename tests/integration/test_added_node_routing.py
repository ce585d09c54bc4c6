"""Proves, between real node processes of two regions (TLS and tokens on), that a node added
with ``node add`` takes part in routing decisions at once, without any node restarting: the
421 ``wrong_region`` answer of another region lists its address, and in single-leader mode
leader placement counts it as a voter of its region (a leader outside the preferred region
hands leadership to it when it is the preferred region's only live voter)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import secure
from tests.integration.clusterkit import (
    call,
    cluster_up,
    geostore,
    nodes,
    ok,
    topology_toml,
)

pytestmark = pytest.mark.timeout(150)

TOPOLOGY = topology_toml("added-routing", {"a": ["a1"], "b": ["b1"]}, {("a", "b"): 5.0})
#: Bound of the waits on leadership in single-leader mode (WAN-sized election timeouts).
LEADER_DEADLINE_S = 60.0


def add_node(folder: str, region: str, new_id: str) -> dict[str, Any]:
    out = geostore("node", "add", "--cluster", folder, "--region", region, "--id", new_id,
                   "--timeout", "90", timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return secure.register(folder)


def test_a_wrong_region_answer_lists_an_added_node(tmp_path: Path) -> None:
    with cluster_up(tmp_path, TOPOLOGY, "--no-netem", timeout_s=60) as info:
        a1 = nodes(info)["a1"]["api"]
        ok(a1 + "/v1/streams", {"name": "s", "partitions": 2, "homes": {"0": "a", "1": "b"}},
           retry=(503, 504))  # fmt: skip
        cluster = add_node(info["folder"], "b", "b2")
        b1, b2 = nodes(cluster)["b1"]["api"], nodes(cluster)["b2"]["api"]
        status, answer = call(
            a1 + "/v1/streams/s/events?route=reject", {"events": [{"partition": 1, "body": 1}]}
        )
        assert status == 421 and answer["error"]["code"] == "wrong_region", (status, answer)
        assert answer["error"]["home"] == "b"
        assert sorted(answer["error"]["addresses"]) == sorted([b1, b2]), answer
        assert answer["error"]["address"] in (b1, b2)
        # removed again (node remove): it leaves the list, as soon as a1 applied its removal
        # from the metadata group's node list of b
        out = geostore("node", "remove", "--cluster", info["folder"], "--node", "b2",
                       "--timeout", "90", timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        deadline = time.monotonic() + LEADER_DEADLINE_S
        while True:
            status, answer = call(
                a1 + "/v1/streams/s/events?route=reject", {"events": [{"partition": 1, "body": 1}]}
            )
            assert status == 421, (status, answer)
            if answer["error"]["addresses"] == [b1]:
                break
            assert time.monotonic() < deadline, answer
            time.sleep(0.3)


def test_single_leader_placement_hands_over_to_an_added_node(tmp_path: Path) -> None:
    with cluster_up(
        tmp_path, TOPOLOGY, "--mode", "single-leader", "--no-netem", timeout_s=60
    ) as info:
        folder = info["folder"]
        cluster = add_node(folder, "a", "a2")
        a2, b1 = nodes(cluster)["a2"]["api"], nodes(cluster)["b1"]["api"]
        stop = geostore("cluster", "stop", "--dir", folder, "--node", "a1", "--timeout", "20")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        # a2 is now the preferred region's only live voter; make b1 lead, then b1's placement
        # must hand leadership to a2, a node its topology file does not list
        deadline = time.monotonic() + LEADER_DEADLINE_S
        asked = 0.0
        while True:
            _, st = call(b1 + "/v1/status", timeout=5.0)
            placement, leader = st["placement"], st["groups"]["data-global"].get("leader")
            if leader == "a2" and placement.get("last_target") == "a2":
                break  # b1 led and handed over to a2
            if leader == "a2" and time.monotonic() - asked > 3.0:
                call(a2 + "/v1/admin/leader/transfer", {"to": "b1"})  # an election chose a2
                asked = time.monotonic()
            assert time.monotonic() < deadline, (leader, placement)
            time.sleep(0.3)
        assert placement["preferred_region"] == "a" and placement["leader_region"] == "a"
