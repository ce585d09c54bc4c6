"""Proves that ``geostore node add`` resumes an interrupted add when rerun with the same id and
region: a run stopped right after it started the process (its node then killed too) is
completed by a rerun that restarts the node with ``--join``, which becomes a voter and serves
the events written before and after; a rerun of a completed add changes nothing and starts no
second process; the id stays refused under another region, after its disk was wiped, and for
good once it was removed. With two regions, the resumed add keeps the WAN proxies the
interrupted one created and makes the node a metadata learner, which a rerun repeats
harmlessly; the other region's 421 ``wrong_region`` answers list it at its client address,
not at the WAN proxy through which that region reaches it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration import secure
from tests.integration.clusterkit import alive, cluster_up, nodes, ok, topology_toml, wait_for

pytestmark = pytest.mark.timeout(240)

TWO_REGIONS = topology_toml("resume-meta", {"a": ["a1"], "b": ["b1"]}, {("a", "b"): 5.0})

TOPOLOGY = """
name = "resume"
[[regions]]
name = "r1"
intra_rtt_ms = 0.0
nodes = ["n1", "n2", "n3"]
"""
CONFIG = """
[raft]
tick_ms = 20
heartbeat_ticks = 5
election_ticks = 50
"""


def geostore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geostore", *args], capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip


def call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with secure.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def entry(folder: Path, node: str) -> dict[str, Any]:
    cluster = secure.register(folder)
    found: dict[str, Any] = next(n for n in cluster["regions"]["r1"]["nodes"] if n["id"] == node)
    return found


def write(api: str, body: object) -> None:
    status, res = call(api + "/v1/streams/m/events", {"events": [{"body": body}]})
    assert status == 200, res


def test_an_interrupted_add_resumes_and_a_taken_id_stays_refused(tmp_path: Path) -> None:
    (tmp_path / "topo.toml").write_text(TOPOLOGY)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    folder = tmp_path / "c"
    out = geostore("cluster", "up", "--topology", str(tmp_path / "topo.toml"), "--dir",
                   str(folder), "--config", str(tmp_path / "cfg.toml"), "--timeout", "120")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    cluster = secure.register(folder)
    pids = [n["pid"] for n in cluster["regions"]["r1"]["nodes"]]
    api = cluster["regions"]["r1"]["nodes"][0]["api"]
    add = ("node", "add", "--cluster", str(folder), "--region", "r1", "--id", "n4")
    try:
        assert call(api + "/v1/streams", {"name": "m"})[0] == 201
        for i in range(10):
            write(api, i)
        # interrupted right after it started the process: no step has a deadline left
        out = geostore(*add, "--timeout", "0.01")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "started n4" in out.stdout, out.stdout
        first = entry(folder, "n4")
        pids.append(first["pid"])
        assert not first.get("joined")
        # ... and its node goes down before anyone re-runs the add
        os.kill(first["pid"], signal.SIGKILL)
        wait_for("n4 dead", lambda: None if alive(first["pid"]) else True, 30)
        for i in range(10, 20):
            write(api, i)

        out = geostore(*add, "--timeout", "120")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "resuming the add of n4" in out.stdout, out.stdout
        assert "--join" in out.stdout, out.stdout  # never a voter: it may start empty
        n4 = entry(folder, "n4")
        pids.append(n4["pid"])
        assert n4["pid"] != first["pid"] and n4["joined"] is True
        _, status = call(n4["api"] + "/v1/status")
        assert status["groups"]["data-r1"]["voters"] == ["n1", "n2", "n3", "n4"]
        write(n4["api"], "after")

        def n4_has_all() -> Any:
            s, page = call(n4["api"] + "/v1/streams/m/events?consistency=local")
            return page if s == 200 and len(page["events"]) == 21 else None

        page = wait_for("n4 holds every event", n4_has_all)
        assert [e["body"] for e in page["events"]] == [*range(20), "after"]

        # a rerun of the completed add: every step is already done, no second process
        out = geostore(*add, "--timeout", "60")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "already done before this run" in out.stdout, out.stdout
        for step in ("topology", f"process (pid {n4['pid']})", "learner", "voter"):
            assert step in out.stdout, out.stdout
        assert "started n4" not in out.stdout, out.stdout
        assert entry(folder, "n4")["pid"] == n4["pid"] and alive(n4["pid"])

        # a founding member's id is no add to resume
        out = geostore("node", "add", "--cluster", str(folder), "--region", "r1", "--id", "n1",
                       "--timeout", "10")  # fmt: skip
        assert out.returncode == 1, out.stdout + out.stderr
        assert "is taken" in out.stderr, out.stderr
        # the id is taken by r1: another region is refused, naming it
        out = geostore("node", "add", "--cluster", str(folder), "--region", "r2", "--id", "n4",
                       "--timeout", "10")  # fmt: skip
        assert out.returncode == 1, out.stdout + out.stderr
        assert "taken by region r1" in out.stderr, out.stderr

        # a voter whose disk was wiped is never restarted under its id
        os.kill(n4["pid"], signal.SIGKILL)
        wait_for("n4 dead", lambda: None if alive(n4["pid"]) else True, 30)
        shutil.rmtree(n4["dir"])
        out = geostore(*add, "--timeout", "30")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "must not come back under its old id" in out.stderr, out.stderr
        assert "started n4" not in out.stdout, out.stdout

        # once removed, the id is refused for good
        out = geostore("node", "remove", "--cluster", str(folder), "--node", "n4",
                       "--timeout", "60")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        out = geostore(*add, "--timeout", "10")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "was removed" in out.stderr, out.stderr
        assert "n4" not in {n["id"] for n in secure.register(folder)["regions"]["r1"]["nodes"]}
    finally:
        down = geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
        for pid in pids:  # the killed or wiped n4 processes too
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert down.returncode == 0, down.stderr
    for pid in pids:
        wait_for(f"{pid} stopped", lambda pid=pid: None if alive(pid) else True, 30)


def test_a_resumed_add_keeps_its_wan_proxies_and_joins_the_metadata_group(tmp_path: Path) -> None:
    with cluster_up(tmp_path, TWO_REGIONS, timeout_s=60) as info:
        assert info.get("netem"), info  # the other region reaches b2 through a proxy
        folder = info["folder"]
        a1 = nodes(info)["a1"]["api"]
        ok(a1 + "/v1/streams", {"name": "s", "partitions": 2, "homes": {"0": "a", "1": "b"}},
           retry=(503, 504))  # fmt: skip
        add = ("node", "add", "--cluster", folder, "--region", "b", "--id", "b2")
        out = geostore(*add, "--timeout", "0.01")  # stops before it told anyone about b2
        assert out.returncode == 1, out.stdout + out.stderr
        first = nodes(secure.register(folder))["b2"]
        assert sorted(first["proxies"]) == ["a"], first
        try:
            out = geostore(*add, "--timeout", "90")
            assert out.returncode == 0, out.stdout + out.stderr
            assert "resuming the add of b2" in out.stdout, out.stdout
            assert "started b2" not in out.stdout, out.stdout
            assert "WAN proxies" in out.stdout, out.stdout
            b2 = nodes(secure.register(folder))["b2"]
            assert b2["pid"] == first["pid"] and b2["proxies"] == first["proxies"]
            _, st = call(b2["api"] + "/v1/status")
            assert st["groups"]["data-b"]["voters"] == ["b1", "b2"], st["groups"]
            assert "b2" in st["meta"]["learners"] + st["meta"]["voters"], st["meta"]
            # region a reaches b2 through a WAN proxy; its 421 lists b2's client address
            status, answer = call(a1 + "/v1/streams/s/events?route=reject",
                                  {"events": [{"partition": 1, "body": 1}]})  # fmt: skip
            assert status == 421, answer
            b1 = nodes(secure.register(folder))["b1"]["api"]
            assert sorted(answer["error"]["addresses"]) == sorted([b1, b2["api"]]), answer

            out = geostore(*add, "--timeout", "60")
            assert out.returncode == 0, out.stdout + out.stderr
            for step in ("learner", "voter", "metadata member", "WAN proxies"):
                assert step in out.stdout, out.stdout
        finally:
            if alive(first["pid"]):  # cluster down stops it too; this is belt and braces
                os.kill(first["pid"], signal.SIGTERM)
