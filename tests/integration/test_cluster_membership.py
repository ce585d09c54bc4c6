"""Proves membership changes on a real region: a node whose disk was wiped is refused under
its old identity; ``geostore node replace`` starts a fresh identity that joins with empty storage, catches up by snapshot (the leader compacted its
log), is promoted to voter, and the old node is removed and stopped; the region keeps every
acknowledged event, takes new writes, and ``cluster down`` stops the new node too."""

from __future__ import annotations

import os
import shutil
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.integration import clusterkit, secure
from tests.integration.clusterkit import alive, topology_toml, wait_for

pytestmark = pytest.mark.timeout(240)

TOPOLOGY = topology_toml("members", {"r1": ["n1", "n2", "n3"]}, {})
CONFIG = """
[raft]
tick_ms = 20
heartbeat_ticks = 5
election_ticks = 50
snapshot_threshold_entries = 20
"""
# The CLI runs here are given up to 120 s themselves; the child process gets more.
geostore = partial(clusterkit.geostore, timeout=180)
call = partial(clusterkit.call, timeout=30)


def test_replace_brings_a_fresh_identity_that_catches_up_by_snapshot(tmp_path: Path) -> None:
    (tmp_path / "topo.toml").write_text(TOPOLOGY)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    folder = tmp_path / "c"
    out = geostore("cluster", "up", "--topology", str(tmp_path / "topo.toml"), "--dir",
                   str(folder), "--config", str(tmp_path / "cfg.toml"), "--timeout", "120")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    cluster = secure.register(folder)
    old = {n["id"]: n for n in cluster["regions"]["r1"]["nodes"]}
    try:
        api = old["n1"]["api"]
        assert call(api + "/v1/streams", {"name": "m"})[0] == 201
        for i in range(40):
            status, res = call(api + "/v1/streams/m/events", {"events": [{"body": i}]})
            assert status == 200, res
        # n3 loses its disk: it must not come back under its old id
        os.kill(old["n3"]["pid"], signal.SIGKILL)
        wait_for("n3 dead", lambda: None if alive(old["n3"]["pid"]) else True, 30)
        shutil.rmtree(old["n3"]["dir"])
        again = geostore("node", "--topology", cluster["topology_resolved"], "--node", "n3",
                         "--dir", old["n3"]["dir"], "--config", str(tmp_path / "cfg.toml"))  # fmt: skip
        assert again.returncode != 0
        assert "must not come back under its old id" in again.stderr, again.stderr
        for n in ("n1", "n2"):  # every possible leader compacted: n4 can only start by snapshot
            _, st = call(old[n]["api"] + "/v1/status")
            assert st["groups"]["data-r1"]["first_index"] > 1, st["groups"]["data-r1"]
        out = geostore("node", "replace", "--cluster", str(folder), "--node", "n3",
                       "--new-id", "n4", "--timeout", "120")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        nodes = {n["id"]: n for n in cluster["regions"]["r1"]["nodes"]}
        assert sorted(nodes) == ["n1", "n2", "n4"]
        assert cluster["removed"] == ["n3"]
        wait_for("n3 stopped", lambda: None if alive(old["n3"]["pid"]) else True, 30)
        _, status = call(nodes["n4"]["api"] + "/v1/status")
        assert status["groups"]["data-r1"]["voters"] == ["n1", "n2", "n4"]
        snaps = folder / "nodes" / "n4" / "groups" / "data-r1" / "raft" / "snapshots"
        assert any(p.name.endswith(".snap") for p in snaps.iterdir())

        def n4_has_all() -> Any:
            s, page = call(nodes["n4"]["api"] + "/v1/streams/m/events?consistency=local")
            return page if s == 200 and len(page["events"]) == 40 else None

        page = wait_for("n4 holds every event", n4_has_all)
        assert [e["body"] for e in page["events"]] == list(range(40))
        status_code, res = call(nodes["n4"]["api"] + "/v1/streams/m/events",
                                {"events": [{"body": "after"}]})  # fmt: skip
        assert status_code == 200 and res["results"][0]["first_seq"] == 40, res
        # a restart of the whole cluster keeps the new membership (and new ports)
        down = geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
        assert down.returncode == 0, down.stderr
        out = geostore("cluster", "up", "--topology", str(tmp_path / "topo.toml"), "--dir",
                       str(folder), "--config", str(tmp_path / "cfg.toml"), "--timeout", "120")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        nodes = {n["id"]: n for n in cluster["regions"]["r1"]["nodes"]}
        assert sorted(nodes) == ["n1", "n2", "n4"]
        s, page = call(nodes["n4"]["api"] + "/v1/streams/m/events")
        assert s == 200 and len(page["events"]) == 41, page
    finally:
        down = geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
        assert down.returncode == 0, down.stderr
    for n in cluster["regions"]["r1"]["nodes"]:
        wait_for(f"{n['id']} stopped", lambda n=n: None if alive(n["pid"]) else True, 30)
