"""Moving a partition's home: epoch histories, forks, planned moves, failover gates, backpressure.

Theory of operation (pure: no clock, the caller passes ``now_ms`` from its monotonic clock).

*History.* A partition's log is a sequence of epochs, each written by one home region: the
:class:`EpochHistory` lists ``(epoch, start_seq)``, where ``start_seq`` is the first seq
written under that epoch. A change of home adds ``(new_epoch, fork_seq + 1)``: the new home
keeps everything up to the **fork** (``fork_seq``) and writes from ``fork_seq + 1`` on.

- A *planned move* forks at the old home's last seq once the target holds all of it (fence,
  drain, bump, open: :class:`PlannedMove`), so nothing is lost. The fence is a store command
  (:class:`~geostore.store.commands.FenceHome`) in the old home's own log, so it holds across
  leader changes there, and its answer names the exact fork.
- A *failover* forks at the watermark the chosen survivor holds (:func:`plan_failover`),
  only after the lost home's lease plus a drift margin has run out in the metadata group's
  time (:func:`lease_expired`): before that the lost home may still acknowledge writes. The
  acknowledged events beyond the fork are lost for the partition: a suffix, counted.
- A *failback* is what a region that wrote (or applied) events of an older epoch beyond the
  fork does when it learns the new epoch: those events leave the partition for its
  **quarantine** (kept, listed, exported; never served as part of the partition), and the
  region then follows the new home from the fork without a resync of what it holds
  (:meth:`EventStore._apply_home <geostore.store.state.EventStore>` does it on ``SetHome``).

*Positions.* An append token names ``(epoch, seq)`` per partition. Against a history such a
position is current, or superseded when a later epoch starts at or before ``seq`` (the event
it names was orphaned by a fork): :meth:`EpochHistory.superseded` says so, and the store
answers 409 ``superseded_epoch`` for it, never a wait that cannot end or a different event.

*Backpressure.* :func:`admit_append` turns a partition's replication lag and the stream's
RPO bound into admit / slow (with a delay) / refuse (retryable ``replication_lag``), so that
what a failover can lose stays within the promised RPO.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from geostore.errors import ApiError, ErrorCode
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName

from .commands import FenceHome, SetHome
from .model import StoreWatermark

_SEQ_NONE = Seq(-1)


@dataclass(frozen=True, slots=True)
class EpochHistory:
    """``(epoch, start_seq)`` pairs: epochs strictly increase, starts never decrease.

    An epoch whose start equals the next one's wrote nothing that survived. An epoch that a
    fork cut off entirely (it started after the fork) is dropped from the history: every
    position naming it is superseded.
    """

    starts: tuple[tuple[Epoch, Seq], ...]

    def __post_init__(self) -> None:
        assert self.starts, "a history has at least its first epoch"
        for (e1, s1), (e2, s2) in zip(self.starts, self.starts[1:], strict=False):
            assert e1 < e2 and s1 <= s2, f"history out of order: {self.starts}"

    @staticmethod
    def first(epoch: Epoch) -> EpochHistory:
        return EpochHistory(((epoch, Seq(0)),))

    @property
    def current(self) -> Epoch:
        return self.starts[-1][0]

    def fork(self, new_epoch: Epoch, fork_seq: Seq) -> EpochHistory:
        """The history after a change of home that keeps seqs up to ``fork_seq``."""
        assert new_epoch > self.current, "a change of home takes a newer epoch"
        assert fork_seq >= -1
        start = Seq(fork_seq + 1)
        kept = tuple((e, s) for e, s in self.starts if s <= start)
        return EpochHistory((*kept, (new_epoch, start)))

    def epoch_at(self, seq: int) -> Epoch:
        """The epoch the canonical log's event at ``seq`` was written under."""
        k = bisect.bisect_right(self.starts, seq, key=lambda es: es[1]) - 1
        return self.starts[max(k, 0)][0]

    def end_of(self, epoch: Epoch) -> Seq | None:
        """The last seq ``epoch`` holds in the canonical log (None: current, or unknown)."""
        for i, (e, _) in enumerate(self.starts):
            if e == epoch:
                return Seq(self.starts[i + 1][1] - 1) if i + 1 < len(self.starts) else None
        return None

    def superseded(self, epoch: int, seq: int) -> bool:
        """Does ``(epoch, seq)`` name an event that a later epoch replaced (orphaned)?

        Epochs newer than the current one are not superseded (this region has not learned
        them yet: the caller waits); an older epoch missing from the history was cut off
        entirely by a fork.
        """
        if epoch >= self.current:
            return False
        for i, (e, _) in enumerate(self.starts):
            if e == epoch:
                return seq >= self.starts[i + 1][1]
            if e > epoch:
                break
        return True

    def check(self, stream: str, partition: int, epoch: int, seq: int) -> None:
        """Raise 409 ``superseded_epoch`` when ``(epoch, seq)`` was orphaned by a fork."""
        if self.superseded(epoch, seq):
            fork = self.end_of(Epoch(epoch))
            raise ApiError(
                ErrorCode.SUPERSEDED_EPOCH,
                f"{stream}/{partition}: seq {seq} of epoch {epoch} was superseded by a change "
                f"of home (epoch {epoch} ends at seq {fork if fork is not None else 'none'} in "
                f"the partition; the event is in the quarantine of the region that wrote it)",
                epoch=self.current,
                superseded_epoch=epoch,
                fork_seq=fork if fork is not None else -1,
            )

    def to_wire(self) -> list[list[int]]:
        return [[e, s] for e, s in self.starts]

    @staticmethod
    def from_wire(raw: Iterable[Iterable[int]]) -> EpochHistory:
        return EpochHistory(tuple((Epoch(e), Seq(s)) for e, s in raw))


@dataclass(frozen=True, slots=True)
class QuarantinedRun:
    """Events a region held beyond a fork, as one original append batch (or a cut of one).

    Only this metadata stays in memory: the events themselves (their batch encoding,
    ``geostore.store.blocks.encode_batch``, ``size_bytes`` long with crc32 ``crc``) live in
    the partition's block store under the run's ``slot`` (see ``quarantine_block_no``), so
    the memory a quarantine costs does not grow with the events it holds. ``epoch`` is the
    epoch they were written under; ``superseded_by`` the epoch whose fork orphaned them.

    ``parts`` > 1: a failback past more batches than a fork may turn into runs merged
    consecutive batches into this run, so the run count stays bounded; its body is then the
    CBOR list of the batches, ``[first_seq, record_count, events, producer_id,
    producer_seq]`` each, so every event keeps its original producer in an export (the run's
    own producer fields are None).
    """

    stream: StreamName
    partition: PartitionId
    epoch: Epoch
    superseded_by: Epoch
    fork_seq: Seq
    first_seq: Seq
    record_count: int
    size_bytes: int
    crc: int
    slot: int
    producer_id: str | None = None
    producer_seq: int | None = None
    parts: int = 1

    @property
    def last_seq(self) -> Seq:
        return Seq(self.first_seq + self.record_count - 1)


# --- failover ----------------------------------------------------------------------------------


def lease_expired(lease_until_ms: int, drift_margin_ms: int, now_ms: int) -> bool:
    """May the metadata group hand a home away from a silent region at ``now_ms``?

    Only once the region's home lease (granted up to ``lease_until_ms`` in the granting
    group's time) has run out plus the clock-drift margin: until then the region may, by its
    own clock, still hold the lease and acknowledge appends that a failover would orphan.
    """
    assert drift_margin_ms >= 0
    return now_ms >= lease_until_ms + drift_margin_ms


@dataclass(frozen=True, slots=True)
class FailoverPlan:
    """What a failover of one partition does: the SetHome to commit, and what it costs."""

    set_home: SetHome
    survivor: RegionId
    fork_seq: Seq
    #: Acknowledged at the lost home beyond the fork, as far as known (-1: unknown).
    lost_events: int


def plan_failover(
    stream: StreamName,
    partition: PartitionId,
    lost: RegionId,
    history: EpochHistory,
    survivors: Mapping[RegionId, StoreWatermark],
    *,
    to: RegionId | None = None,
    lost_last_seq: int | None = None,
) -> FailoverPlan:
    """Move a partition away from ``lost`` to a survivor, forking at the survivor's watermark.

    ``to`` names the survivor (the operator's choice); None picks the one holding the most
    (ties: the first by name), which loses the least. ``lost_last_seq`` is the lost home's
    last acknowledged seq as last reported (heartbeats), for the RPO report.
    """
    assert lost not in survivors, "the lost region is no survivor"
    assert survivors, "a failover needs a surviving region"
    if to is None:
        to = min(survivors, key=lambda r: (-survivors[r].seq, r))
    if to not in survivors:
        raise ApiError(ErrorCode.MALFORMED, f"{to!r} is not a surviving region", field="to")
    fork = survivors[to].seq
    new_epoch = Epoch(history.current + 1)
    lost_n = -1 if lost_last_seq is None else max(0, lost_last_seq - fork)
    return FailoverPlan(SetHome(stream, partition, to, new_epoch, fork), to, fork, lost_n)


# --- planned move ------------------------------------------------------------------------------


class MovePhase(enum.StrEnum):
    """The phases of a planned move, in order."""

    FENCING = "fencing"  # the old home is asked to stop taking appends (answers 503 moving)
    DRAINING = "draining"  # fenced at ``fence_seq``; the tail ships until the target holds it
    BUMPING = "bumping"  # the target holds the tail; the SetHome is being committed
    DONE = "done"  # the new epoch is committed: the target takes appends
    ABORTED = "aborted"  # given up before the bump: the old home takes appends again


@dataclass(frozen=True, slots=True)
class PlannedMove:
    """The pure state of one planned move; each transition returns the next state.

    The runtime (the node leading the metadata group, or the operator's command) drives it:
    propose :meth:`fence_command` into the old home region's log and pass the answer's
    ``fork_seq`` to :meth:`fenced`; feed :meth:`on_target_watermark` with each watermark the
    target acknowledges; once ``phase`` is BUMPING commit :meth:`set_home` in the metadata
    group (every region's store then applies it) and call :meth:`bumped`. To give up before
    the bump: :meth:`abort`, and propose :meth:`unfence_command` at the old home.
    ``pauses_ms`` records how long each finished phase took (the pause clients saw).
    """

    stream: StreamName
    partition: PartitionId
    source: RegionId
    target: RegionId
    old_epoch: Epoch
    started_ms: int
    phase: MovePhase = MovePhase.FENCING
    phase_started_ms: int = 0
    fence_seq: Seq = _SEQ_NONE
    pauses_ms: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def start(
        stream: StreamName,
        partition: PartitionId,
        source: RegionId,
        target: RegionId,
        old_epoch: Epoch,
        now_ms: int,
    ) -> PlannedMove:
        assert source != target, "a move goes to another region"
        return PlannedMove(
            stream, partition, source, target, old_epoch, now_ms, phase_started_ms=now_ms
        )

    @property
    def new_epoch(self) -> Epoch:
        return Epoch(self.old_epoch + 1)

    def _to(self, phase: MovePhase, now_ms: int, **kw: object) -> PlannedMove:
        pauses = (*self.pauses_ms, (self.phase.value, now_ms - self.phase_started_ms))
        return replace(self, phase=phase, phase_started_ms=now_ms, pauses_ms=pauses, **kw)  # type: ignore[arg-type]

    def fence_command(self) -> FenceHome:
        return FenceHome(self.stream, self.partition, self.old_epoch)

    def unfence_command(self) -> FenceHome:
        return FenceHome(self.stream, self.partition, self.old_epoch, fenced=False)

    def fenced(self, last_seq: Seq, now_ms: int) -> PlannedMove:
        """The old home stopped taking appends; ``last_seq`` is its last applied seq."""
        assert self.phase is MovePhase.FENCING, self.phase
        return self._to(MovePhase.DRAINING, now_ms, fence_seq=last_seq)

    def on_target_watermark(self, seq: Seq, now_ms: int) -> PlannedMove:
        """The target reports what it holds; at the fence the tail has shipped."""
        if self.phase is MovePhase.DRAINING and seq >= self.fence_seq:
            return self._to(MovePhase.BUMPING, now_ms)
        return self

    def set_home(self) -> SetHome:
        """The command to commit in the metadata group (and in every region's store)."""
        assert self.phase is MovePhase.BUMPING, self.phase
        return SetHome(self.stream, self.partition, self.target, self.new_epoch, self.fence_seq)

    def bumped(self, now_ms: int) -> PlannedMove:
        assert self.phase is MovePhase.BUMPING, self.phase
        return self._to(MovePhase.DONE, now_ms)

    def abort(self, now_ms: int) -> PlannedMove:
        """Give up (the target stopped answering): allowed until the bump is proposed."""
        assert self.phase in (MovePhase.FENCING, MovePhase.DRAINING), self.phase
        return self._to(MovePhase.ABORTED, now_ms)

    @property
    def writes_paused(self) -> bool:
        """Does the old home answer appends with 503 ``moving`` now?"""
        return self.phase in (MovePhase.FENCING, MovePhase.DRAINING, MovePhase.BUMPING)

    def check_append(self, region: RegionId) -> None:
        """Raise the retryable 503 ``moving`` for an append at ``region`` while paused."""
        if self.writes_paused and region in (self.source, self.target):
            raise ApiError(
                ErrorCode.MOVING,
                f"{self.stream}/{self.partition} is moving from {self.source} to {self.target} "
                f"({self.phase.value}); retry shortly",
                retry_after_ms=50,
                phase=self.phase.value,
            )


# --- lag-bounded backpressure ------------------------------------------------------------------


class Admission(enum.StrEnum):
    ADMIT = "admit"
    SLOW = "slow"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class LagPolicy:
    """A stream's RPO bound: appends slow down from ``slow_from`` of it and stop at it."""

    rpo_ms: int
    slow_from: float = 0.5
    delay_ms_max: int = 200

    def __post_init__(self) -> None:
        assert self.rpo_ms > 0 and 0.0 < self.slow_from < 1.0 and self.delay_ms_max >= 0


def admit_append(lag_ms: int, policy: LagPolicy | None) -> tuple[Admission, int]:
    """Admission of an append given the partition's worst replication lag (age, ms).

    Below ``slow_from * rpo_ms``: admit. From there up to the bound: admit after a delay
    growing linearly to ``delay_ms_max`` (the producer is slowed while shipping catches up).
    At or over the bound: refuse (the caller answers 503 ``replication_lag``, retryable),
    since an acknowledged append now could be lost beyond the promised RPO.
    """
    if policy is None:
        return Admission.ADMIT, 0
    assert lag_ms >= 0
    if lag_ms >= policy.rpo_ms:
        return Admission.REFUSE, 0
    knee = policy.slow_from * policy.rpo_ms
    if lag_ms < knee:
        return Admission.ADMIT, 0
    frac = (lag_ms - knee) / (policy.rpo_ms - knee)
    return Admission.SLOW, max(1, round(frac * policy.delay_ms_max))


def lag_refused(stream: str, partition: int, lag_ms: int, policy: LagPolicy) -> ApiError:
    return ApiError(
        ErrorCode.REPLICATION_LAG,
        f"{stream}/{partition}: replication lag {lag_ms} ms is over the stream's RPO bound of "
        f"{policy.rpo_ms} ms; retry shortly",
        lag_ms=lag_ms,
        rpo_ms=policy.rpo_ms,
        retry_after_ms=min(1000, policy.rpo_ms),
    )
