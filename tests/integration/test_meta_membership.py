"""Proves that membership changes reach the metadata group, between real node processes and
through the WAN emulator (three regions): ``node add`` makes the new node a learner of the
metadata group that holds the catalog, homes and leases (its replica applied what the leader
had committed when it joined, and it follows later changes); ``node remove`` of its region's
metadata voter first hands the region's vote to the new node, so the group keeps one voter
per region and still commits, and the removed node is in neither configuration; the new
node, now its region's only node, leads it under a valid home lease, takes appends and ships
them, and receives the other regions' shipped events; removing
it is refused (its region has nobody to take its vote); when another region's voter dies
after nodes were added there, the metadata leader gives that region's vote to an added node
by itself; and ``node replace`` of the dead node takes it out of both groups."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.integration import secure
from tests.integration.clusterkit import (
    DEADLINE_S,
    cluster_up,
    events,
    geostore,
    nodes,
    ok,
    topology_toml,
)

pytestmark = pytest.mark.timeout(180)

TOPOLOGY = topology_toml(
    "meta-members",
    {"a": ["a1", "a2"], "b": ["b1"], "c": ["c1"]},
    {("a", "b"): 30.0, ("a", "c"): 50.0, ("b", "c"): 40.0},
)

#: Snapshots every 20 entries: the metadata leader has compacted its log when b2 joins.
CONFIG = """
[raft]
snapshot_threshold_entries = 20
"""


def meta(api: str) -> dict[str, Any]:
    return dict(ok(f"{api}/v1/status")["meta"])


def leader_meta(cluster: dict[str, Any]) -> dict[str, Any]:
    """The metadata status of the metadata group's leader (waits for one)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for n in nodes(cluster).values():
            m = meta(n["api"])
            if m["role"] == "leader":
                return m
        assert time.monotonic() < deadline, "no metadata leader"
        time.sleep(0.2)


def wait_meta(api: str, what: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        m = meta(api)
        if check(m):
            return m
        assert time.monotonic() < deadline, f"{what}: {m}"
        time.sleep(0.2)


def streams_of(m: dict[str, Any]) -> set[str]:
    return {h["stream"] for h in m["homes"]}


def test_membership_changes_reach_the_metadata_group(tmp_path: Any) -> None:
    with cluster_up(tmp_path, TOPOLOGY, config=CONFIG) as cluster:
        folder = cluster["folder"]
        first = nodes(cluster)
        assert cluster["meta"]["voters"] == ["a1", "b1", "c1"], cluster["meta"]
        for i in range(12):  # enough metadata entries for a snapshot before b2 joins
            ok(f"{first['c1']['api']}/v1/streams", {"name": f"s{i}", "partitions": 3})
        before = leader_meta(cluster)

        out = geostore("node", "add", "--cluster", folder, "--region", "b", "--id", "b2",
                       "--timeout", "90")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        b2 = nodes(cluster)["b2"]
        m = meta(b2["api"])
        # caught up before 'node add' reported success: the catalog is there
        assert m["applied"] >= before["commit"], (m["applied"], before["commit"])
        assert {f"s{i}" for i in range(12)} <= streams_of(m)
        assert m["voters"] == ["a1", "b1", "c1"] and m["learners"] == ["a2", "b2"]
        assert m["regions"]["b"] == ["b1", "b2"]
        assert cluster["meta"]["learners"] == ["a2", "b2"], cluster["meta"]
        status = geostore("cluster", "status", "--dir", folder, timeout=60)
        assert "learners a2, b2" in status.stdout, status.stdout

        # remove b's metadata voter: b2 takes its region's vote, b1 leaves both groups
        out = geostore("node", "remove", "--cluster", folder, "--node", "b1", "--timeout", "90")
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        live = nodes(cluster)
        assert sorted(live) == ["a1", "a2", "b2", "c1"]
        for n in live.values():
            m = wait_meta(
                n["api"],
                f"{n['id']} sees b2 vote for b",
                lambda m: m["voters"] == ["a1", "b2", "c1"] and m["learners"] == ["a2"],
            )
            assert "b1" not in m["regions"]["b"]
        data = ok(f"{b2['api']}/v1/status")["groups"]["data-b"]
        assert "b1" not in data["voters"] + data["learners"]
        # the metadata group still commits, and the new node follows
        created = ok(f"{live['a1']['api']}/v1/streams", {"name": "after", "partitions": 3})
        assert [h["home"] for h in created["homes"]] == ["a", "b", "c"]
        wait_meta(b2["api"], "b2 follows", lambda m: "after" in streams_of(m))
        # b2 alone leads b: it holds b's lease and takes appends to b's partitions
        answer = ok(f"{b2['api']}/v1/streams/after/events",
                    {"events": [{"partition": 1, "body": "b2"}]})  # fmt: skip
        assert answer["results"][0]["partition"] == 1
        lease = ok(f"{b2['api']}/v1/status")["leases"]["b"]
        assert lease["holder"] == "b2" and lease["valid"], lease
        # geo shipping reaches it both ways: a's events arrive, b2's leave
        ok(f"{live['a1']['api']}/v1/streams/after/events",
           {"events": [{"partition": 0, "body": "a1"}]})  # fmt: skip
        for api, part, body in ((b2["api"], 0, "a1"), (live["c1"]["api"], 1, "b2")):
            deadline = time.monotonic() + DEADLINE_S
            while [e[1] for e in events(api, part, stream="after")] != [body]:
                assert time.monotonic() < deadline, (api, part, "not shipped")
                time.sleep(0.2)

        # nobody in b could take b2's vote: refused, and nothing changed
        out = geostore("node", "remove", "--cluster", folder, "--node", "b2", "--timeout", "60")
        assert out.returncode != 0
        assert "has no other node to take it over" in out.stderr, out.stderr
        assert meta(b2["api"])["voters"] == ["a1", "b2", "c1"]

        # c's only voter dies after c2 and c3 joined: the metadata leader gives c's vote to
        # one of them by itself (their region is known from the metadata group)
        for new in ("c2", "c3"):
            out = geostore("node", "add", "--cluster", folder, "--region", "c", "--id", new,
                           "--timeout", "90")  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        os.kill(nodes(cluster)["c1"]["pid"], signal.SIGKILL)
        m = wait_meta(b2["api"], "c's vote moved", lambda m: "c1" not in m["voters"])
        assert m["voters"][:2] == ["a1", "b2"] and m["voters"][2] in ("c2", "c3"), m
        # the dead node is replaced (its disk is lost): it leaves both groups
        out = geostore("node", "replace", "--cluster", folder, "--node", "c1", "--new-id", "c4",
                       "--timeout", "90")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        live = nodes(cluster)
        assert sorted(live) == ["a1", "a2", "b2", "c2", "c3", "c4"]
        for n in live.values():
            m = wait_meta(n["api"], f"{n['id']} sees c1 gone", lambda m: "c1" not in m["learners"])
            assert sorted(m["voters"] + m["learners"]) == sorted(live), m
            assert m["regions"]["c"] == ["c2", "c3", "c4"], m["regions"]
        data = ok(f"{live['c4']['api']}/v1/status")["groups"]["data-c"]
        assert sorted(data["voters"]) == ["c2", "c3", "c4"], data
        ok(f"{live['c4']['api']}/v1/streams", {"name": "after-replace", "partitions": 1})
        for n in live.values():
            wait_meta(n["api"], f"{n['id']} has the stream",
                      lambda m: "after-replace" in streams_of(m))  # fmt: skip
