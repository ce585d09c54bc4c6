"""Moving homes at run time, through real processes and the netem proxies: the move and
failover endpoints refuse bad requests and a failover of a live region; a region that was
away while its partition moved twice (a failover, then a planned move) comes back, moves
exactly what it wrote beyond the first fork to its quarantine and converges with the others;
and the automatic policy fails a silent region over to its nearest live neighbour."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clusterkit import (
    DEADLINE_S,
    apis,
    call,
    cluster_up,
    events,
    geostore,
    ok,
    topology_toml,
)

pytestmark = pytest.mark.timeout(240)

TOPOLOGY = topology_toml(
    "moves-test",
    {"a": ["a1"], "b": ["b1"], "c": ["c1"]},
    {("a", "b"): 20.0, ("a", "c"): 40.0, ("b", "c"): 30.0},
    streams={"s": ["a", "b"]},
)

#: Short leases: a lost region's lease runs out in about 3 s.
CONFIG = """
[geo]
lease_ms = 2500
lease_renew_ms = 400
lease_drift_ms = 200
"""


def netem(cluster: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cluster["netem"] + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def cut_off(cluster: dict[str, Any], region: str, enabled: bool) -> None:
    """Disable (or enable) every proxy into and out of ``region``'s nodes."""
    mine = {n["id"] for n in cluster["regions"][region]["nodes"]}
    for name in netem(cluster, "GET", "/proxies"):
        src, _, dst = name.partition("->")
        if src == region or dst in mine:
            netem(cluster, "POST", f"/proxies/{name}", {"enabled": enabled})


def partitions(url: str) -> dict[tuple[str, int], dict[str, Any]]:
    answer = ok(f"{url}/v1/debug/partitions")
    return {(p["stream"], p["partition"]): p for p in answer["partitions"]}


def converged(cluster: dict[str, Any], key: tuple[str, int], epoch: int) -> list[Any]:
    """Wait until every region holds the partition at ``epoch`` with one hash; the views."""
    deadline = time.monotonic() + 2 * DEADLINE_S
    while True:
        views = []
        for region in cluster["regions"]:
            code, answer = call(f"{apis(cluster, region)[0]}/v1/debug/partitions", timeout=5)
            got = (
                {(p["stream"], p["partition"]): p for p in answer.get("partitions", [])}
                if (code == 200)
                else {}
            )
            views.append((region, got.get(key)))
        firsts = {(v["epoch"], v["last_seq"], v["hash"]) for _, v in views if v is not None}
        if len(firsts) == 1 and all(v is not None and v["epoch"] == epoch for _, v in views):
            return views
        assert time.monotonic() < deadline, f"regions did not converge on {key}: {views}"
        time.sleep(0.3)


def quarantine(url: str) -> list[dict[str, Any]]:
    """The quarantined events of the node's region, one dict per event (JSON lines)."""
    from tests.integration import secure

    req = urllib.request.Request(f"{url}/v1/quarantine/export?stream=s&partition=0")
    with secure.urlopen(req, timeout=20) as r:
        return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]


def lose_region_with_orphans(
    cluster: dict[str, Any], region: str, witness: str, kept: int = 5
) -> tuple[list[Any], list[Any]]:
    """Partition 0 homed in ``region``: ``kept`` appends that reach ``witness``, then the region
    is cut off and keeps acknowledging appends until its lease lapses (shipping none), then
    all its processes are killed. The answers of the kept and of the orphaned appends."""
    home, other = apis(cluster, region)[0], apis(cluster, witness)[0]
    kept_answers = [
        ok(f"{home}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"i": i}}]})
        for i in range(kept)
    ]
    deadline = time.monotonic() + DEADLINE_S
    while len(events(other, 0)) < kept:
        assert time.monotonic() < deadline, f"the first events did not reach {witness}"
        time.sleep(0.2)
    cut_off(cluster, region, False)
    orphans: list[Any] = []
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, answer = call(f"{home}/v1/streams/s/events",
                              {"events": [{"partition": 0, "body": {"orphan": len(orphans)}}]})  # fmt: skip
        if status != 200:
            assert answer["error"]["code"] == "lease_lapsed", answer
            break
        orphans.append(answer)
        assert time.monotonic() < deadline, f"{region} never noticed it was cut off"
        time.sleep(0.05)
    assert orphans, f"{region} acknowledged nothing while cut off"
    kill = geostore("cluster", "stop", "--dir", cluster["folder"], "--region", region, "--kill")
    assert kill.returncode == 0, kill.stdout + kill.stderr
    return kept_answers, orphans


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with cluster_up(tmp_path_factory.mktemp("moves"), TOPOLOGY, config=CONFIG) as info:
        yield info


def test_bad_requests_and_a_live_region_are_refused(cluster: dict[str, Any]) -> None:
    a = apis(cluster, "a")[0]
    move = f"{a}/v1/admin/partitions/s/0/move"
    for body, code in (
        ({"to": "nowhere"}, "malformed"),
        ({"to": "b", "extra": 1}, "malformed"),
        ({"to": "b", "timeout_ms": 0}, "malformed"),
        ([], "malformed"),
    ):
        status, answer = call(move, body)
        assert (status, answer["error"]["code"]) == (400, code), (body, answer)
    status, answer = call(f"{a}/v1/admin/partitions/nope/0/move", {"to": "b"})
    assert (status, answer["error"]["code"]) == (404, "unknown_stream"), answer
    status, answer = call(f"{a}/v1/admin/partitions/s/9/move", {"to": "b"})
    assert (status, answer["error"]["code"]) == (404, "unknown_partition"), answer
    status, answer = call(f"{a}/v1/admin/regions/a/failover", {"to": "a"})
    assert status == 400, answer
    # region b is alive and renews its lease: c refuses to take its homes
    status, answer = call(f"{apis(cluster, 'c')[0]}/v1/admin/regions/b/failover", {"to": "c"})
    assert (status, answer["error"]["code"]) == (409, "lease_held"), answer
    assert answer["error"]["remaining_ms"] > 0
    # moving to the current home changes nothing
    answer = ok(move, {"to": "a"})
    assert answer["changed"] is False and answer["epoch"] == 1


def test_region_away_during_two_moves_fails_back_to_the_first_fork(
    cluster: dict[str, Any],
) -> None:
    a, b, c = (apis(cluster, r)[0] for r in "abc")
    folder = cluster["folder"]
    _, answers = lose_region_with_orphans(cluster, "a", "c")
    orphans = [answer["results"][0] for answer in answers]
    # failover a -> b (the CLI waits out a's lease), b writes, then a planned move b -> c
    fo = geostore("region", "failover", "--cluster", folder, "a", "--to", "b", "--json")
    assert fo.returncode == 0, fo.stdout + fo.stderr
    report = json.loads(fo.stdout)
    (row,) = [p for p in report["partitions"] if p["partition"] == 0]
    assert row["fork_seq"] == 4 and row["epoch"] == 2, report
    for i in range(3):
        ok(f"{b}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"b": i}}]},
           retry=(503, 421))  # fmt: skip
    mv = geostore("partition", "move", "--cluster", folder, "s/0", "--to", "c", "--json")
    assert mv.returncode == 0, mv.stdout + mv.stderr
    moved = json.loads(mv.stdout)
    assert moved["fork_seq"] == 7 and moved["epoch"] == 3, moved
    assert set(moved["pauses_ms"]) >= {"fencing", "draining", "bumping"}, moved
    for i in range(2):
        ok(f"{c}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"c": i}}]},
           retry=(503, 421))  # fmt: skip
    # a returns: it must rewind to the FIRST fork (4), not the last one (7)
    cut_off(cluster, "a", True)
    start = geostore("cluster", "start", "--dir", folder, "--region", "a")
    assert start.returncode == 0, start.stdout + start.stderr
    views = converged(cluster, ("s", 0), 3)
    assert all(v["last_seq"] == 9 for _, v in views), views
    got = events(a, 0)
    assert got == events(c, 0)
    assert [body for _, body in got] == [
        *({"i": i} for i in range(5)),
        *({"b": i} for i in range(3)),
        *({"c": i} for i in range(2)),
    ]
    # exactly the orphaned appends are in a's quarantine, under the epoch they were written
    held = quarantine(a)
    assert [(q["seq"], q["body"]) for q in held] == [
        (r["first_seq"], {"orphan": k}) for k, r in enumerate(orphans)
    ], held
    assert {(q["epoch"], q["superseded_by"], q["fork_seq"]) for q in held} == {(1, 2, 4)}
    assert quarantine(b) == [] and quarantine(c) == []


def test_automatic_failover_moves_a_silent_regions_homes_to_its_nearest_neighbour(
    tmp_path: Path,
) -> None:
    config = CONFIG + "auto_failover_after_ms = 1000\n"
    with cluster_up(tmp_path, TOPOLOGY, config=config) as info:
        folder = info["folder"]
        a = apis(info, "a")[0]
        ok(f"{apis(info, 'b')[0]}/v1/streams/s/events",
           {"events": [{"partition": 1, "body": {"x": 1}}]})  # fmt: skip
        kill = geostore("cluster", "stop", "--dir", folder, "--region", "b", "--kill")
        assert kill.returncode == 0, kill.stdout + kill.stderr
        deadline = time.monotonic() + 2 * DEADLINE_S
        while True:  # b's nearest live neighbour is a (20 ms; c is 30 ms away)
            home = partitions(a)[("s", 1)]
            if home["home"] == "a":
                break
            assert time.monotonic() < deadline, f"no automatic failover of b: {home}"
            time.sleep(0.3)
        assert home["epoch"] == 2 and home["last_seq"] == 0, home
        moves = ok(f"{a}/v1/status")["moves"]
        assert moves["auto_failovers"] == 1, moves
        assert moves["last_auto_failover"]["partitions"][0]["fork_seq"] == 0, moves
        answer = ok(f"{a}/v1/streams/s/events", {"events": [{"partition": 1, "body": {"x": 2}}]})
        assert answer["results"][0]["first_seq"] == 1
        # c, the other survivor, follows the new home
        c = apis(info, "c")[0]
        deadline = time.monotonic() + DEADLINE_S
        while len(events(c, 1)) < 2:
            assert time.monotonic() < deadline, "c did not follow a"
            time.sleep(0.2)
