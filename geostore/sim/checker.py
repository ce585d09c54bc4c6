"""Online Raft invariant checker over the simulator's ghost state.

Theory of operation: the simulator sees everything the nodes cannot: every message sent,
every write and fsync, every role change, every apply, every client ack. It reports each of
these to an :class:`InvariantChecker`, which keeps ghost state (leaders per term, the entry
held at each (index, term), the committed prefix, votes granted, the terms each node
announced, what each node holds durably) and records a :class:`Violation` the moment an
invariant breaks:

- P1 election safety: one leader per term.
- P2 leader append-only: a leader never truncates its own log in its term.
- P3 log matching: an (index, term) pair names one entry everywhere.
- P4 leader completeness: a new leader of term T holds every entry committed in a term < T.
- P5 state-machine safety: no two nodes apply different entries at an index.
- P6 term/vote durability: after a restart a node's term is at least any term it announced,
  and it still holds the vote it granted in that term.
- P7 Figure 8: a leader's commit index lands only on an entry of its own term.
- P8 configuration safety: at most one uncommitted configuration entry in a leader's log;
  a leader won its election with votes from a quorum of its own configuration's voters.
- R1/R2 committed-prefix agreement: an index, once committed anywhere, holds one entry.
- R4 durable before ack: when a client is acked, a quorum of voters holds the entry durably.
- R7 index sanity: applied <= commit <= last index, commit never decreases in a lifetime.
- P10 ReadIndex safety: a linearizable read is served at an index at least as high as every
  index committed anywhere before the read was invoked, and only once applied that far.

The checker's inputs are plain values, so unit tests feed it synthetic event sequences to
show each check fires (tests/unit/test_checker_online.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from geostore.ids import LogIndex, NodeId, Term

#: (term, kind, data): what an index holds.
EntryKey = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class Violation:
    """An invariant that broke, when (virtual ms) and why."""

    code: str
    time_ms: int
    detail: str

    def __str__(self) -> str:
        return f"{self.code} at {self.time_ms} ms: {self.detail}"


@dataclass(slots=True)
class _Life:
    """Per-node state for one process lifetime (reset at restart)."""

    commit: int = 0
    leader_term: int | None = None  #: the term in which the node is leader, if it is


@dataclass(slots=True)
class InvariantChecker:
    """Ghost state and online checks; ``violations`` is the verdict."""

    now_ms: int = 0
    violations: list[Violation] = field(default_factory=list)
    leaders: dict[int, NodeId] = field(default_factory=dict)  #: term -> leader
    entries: dict[tuple[int, int], EntryKey] = field(default_factory=dict)  #: (index, term) ->
    committed: dict[int, EntryKey] = field(default_factory=dict)  #: index -> committed entry
    #: index -> the term of the node that first reported it committed (the committing
    #: leader's term: followers learn a commit only from it)
    committed_term: dict[int, int] = field(default_factory=dict)
    applied: dict[int, EntryKey] = field(default_factory=dict)  #: index -> applied entry
    #: (voter, term) -> the candidate it granted its vote to
    votes: dict[tuple[NodeId, int], NodeId] = field(default_factory=dict)
    announced_term: dict[NodeId, int] = field(default_factory=dict)
    lives: dict[NodeId, _Life] = field(default_factory=dict)
    max_violations: int = 20
    #: the highest index any node has reported committed
    max_committed: int = 0
    #: False: skip the checks of protocol *rules* (R4 durable-before-ack, P6 state across a
    #: restart, P7 commit term, P8 election quorum) and keep only those of *outcomes*
    #: (two leaders, diverging logs or applies, lost committed entries, stale reads), to
    #: show that a planted bug also breaks what clients can see
    rule_checks: bool = True

    # -- plumbing --------------------------------------------------------------------------

    def fail(self, code: str, detail: str) -> None:
        if len(self.violations) < self.max_violations:
            self.violations.append(Violation(code, self.now_ms, detail))

    @property
    def ok(self) -> bool:
        return not self.violations

    def commit_of(self, node: NodeId) -> int:
        """The commit index last reported for ``node`` in its current lifetime."""
        life = self.lives.get(node)
        return 0 if life is None else life.commit

    def _life(self, node: NodeId) -> _Life:
        life = self.lives.get(node)
        if life is None:
            life = self.lives[node] = _Life()
        return life

    # -- messages --------------------------------------------------------------------------

    def on_send(self, node: NodeId, term: Term) -> None:
        """``node`` sent a message carrying ``term`` (so it must have made that term durable)."""
        if term > self.announced_term.get(node, 0):
            self.announced_term[node] = term

    def on_vote_granted(self, voter: NodeId, term: Term, candidate: NodeId) -> None:
        """``voter`` sent a (real, not pre-) vote grant for ``candidate`` in ``term``."""
        prior = self.votes.get((voter, term))
        if prior is not None and prior != candidate:
            self.fail(
                "P6", f"{voter} voted for {prior} and for {candidate} in term {term} (double vote)"
            )
            return
        self.votes[(voter, term)] = candidate

    # -- roles -----------------------------------------------------------------------------

    def on_leader(
        self,
        node: NodeId,
        term: Term,
        voters: Iterable[NodeId],
        held: Callable[[int], EntryKey | None],
        first_index: int,
    ) -> None:
        """``node`` became leader of ``term`` with configuration ``voters``.

        ``held(index)`` answers what the new leader's log holds at ``index`` (None when it
        has no entry there); ``first_index`` is its first uncompacted index (entries below
        are covered by its snapshot, itself built from committed entries).
        """
        prior = self.leaders.get(term)
        if prior is not None and prior != node:
            self.fail("P1", f"{prior} and {node} are both leaders of term {term}")
        self.leaders[term] = node
        self._life(node).leader_term = term
        voter_list = sorted(voters)
        if not self.rule_checks:
            pass
        elif node in voter_list:
            granted = [v for v in voter_list if v == node or self.votes.get((v, term)) == node]
            if len(voter_list) > 1 and 2 * len(granted) <= len(voter_list):
                self.fail(
                    "P8",
                    f"{node} leads term {term} with votes of only {granted} of voters {voter_list}",
                )
        else:
            self.fail("P8", f"{node} leads term {term} but is not a voter of {voter_list}")
        for index in sorted(self.committed):
            if index < first_index or self.committed_term[index] >= term:
                continue  # compacted into its snapshot, or committed in this term or later
            want = self.committed[index]
            got = held(index)
            if got != want:
                self.fail(
                    "P4",
                    f"new leader {node} of term {term} holds {got} at {index}, committed {want}",
                )
                break

    def on_not_leader(self, node: NodeId) -> None:
        self._life(node).leader_term = None

    # -- log writes ------------------------------------------------------------------------

    def on_log_write(
        self,
        node: NodeId,
        first_written: int,
        prior_last: int,
        is_leader: bool,
        written: Iterable[tuple[int, int, EntryKey]],
    ) -> None:
        """``node`` wrote entries (index, term, key) from ``first_written`` on, replacing its
        suffix after ``first_written - 1`` (its last index was ``prior_last`` before);
        ``is_leader``: it is leader now (a node that just stepped down may truncate)."""
        life = self._life(node)
        if is_leader and life.leader_term is not None and first_written <= prior_last:
            self.fail(
                "P2",
                f"leader {node} of term {life.leader_term} overwrote its log from "
                f"{first_written} (last was {prior_last})",
            )
        for index, term, key in written:
            prior = self.entries.get((index, term))
            if prior is None:
                self.entries[(index, term)] = key
            elif prior != key:
                self.fail("P3", f"two different entries at index {index} of term {term}")

    def on_config_entries(self, node: NodeId, uncommitted_config_indexes: list[int]) -> None:
        """A leader's log holds configuration entries above its commit index at these indexes."""
        if len(uncommitted_config_indexes) > 1:
            self.fail(
                "P8",
                f"leader {node} holds {len(uncommitted_config_indexes)} uncommitted "
                f"configuration entries at {uncommitted_config_indexes}",
            )

    # -- commit and apply ------------------------------------------------------------------

    def on_commit(
        self,
        node: NodeId,
        commit: int,
        applied: int,
        last_index: int,
        term: Term,
        is_leader: bool,
        held: Callable[[int], EntryKey | None],
        first_index: int,
    ) -> None:
        """``node`` reports commit index ``commit`` (ghost-checked against all others)."""
        life = self._life(node)
        if commit < life.commit:
            self.fail("R7", f"{node} commit index went back from {life.commit} to {commit}")
        if not applied <= commit <= last_index:
            self.fail(
                "R7", f"{node} has applied {applied}, commit {commit}, last index {last_index}"
            )
        if commit > life.commit:
            if is_leader and self.rule_checks:
                got = held(commit)
                if got is not None and got[0] != term:
                    self.fail(
                        "P7",
                        f"leader {node} of term {term} advanced commit to {commit}, "
                        f"an entry of term {got[0]}",
                    )
            for index in range(max(life.commit + 1, first_index), commit + 1):
                got = held(index)
                if got is None:
                    continue
                want = self.committed.get(index)
                if want is None:
                    self.committed[index] = got
                    self.committed_term[index] = term
                elif want != got:
                    self.fail(
                        "R1", f"{node} committed {got} at {index}, elsewhere committed {want}"
                    )
            life.commit = commit
            if commit > self.max_committed:
                self.max_committed = commit

    def on_read(
        self, node: NodeId, read_index: int, applied: int, committed_at_invoke: int
    ) -> None:
        """``node`` serves a linearizable read confirmed at ``read_index`` (P10)."""
        if read_index < committed_at_invoke:
            self.fail(
                "P10",
                f"{node} served a read at index {read_index}, but {committed_at_invoke} was "
                "committed before the read was invoked (stale read)",
            )
        if applied < read_index:
            self.fail("P10", f"{node} served a read at {read_index} having applied {applied}")

    def on_apply(self, node: NodeId, index: LogIndex, key: EntryKey) -> None:
        prior = self.applied.get(index)
        if prior is None:
            self.applied[index] = key
        elif prior != key:
            self.fail("P5", f"{node} applied {key} at {index}, another node applied {prior}")
        want = self.committed.get(index)
        if want is not None and want != key:
            self.fail("R2", f"{node} applied {key} at {index}, but {want} was committed there")

    def on_snapshot_restored(self, node: NodeId, index: int) -> None:
        """``node`` restored a snapshot through ``index``: its commit index jumps there."""
        life = self._life(node)
        life.commit = max(life.commit, index)

    # -- client acks, crashes --------------------------------------------------------------

    def on_ack(
        self,
        node: NodeId,
        index: int,
        term: int,
        voters: Iterable[NodeId],
        durable: Callable[[NodeId, int, int], bool],
    ) -> None:
        """``node`` acknowledges a client for the entry (index, term); R4 against ghost disks.

        ``durable(voter, index, term)`` answers whether ``voter`` holds that entry in fsynced
        storage, or has durably compacted it into a snapshot.
        """
        if not self.rule_checks:
            return
        voter_list = sorted(voters)
        holders = [v for v in voter_list if durable(v, index, term)]
        if 2 * len(holders) <= len(voter_list):
            self.fail(
                "R4",
                f"{node} acked entry {index} of term {term} held durably by only {holders} "
                f"of voters {voter_list}",
            )

    def on_restart(self, node: NodeId, term: Term, vote: NodeId | None) -> None:
        """``node`` restarted with this recovered hard state (P6)."""
        self.lives[node] = _Life()
        if not self.rule_checks:
            return
        announced = self.announced_term.get(node, 0)
        if term < announced:
            self.fail("P6", f"{node} restarted at term {term} after announcing term {announced}")
        granted = self.votes.get((node, term))
        if granted is not None and vote != granted:
            self.fail(
                "P6",
                f"{node} restarted with vote {vote} in term {term}, but had voted for {granted}",
            )
