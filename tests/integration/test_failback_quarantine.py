"""Proves the failback side at process level, through the netem proxies and the CLI: a region
cut off keeps acknowledging appends until its lease lapses, is killed and failed over; when it
comes back, a read whose token names one of those orphaned appends answers 409
``superseded_epoch`` (in the returned region and in the survivor) while a token of a kept write
is served; ``geostore quarantine list`` shows exactly the orphaned appends in the returned
region (and nothing elsewhere); ``geostore quarantine reappend`` appends them once, with new
seqs after what the new home wrote, and a second run appends nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.clusterkit import apis, call, cluster_up, events, geostore, ok
from tests.integration.test_moves import (
    CONFIG,
    TOPOLOGY,
    converged,
    cut_off,
    lose_region_with_orphans,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with cluster_up(tmp_path_factory.mktemp("failback"), TOPOLOGY, config=CONFIG) as info:
        yield info


def read_after(url: str, token: str) -> tuple[int, Any]:
    return call(f"{url}/v1/streams/s/events?partition=0&after={quote(token)}&wait_ms=10000")


def quarantine_cli(folder: str, *args: str) -> Any:
    out = geostore("quarantine", *args, "--cluster", folder, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_orphaned_appends_are_refused_as_tokens_listed_and_reappended_once(
    cluster: dict[str, Any],
) -> None:
    a, b = (apis(cluster, r)[0] for r in "ab")
    folder = cluster["folder"]
    kept, orphans = lose_region_with_orphans(cluster, "a", "c")
    fo = geostore("region", "failover", "--cluster", folder, "a", "--to", "b", "--json")
    assert fo.returncode == 0, fo.stdout + fo.stderr
    for i in range(2):
        ok(f"{b}/v1/streams/s/events", {"events": [{"partition": 0, "body": {"b": i}}]},
           retry=(503, 421))  # fmt: skip
    cut_off(cluster, "a", True)
    start = geostore("cluster", "start", "--dir", folder, "--region", "a")
    assert start.returncode == 0, start.stdout + start.stderr
    converged(cluster, ("s", 0), 2)

    # tokens: an orphaned write is superseded everywhere; a kept one is served
    for url in (a, b):
        status, answer = read_after(url, orphans[-1]["token"])
        assert status == 409 and answer["error"]["code"] == "superseded_epoch", answer
        assert answer["error"]["fork_seq"] == 4 and answer["error"]["superseded_epoch"] == 1
    status, answer = read_after(b, kept[-1]["token"])
    assert status == 200 and len(answer["events"]) == 7, answer

    # the quarantine of a holds exactly the orphaned appends; the others hold none
    listed = quarantine_cli(folder, "list", "--region", "a")
    assert (listed["region"], listed["events_total"]) == ("a", len(orphans)), listed
    assert [(r["first_seq"], r["last_seq"]) for r in listed["runs"]] == [
        (o["results"][0]["first_seq"], o["results"][0]["last_seq"]) for o in orphans
    ], listed
    assert {(r["epoch"], r["superseded_by"], r["fork_seq"]) for r in listed["runs"]} == {(1, 2, 4)}
    assert quarantine_cli(folder, "list", "--region", "b")["events_total"] == 0

    # re-append from a: once, with new seqs after b's writes, at the home b
    first = quarantine_cli(folder, "reappend", "--region", "a", "s/0")
    assert (first["appended"], first["failed"]) == (len(orphans), 0), first
    again = quarantine_cli(folder, "reappend", "--region", "a", "s")
    assert (again["appended"], again["duplicates"]) == (0, len(orphans)), again
    got = events(b, 0, "regional")
    assert [body for _, body in got] == [
        *({"i": i} for i in range(5)),
        *({"b": i} for i in range(2)),
        *({"orphan": k} for k in range(len(orphans))),
    ]
    assert [seq for seq, _ in got] == list(range(7 + len(orphans)))
