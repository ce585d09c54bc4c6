"""Proves the metadata leader's membership decisions keep every region's vote on a live node:
removing a live voter whose region's other voter is silent (a ``node remove`` interrupted
after the promotion, and the promoted node died since) is refused with 409 unless a live,
caught-up learner of the region takes the vote first; a silent voter may still leave; a
learner joins only the region its address was recorded for; and every decision (membership
changes, a new leader registering the topology's regions) is taken on a state that applied
everything committed before, so a whole region list it proposes drops no node added earlier.
The node runtime is real (files); the Raft group's status and its configuration changes
are stood in for, because a lone process cannot lead a group of three regions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from geostore.config import config_from_dict, topology_from_dict
from geostore.errors import ApiError, ErrorCode
from geostore.ids import LogIndex, NodeId, RegionId, Term
from geostore.raft.records import (
    ConfChange,
    ConfChangeOp,
    ProgressState,
    ProgressStatus,
    Role,
    Status,
)
from geostore.raft.types import ConfState
from geostore.runtime.meta import MetaHost
from geostore.runtime.node import NodeRuntime
from geostore.store.meta import MetaSetRegion

TOPOLOGY = topology_from_dict(
    {
        "name": "rules",
        "regions": [
            {
                "name": "a",
                "nodes": [
                    {"id": "a1", "host": "127.0.0.1", "port": 1},
                    {"id": "a2", "host": "127.0.0.1", "port": 2},
                    {"id": "a3", "host": "127.0.0.1", "port": 3},
                ],
            },
            {"name": "b", "nodes": [{"id": "b1", "host": "127.0.0.1", "port": 4}]},
            {"name": "c", "nodes": [{"id": "c1", "host": "127.0.0.1", "port": 5}]},
        ],
        "links": [
            {"a": "a", "b": "b", "rtt_ms_p50": 10.0},
            {"a": "a", "b": "c", "rtt_ms_p50": 10.0},
            {"a": "b", "b": "c", "rtt_ms_p50": 10.0},
        ],
    }
)
COMMIT = LogIndex(50)


class StandIn:
    """The leader b1's view of the metadata group; applies configuration changes at once."""

    def __init__(self, voters: set[str], learners: set[str], silent: set[str]) -> None:
        self.conf = ConfState(
            frozenset(NodeId(n) for n in voters), frozenset(NodeId(n) for n in learners)
        )
        self.silent = silent
        self.changes: list[str] = []
        self.proposed: list[object] = []

    def status(self) -> Status:
        progress = {
            # lease renewals commit all the time: a silent node falls behind
            n: ProgressStatus(
                LogIndex(COMMIT - 5 if n in self.silent else COMMIT),
                LogIndex(COMMIT + 1),
                ProgressState.REPLICATE,
                n not in self.silent,
                0,
            )
            for n in self.conf.voters | self.conf.learners
            if n != "b1"
        }
        z = LogIndex(0)
        return Status(NodeId("b1"), Role.LEADER, Term(2), None, NodeId("b1"), COMMIT, COMMIT,
                      z, COMMIT, self.conf, None, False, progress)  # fmt: skip

    async def conf_change(self, change: ConfChange) -> None:
        v, lr = set(self.conf.voters), set(self.conf.learners)
        if change.op is ConfChangeOp.PROMOTE:
            lr.discard(change.node)
            v.add(change.node)
        elif change.op is ConfChangeOp.REMOVE:
            v.discard(change.node)
            lr.discard(change.node)
        self.conf = ConfState(frozenset(v), frozenset(lr))
        self.changes.append(f"{change.op.name.lower()} {change.node}")


@pytest.fixture
def leader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    node = NodeRuntime(TOPOLOGY, NodeId("b1"), config_from_dict({}), str(tmp_path), bootstrap=True)
    try:
        meta = node.meta
        assert meta is not None

        def stand_in(voters: set[str], learners: set[str], silent: set[str]) -> StandIn:
            fake = StandIn(voters, learners, silent)
            # the leader's watcher saw the silent ones last long ago
            meta._last_active.update({NodeId(n): time.monotonic() - 1000.0 for n in silent})
            monkeypatch.setattr(meta.group, "status", fake.status)
            monkeypatch.setattr(meta, "_conf_change", fake.conf_change)

            async def record_list_change(cmd: object, timeout_s: float = 0.0) -> None:
                fake.proposed.append(cmd)

            monkeypatch.setattr(meta, "propose_local", record_list_change)

            def done(value: Any) -> asyncio.Future[Any]:
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                fut.set_result(value)
                return fut

            # everything committed is applied here already
            monkeypatch.setattr(meta.group, "read_barrier", lambda: done(COMMIT))
            monkeypatch.setattr(meta.group, "wait_applied", lambda index: done(None))
            return fake

        yield meta, stand_in
    finally:
        for group in node.groups.values():
            group.close()


async def test_a_live_voter_does_not_leave_its_vote_to_a_silent_one(leader: Any) -> None:
    meta, stand_in = leader
    assert isinstance(meta, MetaHost)
    # interrupted remove of a1: a2 was promoted, then died; no learner of a answers
    fake = stand_in({"a1", "a2", "b1", "c1"}, {"a3"}, silent={"a2", "a3"})
    with pytest.raises(ApiError) as err:
        await meta.change_member("remove", NodeId("a1"), None)
    assert err.value.code is ErrorCode.CONFLICT
    assert fake.changes == [] and NodeId("a1") in fake.conf.voters
    # a live, caught-up learner of a takes the vote first; then a1 leaves
    fake.silent = {"a2"}
    meta._last_active.pop(NodeId("a3"))
    await meta.change_member("remove", NodeId("a1"), None)
    assert fake.changes == ["promote a3", "remove a1"]


async def test_a_silent_voter_may_leave_beside_another_voter_of_its_region(
    leader: Any,
) -> None:
    meta, stand_in = leader
    fake = stand_in({"a1", "a2", "b1", "c1"}, set(), silent={"a1"})
    await meta.change_member("remove", NodeId("a1"), None)
    assert fake.changes == ["remove a1"]
    # and the interrupted remove, rerun while both voters of a answer: no second promotion
    fake = stand_in({"a1", "a2", "b1", "c1"}, {"a3"}, silent=set())
    await meta.change_member("remove", NodeId("a2"), None)
    assert fake.changes == ["remove a2"]


async def test_a_learner_joins_only_the_region_its_address_was_given_for(leader: Any) -> None:
    """The region recorded with the node's address (``/v1/admin/peers``, what the sender checks
    and geo destinations follow) and its metadata region list must not disagree."""
    meta, stand_in = leader
    fake = stand_in({"a1", "b1", "c1"}, set(), silent=set())
    meta.node.add_peer(NodeId("x9"), "http://127.0.0.1:9", RegionId("c"))
    with pytest.raises(ApiError) as err:
        await meta.change_member("add_learner", NodeId("x9"), "a")
    assert err.value.code is ErrorCode.CONFLICT
    assert fake.changes == []
    await meta.change_member("add_learner", NodeId("x9"), "c")
    assert fake.changes == ["add_learner x9"]


async def test_decisions_read_everything_committed_before(
    leader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new metadata leader (the CLI retries at once after a leader handed over) may not have
    applied everything committed under the old one: a region list computed from its state then
    would drop a node added just before. The leader first confirms its commit index (ReadIndex)
    and applies up to it."""
    meta, stand_in = leader
    fake = stand_in({"a1", "b1", "c1"}, set(), silent=set())
    meta.node.add_peer(NodeId("a8"), "http://127.0.0.1:8", RegionId("a"))
    base = meta.state.applied_index
    meta.state.apply(LogIndex(base + 1), MetaSetRegion(RegionId("a"), (NodeId("a1"),)))
    committed = MetaSetRegion(RegionId("a"), (NodeId("a1"), NodeId("a9")))  # not applied yet

    def read_barrier() -> asyncio.Future[LogIndex]:
        fut: asyncio.Future[LogIndex] = asyncio.get_running_loop().create_future()
        fut.set_result(LogIndex(base + 2))
        return fut

    def wait_applied(index: int) -> asyncio.Future[None]:
        if meta.state.applied_index < index:
            meta.state.apply(LogIndex(base + 2), committed)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    monkeypatch.setattr(meta.group, "read_barrier", read_barrier)
    monkeypatch.setattr(meta.group, "wait_applied", wait_applied)
    await meta.change_member("add_learner", NodeId("a8"), "a")
    assert fake.proposed == [MetaSetRegion(RegionId("a"), ("a1", "a9", "a8"))], fake.proposed


async def test_a_new_leader_registers_only_regions_that_are_not_registered(
    leader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the topology's regions a new leader registers: a region registered (with
    a node added since) under the previous leader, not yet applied here, is left alone."""
    meta, stand_in = leader
    fake = stand_in({"a1", "b1", "c1"}, set(), silent=set())
    base = meta.state.applied_index
    lists = {"a": ("a1", "a2", "a3", "a9"), "b": ("b1",), "c": ("c1",)}

    def read_barrier() -> asyncio.Future[LogIndex]:
        fut: asyncio.Future[LogIndex] = asyncio.get_running_loop().create_future()
        fut.set_result(LogIndex(base + len(lists)))
        return fut

    def wait_applied(index: int) -> asyncio.Future[None]:
        for i, (r, ns) in enumerate(lists.items()):
            if meta.state.applied_index < base + i + 1:
                cmd = MetaSetRegion(RegionId(r), tuple(NodeId(n) for n in ns))
                meta.state.apply(LogIndex(base + i + 1), cmd)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    monkeypatch.setattr(meta.group, "read_barrier", read_barrier)
    monkeypatch.setattr(meta.group, "wait_applied", wait_applied)
    await meta._seed()
    assert fake.proposed == [], fake.proposed
    assert meta.state.regions()[RegionId("a")] == lists["a"]
