"""The host with a SyncRunner (the runtime's fsync off the loop): a leader's AppendEntries leave
before its own fsync, but no append ack leaves, nothing is applied or acknowledged and no next
Ready is taken before the fsync completes; inputs that arrive meanwhile form the next Ready."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from geostore.ids import GroupId, LogIndex, NodeId
from geostore.node.raft_host import (
    Committed,
    HostConfig,
    ProposalOutcome,
    RaftHost,
    bootstrap_storage,
)
from geostore.raft.core import RaftConfig
from geostore.raft.messages import AppendEntries, AppendResponse, Message
from geostore.raft.records import Proposed, Role
from geostore.sim.machine import LogMachine
from geostore.storage.memory import MemoryHardStateStore, MemoryLogStore, MemorySnapshotStore

GROUP = GroupId("g")
IDS = [NodeId("a"), NodeId("b"), NodeId("c")]


class DeferredSync:
    """A runner whose fsync happens only when the test completes it (a slow storage thread)."""

    def __init__(self, log: MemoryLogStore) -> None:
        self.log = log
        self.waiting: list[Callable[[], None]] = []

    def start(self, done: Callable[[], None]) -> None:
        assert not self.waiting, "the host started a second sync before the first completed"
        self.waiting.append(done)

    def complete(self) -> bool:
        if not self.waiting:
            return False
        done = self.waiting.pop()
        self.log.sync()
        done()
        return True


class Node:
    def __init__(self, queue: deque[Message], nid: NodeId) -> None:
        self.queue = queue
        self.log = MemoryLogStore()
        self.hard = MemoryHardStateStore()
        assert bootstrap_storage(self.log, self.hard, IDS)
        self.host = RaftHost(
            RaftConfig(node_id=nid, group=GROUP, election_ticks=10, heartbeat_ticks=2),
            HostConfig(),
            self.log,
            self.hard,
            MemorySnapshotStore(),
            self,
            LogMachine(),
            random.Random(nid),
        )
        self.runner = DeferredSync(self.log)

    def send(self, peer: NodeId, msg: object) -> bool:
        if isinstance(msg, AppendResponse) and msg.success:
            assert self.log.durable_index() >= msg.match_index, "ack before fsync"
        self.queue.append(msg)  # type: ignore[arg-type]
        return True


def deliver(nodes: dict[NodeId, Node], queue: deque[Message]) -> None:
    while queue:
        msg = queue.popleft()
        nodes[msg.dst].host.step(msg)


def elected() -> tuple[dict[NodeId, Node], deque[Message], NodeId]:
    queue: deque[Message] = deque()
    nodes = {n: Node(queue, n) for n in IDS}
    for _ in range(300):
        for n in IDS:
            nodes[n].host.tick()
        deliver(nodes, queue)
        leaders = [n for n in IDS if nodes[n].host.status().role is Role.LEADER]
        if leaders:
            for _ in range(3):
                for n in IDS:
                    nodes[n].host.tick()
                deliver(nodes, queue)
            for n in IDS:
                nodes[n].host.sync_runner = nodes[n].runner
            return nodes, queue, leaders[0]
    raise AssertionError("no leader")


def test_leader_replicates_before_its_fsync_and_acks_only_after() -> None:
    nodes, queue, lead = elected()
    leader = nodes[lead]
    outcomes: list[ProposalOutcome] = []
    first = leader.host.propose(b"x", outcomes.append)
    assert isinstance(first, Proposed)
    # the AppendEntries left although the leader's own fsync has not completed
    assert leader.host.syncing and leader.log.durable_index() < first.index
    assert {m.dst for m in queue if isinstance(m, AppendEntries)} == set(IDS) - {lead}
    # a second proposal during the fsync waits in the core: no write, no new sync
    second = leader.host.propose(b"y", outcomes.append)
    assert isinstance(second, Proposed) and second.index == first.index + 1
    assert leader.log.last_index() == first.index
    deliver(nodes, queue)
    followers = [nodes[n] for n in IDS if n != lead]
    for f in followers:
        assert f.host.syncing
    assert not any(isinstance(m, AppendResponse) for m in queue), "ack before the fsync"
    for f in followers:
        assert f.runner.complete()
    assert sum(isinstance(m, AppendResponse) for m in queue) == 2
    deliver(nodes, queue)
    # a follower quorum has it, but the leader applies and answers only after its own fsync
    assert outcomes == []
    assert leader.runner.complete()
    assert outcomes == [Committed(first.index, first.term, first.index)]
    # the next Ready carried the proposal that came during the fsync
    assert leader.log.last_index() == second.index and leader.host.syncing
    for _ in range(20):
        progressed = any(nodes[n].runner.complete() for n in IDS)
        deliver(nodes, queue)
        for n in IDS:
            nodes[n].host.tick()
        if not progressed and len(outcomes) == 2:
            break
    assert outcomes[1] == Committed(second.index, second.term, second.index)
    for n in IDS:
        assert nodes[n].log.durable_index() >= LogIndex(second.index)
