"""The node host loop: persists before it sends, applies and answers proposals by (index, term)
(Committed, Lost, Unknown), serves ReadIndex reads once applied, snapshots and compacts, installs
a leader's snapshot, recovers from its stores after a crash, and its unsafe switches really skip
the fsync and the hard-state save."""

from __future__ import annotations

import random
from collections import deque

import pytest

from geostore.ids import GroupId, LogIndex, NodeId
from geostore.node.raft_host import (
    Committed,
    HostConfig,
    Lost,
    ProposalOutcome,
    RaftHost,
    ReadOutcome,
    ReadReady,
    bootstrap_storage,
)
from geostore.raft.core import RaftConfig
from geostore.raft.messages import AppendResponse, Message, VoteResponse
from geostore.raft.records import ConfChange, ConfChangeOp, Proposed, Rejected, Role
from geostore.raft.types import HardState
from geostore.sim.machine import LogMachine
from geostore.storage.memory import MemoryHardStateStore, MemoryLogStore, MemorySnapshotStore

GROUP = GroupId("g")
IDS = [NodeId("a"), NodeId("b"), NodeId("c")]


class Node:
    def __init__(self, cluster: Cluster, nid: NodeId, founder: bool) -> None:
        self.cluster = cluster
        self.nid = nid
        self.log = MemoryLogStore()
        self.hard = MemoryHardStateStore()
        self.snaps = MemorySnapshotStore()
        self.machine = LogMachine()
        if founder:
            assert bootstrap_storage(self.log, self.hard, IDS)
        self.host: RaftHost | None = None
        self.start()

    def start(self) -> None:
        self.machine = LogMachine()
        self.host = RaftHost(
            RaftConfig(node_id=self.nid, group=GROUP, election_ticks=10, heartbeat_ticks=2),
            self.cluster.host_config,
            self.log,
            self.hard,
            self.snaps,
            self,
            self.machine,
            random.Random(f"{self.nid}:{self.cluster.starts}"),
        )
        self.cluster.starts += 1

    def crash(self) -> None:
        self.host = None
        self.log.crash()

    def send(self, peer: NodeId, msg: object) -> bool:
        # The host contract: whatever a message acknowledges is durable when it leaves.
        if isinstance(msg, AppendResponse) and msg.success:
            assert self.log.durable_index() >= msg.match_index or self.cluster.unsafe
        if isinstance(msg, VoteResponse) and msg.granted and not msg.pre_vote:
            assert self.hard.load().vote == peer or self.cluster.unsafe
        self.cluster.queue.append(msg)  # type: ignore[arg-type]
        return True


class Cluster:
    def __init__(self, host_config: HostConfig | None = None, unsafe: bool = False) -> None:
        self.host_config = host_config or HostConfig()
        self.unsafe = unsafe
        self.queue: deque[Message] = deque()
        self.starts = 0
        self.cut: set[NodeId] = set()
        self.nodes = {n: Node(self, n, founder=True) for n in IDS}

    def host(self, nid: NodeId) -> RaftHost:
        h = self.nodes[nid].host
        assert h is not None
        return h

    def deliver(self) -> None:
        steps = 0
        while self.queue:
            msg = self.queue.popleft()
            node = self.nodes.get(msg.dst)
            if node is None or node.host is None or msg.dst in self.cut or msg.src in self.cut:
                continue
            node.host.step(msg)
            steps += 1
            assert steps < 100_000

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for nid in sorted(self.nodes):
                h = self.nodes[nid].host
                if h is not None:
                    h.tick()
            self.deliver()

    def leader(self) -> NodeId:
        for _ in range(200):
            leaders = [
                n
                for n in sorted(self.nodes)
                if self.nodes[n].host is not None
                and n not in self.cut
                and self.host(n).status().role is Role.LEADER
            ]
            if leaders:
                self.tick(3)  # let the new leader commit its no-op
                return leaders[0]
            self.tick()
        raise AssertionError("no leader")


def test_bootstrap_is_idempotent_and_puts_the_configuration_in_the_log() -> None:
    log, hard = MemoryLogStore(), MemoryHardStateStore()
    assert bootstrap_storage(log, hard, [NodeId("y"), NodeId("x")])
    assert not bootstrap_storage(log, hard, [NodeId("z")])
    assert log.last_index() == 2 and log.durable_index() == 2
    assert hard.load() == HardState(term=1, vote=None, commit=2)  # type: ignore[arg-type]
    changes = [ConfChange.decode(e.data) for e in log.entries(LogIndex(1), LogIndex(3))]
    assert changes == [ConfChange(ConfChangeOp.ADD_VOTER, n) for n in (NodeId("x"), NodeId("y"))]


def test_proposal_is_committed_applied_and_acknowledged() -> None:
    c = Cluster()
    lead = c.leader()
    outcomes: list[ProposalOutcome] = []
    result = c.host(lead).propose(b"v1", outcomes.append)
    assert isinstance(result, Proposed)
    c.deliver()
    c.tick(2)
    assert outcomes == [Committed(result.index, result.term, result.index)]
    for n in IDS:
        assert c.nodes[n].machine.values[result.index] == "v1"


def test_follower_rejects_with_leader_hint() -> None:
    c = Cluster()
    lead = c.leader()
    follower = next(n for n in IDS if n != lead)
    result = c.host(follower).propose(b"x")
    assert isinstance(result, Rejected) and result.leader_hint == lead


def test_read_index_served_after_apply() -> None:
    c = Cluster()
    lead = c.leader()
    c.host(lead).propose(b"v1")
    reads: list[ReadOutcome] = []
    assert c.host(lead).read(reads.append) is None
    c.deliver()
    c.tick(3)
    assert len(reads) == 1 and isinstance(reads[0], ReadReady)
    assert c.host(lead).applied >= reads[0].index
    follower = next(n for n in IDS if n != lead)
    assert isinstance(c.host(follower).read(reads.append), Rejected)


def test_overwritten_proposal_is_lost() -> None:
    c = Cluster()
    old = c.leader()
    c.cut = {old}
    outcomes: list[ProposalOutcome] = []
    stranded = c.host(old).propose(b"stranded", outcomes.append)
    assert isinstance(stranded, Proposed)
    new = c.leader()
    assert new != old
    for i in range(3):
        c.host(new).propose(f"w{i}".encode())
    c.tick(5)
    c.cut = set()
    c.tick(30)
    assert outcomes == [Lost(stranded.index, stranded.term)]
    assert "stranded" not in c.nodes[old].machine.values.values()


def test_snapshot_compaction_and_install_on_a_lagging_follower() -> None:
    c = Cluster(HostConfig(snapshot_every_entries=5, snapshot_chunk_bytes=32))
    lead = c.leader()
    lagging = next(n for n in IDS if n != lead)
    c.cut = {lagging}
    for i in range(40):
        c.host(lead).propose(f"value-{i}".encode())
        c.tick()
    assert c.nodes[lead].log.first_index() > 10  # compacted
    assert c.nodes[lead].snaps.latest() is not None
    c.cut = set()
    c.tick(40)
    assert c.nodes[lagging].machine.values == c.nodes[lead].machine.values
    assert c.nodes[lagging].snaps.latest() is not None  # it got the leader's snapshot


def test_restart_recovers_from_stores() -> None:
    c = Cluster(HostConfig(snapshot_every_entries=4))
    lead = c.leader()
    for i in range(10):
        c.host(lead).propose(f"v{i}".encode())
        c.tick()
    node = c.nodes[lead]
    before = dict(node.machine.values)
    node.crash()
    node.start()
    c.tick(30)
    assert node.machine.values == before or set(before.items()) <= set(node.machine.values.items())
    assert node.host is not None and node.host.status().term >= 2


def test_unsafe_ack_before_fsync_never_syncs() -> None:
    c = Cluster(HostConfig(unsafe_ack_before_fsync=True), unsafe=True)
    lead = c.leader()
    for i in range(5):
        c.host(lead).propose(f"v{i}".encode())
    c.tick(3)
    log = c.nodes[lead].log
    assert log.last_index() > 5
    assert log.durable_index() == len(IDS)  # only the bootstrap entries ever reached the disk
    assert log.crash() == 0 and log.last_index() == len(IDS)


def test_unsafe_forget_vote_never_saves_hard_state() -> None:
    c = Cluster(HostConfig(unsafe_forget_vote=True), unsafe=True)
    c.leader()
    for n in IDS:
        assert c.nodes[n].hard.load() == HardState(term=1, vote=None, commit=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(3))
def test_membership_change_through_the_host(seed: int) -> None:
    c = Cluster()
    lead = c.leader()
    newcomer = NodeId("d")
    c.nodes[newcomer] = Node(c, newcomer, founder=False)
    result = c.host(lead).propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, newcomer))
    assert isinstance(result, Proposed)
    for i in range(5 + seed):
        c.host(lead).propose(f"v{i}".encode())
    c.tick(20)
    assert newcomer in c.host(lead).applied_conf.learners
    assert c.nodes[newcomer].machine.values == c.nodes[lead].machine.values
    assert newcomer in c.host(newcomer).applied_conf.learners


def test_batch_proposal_resolves_once() -> None:
    c = Cluster()
    lead = c.leader()
    outcomes: list[ProposalOutcome] = []
    result = c.host(lead).propose_batch([b"x1", b"x2", b"x3"], outcomes.append)
    assert isinstance(result, Proposed) and result.last_index == result.index + 2
    c.tick(3)
    assert outcomes == [Committed(result.last_index, result.term, result.last_index)]
    values = c.nodes[lead].machine.values
    assert [values[i] for i in range(result.index, result.last_index + 1)] == ["x1", "x2", "x3"]
