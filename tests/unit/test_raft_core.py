"""The Raft core keeps the paper's rules, each re-derived here as a small direct test.

Elections (one vote per term, the election restriction, pre-vote, the leader lease),
replication (the consistency check, truncation only on conflict, the commit rules of
Figure 8 and of followers), persist-before-count, the Ready contract, batching and flow
control bounds, typed rejections, and that malformed input is ignored rather than raised.
"""

from __future__ import annotations

import random

import pytest

from geostore.ids import GroupId, LogIndex, NodeId, Term
from geostore.raft.core import (
    ConfChange,
    ConfChangeOp,
    Proposed,
    RaftConfig,
    RaftCore,
    Ready,
    Rejected,
    RejectReason,
    Role,
)
from geostore.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from geostore.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from geostore.storage.memory import MemoryLogStore
from tests.scenarios.harness import GROUP, Cluster, nid

A, B, C = nid(1), nid(2), nid(3)
T = Term
I = LogIndex  # noqa: E741


def core(
    node: NodeId = A,
    *,
    voters: tuple[NodeId, ...] = (A, B, C),
    hs: HardState | None = None,
    entries: list[Entry] | None = None,
    wiped: bool = False,
    **kw: object,
) -> RaftCore:
    store = MemoryLogStore()
    if entries:
        store.append(entries)
        store.sync()
    cfg = RaftConfig(node_id=node, group=GROUP, **kw)  # type: ignore[arg-type]
    return RaftCore(
        cfg,
        store,
        hs or HardState(),
        ConfState(voters=frozenset(voters)),
        random.Random(1),
        wiped=wiped,
    )


def ent(term: int, index: int, data: bytes = b"") -> Entry:
    return Entry(T(term), I(index), EntryKind.NORMAL, data)


def persist(c: RaftCore, rd: Ready) -> None:
    """The host's part of the contract: write the entries to the core's log store."""
    store = c._log.storage
    assert isinstance(store, MemoryLogStore)
    if rd.entries:
        store.append(rd.entries)
    store.sync()


def drain(c: RaftCore) -> list[object]:
    """Run a minimal host loop; returns the messages it would have sent."""
    out: list[object] = []
    while c.has_ready():
        rd = c.ready()
        persist(c, rd)
        out.extend(rd.messages)
        c.advance(rd)
    return out


def vote_req(
    src: NodeId,
    term: int,
    last_index: int,
    last_term: int,
    *,
    pre: bool = False,
    transfer: bool = False,
    dst: NodeId = A,
) -> RequestVote:
    return RequestVote(GROUP, src, dst, T(term), I(last_index), T(last_term), pre, transfer)


# -- elections ---------------------------------------------------------------------------
def test_a_node_votes_at_most_once_per_term_and_persists_the_vote_with_it() -> None:
    c = core(pre_vote=False)
    c.step(vote_req(B, 1, 0, 0))
    rd = c.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == B and rd.hard_state.term == 1
    assert rd.must_sync  # the vote must be fsynced before the reply leaves
    assert [type(m) for m in rd.messages] == [VoteResponse]
    assert rd.messages[0].granted  # type: ignore[union-attr]
    c.advance(rd)
    c.step(vote_req(C, 1, 0, 0))
    (resp,) = drain(c)
    assert isinstance(resp, VoteResponse) and not resp.granted
    c.step(vote_req(B, 1, 0, 0))  # a retry from the same candidate is granted again
    (resp,) = drain(c)
    assert isinstance(resp, VoteResponse) and resp.granted


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [(2, 1, False), (3, 1, True), (4, 1, True), (1, 2, True), (9, 0, False)],
)
def test_votes_go_only_to_candidates_at_least_as_up_to_date(
    last_index: int, last_term: int, granted: bool
) -> None:
    c = core(entries=[ent(1, 1), ent(1, 2), ent(1, 3)], hs=HardState(T(1), None, I(0)))
    c.step(vote_req(B, 2, last_index, last_term))
    (resp,) = drain(c)
    assert isinstance(resp, VoteResponse) and resp.granted is granted


def test_a_higher_term_turns_a_leader_into_a_follower_and_clears_its_vote() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    a = cl.nodes[A].c
    a.step(AppendResponse(GROUP, B, A, T(7), False, I(0), I(0), T(0)))
    assert a.role is Role.FOLLOWER and a.term == 7 and a.vote is None


def test_pre_vote_changes_nobodys_term_or_vote() -> None:
    c = core(hs=HardState(T(3), A, I(0)), check_quorum=False)
    c.step(vote_req(B, 4, 0, 0, pre=True))
    (resp,) = drain(c)
    assert isinstance(resp, VoteResponse) and resp.granted and resp.pre_vote and resp.term == 4
    assert (c.term, c.vote) == (3, A)
    cand = core(B)
    cand.campaign()
    assert cand.role is Role.PRE_CANDIDATE and cand.term == 0 and cand.vote is None


def test_followers_with_a_live_leader_ignore_vote_requests_unless_transferring() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    b = cl.nodes[B].c
    b.step(vote_req(C, 5, 99, 9, dst=B))
    assert b.term == 1 and not b.has_ready()
    b.step(vote_req(C, 5, 99, 9, transfer=True, dst=B))
    (resp,) = drain(b)
    assert isinstance(resp, VoteResponse) and resp.granted and b.term == 5


def test_randomized_election_timeouts_lie_in_one_to_two_timeouts() -> None:
    seen = set()
    for seed in range(40):
        c = RaftCore(
            RaftConfig(node_id=A, group=GROUP, election_ticks=10, pre_vote=False),
            MemoryLogStore(),
            HardState(),
            ConfState(voters=frozenset({A, B, C})),
            random.Random(seed),
        )
        ticks = 0
        while c.role is Role.FOLLOWER:
            c.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 3


def test_learners_and_removed_or_wiped_nodes_never_campaign() -> None:
    learner = RaftCore(
        RaftConfig(node_id=C, group=GROUP),
        MemoryLogStore(),
        HardState(),
        ConfState(voters=frozenset({A, B}), learners=frozenset({C})),
        random.Random(1),
    )
    outsider = core(nid(9))
    wiped = core(wiped=True)
    for c in (learner, outsider, wiped):
        for _ in range(100):
            c.tick()
        c.campaign()
        assert c.role is Role.FOLLOWER and c.term == 0
    wiped.step(vote_req(B, 1, 5, 5))
    (resp,) = drain(wiped)
    assert isinstance(resp, VoteResponse) and not resp.granted


# -- replication --------------------------------------------------------------------------
def leader_with(entries_count: int, **kw: object) -> tuple[Cluster, RaftCore]:
    cl = Cluster([A, B, C], config=lambda n: RaftConfig(node_id=n, group=GROUP, **kw))  # type: ignore[arg-type]
    cl.elect(A)
    a = cl.nodes[A].c
    for i in range(entries_count):
        a.propose(f"e{i}".encode())
    return cl, a


def test_follower_rejects_on_a_missing_or_mismatched_previous_entry_with_a_hint() -> None:
    c = core(B, entries=[ent(1, 1), ent(2, 2), ent(2, 3)], hs=HardState(T(3), None, I(1)))
    c.step(AppendEntries(GROUP, A, B, T(3), I(5), T(3), (), I(0)))  # beyond our log
    (r1,) = drain(c)
    assert isinstance(r1, AppendResponse) and not r1.success
    assert (r1.match_index, r1.reject_hint_index, r1.reject_hint_term) == (5, 3, 2)
    c.step(AppendEntries(GROUP, A, B, T(3), I(3), T(1), (), I(0)))  # term differs at 3
    (r2,) = drain(c)
    assert isinstance(r2, AppendResponse) and not r2.success
    assert (r2.reject_hint_index, r2.reject_hint_term) == (1, 1)  # skip the whole term 2


def test_follower_truncates_only_from_the_first_conflicting_entry() -> None:
    c = core(B, entries=[ent(1, 1), ent(1, 2), ent(1, 3)], hs=HardState(T(2), None, I(1)))
    # a stale message whose entries we already hold: no truncation
    c.step(AppendEntries(GROUP, A, B, T(2), I(1), T(1), (ent(1, 2),), I(1)))
    rd = c.ready()
    assert rd.entries == ()
    c.advance(rd)
    assert c.status().last_index == 3
    # a conflict at 3 replaces from 3 on
    c.step(AppendEntries(GROUP, A, B, T(2), I(1), T(1), (ent(1, 2), ent(2, 3)), I(1)))
    rd = c.ready()
    assert rd.entries == (ent(2, 3),)


def test_follower_commit_is_bounded_by_the_last_new_entry() -> None:
    c = core(B, entries=[ent(1, 1), ent(1, 2), ent(1, 3), ent(1, 4)], hs=HardState(T(1), A, I(0)))
    # leader commit 9, but this message only vouches for entries through 2
    c.step(AppendEntries(GROUP, A, B, T(1), I(1), T(1), (ent(1, 2),), I(9)))
    assert c.status().commit == 2


def test_leader_commits_only_entries_of_its_term_by_counting() -> None:
    # leader of term 3 holding an entry of term 1 at index 2 that both followers acknowledge
    c = core(entries=[ent(1, 1), ent(1, 2)], hs=HardState(T(2), None, I(1)), pre_vote=False)
    c.campaign()
    for v in (B, C):
        c.step(VoteResponse(GROUP, v, A, T(3), True, False))
    assert c.role is Role.LEADER
    rd = c.ready()  # the no-op 3/3 is handed out, not yet persisted
    c.step(AppendResponse(GROUP, B, A, T(3), True, I(2), I(0), T(0)))
    c.step(AppendResponse(GROUP, C, A, T(3), True, I(2), I(0), T(0)))
    assert c.status().commit == 1  # 2/1 is on all three, but is of an old term
    persist(c, rd)
    c.advance(rd)
    c.step(AppendResponse(GROUP, B, A, T(3), True, I(3), I(0), T(0)))
    assert c.status().commit == 3  # the no-op commits, and 2/1 with it


def test_leader_counts_itself_only_after_the_host_persisted() -> None:
    cl, a = leader_with(0)
    cl.crash(C)
    a.propose(b"x")
    rd = a.ready()
    b = cl.nodes[B].c
    for m in rd.messages:
        if m.dst == B:
            b.step(m)
    b_rd = b.ready()
    cl.nodes[B].store.append(b_rd.entries)
    for m in b_rd.messages:
        a.step(m)
    b.advance(b_rd)
    assert a.status().commit == 1  # B acknowledged, the leader has not persisted yet
    cl.nodes[A].store.append(rd.entries)
    a.advance(rd)
    assert a.status().commit == 2


def test_appends_respect_entry_and_byte_limits_and_the_inflight_window() -> None:
    _cl, a = leader_with(0, max_entries_per_msg=3, max_bytes_per_msg=25, max_inflight_msgs=2)
    for i in range(20):
        a.propose(b"0123456789" if i % 2 else b"x")
    rd = a.ready()
    apps = [m for m in rd.messages if isinstance(m, AppendEntries) and m.dst == B]
    assert len(apps) == 2  # the window
    for m in apps:
        assert 1 <= len(m.entries) <= 3
        assert sum(len(e.data) for e in m.entries) <= 25 or len(m.entries) == 1
    persist(a, rd)
    a.advance(rd)
    assert a.status().progress[B].inflight == 2


def test_a_lost_window_is_resent_after_a_later_heartbeat_round_is_answered() -> None:
    _cl, a = leader_with(0, max_entries_per_msg=1, max_inflight_msgs=4)
    a.propose(b"x")
    drain(a)  # the AppendEntries are lost
    assert a.status().progress[B].inflight == 1
    a.tick()
    hb = [m for m in drain(a) if isinstance(m, Heartbeat) and m.dst == B]
    a.step(HeartbeatResponse(GROUP, B, A, T(1), hb[0].read_seq))
    resent = [m for m in drain(a) if isinstance(m, AppendEntries) and m.dst == B]
    assert resent and resent[0].entries[0].data == b"x"


@pytest.mark.parametrize("lazy", [False, True])
def test_a_caught_up_follower_learns_the_commit_at_once_or_lazily_at_the_next_tick(
    lazy: bool,
) -> None:
    _cl, a = leader_with(0, lazy_commit=lazy, heartbeat_ticks=3, election_ticks=30)
    a.propose(b"x")
    rd = a.ready()
    persist(a, rd)
    a.advance(rd)
    last = a.status().last_index
    a.step(AppendResponse(GROUP, B, A, T(1), True, I(last), I(0), T(0)))
    assert a.status().commit == last
    to_b = [m for m in drain(a) if isinstance(m, AppendEntries) and m.dst == B]
    if not lazy:
        assert [(m.entries, m.commit) for m in to_b] == [((), last)]
        return
    assert to_b == []  # no message of its own under load ...
    a.tick()  # ... the next tick (not a heartbeat tick) tells it, anchored at its match
    to_b = [m for m in drain(a) if isinstance(m, AppendEntries) and m.dst == B]
    assert [(m.prev_index, m.entries, m.commit) for m in to_b] == [(last, (), last)]
    a.tick()  # told once
    assert not [m for m in drain(a) if isinstance(m, AppendEntries) and m.dst == B]
    # C never answered: it holds nothing committed, so it gets no commit-only message, and
    # new entries still go out at once, carrying the commit index
    a.propose(b"y")
    to_b = [m for m in drain(a) if isinstance(m, AppendEntries) and m.dst == B]
    assert len(to_b) == 1 and to_b[0].entries[0].data == b"y" and to_b[0].commit == last


# -- host requests -----------------------------------------------------------------------
def test_followers_reject_requests_with_the_leader_hint() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    b = cl.nodes[B].c
    assert b.propose(b"x") == Rejected(RejectReason.NOT_LEADER, A)
    assert b.read_index(b"r") == Rejected(RejectReason.NOT_LEADER, A)
    assert b.transfer_leadership(C) == Rejected(RejectReason.NOT_LEADER, A)
    cc = ConfChange(ConfChangeOp.REMOVE, C)
    assert b.propose_conf_change(cc) == Rejected(RejectReason.NOT_LEADER, A)


def test_proposals_return_index_and_term_and_batches_span_indexes() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    a = cl.nodes[A].c
    assert a.propose(b"x") == Proposed(I(2), T(1), I(2))
    assert a.propose_batch([b"y", b"z"]) == Proposed(I(3), T(1), I(4))


def test_proposals_are_refused_when_too_many_are_uncommitted() -> None:
    cl = Cluster(
        [A, B, C], config=lambda n: RaftConfig(node_id=n, group=GROUP, max_uncommitted_entries=5)
    )
    cl.elect(A)
    a = cl.nodes[A].c
    results = [a.propose(b"x") for _ in range(8)]
    assert Rejected(RejectReason.OVERLOADED, A) in results
    cl.stabilize()
    assert isinstance(a.propose(b"y"), Proposed)


def test_single_voter_reads_and_commits_on_its_own() -> None:
    c = core(voters=(A,))
    c.campaign()
    assert c.role is Role.LEADER
    drain(c)
    assert c.read_index(b"r") is None
    rd = c.ready()
    assert [r.ctx for r in rd.read_states] == [b"r"]
    assert rd.read_states[0].index == 1
    c.advance(rd)


def test_ready_twice_without_advance_is_a_programmer_error() -> None:
    c = core()
    c.campaign()
    c.ready()
    with pytest.raises(AssertionError):
        c.ready()


def test_snapshot_taken_asks_the_host_to_compact() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    a = cl.nodes[A].c
    a.propose(b"x")
    cl.stabilize()
    meta = SnapshotMeta(I(2), T(1), a.status().conf)
    a.snapshot_taken(meta)
    rd = a.ready()
    assert rd.compact_to == meta
    a.advance(rd)


def test_a_stale_snapshot_only_confirms_what_the_follower_has() -> None:
    c = core(B, entries=[ent(1, 1), ent(1, 2), ent(1, 3)], hs=HardState(T(1), A, I(3)))
    meta = SnapshotMeta(I(2), T(1), ConfState(voters=frozenset({A, B, C})))
    c.step(InstallSnapshot(GROUP, A, B, T(1), meta, 0, b"state", True))
    rd = c.ready()
    assert rd.snapshot is None and rd.snapshot_chunks == ()
    assert isinstance(rd.messages[0], AppendResponse) and rd.messages[0].match_index == 3


def test_conf_change_round_trips_and_garbage_decodes_to_none() -> None:
    for op in ConfChangeOp:
        cc = ConfChange(op, nid("n-7"))
        assert ConfChange.decode(cc.encode()) == cc
    for junk in (b"", b"x", b"9:a", b"\xff\xfe", b"1"):
        assert ConfChange.decode(junk) is None


def test_timeout_now_from_a_stranger_in_our_term_is_only_taken_from_our_leader() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    b = cl.nodes[B].c
    b.step(TimeoutNow(GROUP, C, B, T(1)))
    assert b.role is Role.FOLLOWER and b.term == 1
    b.step(TimeoutNow(GROUP, A, B, T(1)))
    assert b.role is Role.CANDIDATE and b.term == 2


# -- malformed input ---------------------------------------------------------------------
def test_malformed_or_misaddressed_messages_are_ignored() -> None:
    cl = Cluster([A, B, C])
    cl.elect(A)
    b = cl.nodes[B].c
    before = b.status()
    bad = [
        AppendEntries(GroupId("other"), A, B, T(1), I(1), T(1), (ent(1, 2),), I(0)),
        AppendEntries(GROUP, A, C, T(1), I(1), T(1), (ent(1, 2),), I(0)),
        AppendEntries(GROUP, A, B, T(1), I(1), T(1), (ent(1, 5),), I(0)),  # not contiguous
        AppendEntries(GROUP, A, B, T(1), I(1), T(1), (ent(9, 2),), I(0)),  # term > sender's
        AppendEntries(GROUP, A, B, T(1), I(-4), T(1), (), I(0)),
        AppendEntries(GROUP, A, B, T(-1), I(1), T(1), (), I(0)),
        SnapshotResponse(GROUP, A, B, T(1), I(3), 5, False),  # not a leader: ignored
        HeartbeatResponse(GROUP, A, B, T(1), 3),
        VoteResponse(GROUP, C, B, T(1), True, False),
        "not a message",
        None,
    ]
    for m in bad:
        b.step(m)  # type: ignore[arg-type]
    after = b.status()
    assert (after.term, after.last_index, after.commit, after.role) == (
        before.term,
        before.last_index,
        before.commit,
        before.role,
    )
    a = cl.nodes[A].c
    a.step(AppendResponse(GROUP, B, A, T(1), True, I(999), I(0), T(0)))  # beyond our log
    a.step(SnapshotResponse(GROUP, B, A, T(1), I(3), 5, False))  # no transfer under way
    a.step(HeartbeatResponse(GROUP, nid(9), A, T(1), 1))  # a stranger
    assert a.role is Role.LEADER and a.status().commit == 1
