"""Proves the pure parts of the quarantine and backpressure work: a topology stream's
``rpo_ms`` is parsed, bounded, written back by ``to_toml`` and kept by ``subset``; ``geostore
quarantine`` reads ``STREAM[/P]`` targets, and cuts an export into re-append requests by run
(dense seqs of one origin) and ``--batch`` deterministically, each request named by a producer
id of its run and its index in the run, with ids that fit the server's cap; and ``quarantine
clear`` refuses without ``--yes`` before calling anything, naming the export to run first."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import pytest

from geostore.cli.cmd_quarantine import add_arguments, chunks_of, parse_target, run
from geostore.config import parse_topology
from geostore.errors import ApiError, ConfigError

BASE = """
[[regions]]
name = "a"
nodes = ["a1"]
[[regions]]
name = "b"
nodes = ["b1"]
[[links]]
a = "a"
b = "b"
rtt_ms_p50 = 10.0
[[streams]]
name = "s"
partitions = 2
"""


def test_topology_rpo_ms_is_parsed_bounded_and_round_trips() -> None:
    topo = parse_topology(BASE + "rpo_ms = 250\n", "t.toml")
    assert topo.stream("s").rpo_ms == 250
    assert parse_topology(BASE, "t.toml").stream("s").rpo_ms is None
    again = parse_topology(topo.to_toml(), "again.toml")
    assert again.stream("s").rpo_ms == 250 and again.streams == topo.streams
    assert topo.subset(["a"]).stream("s").rpo_ms == 250
    assert topo.to_dict()["streams"][0]["rpo_ms"] == 250
    for bad in ("0", "-5", "true", "1.5", '"100"', "86400001"):
        with pytest.raises(ConfigError, match=r"streams\[0\]\.rpo_ms"):
            parse_topology(BASE + f"rpo_ms = {bad}\n", "t.toml")


def test_targets() -> None:
    assert parse_target(None) == (None, None)
    assert parse_target("s") == ("s", None)
    assert parse_target("s/3") == ("s", 3)
    for bad in ("s/x", "/3", "s/-1"):
        with pytest.raises(ApiError):
            parse_target(bad)


def event(seq: int, *, epoch: int = 1, pid: str | None = None, pseq: int | None = None,
          stream: str = "s", partition: int = 0) -> dict[str, Any]:  # fmt: skip
    return {
        "stream": stream, "partition": partition, "seq": seq, "epoch": epoch,
        "superseded_by": epoch + 1, "fork_seq": 3, "producer_id": pid, "producer_seq": pseq,
        "ts": seq, "key": None, "body": {"seq": seq},
    }  # fmt: skip


async def _iter(events: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for e in events:
        yield e


async def cut(events: list[dict[str, Any]], batch: int) -> list[tuple[str, int, list[int]]]:
    return [
        (c.producer_id("r"), c.index, [e["seq"] for e in c.events])
        async for c in chunks_of(_iter(events), batch)
    ]


async def test_an_export_is_cut_by_run_and_batch() -> None:
    events = (
        [event(s) for s in range(4, 9)]  # a producer-less run 4..8
        + [event(s, pid="p", pseq=7) for s in range(9, 11)]  # another origin: 9..10
        + [event(s, epoch=2) for s in range(5, 7)]  # a later failback of epoch 2: 5..6
        + [event(s, partition=1) for s in range(0, 2)]  # another partition
    )
    got = await cut(events, 2)
    assert got == [
        ("quarantine:r:s:0:1:4", 0, [4, 5]),
        ("quarantine:r:s:0:1:4", 1, [6, 7]),
        ("quarantine:r:s:0:1:4", 2, [8]),
        ("quarantine:r:s:0:1:9", 0, [9, 10]),
        ("quarantine:r:s:0:2:5", 0, [5, 6]),
        ("quarantine:r:s:1:1:0", 0, [0, 1]),
    ]
    assert await cut(events, 2) == got  # the same export, the same requests
    assert [len(x[2]) for x in await cut(events, 100)] == [5, 2, 2, 2]
    # a gap in seqs starts a new run even with the same origin
    assert [x[0] for x in await cut([event(4), event(6)], 10)] == [
        "quarantine:r:s:0:1:4",
        "quarantine:r:s:0:1:6",
    ]


async def test_long_names_get_a_digest_id_within_the_cap() -> None:
    long = "x" * 128
    (chunk,) = [c async for c in chunks_of(_iter([event(0, stream=long)]), 10)]
    pid = chunk.producer_id("r" * 128)
    assert pid.startswith("quarantine:") and len(pid.encode()) <= 256
    assert pid == chunk.producer_id("r" * 128) != chunk.producer_id("q" * 128)


def test_clear_refuses_without_yes_and_names_the_export(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # no server: a refusal must come before any call (the cluster folder does not exist)
    args = parser.parse_args(
        [
            "clear",
            "--cluster",
            "/nonexistent",
            "--region",
            "r1",
            "--stream",
            "s",
            "--partition",
            "1",
        ]
    )
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "without --yes" in err
    assert "geostore quarantine export --cluster /nonexistent --region r1 s/1" in err, err
    for bad in (["--partition", "1"], ["s", "--stream", "s"], ["--through-epoch", "-1"]):
        args = parser.parse_args(["clear", "--cluster", "/nonexistent", *bad, "--yes"])
        assert run(args) == 2
        assert "error" in capsys.readouterr().err
