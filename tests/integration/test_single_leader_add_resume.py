"""Proves that in single-leader mode (one global group, no metadata group, through the WAN
emulator) an interrupted ``node add`` resumes when rerun: the rerun restarts the killed node
with ``--join``, keeps the WAN proxies, and makes it a voter of the global group everywhere,
holding the events written before; and that a ``cluster down`` / ``cluster up`` restart keeps
``node add``'s marks in ``cluster.json``, so a later rerun still finds an add to resume (every
step already done) instead of refusing a taken id."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import secure
from tests.integration.clusterkit import (
    DEADLINE_S,
    alive,
    call,
    cluster_up,
    events,
    geostore,
    nodes,
    wait_for,
)
from tests.integration.test_single_leader_membership import (
    GROUP,
    TOPOLOGY,
    stream_with_five_events,
    voters_everywhere,
)

pytestmark = pytest.mark.timeout(240)

ALL = {"a1", "a2", "b1", "b2"}


def holds(api: str, expected: list[Any]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    got: list[Any] = []
    while time.monotonic() < deadline and got != expected:
        with contextlib.suppress(OSError):  # not serving yet
            got = [body for _, body in events(api, 0, "local")]
        time.sleep(0.2)
    assert got == expected, got


def test_an_interrupted_add_resumes_in_single_leader_mode(tmp_path: Path) -> None:
    with cluster_up(tmp_path, TOPOLOGY, "--mode", "single-leader", timeout_s=60) as info:
        folder = info["folder"]
        a1 = nodes(info)["a1"]["api"]
        stream_with_five_events(a1)
        add = ("node", "add", "--cluster", folder, "--region", "b", "--id", "b2")
        # interrupted right after it started the process; then the node crashes too
        out = geostore(*add, "--timeout", "0.01")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "started b2" in out.stdout, out.stdout
        first = nodes(secure.register(folder))["b2"]
        assert first.get("added") and not first.get("joined"), first
        os.kill(first["pid"], signal.SIGKILL)
        wait_for("b2 dead", lambda: None if alive(first["pid"]) else True, DEADLINE_S)

        out = geostore(*add, "--timeout", "90", timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "resuming the add of b2" in out.stdout, out.stdout
        assert "--join" in out.stdout, out.stdout  # never a voter: it may start empty
        cluster = secure.register(folder)
        b2 = nodes(cluster)["b2"]
        assert b2["joined"] is True and b2["pid"] != first["pid"], b2
        assert sorted(b2["proxies"]) == ["a"], b2  # region a reaches it through a proxy
        voters_everywhere(cluster, ALL)
        _, st = call(b2["api"] + "/v1/status")
        assert st.get("meta") is None and GROUP in st["groups"], st
        holds(b2["api"], list(range(5)))

        # a restart of the whole cluster rewrites cluster.json: the marks stay
        down = geostore("cluster", "down", "--dir", folder, "--timeout", "20")
        assert down.returncode == 0, down.stdout + down.stderr
        up = geostore("cluster", "up", "--topology", str(tmp_path / "topology.toml"),
                      "--dir", folder, "--mode", "single-leader", "--timeout", "60")  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        cluster = secure.register(folder)
        b2 = nodes(cluster)["b2"]
        assert b2.get("added") is True and b2.get("joined") is True, b2
        voters_everywhere(cluster, ALL)
        out = geostore(*add, "--timeout", "60", timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "already done before this run" in out.stdout, out.stdout
        for step in ("topology", "process", "WAN proxies", "learner", "voter"):
            assert step in out.stdout, out.stdout
        assert "started b2" not in out.stdout, out.stdout
