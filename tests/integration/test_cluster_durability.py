"""Proves that acknowledged appends survive a power loss, and that the check can fail: the
nodes of a real 3-process region report the bytes of each log segment an fsync covered;
after a quiet moment every node is SIGKILLed, every segment is cut back to that watermark
(what a power loss may leave), the region restarts, and every acknowledged event must still
be readable (RELIABILITY A3). With ``--unsafe-no-fsync`` the very same procedure loses
acknowledged events, so the check is shown to catch a node that acknowledges too early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(240)

TOPOLOGY = """
name = "durability"
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
APPENDS = 25


def geostore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geostore", *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(what: str, fn: Any, timeout_s: float = 60) -> Any:
    """The first result of ``fn`` that is not None."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last is not None:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (last {last!r})")


def up(root: Path, *extra: str) -> dict[str, Any]:
    out = geostore("cluster", "up", "--topology", str(root / "topo.toml"), "--dir",
                   str(root / "c"), "--config", str(root / "cfg.toml"), "--timeout", "120",
                   *extra)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    data: dict[str, Any] = json.loads((root / "c" / "cluster.json").read_text())
    return data


def groups(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in cluster["regions"]["r1"]["nodes"]:
        out[n["id"]] = call(n["api"] + "/v1/status")[1]["groups"]["data-r1"]
    return out


def lose_power(root: Path, unsafe: bool) -> tuple[list[int], list[int]]:
    """Append, cut every log to its fsync watermark, restart; (acknowledged, found) bodies."""
    (root / "topo.toml").write_text(TOPOLOGY)
    (root / "cfg.toml").write_text(CONFIG)
    cluster = up(root, *(["--unsafe-no-fsync"] if unsafe else []))
    try:
        api = cluster["regions"]["r1"]["nodes"][0]["api"]
        assert call(api + "/v1/streams", {"name": "d"})[0] in (200, 201)
        acked = []
        for i in range(APPENDS):
            status, res = call(api + "/v1/streams/d/events", {"events": [{"body": i}]})
            assert status == 200, res
            acked.append(i)

        def quiet() -> dict[str, dict[str, Any]] | None:
            g = groups(cluster)
            leader = [s for s in g.values() if s["role"] == "leader"]
            if len(leader) != 1:
                return None
            commit = leader[0]["commit"]
            return g if all(s["applied"] == commit for s in g.values()) else None

        marks = wait_for("all nodes applied the last append", quiet)
        for n in cluster["regions"]["r1"]["nodes"]:
            os.kill(n["pid"], signal.SIGKILL)
        for n in cluster["regions"]["r1"]["nodes"]:
            wait_for(f"{n['id']} dead", lambda n=n: None if _alive(n["pid"]) else True, 30)
        for g in marks.values():
            for name, size in g["durable_watermarks"].items():
                os.truncate(os.path.join(g["log_dir"], name), size)
        cluster = up(root)
        api = cluster["regions"]["r1"]["nodes"][0]["api"]

        def read_all() -> list[int] | None:
            status, page = call(api + "/v1/streams/d/events?limit=1000")
            if status == 404:
                return []  # even the stream was lost
            return [e["body"] for e in page["events"]] if status == 200 else None

        found: list[int] = wait_for("a regional read after the restart", read_all)
        return acked, found
    finally:
        geostore("cluster", "down", "--dir", str(root / "c"), "--timeout", "20")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_acknowledged_appends_survive_power_loss(tmp_path: Path) -> None:
    acked, found = lose_power(tmp_path, unsafe=False)
    assert found[: len(acked)] == acked


def test_unsafe_no_fsync_loses_acknowledged_appends(tmp_path: Path) -> None:
    acked, found = lose_power(tmp_path, unsafe=True)
    lost = sorted(set(acked) - set(found))
    assert lost, "the negative control must lose acknowledged appends"
