"""The global metadata group and home leases between real node processes, through the WAN
emulator (three regions, 30-50 ms): a stream created on one region's node is in every node's
catalogue and mirrored into every region's data group with the same homes and epochs; an
append in the home region succeeds while its lease is valid; when the other regions' meta
voters are stopped (SIGSTOP: the metadata group has no quorum, the home cannot renew),
appends to the home's partitions get 503 ``lease_lapsed`` once the lease ran out while
reads keep working, and after the voters resume appends succeed again and nothing
acknowledged is missing; and a meta voter that dies is replaced by a learner of its region,
after which the group keeps committing, and the old voter, restarted from its own log,
follows as a learner."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clusterkit import (
    DEADLINE_S,
    answer_past_503,
    call,
    cluster_up,
    data_leader,
    geostore,
    nodes,
    ok,
    status,
    topology_toml,
)

pytestmark = pytest.mark.timeout(150)

TOPOLOGY = topology_toml(
    "meta-test",
    {"a": ["a1", "a2"], "b": ["b1"], "c": ["c1"]},
    {("a", "b"): 30.0, ("a", "c"): 50.0, ("b", "c"): 40.0},
)

#: Short leases so the test sees one lapse quickly (renewed 4x per lease).
CONFIG = """
[geo]
lease_ms = 3000
lease_renew_ms = 500
lease_drift_ms = 200
"""

#: node processes this file restarted itself (stopped before 'cluster down')
CHILDREN: list[subprocess.Popen[bytes]] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("meta")
    with cluster_up(root, TOPOLOGY, config=CONFIG) as info:
        try:
            yield info
        finally:
            for proc in CHILDREN:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for region in info["regions"].values():  # a stopped node cannot stop
                for n in region["nodes"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(n["pid"], signal.SIGCONT)


def test_a_stream_created_in_one_region_is_everywhere_with_its_homes(
    cluster: dict[str, Any],
) -> None:
    all_nodes = nodes(cluster)
    created = ok(f"{all_nodes['c1']['api']}/v1/streams", {"name": "m", "partitions": 3})
    homes = {h["partition"]: (h["home"], h["epoch"]) for h in created["homes"]}
    assert homes == {0: ("a", 1), 1: ("b", 1), 2: ("c", 1)}
    # answered once mirrored in c: c1's data store has it now
    parts = ok(f"{all_nodes['c1']['api']}/v1/debug/partitions")["partitions"]
    assert {(p["partition"], p["home"], p["epoch"]) for p in parts if p["stream"] == "m"} == {
        (p, h, e) for p, (h, e) in homes.items()
    }
    deadline = time.monotonic() + DEADLINE_S
    for node in all_nodes.values():
        while True:
            st = status(node["api"])
            catalog = {
                h["partition"]: (h["home"], h["epoch"])
                for h in st["meta"]["homes"]
                if h["stream"] == "m"
            }
            mirrored = {
                p["partition"]: (p["home"], p["epoch"])
                for p in st["partitions"]
                if p["stream"] == "m"
            }
            if catalog == homes and mirrored == homes:
                break
            assert time.monotonic() < deadline, (node["id"], catalog, mirrored)
            time.sleep(0.2)
        assert st["meta"]["voters"] == ["a1", "b1", "c1"] and st["meta"]["learners"] == ["a2"]
        assert "warning" not in st["meta"]  # three regions survive the loss of one
    # the same creation again is idempotent, anywhere; another definition is a conflict
    again = ok(f"{all_nodes['a2']['api']}/v1/streams", {"name": "m", "partitions": 3})
    assert {h["partition"]: (h["home"], h["epoch"]) for h in again["homes"]} == homes
    code, err = answer_past_503(
        f"{all_nodes['b1']['api']}/v1/streams", {"name": "m", "partitions": 2}
    )
    assert code == 409 and err["error"]["code"] == "conflict"


def test_appends_stop_when_the_home_lease_lapses_and_resume_after(
    cluster: dict[str, Any],
) -> None:
    all_nodes = nodes(cluster)
    ok(f"{all_nodes['a1']['api']}/v1/streams", {"name": "m", "partitions": 3})
    a_leader = data_leader(cluster, "a")["api"]
    append = f"{a_leader}/v1/streams/m/events"
    acked: list[tuple[int, Any]] = []
    answer = ok(append, {"events": [{"partition": 0, "body": "before"}]})
    acked.append((answer["results"][0]["last_seq"], "before"))
    lease = status(a_leader)["leases"]["a"]
    assert lease["valid"] and lease["view"] == "holder" and lease["remaining_ms"] > 0
    stopped = [all_nodes["b1"]["pid"], all_nodes["c1"]["pid"]]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        refused = None
        deadline = time.monotonic() + DEADLINE_S
        i = 0
        while refused is None:
            assert time.monotonic() < deadline, "appends were still acknowledged"
            i += 1
            code, answer = call(append, {"events": [{"partition": 0, "body": i}]})
            if code == 200:
                acked.append((answer["results"][0]["last_seq"], i))
            else:
                assert code == 503, (code, answer)
                if answer["error"]["code"] == "lease_lapsed":
                    refused = answer
            time.sleep(0.1)
        assert refused["error"]["region"] == "a"
        st = status(a_leader)
        assert st["leases"]["a"]["valid"] is False and st["meta"]["lapses"] >= 1
        # reads keep working in the home region, and what was acknowledged is there
        got = ok(f"{a_leader}/v1/streams/m/events?partition=0&limit=10000&consistency=regional")
        stored = {(e["seq"], e["body"]) for e in got["events"]}
        assert set(acked) <= stored
        # still refused a moment later: nothing renews without a metadata quorum
        code, answer = answer_past_503(
            append, {"events": [{"partition": 0, "body": "refused"}]}, "lease_lapsed"
        )
        assert code == 503 and answer["error"]["code"] == "lease_lapsed", (code, answer)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    # the voters are back: the lease is renewed and appends are acknowledged again
    answer = ok(append, {"events": [{"partition": 0, "body": "after"}]})
    acked.append((answer["results"][0]["last_seq"], "after"))
    got = ok(f"{a_leader}/v1/streams/m/events?partition=0&limit=10000&consistency=regional")
    stored = {(e["seq"], e["body"]) for e in got["events"]}
    assert set(acked) <= stored
    assert "refused" not in {body for _, body in stored}
    assert status(a_leader)["meta"]["renewals"] >= 1


def test_cluster_status_shows_homes_and_leases(cluster: dict[str, Any]) -> None:
    out = geostore("cluster", "status", "--dir", cluster["folder"], timeout=60)
    assert out.returncode == 0, out.stderr
    assert "metadata group: leader" in out.stdout and "home leases" in out.stdout
    assert "homes" in out.stdout and "WARNING" not in out.stdout


def test_a_dead_meta_voter_is_replaced_and_follows_as_a_learner_after_restart(
    cluster: dict[str, Any],
) -> None:
    all_nodes = nodes(cluster)
    b1 = all_nodes["b1"]["api"]
    a1 = all_nodes["a1"]
    # the exact command line 'cluster up' used; a restart must not found a new cluster
    raw = Path(f"/proc/{a1['pid']}/cmdline").read_bytes().split(b"\0")
    cmdline = [a.decode() for a in raw if a and a != b"--bootstrap"]
    os.kill(a1["pid"], signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        meta = status(b1)["meta"]
        if meta["voters"] == ["a2", "b1", "c1"] and meta["learners"] == ["a1"]:
            break
        assert time.monotonic() < deadline, meta
        time.sleep(0.3)
    # the metadata group still commits without a1
    ok(f"{all_nodes['c1']['api']}/v1/streams", {"name": "after-replace", "partitions": 1})
    # a1 restarts from its own log (lease renewals included) and follows as a learner
    with open(os.path.join(a1["dir"], "process.log"), "ab") as out:
        proc = subprocess.Popen(cmdline, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    CHILDREN.append(proc)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        assert proc.poll() is None, "a1 did not restart; see its process.log"
        try:
            code, st = call(f"{a1['api']}/v1/status", timeout=5)
        except OSError:  # not listening yet
            code, st = 0, None
        if code == 200 and any(h["stream"] == "after-replace" for h in st["meta"]["homes"]):
            break
        assert time.monotonic() < deadline, "a1 did not catch up as a learner"
        time.sleep(0.3)
    assert st["meta"]["voters"] == ["a2", "b1", "c1"] and st["meta"]["learners"] == ["a1"]
