"""Proves `geostore leader transfer` moves a real region's leadership to the named node and
refuses an unknown target, against real node processes."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from geostore.config import load_topology
from tests.integration import clusterkit, secure

ROOT = Path(__file__).resolve().parents[2]


_geostore = partial(clusterkit.geostore, timeout=180)


def _role(api: str) -> str:
    with secure.urlopen(api + "/v1/status", timeout=5) as resp:
        status = json.loads(resp.read())
    return str(next(iter(status["groups"].values()))["role"])


def test_leader_transfer_to_named_node(tmp_path: Path) -> None:
    topo = tmp_path / "one.toml"
    topo.write_text(load_topology(ROOT / "regions" / "local.toml").subset(["r1"]).to_toml())
    cluster = tmp_path / "c"
    up = _geostore("cluster", "up", "--topology", str(topo), "--dir", str(cluster), "--no-netem")
    try:
        assert up.returncode == 0, up.stderr
        nodes = secure.register(cluster)["regions"]["r1"]["nodes"]
        leader = next(n for n in nodes if _role(n["api"]) == "leader")
        target = next(n for n in nodes if n["id"] != leader["id"])
        moved = _geostore(
            "leader", "transfer", "--cluster", str(cluster), "--to", target["id"], "--timeout", "60"
        )
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert f"{leader['id']} -> {target['id']}" in moved.stdout
        assert _role(target["api"]) == "leader"
        bad = _geostore("leader", "transfer", "--cluster", str(cluster), "--to", "no-such-node")
        assert bad.returncode == 1
        assert "no node 'no-such-node'" in bad.stdout
    finally:
        _geostore("cluster", "down", "--dir", str(cluster))
