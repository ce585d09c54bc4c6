"""Proves ``node add`` and ``node remove`` still work in single-leader mode (no metadata group)
between real processes through the WAN emulator: the added node starts in single-leader mode,
becomes a voter of the one global group, which every node of both regions now lists, and holds
the events appended before it joined; removing it takes it out of the group everywhere."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import secure
from tests.integration.clusterkit import (
    DEADLINE_S,
    call,
    cluster_up,
    events,
    geostore,
    nodes,
    ok,
    topology_toml,
)

pytestmark = pytest.mark.timeout(180)

TOPOLOGY = topology_toml("single-members", {"a": ["a1", "a2"], "b": ["b1"]}, {("a", "b"): 10.0})
GROUP = "data-global"


def stream_with_five_events(api: str) -> None:
    """Create stream ``s`` (one partition) and append the bodies 0..4 through ``api``."""
    ok(api + "/v1/streams", {"name": "s", "partitions": 1}, retry=(503, 504))
    for i in range(5):
        ok(api + "/v1/streams/s/events", {"events": [{"body": i}]}, retry=(503, 504))


def voters_everywhere(cluster: dict[str, Any], expected: set[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = {}
        for nid, n in nodes(cluster).items():
            try:
                _, st = call(n["api"] + "/v1/status", timeout=2.0)
                seen[nid] = set(st["groups"][GROUP]["voters"])
            except (OSError, KeyError, TypeError):
                seen[nid] = None
        if all(v == expected for v in seen.values()):
            return
        time.sleep(0.3)
    raise AssertionError(f"voters {seen}, expected {expected} everywhere")


def test_node_add_and_remove_in_single_leader_mode(tmp_path: Path) -> None:
    with cluster_up(tmp_path, TOPOLOGY, "--mode", "single-leader", timeout_s=60) as info:
        folder = info["folder"]
        api = nodes(info)["a1"]["api"]
        stream_with_five_events(api)
        out = geostore("node", "add", "--cluster", folder, "--region", "a", "--id", "a3",
                       "--timeout", "90", timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "metadata group" not in out.stdout
        cluster = secure.register(folder)
        voters_everywhere(cluster, {"a1", "a2", "a3", "b1"})
        a3 = nodes(cluster)["a3"]["api"]
        _, st = call(a3 + "/v1/status")
        assert st.get("meta") is None, st
        deadline = time.monotonic() + DEADLINE_S
        got: list[Any] = []
        while time.monotonic() < deadline and len(got) < 5:
            got = [body for _, body in events(a3, 0, "local")]
            time.sleep(0.2)
        assert got == list(range(5)), got
        out = geostore("node", "remove", "--cluster", folder, "--node", "a3", "--timeout", "60",
                       timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        voters_everywhere(cluster, {"a1", "a2", "b1"})
