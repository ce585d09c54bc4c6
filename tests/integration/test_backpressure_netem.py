"""Proves lag-bounded backpressure on real node processes through the WAN emulator: three
one-node regions, a stream whose topology entry sets ``rpo_ms``; when the link from the home
of a partition to another region is cut, appends to that partition are answered 503
``replication_lag`` (retryable, with the lag and the bound) within a bounded time, counted in
``geostore_appends_throttled_total{action="refuse"}``, while a stream without a bound keeps
taking appends on the same partition's home; after the link heals, appends are acknowledged
again (the shipped tail caught up).

The cut link leaves the metadata group's leader with a majority (its region is the home
written to, and the third region stays connected), so what refuses the appends is the lag
bound and not a lapsed home lease. On the same (TLS, tokens) cluster the ``geostore
quarantine`` commands reach every region through cluster.json's credentials."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geostore.config import load_topology
from netem.links import NetemControl
from tests.integration import clusterkit, secure

pytestmark = pytest.mark.timeout(180)

RPO_MS = 400
TOPOLOGY = f"""
name = "bp"
[[regions]]
name = "a"
nodes = ["a1"]
[[regions]]
name = "b"
nodes = ["b1"]
[[regions]]
name = "c"
nodes = ["c1"]
[[links]]
a = "a"
b = "b"
rtt_ms_p50 = 20.0
[[links]]
a = "a"
b = "c"
rtt_ms_p50 = 20.0
[[links]]
a = "b"
b = "c"
rtt_ms_p50 = 20.0
[[streams]]
name = "bounded"
partitions = 3
rpo_ms = {RPO_MS}
homes = {{ 0 = "a", 1 = "b", 2 = "c" }}
[[streams]]
name = "free"
partitions = 3
homes = {{ 0 = "a", 1 = "b", 2 = "c" }}
"""
PARTITION_OF = {"a": 0, "b": 1, "c": 2}
DEADLINE_S = 45.0


geostore = partial(clusterkit.geostore, timeout=150)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("bp")
    (root / "bp.toml").write_text(TOPOLOGY)
    folder = root / "c"
    up = geostore("cluster", "up", "--topology", str(root / "bp.toml"), "--dir", str(folder),
                  "--timeout", "90")  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield folder
    finally:
        down = geostore("cluster", "down", "--dir", str(folder), "--timeout", "20")
        assert down.returncode == 0, down.stdout + down.stderr


async def append(http: aiohttp.ClientSession, api: str, stream: str, p: int) -> tuple[int, Any]:
    body = {"events": [{"partition": p, "body": {"t": time.time()}}]}
    try:
        async with http.post(f"{api}/v1/streams/{stream}/events", json=body,
                             timeout=aiohttp.ClientTimeout(total=10)) as r:  # fmt: skip
            return r.status, await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


async def until(what: str, check: Any) -> Any:
    """Call ``check()`` every 50 ms until it returns something truthy, within DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last and last[0]:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {DEADLINE_S} s (last {last})")


async def test_a_cut_link_refuses_appends_over_the_rpo_bound_until_it_heals(folder: Path) -> None:
    doc = secure.register(folder)
    apis = {r: info["nodes"][0]["api"] for r, info in doc["regions"].items()}
    region_of = {info["nodes"][0]["id"]: r for r, info in doc["regions"].items()}
    control = NetemControl(load_topology(doc["topology_resolved"]), doc["netem"])
    async with aiohttp.ClientSession(**secure.aiohttp_kwargs(folder)) as http:

        async def meta_leader() -> tuple[str | None]:
            async with http.get(apis["a"] + "/v1/status") as r:
                leader = (await r.json()).get("meta", {}).get("leader")
            return (region_of.get(leader) if leader else None,)

        (home,) = await until("a metadata leader", meta_leader)
        other = next(r for r in ("a", "b", "c") if r != home)
        p = PARTITION_OF[home]
        api = apis[home]

        async def ok(stream: str) -> tuple[bool, Any]:
            s, b = await append(http, api, stream, p)
            return s == 200, (s, b)

        # both streams take appends while every link is up (once mirrored in the region)
        await until("first append to bounded", lambda: ok("bounded"))
        await until("first append to free", lambda: ok("free"))
        for _ in range(5):
            s, b = await append(http, api, "bounded", p)
            assert s == 200, (s, b)

        async def caught_up() -> tuple[bool, Any]:
            """The home's shipper reports the partition fully acknowledged by ``other``."""
            async with http.get(api + "/v1/status") as r:
                rows = (await r.json())["replication_lag"]
            out = [x for x in rows if x["direction"] == "out" and x["stream"] == "bounded"
                   and x["partition"] == p and x["destination"] == other]  # fmt: skip
            return bool(out) and out[0]["events"] == 0 and out[0]["ms"] == 0, out

        # the cut starts from no lag: the first appends after it are taken
        await until("no lag before the cut", caught_up)

        await asyncio.to_thread(control.cut_link, home, other)
        try:
            acked_during_cut = 0

            async def refused() -> tuple[bool, Any]:
                nonlocal acked_during_cut
                s, b = await append(http, api, "bounded", p)
                acked_during_cut += s == 200
                code = b.get("error", {}).get("code") if isinstance(b, dict) else None
                return s == 503 and code == "replication_lag", (s, b)

            t_cut = time.monotonic()
            _, (_, err) = await until("503 replication_lag", refused)
            assert err["error"]["rpo_ms"] == RPO_MS and err["error"]["lag_ms"] >= RPO_MS, err
            # appends were acknowledged until the bound was reached, not refused at once
            assert acked_during_cut >= 1, acked_during_cut
            assert time.monotonic() - t_cut < DEADLINE_S
            # still refused a moment later (the cut holds), while the unbounded stream writes
            await asyncio.sleep(0.3)
            s, b = await append(http, api, "bounded", p)
            assert s == 503 and b["error"]["code"] == "replication_lag", (s, b)
            s, b = await append(http, api, "free", p)
            assert s == 200, (s, b)
            async with http.get(api + "/metrics") as r:
                text = await r.text()
            m = re.search(r'^geostore_appends_throttled_total\{action="refuse"\} (\S+)$', text,
                          re.MULTILINE)  # fmt: skip
            assert m is not None and float(m.group(1)) >= 2, text[-2000:]
        finally:
            await asyncio.to_thread(control.heal_link, home, other)

        # healed: the tail ships, the lag falls under the bound, appends are taken again
        await until("an append after the heal", lambda: ok("bounded"))
        await until("the tail shipped after the heal", caught_up)


def test_quarantine_commands_on_a_tls_cluster_with_tokens(folder: Path) -> None:
    """The quarantine commands find the nodes, CA and token through cluster.json (the
    quarantine is empty here: no failover happened)."""
    out = geostore("quarantine", "list", "--cluster", str(folder), "--region", "b")
    assert out.returncode == 0, out.stderr
    assert "0 events in 0 runs in the quarantine of region b" in out.stdout, out.stdout
    out = geostore("quarantine", "export", "--cluster", str(folder), "--region", "c", "bounded")
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    out = geostore("quarantine", "reappend", "--cluster", str(folder), "--region", "a",
                   "bounded/0", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] == 0
    out = geostore("quarantine", "list", "--cluster", str(folder), "--region", "a", "nope")
    assert out.returncode == 1 and "unknown_stream" in out.stderr, out.stderr
