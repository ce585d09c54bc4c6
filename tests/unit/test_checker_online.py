"""The online Raft invariant checker stays quiet on legal event sequences and flags each
protocol violation (P1-P8, R1/R2, R4, R7) fed to it synthetically (C2)."""

from __future__ import annotations

from geostore.ids import LogIndex, NodeId, Term
from geostore.sim.checker import EntryKey, InvariantChecker

A, B, C, D = NodeId("a"), NodeId("b"), NodeId("c"), NodeId("d")
VOTERS = (A, B, C)


def key(term: int, data: bytes = b"x") -> EntryKey:
    return (term, 0, data)


def log_of(entries: dict[int, EntryKey]):  # type: ignore[no-untyped-def]
    return lambda index: entries.get(index)


def codes(checker: InvariantChecker) -> set[str]:
    return {v.code for v in checker.violations}


def elect(checker: InvariantChecker, leader: NodeId, term: int, voters=VOTERS) -> None:  # type: ignore[no-untyped-def]
    for v in voters:
        if v != leader:
            checker.on_vote_granted(v, Term(term), leader)
            break
    checker.on_leader(leader, Term(term), voters, log_of({}), 1)


def test_legal_sequence_is_quiet() -> None:
    ck = InvariantChecker()
    elect(ck, A, 1)
    log = {1: key(1), 2: key(1, b"y")}
    ck.on_log_write(A, 1, 0, True, [(1, 1, log[1]), (2, 1, log[2])])
    ck.on_log_write(B, 1, 0, False, [(1, 1, log[1]), (2, 1, log[2])])
    ck.on_commit(A, 2, 0, 2, Term(1), True, log_of(log), 1)
    ck.on_commit(B, 2, 0, 2, Term(1), False, log_of(log), 1)
    ck.on_apply(A, LogIndex(1), log[1])
    ck.on_apply(B, LogIndex(1), log[1])
    ck.on_ack(A, 2, 1, VOTERS, lambda v, i, t: v in (A, B))
    ck.on_send(A, Term(1))
    ck.on_restart(A, Term(1), None)
    ck.on_not_leader(A)
    ck.on_vote_granted(B, Term(2), C)
    ck.on_vote_granted(B, Term(2), C)  # a re-sent grant is not a double vote
    ck.on_leader(C, Term(2), VOTERS, log_of(log), 1)
    assert ck.ok, ck.violations


def test_p1_two_leaders_in_one_term() -> None:
    ck = InvariantChecker()
    elect(ck, A, 3)
    ck.on_vote_granted(C, Term(3), B)
    ck.on_leader(B, Term(3), VOTERS, log_of({}), 1)
    assert "P1" in codes(ck)


def test_p2_leader_overwrites_its_log() -> None:
    ck = InvariantChecker()
    elect(ck, A, 1)
    ck.on_log_write(A, 1, 0, True, [(1, 1, key(1)), (2, 1, key(1))])
    ck.on_log_write(A, 2, 2, True, [(2, 1, key(1, b"other"))])
    assert "P2" in codes(ck)


def test_follower_truncation_is_legal() -> None:
    ck = InvariantChecker()
    ck.on_log_write(B, 1, 0, False, [(1, 1, key(1)), (2, 1, key(1, b"y"))])
    ck.on_log_write(B, 2, 2, False, [(2, 2, key(2, b"z"))])
    assert ck.ok, ck.violations


def test_p3_two_entries_with_one_index_and_term() -> None:
    ck = InvariantChecker()
    ck.on_log_write(A, 1, 0, False, [(1, 1, key(1, b"x"))])
    ck.on_log_write(B, 1, 0, False, [(1, 1, key(1, b"y"))])
    assert "P3" in codes(ck)


def test_p4_new_leader_misses_a_committed_entry() -> None:
    ck = InvariantChecker()
    elect(ck, A, 1)
    log = {1: key(1)}
    ck.on_commit(A, 1, 0, 1, Term(1), True, log_of(log), 1)
    ck.on_vote_granted(C, Term(2), B)
    ck.on_leader(B, Term(2), VOTERS, log_of({}), 1)
    assert "P4" in codes(ck)


def test_p4_ignores_compacted_prefix() -> None:
    ck = InvariantChecker()
    ck.on_commit(A, 1, 0, 1, Term(1), False, log_of({1: key(1)}), 1)
    ck.on_vote_granted(C, Term(2), B)
    ck.on_leader(B, Term(2), VOTERS, log_of({}), 2)  # index 1 is inside B's snapshot
    assert ck.ok, ck.violations


def test_p5_different_entries_applied_at_one_index() -> None:
    ck = InvariantChecker()
    ck.on_apply(A, LogIndex(1), key(1, b"x"))
    ck.on_apply(B, LogIndex(1), key(2, b"y"))
    assert "P5" in codes(ck)


def test_p6_term_goes_back_after_restart() -> None:
    ck = InvariantChecker()
    ck.on_send(A, Term(5))
    ck.on_restart(A, Term(4), None)
    assert "P6" in codes(ck)


def test_p6_vote_forgotten_after_restart() -> None:
    ck = InvariantChecker()
    ck.on_vote_granted(A, Term(5), B)
    ck.on_send(A, Term(5))
    ck.on_restart(A, Term(5), None)
    assert "P6" in codes(ck)


def test_p6_double_vote() -> None:
    ck = InvariantChecker()
    ck.on_vote_granted(A, Term(5), B)
    ck.on_vote_granted(A, Term(5), C)
    assert "P6" in codes(ck)


def test_p7_leader_commits_an_old_term_entry() -> None:
    ck = InvariantChecker()
    elect(ck, A, 3)
    log = {1: key(1), 2: key(3)}
    ck.on_commit(A, 1, 0, 2, Term(3), True, log_of(log), 1)
    assert "P7" in codes(ck)


def test_p7_old_entries_committed_with_a_current_one_are_fine() -> None:
    ck = InvariantChecker()
    elect(ck, A, 3)
    log = {1: key(1), 2: key(3)}
    ck.on_commit(A, 2, 0, 2, Term(3), True, log_of(log), 1)
    assert ck.ok, ck.violations


def test_p8_leader_without_a_voter_quorum() -> None:
    ck = InvariantChecker()
    ck.on_vote_granted(D, Term(2), A)  # D is a learner: its vote must not count
    ck.on_leader(A, Term(2), VOTERS, log_of({}), 1)
    assert "P8" in codes(ck)


def test_p8_two_uncommitted_config_entries() -> None:
    ck = InvariantChecker()
    ck.on_config_entries(A, [5, 7])
    assert "P8" in codes(ck)


def test_r1_two_nodes_commit_different_entries() -> None:
    ck = InvariantChecker()
    ck.on_commit(A, 1, 0, 1, Term(1), False, log_of({1: key(1, b"x")}), 1)
    ck.on_commit(B, 1, 0, 1, Term(2), False, log_of({1: key(2, b"y")}), 1)
    assert "R1" in codes(ck)


def test_r2_applied_entry_differs_from_committed() -> None:
    ck = InvariantChecker()
    ck.on_commit(A, 1, 0, 1, Term(1), False, log_of({1: key(1, b"x")}), 1)
    ck.on_apply(B, LogIndex(1), key(2, b"y"))
    assert "R2" in codes(ck)


def test_r4_ack_without_durable_majority() -> None:
    ck = InvariantChecker()
    ck.on_ack(A, 3, 1, VOTERS, lambda v, i, t: v == A)
    assert "R4" in codes(ck)


def test_r7_commit_goes_back_and_index_order() -> None:
    ck = InvariantChecker()
    log = {1: key(1), 2: key(1)}
    ck.on_commit(B, 2, 0, 2, Term(1), False, log_of(log), 1)
    ck.on_commit(B, 1, 0, 2, Term(1), False, log_of(log), 1)
    assert "R7" in codes(ck)
    ck2 = InvariantChecker()
    ck2.on_commit(B, 3, 0, 2, Term(1), False, log_of(log), 1)  # commit beyond last index
    assert "R7" in codes(ck2)


def test_violations_are_bounded() -> None:
    ck = InvariantChecker(max_violations=3)
    for i in range(10):
        ck.on_apply(A, LogIndex(1), key(i))
    assert len(ck.violations) == 3


def test_p10_stale_read_index() -> None:
    ck = InvariantChecker()
    ck.on_commit(A, 5, 0, 5, Term(1), False, log_of({i: key(1) for i in range(1, 6)}), 1)
    assert ck.max_committed == 5
    ck.on_read(B, 5, 5, committed_at_invoke=5)
    assert ck.ok, ck.violations
    ck.on_read(B, 4, 4, committed_at_invoke=5)
    assert "P10" in codes(ck)


def test_p10_read_served_before_apply() -> None:
    ck = InvariantChecker()
    ck.on_read(A, 7, 6, committed_at_invoke=0)
    assert "P10" in codes(ck)


def test_p4_allows_a_lower_term_leader_after_a_higher_term_commit() -> None:
    ck = InvariantChecker()
    ck.on_vote_granted(B, Term(5), A)
    ck.on_leader(A, Term(5), VOTERS, log_of({}), 1)
    ck.on_commit(A, 1, 0, 1, Term(5), True, log_of({1: key(5)}), 1)
    ck.on_vote_granted(C, Term(4), B)  # a stale election in an older term: legal
    ck.on_leader(B, Term(4), VOTERS, log_of({}), 1)
    assert ck.ok, ck.violations
