"""Geo replication between real node processes through the WAN emulator (two regions, 40 ms):
a write committed at a partition's home is read in the other region with its token; local
reads there are always prefixes of the home's log; after a burst every node of every region
holds identical copies (rolling hashes); appends for a partition homed elsewhere are
forwarded to its home (or refused with 421 and the home's address); a stream created in one
region exists in the other with the same homes; strong reads go to the home region;
``cluster status`` shows the replication lag per partition and destination; and shipping
resumes from the durable watermark after the receiving region's leader moves, and after a cut
link heals (while cut, the remote copy stays a strict prefix and token reads time out); once a
stream has enough events its home trains a dictionary, small batches name it, the receiving
leader fetches and stores it, and copies stay identical; the receiving leader reports each
event's lag from home commit to its apply."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geostore.runtime.http import make_token
from tests.integration import secure
from tests.integration.clusterkit import (
    DEADLINE_S,
    apis,
    call,
    cluster_up,
    data_leader,
    events,
    geostore,
    ok,
    topology_toml,
)

pytestmark = pytest.mark.timeout(150)

TOPOLOGY = topology_toml(
    "geo-test", {"a": ["a1"], "b": ["b1", "b2"]}, {("a", "b"): 40.0}, streams={"s": ["a", "b"]}
)

#: A small training set, so the burst of the tests below is enough to train a dictionary.
CONFIG = """
[geo]
dictionary_train_events = 100
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with cluster_up(tmp_path_factory.mktemp("geo"), TOPOLOGY, config=CONFIG) as info:
        yield info


def copies(url: str) -> dict[tuple[str, int], tuple[int, str]]:
    """Per partition on one node: (last seq, rolling hash)."""
    parts = ok(f"{url}/v1/debug/partitions")["partitions"]
    return {(p["stream"], p["partition"]): (p["last_seq"], p["hash"]) for p in parts}


def test_token_read_in_the_other_region_returns_the_write(cluster: dict[str, Any]) -> None:
    (a,) = apis(cluster, "a")
    b = apis(cluster, "b")[1]
    answer = ok(f"{a}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"n": 1}}]})
    (res,) = answer["results"]
    got = events(b, 0, after=answer["token"], wait_ms=20_000)
    assert (res["last_seq"], {"n": 1}) in got
    # a token beyond what exists: the bound expires, with the copy's watermark
    far = make_token("s", [(0, 1, 1_000_000)])
    status, err = call(f"{b}/v1/streams/s/events?partition=0&consistency=local"
                       f"&after={far}&wait_ms=50")  # fmt: skip
    assert status == 504 and err["error"]["code"] == "wait_timeout"
    assert err["error"]["watermark"]["0"]["seq"] >= res["last_seq"]


def test_local_reads_are_prefixes_and_copies_converge(cluster: dict[str, Any]) -> None:
    (a,) = apis(cluster, "a")
    b1, b2 = apis(cluster, "b")
    stop = threading.Event()
    errors: list[str] = []

    def burst(url: str, partition: int) -> None:
        for i in range(40):
            batch = [{"partition": partition, "body": {"i": i, "j": j}} for j in range(5)]
            status, answer = call(f"{url}/v1/streams/s/events", {"events": batch})
            if status != 200:
                errors.append(f"{status} {answer}")
        stop.set()

    writers = [threading.Thread(target=burst, args=(a, 0)),
               threading.Thread(target=burst, args=(b1, 1))]  # fmt: skip
    for w in writers:
        w.start()
    samples: list[tuple[int, list[Any]]] = []
    while not stop.is_set():
        samples.append((0, events(b2, 0)))
        samples.append((1, events(a, 1)))
        time.sleep(0.05)
    for w in writers:
        w.join(DEADLINE_S)
    assert not errors, errors[:3]
    home = {0: events(a, 0, "regional"), 1: events(b1, 1, "regional")}
    assert len(samples) >= 2
    for partition, seen in samples:
        assert seen == home[partition][: len(seen)], f"partition {partition}: not a prefix"
    # every node of every region converges to the same copy of every partition
    nodes = [a, b1, b2]
    deadline = time.monotonic() + DEADLINE_S
    while True:
        views = [copies(n) for n in nodes]
        if all(v == views[0] for v in views) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(v == views[0] for v in views), views
    assert views[0][("s", 0)][0] == home[0][-1][0] and views[0][("s", 1)][0] == home[1][-1][0]


def test_small_batches_name_a_trained_dictionary_and_apply_lag_is_measured(
    cluster: dict[str, Any],
) -> None:
    (a,) = apis(cluster, "a")
    for i in range(30):  # 150 events: over the 100 the home trains on
        batch = [{"partition": 0, "body": {"k": i, "j": j, "origin": "EWR"}} for j in range(5)]
        ok(f"{a}/v1/streams/s/events", {"events": batch})
    deadline = time.monotonic() + DEADLINE_S
    while "s" not in ok(f"{a}/v1/status")["geo"]["shipper"]["dictionaries"]:
        assert time.monotonic() < deadline, "the home did not train a dictionary"
        time.sleep(0.2)
    dict_id = ok(f"{a}/v1/status")["geo"]["shipper"]["dictionaries"]["s"]
    for i in range(20):  # small batches after training name the dictionary
        answer = ok(f"{a}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"d": i}}]})
    b = data_leader(cluster, "b")
    got = events(b["api"], 0, after=answer["token"], wait_ms=20_000)
    assert got == events(a, 0, "regional")
    shipper = ok(f"{a}/v1/status")["geo"]["shipper"]
    # the dictionary went out ahead of its first batch (NACKs only if an envelope was lost)
    assert shipper["batches_with_dictionary"] >= 1 and shipper["dictionaries_sent"] >= 1
    status = ok(f"{b['api']}/v1/status")
    assert dict_id in status["geo"]["receiver"]["dictionaries"]
    # stored durably in the receiving node's data dir, bytes matching the id
    assert (Path(b["dir"]) / "dictionaries" / f"{dict_id}.zdict").exists()
    # every node's copy is identical (rolling hashes)
    nodes = [a, *apis(cluster, "b")]
    deadline = time.monotonic() + DEADLINE_S
    while len({json.dumps(sorted(copies(n).items())) for n in nodes}) != 1:
        assert time.monotonic() < deadline, [copies(n) for n in nodes]
        time.sleep(0.2)
    # the receiving leader measured each event's lag from the home's commit: at least the
    # one-way delay of the 40 ms link (same machine, same clock)
    (row,) = [r for r in status["replication_lag"] if r["direction"] == "in"
              and (r["stream"], r["partition"], r["source"]) == ("s", 0, "a")]  # fmt: skip
    assert row["events_measured"] >= 20 and row["p99_ms"] >= row["p50_ms"] >= 15, row
    metrics = secure.urlopen(f"{b['api']}/metrics", timeout=10).read().decode()
    assert 'geostore_geo_apply_lag_seconds_count{partition="0",source="a",stream="s"}' in metrics


def test_append_for_another_home_is_forwarded_or_refused(cluster: dict[str, Any]) -> None:
    (a,) = apis(cluster, "a")
    b1, b2 = apis(cluster, "b")
    before = events(a, 0, "regional")
    status, err = call(f"{b2}/v1/streams/s/events?route=reject",
                       {"events": [{"partition": 0, "body": "nope"}]})  # fmt: skip
    assert status == 421 and err["error"]["code"] == "wrong_region"
    assert err["error"]["home"] == "a" and err["error"]["address"] == a
    assert events(a, 0, "regional") == before, "a refused append is not stored"
    # forwarded: committed at the home region, not in b's own log
    answer = ok(f"{b2}/v1/streams/s/events", {"events": [{"partition": 0, "body": "fwd"}]})
    (res,) = answer["results"]
    assert (res["last_seq"], "fwd") in events(a, 0, "regional")
    # a mixed append: each partition's part goes to its home; one token covers both
    answer = ok(
        f"{b1}/v1/streams/s/events",
        {"events": [{"partition": 0, "body": "m0"}, {"partition": 1, "body": "m1"}]},
    )
    assert sorted(r["partition"] for r in answer["results"]) == [0, 1]
    got = events(a, 1, after=answer["token"], wait_ms=20_000)
    assert any(body == "m1" for _, body in got)
    # strong reads in b of a partition homed in a are served by a
    strong = events(b2, 0, "strong")
    assert (res["last_seq"], "fwd") in strong


def test_streams_exist_in_every_region_and_status_shows_lag(cluster: dict[str, Any]) -> None:
    (a,) = apis(cluster, "a")
    b1, _ = apis(cluster, "b")
    created = ok(f"{b1}/v1/streams", {"name": "made-in-b", "partitions": 3})
    homes = {h["partition"]: h["home"] for h in created["homes"]}
    assert homes == {0: "a", 1: "b", 2: "a"}
    status = ok(f"{a}/v1/status")
    lag = [r for r in status["replication_lag"] if r["stream"] == "s" and r["partition"] == 0]
    assert lag and lag[0]["destination"] == "b"
    assert {"events", "ms", "inflight_batches"} <= set(lag[0])
    shipper = status["geo"]["shipper"]
    assert shipper["bytes_raw"] > 0
    # two regions: b is a's only destination, so its own counters are the totals
    assert set(shipper["destinations"]) == {"b"}
    assert shipper["destinations"]["b"]["bytes_raw"] == shipper["bytes_raw"]
    incoming = {(r["stream"], r["partition"]): r for r in status["geo"]["incoming"]}
    assert incoming[("s", 1)]["source"] == "b" and ("s", 0) not in incoming
    again = ok(f"{a}/v1/streams", {"name": "made-in-b", "partitions": 3})
    assert {h["partition"]: h["home"] for h in again["homes"]} == homes
    metrics = secure.urlopen(f"{a}/metrics", timeout=10).read().decode()
    assert 'geostore_geo_lag_events{destination="b",partition="0",stream="s"}' in metrics
    assert 'geostore_geo_shipped_bytes{destination="b",form="raw"}' in metrics
    out = geostore("cluster", "status", "--dir", cluster["folder"], timeout=60)
    assert out.returncode == 0, out.stderr
    assert "lag_events" in out.stdout and "shipping" in out.stdout
    assert "apply_p50_ms" in out.stdout
    # the home's row for partition 0 -> b carries the p50/p99 b's leader measured at apply
    (row,) = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("a ")
              and ln.split()[1:4] == ["s", "0", "b"]]  # fmt: skip
    assert float(row[-2]) > 0 and float(row[-1]) >= float(row[-2]), row


def test_shipping_resumes_after_the_receiving_leader_moves(cluster: dict[str, Any]) -> None:
    (a,) = apis(cluster, "a")
    b_nodes = cluster["regions"]["b"]["nodes"]
    leader = ok(f"{b_nodes[0]['api']}/v1/status")["groups"]["data-b"]["leader"]
    other = next(n for n in b_nodes if n["id"] != leader)
    leader_api = next(n["api"] for n in b_nodes if n["id"] == leader)
    ok(f"{leader_api}/v1/admin/leader/transfer", {"to": other["id"]})
    deadline = time.monotonic() + DEADLINE_S
    while ok(f"{other['api']}/v1/status")["groups"]["data-b"]["role"] != "leader":
        assert time.monotonic() < deadline, "the transfer did not complete"
        time.sleep(0.1)
    for i in range(10):
        answer = ok(f"{a}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"t": i}}]})
    # the new leader's receiver starts from the durable watermark and the shipper resumes
    got = events(leader_api, 0, after=answer["token"], wait_ms=20_000)
    assert got == events(a, 0, "regional")[: len(got)]
    assert (answer["results"][0]["last_seq"], {"t": 9}) in got
    status = ok(f"{other['api']}/v1/status")
    assert status["geo"]["role"] == "leader" and status["geo"]["receiver"]["acks"] >= 1


def test_a_cut_link_delays_copies_and_healing_catches_up(cluster: dict[str, Any]) -> None:
    from geostore.config import load_topology
    from netem.links import NetemControl

    (a,) = apis(cluster, "a")
    b1, b2 = apis(cluster, "b")
    control = NetemControl(load_topology(cluster["topology_resolved"]), cluster["netem"])
    control.cut_link("a", "b")
    try:
        before = copies(b2)[("s", 0)][0]
        for i in range(10):
            answer = ok(f"{a}/v1/streams/s/events", {"events": [{"partition": 0, "body": i}]})
        last = answer["results"][0]["last_seq"]
        time.sleep(0.5)
        # the home acknowledges (its lease, renewed before the cut, is still valid);
        # the cut-off copy stays a strict prefix
        held = events(b2, 0)
        assert len(held) == before + 1 < last + 1
        assert held == events(a, 0, "regional")[: len(held)]
        status, err = call(f"{b2}/v1/streams/s/events?partition=0&consistency=local"
                           f"&after={answer['token']}&wait_ms=200")  # fmt: skip
        assert status == 504 and err["error"]["watermark"]["0"]["seq"] == before
    finally:
        control.heal_link("a", "b")
    got = events(b1, 0, after=answer["token"], wait_ms=25_000)
    assert got == events(a, 0, "regional")[: len(got)] and got[-1][0] >= last
