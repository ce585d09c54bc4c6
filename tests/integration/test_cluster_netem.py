"""Proves that ``cluster up`` on a multi-region topology starts the WAN emulator as its own
process, records per node the proxy address through which each other region reaches it,
that a request through such a proxy reaches the node (paying the link's latency), and that
``cluster down`` stops the emulator with the nodes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import secure
from tests.integration.clusterkit import alive, geostore, topology_toml

pytestmark = pytest.mark.timeout(180)

TOPOLOGY = topology_toml("two", {"a": ["a1"], "b": ["b1"]}, {("a", "b"): 60.0})


def get(url: str) -> Any:
    with secure.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_up_starts_netem_and_records_proxies(tmp_path: Path) -> None:
    (tmp_path / "topo.toml").write_text(TOPOLOGY)
    folder = tmp_path / "c"
    out = geostore("cluster", "up", "--topology", str(tmp_path / "topo.toml"), "--dir",
                   str(folder), "--timeout", "120", timeout=150)  # fmt: skip
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        cluster = secure.register(folder)
        assert cluster["netem"].startswith("http://127.0.0.1:")
        assert alive(cluster["netem_pid"])
        a1 = cluster["regions"]["a"]["nodes"][0]
        b1 = cluster["regions"]["b"]["nodes"][0]
        assert set(a1["proxies"]) == {"b"} and set(b1["proxies"]) == {"a"}
        direct = get(a1["api"] + "/v1/health")
        t0 = time.monotonic()
        via = get(a1["proxies"]["b"] + "/v1/health")
        assert via == direct == {"status": "ok", "node": "a1"}
        assert time.monotonic() - t0 >= 0.06, "the proxy adds the link's round trip"
    finally:
        down = geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
        assert down.returncode == 0, down.stderr
    cluster = secure.register(folder)
    deadline = time.monotonic() + 30
    while alive(cluster["netem_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(cluster["netem_pid"])
