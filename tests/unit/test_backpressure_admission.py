"""Proves the runtime's admission step of lag-bounded backpressure against a real shipper's lag
(the process-level proof through a cut link is tests/integration/test_backpressure_netem.py):
appends to a stream with a topology ``rpo_ms`` are admitted under half the bound, delayed
between half and the bound, refused with 503 ``replication_lag`` at the bound, judged by the
worst lag over the appended partitions and destinations, and counted per action; streams
without a bound and partitions the shipper has not heard of are never throttled."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from geostore.config import GeoSettings, LimitsSettings, parse_topology
from geostore.errors import ApiError, ErrorCode
from geostore.geo import GeoEntry, Shipper
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName
from geostore.runtime.api import Api
from geostore.runtime.metrics import NodeMetrics

TOPOLOGY = """
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
rtt_ms_p50 = 10.0
[[links]]
a = "a"
b = "c"
rtt_ms_p50 = 10.0
[[links]]
a = "b"
b = "c"
rtt_ms_p50 = 10.0
[[streams]]
name = "bounded"
partitions = 3
rpo_ms = 1000
homes = { 0 = "a", 1 = "a", 2 = "a" }
[[streams]]
name = "free"
partitions = 1
homes = { 0 = "a" }
"""


class NoLog:
    """The committed log port; never read here (the shipper is not ticked)."""

    def read_committed(
        self, stream: StreamName, partition: PartitionId, from_seq: Seq, through_seq: Seq,
        events_max: int, bytes_max: int,
    ) -> Sequence[GeoEntry]:  # fmt: skip
        raise AssertionError("not read")


def make_api() -> tuple[Api, Shipper, NodeMetrics]:
    shipper = Shipper(RegionId("a"), {RegionId("b"): 10.0, RegionId("c"): 10.0}, GeoSettings(),
                      NoLog())  # fmt: skip
    metrics = NodeMetrics()
    node = SimpleNamespace(
        topology=parse_topology(TOPOLOGY, "t.toml"),
        config=SimpleNamespace(limits=LimitsSettings()),
        geo=SimpleNamespace(shipper=shipper),
        metrics=metrics,
        meta=None,
    )
    return Api(cast(Any, node)), shipper, metrics


def committed(shipper: Shipper, stream: str, partition: int, age_ms: int) -> None:
    """The partition committed seq 0 ``age_ms`` ago, and no destination acknowledged it."""
    now_ms = int(time.monotonic() * 1000)
    shipper.on_committed(StreamName(stream), PartitionId(partition), Epoch(1), Seq(0),
                         now_ms - age_ms)  # fmt: skip


def count(metrics: NodeMetrics, action: str) -> float:
    text = metrics.registry.render()
    for line in text.splitlines():
        if line.startswith(f'geostore_appends_throttled_total{{action="{action}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_admit_slow_refuse_by_the_worst_lag() -> None:
    api, shipper, metrics = make_api()
    committed(shipper, "bounded", 0, 100)  # under half the bound
    committed(shipper, "bounded", 1, 800)  # between half and the bound
    committed(shipper, "bounded", 2, 5_000)  # over the bound
    committed(shipper, "free", 0, 60_000)  # no bound at all

    await api._admit_lag("bounded", [0])
    await api._admit_lag("bounded", [0, 0])
    await api._admit_lag("free", [0])
    await api._admit_lag("nope", [0])
    assert count(metrics, "slow") == count(metrics, "refuse") == 0

    t0 = time.monotonic()
    await api._admit_lag("bounded", [0, 1])  # the worst partition decides: delayed
    assert time.monotonic() - t0 >= 0.05  # about 120 ms at 800 of 1000 ms
    assert count(metrics, "slow") == 1

    for parts in ([2], [0, 1, 2]):
        with pytest.raises(ApiError) as info:
            await api._admit_lag("bounded", parts)
        err = info.value
        assert err.code is ErrorCode.REPLICATION_LAG and err.http_status == 503
        assert err.details["rpo_ms"] == 1000 and err.details["lag_ms"] >= 5_000
        assert "bounded/2" in err.message
    assert count(metrics, "refuse") == 2


async def test_unknown_partitions_and_a_follower_are_admitted() -> None:
    api, _, metrics = make_api()
    await api._admit_lag("bounded", [0, 1, 2])  # nothing committed: the shipper knows none
    api.node.geo.shipper = None  # not the leader: no shipper (the leader decides)
    await api._admit_lag("bounded", [0])
    assert count(metrics, "slow") == count(metrics, "refuse") == 0


class Leases:
    """The two questions the admission asks the metadata host, for regions named lost."""

    def __init__(self, lost: set[str]) -> None:
        self.lost = lost
        self.state = self

    def lease(self, region: str) -> object:
        return object()

    def lease_expired_for_observer(self, region: str) -> bool:
        return region in self.lost


async def test_a_region_whose_lease_expired_does_not_hold_appends_back() -> None:
    api, shipper, metrics = make_api()
    committed(shipper, "bounded", 2, 5_000)  # neither b nor c acknowledged it
    api.node.meta = Leases({"c"})  # c is lost; b is alive and behind: still refused
    with pytest.raises(ApiError):
        await api._admit_lag("bounded", [2])
    api.node.meta = Leases({"b", "c"})  # both lost: no live survivor to be behind
    await api._admit_lag("bounded", [2])
    assert count(metrics, "refuse") == 1
