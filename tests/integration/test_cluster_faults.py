"""Proves linearizable, loss-free appends and reads of a real 3-process region under faults:
concurrent clients append unique values (idempotent producers, retried through any node)
and read the partition while the leader is SIGKILLed and restarted from its data dir and a
follower is SIGSTOPped past the election timeout; the recorded history and the final log
are checked for the client-visible anomalies of RELIABILITY section 4.A (inconsistent
offsets, duplicates, lost writes, phantoms, realtime order, stale and non-monotonic reads,
per-process order) by the same checker the simulator uses."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from geostore.sim.history import Op, OpKind, Outcome, check_history

pytestmark = pytest.mark.timeout(300)

TOPOLOGY = """
name = "faults"
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
APPENDERS = 3
READERS = 1
RETRY_FOR_S = 30.0


def geostore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geostore", *args], capture_output=True,
                          text=True, timeout=150, check=False)  # fmt: skip


def call(url: str, body: Any = None, timeout_s: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def now_ms() -> int:
    return int(time.monotonic() * 1000)


class Workload:
    def __init__(self, apis: list[str], seed: int) -> None:
        self.apis = apis
        self.rng = random.Random(seed)
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def record(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def appender(self, process: int) -> None:
        rng = random.Random(process)
        n = 0
        while not self.stop.is_set():
            n += 1
            value = f"p{process}-{n}"
            op = Op(process, OpKind.APPEND, now_ms(), value=value)
            body = {"events": [{"body": value}], "producer": {"id": f"p{process}", "seq": n}}
            deadline = time.monotonic() + RETRY_FOR_S
            while time.monotonic() < deadline:
                try:
                    status, res = call(rng.choice(self.apis) + "/v1/streams/h/events", body)
                except (OSError, ValueError):
                    status, res = 0, None  # timeout or reset: unknown, retry (deduplicated)
                if status == 200:
                    op.offset = res["results"][0]["first_seq"]
                    op.outcome = Outcome.OK
                    break
                assert status in (0, 503, 504), (status, res)
                time.sleep(0.05)
            op.complete_ms = now_ms()
            if op.outcome is None:
                op.outcome = Outcome.INFO
            self.record(op)

    def reader(self, process: int) -> None:
        rng = random.Random(process)
        while not self.stop.is_set():
            op = Op(process, OpKind.READ, now_ms())
            start = rng.choice([0, 0, rng.randrange(0, 50)])
            try:
                status, page = call(
                    rng.choice(self.apis) + f"/v1/streams/h/events?from_seq={start}&limit=10000"
                )
            except (OSError, ValueError):
                status, page = 0, None
            op.complete_ms = now_ms()
            if status == 200:
                op.start = start
                op.end = page["next_seq"] - 1
                op.observed = tuple((e["seq"], e["body"]) for e in page["events"])
                op.outcome = Outcome.OK
                if op.end >= start:  # reads of an empty range say nothing
                    self.record(op)
            time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def role_of(api: str) -> str | None:
    try:
        return str(call(api + "/v1/status", timeout_s=2)[1]["groups"]["data-r1"]["role"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_for(what: str, fn: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = fn()
        if result is not None:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_history_under_kill_stop_and_restart_is_linearizable(tmp_path: Path) -> None:
    (tmp_path / "topo.toml").write_text(TOPOLOGY)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    folder = tmp_path / "c"
    out = geostore("cluster", "up", "--topology", str(tmp_path / "topo.toml"), "--dir",
                   str(folder), "--config", str(tmp_path / "cfg.toml"), "--timeout", "120")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    cluster = json.loads((folder / "cluster.json").read_text())
    nodes = cluster["regions"]["r1"]["nodes"]
    apis = [n["api"] for n in nodes]
    stopped: list[int] = []
    try:
        assert call(apis[0] + "/v1/streams", {"name": "h"}, 30)[0] in (200, 201)
        work = Workload(apis, 7)
        threads = [threading.Thread(target=work.appender, args=(p,)) for p in range(APPENDERS)]
        threads += [
            threading.Thread(target=work.reader, args=(APPENDERS + p,)) for p in range(READERS)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        leader = wait_for("a leader", lambda: next(
            (n for n in nodes if role_of(n["api"]) == "leader"), None))  # fmt: skip
        os.kill(leader["pid"], signal.SIGKILL)
        time.sleep(2.5)
        # restart it from its data dir, exactly as cluster up started it
        cmd = [sys.executable, "-m", "geostore", "node", "--topology",
               cluster["topology_resolved"], "--node", leader["id"], "--dir", leader["dir"],
               "--config", str(tmp_path / "cfg.toml")]  # fmt: skip
        with open(os.path.join(leader["dir"], "process.log"), "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        leader["pid"] = proc.pid
        (folder / "cluster.json").write_text(json.dumps(cluster))
        time.sleep(1.5)
        follower = wait_for("a follower", lambda: next(
            (n for n in nodes if n is not leader and role_of(n["api"]) == "follower"), None))  # fmt: skip
        os.kill(follower["pid"], signal.SIGSTOP)
        stopped.append(follower["pid"])
        time.sleep(4)  # past the election timeout (1 to 2 s)
        os.kill(follower["pid"], signal.SIGCONT)
        stopped.clear()
        time.sleep(2)
        work.stop.set()
        for t in threads:
            t.join(timeout=RETRY_FOR_S + 30)
            assert not t.is_alive()

        def final_log() -> dict[int, str] | None:
            for api in apis:
                try:
                    status, page = call(api + "/v1/streams/h/events?limit=10000", timeout_s=10)
                except (OSError, ValueError):
                    continue
                if status == 200:
                    return {e["seq"]: e["body"] for e in page["events"]}
            return None

        final = wait_for("a final regional read", final_log, 60)
        ops = work.ops
        report = check_history(ops, final)
        assert report.ok, "\n".join(map(str, report.anomalies))
        acked = [op for op in ops if op.kind is OpKind.APPEND and op.outcome is Outcome.OK]
        reads = [op for op in ops if op.kind is OpKind.READ]
        assert len(acked) >= 10 and reads, (len(acked), len(reads))
        assert sorted(final) == list(range(len(final))), "seqs are dense"
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
