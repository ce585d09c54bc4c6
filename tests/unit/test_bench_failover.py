"""bench/failover.py's arithmetic: the shorter-lease config is a valid node config, the client's
largest gap around a move, and the result's pause percentiles, RPO bound and violation
counts computed from given moves and failovers (the table flags an RPO over its bound)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench.failover import Ack, FailoverRow, Load, MoveRow, lease_config, tables, to_result
from geostore.config import parse_config


def test_the_lease_config_is_a_valid_node_config() -> None:
    for lease_ms in (1000, 3000, 10_000):
        geo = parse_config(lease_config(lease_ms)).geo
        assert geo.lease_ms == lease_ms
        assert geo.lease_renew_ms + geo.lease_drift_ms < geo.lease_ms


def test_largest_gap_spans_the_last_ack_before_the_move_to_the_first_after() -> None:
    load = Load(cluster=None, rate=10.0, homes={0: "a"}, stop=asyncio.Event())  # type: ignore[arg-type]
    for t in (1.0, 1.1, 1.2, 2.0, 2.05, 9.0):
        load.acks.append(Ack(0, len(load.acks), 1, "v", t))
    load.acks.append(Ack(1, 0, 1, "other partition", 1.5))
    assert load.largest_gap_ms(0, 1.5, 1.9) == pytest.approx(800.0)  # 1.2 -> 2.0
    assert load.largest_gap_ms(0, 1.15, 2.01) == pytest.approx(800.0)  # acks inside count
    assert load.largest_gap_ms(0, 2.06, 2.5) == pytest.approx(6950.0)  # 2.05 -> 9.0
    assert load.largest_gap_ms(0, 0.5, 0.6) == 0.0  # nothing before: no gap to measure
    assert load.largest_gap_ms(1, 3.0, 3.5) == 0.0


def _move(pause_ms: float, fencing_ms: float) -> MoveRow:
    pauses = {"fencing": fencing_ms, "draining": pause_ms - fencing_ms - 5, "bumping": 5.0}
    return MoveRow(0, "a", "b", 2, 10, pauses, pause_ms, pause_ms + 50, pause_ms + 80, 3)


def _failover(rpo_ms: float, lag_p99_ms: float | None) -> FailoverRow:
    return FailoverRow(1, "a", "b", 0, 1, 2, 40, 5, rpo_ms, lag_p99_ms, 400.0, 30.0, 5, rpo_ms, 10_500,
                       11_000, 4_000, 5)  # fmt: skip


def test_result_percentiles_bound_and_checks() -> None:
    args = argparse.Namespace(topology="regions/x.toml", moves=3, failovers=2, rate=20.0,
                              lease_ms=0)  # fmt: skip
    moves = [_move(300, 100), _move(500, 200), _move(2000, 1500)]
    fos = [_failover(120.0, 50.0), _failover(180.0, 50.0)]
    check = {"missing": 0, "served_orphans": 1, "gappy_partitions": 0, "acked": 500}
    result = to_result(args, moves, fos, [_move(400, 100)], check)
    got = {m.name: m for m in result.metrics}
    assert got["move_pause_p50_ms"].value == 500 and got["move_pause_p50_ms"].met
    assert got["move_pause_p99_ms"].value == 2000
    assert got["move_fencing_p50_ms"].value == 200
    assert got["move_moving_503"].value == 9
    # the bound is lag p99 + 100 ms: 180 is 30 ms over it
    assert got["failover_rpo_over_bound_ms_max"].value == pytest.approx(30.0)
    assert got["failover_rpo_over_bound_ms_max"].met is False
    assert got["failover_lost_not_suffix"].met is False and got["acked_lost_outside_failovers"].met
    assert not result.to_dict()["targets_met"]
    text = tables(moves, fos, [])
    assert "yes" in text and "NO" in text
    # without a lag figure the bound is the strictest: 100 ms
    unknown = to_result(args, moves, [_failover(500.0, None)], [], check)
    assert {m.name: m for m in unknown.metrics}["failover_rpo_over_bound_ms_max"].value == 400.0
