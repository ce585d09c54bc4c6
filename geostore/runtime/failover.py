"""Moving partition homes while the cluster runs: planned moves and region failovers.

Theory of operation (the pure rules are in :mod:`geostore.store.failover`; this module
drives them with the node's groups, its geo shipper and the metadata group):

- **Planned move** (``POST /v1/admin/partitions/{s}/{p}/move``), run by the data-group
  leader of the partition's current home region:

  1. *fencing*: propose ``FenceHome`` in the home region's own log. From its apply on,
     every replica of the region refuses appends to the partition (503 ``moving``), across
     leader changes too; the answer names the last seq, which becomes the fork.
  2. *draining*: wait until the target region's durable watermark, as the shipper learns
     it from acks, reaches the fork (the tail shipped). Giving up here (the deadline
     passed) unfences: nothing changed.
  3. *bumping*: commit ``MetaMoveHome(to, epoch + 1, fork)`` in the metadata group, then
     apply the matching ``SetHome`` here at once (every other region's leader mirrors it).
     When the commit's outcome is unknown (a timeout) the fence stays on: unfencing could
     let this region acknowledge appends that the move, if it did commit, orphans. Running
     the same move again finishes it or reports the new home.
  4. *opening*: wait (bounded) until the target's store applied the new epoch, which is
     when writes there succeed again. The answer reports each phase's length: the pause.

  A move whose coordinator died leaves the partition fenced; ``move --to`` the current
  home region unfences it (and a repeated move to the target proceeds).

- **Region failover** (``POST /v1/admin/regions/{lost}/failover``), run by the data-group
  leader of the surviving region ``to``. Refused (409 ``lease_held``, with the time left)
  while the lost region's home lease may still be held as this node observed it (lease
  plus drift margin since the last renewal applied here); ``now`` skips that check and
  the answer says what it risks. For each partition homed in the lost region: fork at the
  watermark this region holds (:func:`~geostore.store.failover.plan_failover`), commit the
  move in the metadata group with the next epoch, apply the ``SetHome`` here. Reported per
  partition: the fork, the events known to be lost (the lost home's last committed seq as
  its batches and heartbeats told this region, minus the fork: a lower bound, exact once
  the region returns and quarantines them), the RPO in time (the last contact with the
  lost region minus the home commit time of the fork's event, as its commit marks told) and
  how long the lost region had been silent (what it acknowledged meanwhile is unknown here).

- **Automatic failover** (``geo.auto_failover_after_ms`` > 0; off by default): see
  :meth:`MoveOps.tick`.

- **Failback** needs nothing here: a returning region's leader mirrors the moves it missed
  from the metadata group in epoch order (:mod:`.meta`), and its store moves what it wrote
  beyond each fork to the quarantine (``EventStore._apply_home``); the geo cores are
  rebuilt on the placement change and follow the new home from the fork.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geostore.errors import ApiError, ErrorCode, GeostoreError
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName
from geostore.store import FenceHome, Rejected, SetHome, encode_command
from geostore.store.failover import MovePhase, PlannedMove, plan_failover
from geostore.store.meta import MetaMoveHome
from geostore.store.model import HomeResult

if TYPE_CHECKING:
    from geostore.runtime.group import GroupRuntime
    from geostore.runtime.meta import MetaHost
    from geostore.runtime.node import NodeRuntime

log = logging.getLogger("geostore.runtime.failover")

#: Default and largest time a planned move may spend fencing and draining, ms.
MOVE_TIMEOUT_MS = 10_000
MOVE_TIMEOUT_MS_MAX = 60_000
#: How long a move waits for the target to open (its store applied the new epoch), ms.
OPEN_WAIT_MS = 5_000
#: Poll interval while waiting on a watermark or another region, seconds.
POLL_S = 0.005
#: How often the automatic failover policy looks at the leases, seconds.
AUTO_CHECK_S = 0.5
#: Finished moves kept for /v1/status.
MOVES_SHOWN = 16

#: Error codes that say a metadata command was definitely not committed.
_DEFINITE = frozenset(
    {
        ErrorCode.SUPERSEDED_EPOCH,
        ErrorCode.UNKNOWN_STREAM,
        ErrorCode.UNKNOWN_PARTITION,
        ErrorCode.MALFORMED,
    }
)


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _MoveRecord:
    move: PlannedMove
    outcome: str = "running"


class MoveOps:
    """Planned moves and failovers run by this node (see the module docstring)."""

    def __init__(self, node: NodeRuntime) -> None:
        self.node = node
        self._moves: list[_MoveRecord] = []
        self.moves_done = 0
        self.moves_aborted = 0
        self.failovers = 0
        self.auto_failovers = 0
        self.last_auto: dict[str, Any] | None = None
        self._auto_task: asyncio.Future[None] | None = None
        self._auto_next = 0.0

    # -- helpers -------------------------------------------------------------------------

    def _meta(self) -> MetaHost:
        meta = self.node.meta
        if meta is None:
            raise ApiError(
                ErrorCode.UNAVAILABLE,
                "moving a home needs the metadata group: multi-leader mode with two regions "
                "or more",
            )
        return meta

    def check_region(self, region: Any, field: str) -> RegionId:
        names = self.node.topology.region_names()
        if not isinstance(region, str) or region not in names:
            raise ApiError(
                ErrorCode.MALFORMED,
                f"{field} must name a region of the topology ({', '.join(names)}), got {region!r}",
                field=field,
            )
        return RegionId(region)

    async def _propose(self, group: GroupRuntime, cmd: Any) -> Any:
        (fut,) = group.propose([encode_command(cmd)])
        try:
            result = await asyncio.wait_for(fut, MOVE_TIMEOUT_MS / 1000)
        except TimeoutError:
            raise ApiError(
                ErrorCode.UNAVAILABLE,
                f"region {self.node.region} did not commit {type(cmd).__name__} within "
                f"{MOVE_TIMEOUT_MS} ms (no quorum?); its outcome is unknown: run the command "
                "again",
                retry_after_s=1,
            ) from None
        if isinstance(result, Rejected):
            raise result.error
        return result

    async def _apply_home_here(self, group: GroupRuntime, cmd: SetHome) -> HomeResult | None:
        """Apply a committed move in this region now instead of at the next mirror round."""
        try:
            result = await self._propose(group, cmd)
        except ApiError as err:
            if err.code is ErrorCode.SUPERSEDED_EPOCH:
                return None  # the mirror applied it first
            raise
        assert isinstance(result, HomeResult)
        return result

    def _record(self, move: PlannedMove) -> _MoveRecord:
        rec = _MoveRecord(move)
        self._moves.append(rec)
        del self._moves[:-MOVES_SHOWN]
        return rec

    # -- planned move --------------------------------------------------------------------

    async def move(
        self, stream: StreamName, partition: PartitionId, to: RegionId, timeout_ms: int
    ) -> dict[str, Any]:
        """Run a planned move here (this node leads the home region's data group)."""
        meta = self._meta()
        group = self.node.data_group
        store = group.store
        here = self.node.region
        home = meta.home_of(stream, partition)
        local = store.home_of(stream, partition)
        assert home is not None, "the caller checked the partition exists"
        if local.epoch != home.epoch:
            raise ApiError(
                ErrorCode.MOVING,
                f"{stream}/{partition}: region {here} has not applied epoch {home.epoch} yet; "
                "retry shortly",
                retry_after_ms=100,
            )
        base = {"stream": stream, "partition": partition, "from": here, "to": to}
        if to == here:
            # nothing to move; a fence left by a move whose coordinator died is lifted
            unfenced = False
            if store.is_fenced(stream, partition):
                await self._propose(group, FenceHome(stream, partition, home.epoch, fenced=False))
                unfenced = True
            return {**base, "changed": False, "unfenced": unfenced, "epoch": home.epoch}
        t0 = _now_ms()
        mv = PlannedMove.start(stream, partition, here, to, home.epoch, t0)
        rec = self._record(mv)
        fence = await self._propose(group, mv.fence_command())
        assert isinstance(fence, HomeResult)
        mv = rec.move = mv.fenced(fence.fork_seq, _now_ms())
        deadline = t0 + timeout_ms
        key = (stream, partition)
        while mv.phase is MovePhase.DRAINING:
            shipper = self.node.geo.shipper
            acked = -1
            if shipper is not None and key in shipper.partitions():
                acked = shipper.lag(stream, partition, to, _now_ms()).acked
            mv = rec.move = mv.on_target_watermark(Seq(acked), _now_ms())
            if mv.phase is not MovePhase.DRAINING:
                break
            if _now_ms() >= deadline or not group.is_leader:
                leading = group.is_leader
                why = f"{timeout_ms} ms passed" if leading else "this node lost leadership"
                rec.move = mv.abort(_now_ms())
                rec.outcome = "aborted"
                self.moves_aborted += 1
                after = (
                    f"the move was abandoned and {here} takes appends again. Check the link "
                    f"to {to} and retry"
                )
                if leading:
                    await self._propose(group, mv.unfence_command())
                else:
                    after = (
                        "the partition stays fenced: run the move again, or move it to "
                        f"{here} to lift the fence"
                    )
                raise ApiError(
                    ErrorCode.UNAVAILABLE,
                    f"{stream}/{partition}: region {to} did not acknowledge the tail up to seq "
                    f"{mv.fence_seq} ({why}; it holds {acked}); {after}",
                    phase=MovePhase.DRAINING.value,
                    fence_seq=mv.fence_seq,
                    target_seq=acked,
                    retry_after_s=1,
                )
            await asyncio.sleep(POLL_S)
        cmd = mv.set_home()
        try:
            await meta.submit(
                MetaMoveHome(stream, partition, to, cmd.epoch, cmd.fork_seq), timeout_ms / 1000
            )
        except ApiError as err:
            if err.code not in _DEFINITE:
                rec.outcome = "unknown"
                raise ApiError(
                    ErrorCode.UNAVAILABLE,
                    f"{stream}/{partition}: the metadata group did not confirm the move to {to} "
                    f"({err.message}); the partition stays fenced so nothing can be lost. Run "
                    "the same move again: it finishes it or reports the new home",
                    phase=MovePhase.BUMPING.value,
                    retry_after_s=1,
                ) from err
            rec.outcome = "aborted"
            self.moves_aborted += 1
            await self._propose(group, mv.unfence_command())
            raise
        mv = rec.move = mv.bumped(_now_ms())
        await self._apply_home_here(group, cmd)
        opened_ms = await self._wait_open(to, stream, partition, cmd.epoch)
        rec.outcome = "done"
        self.moves_done += 1
        pauses = dict(mv.pauses_ms)
        if opened_ms is not None:
            pauses["opening"] = max(0, opened_ms - (mv.started_ms + sum(pauses.values())))
        answer = {
            **base,
            "changed": True,
            "epoch": cmd.epoch,
            "fork_seq": cmd.fork_seq,
            "pauses_ms": pauses,
            "pause_ms": sum(pauses.values()),
            "opened": opened_ms is not None,
        }
        log.info("planned move done: %s", json.dumps(answer))
        return answer

    async def _wait_open(
        self, region: RegionId, stream: StreamName, partition: PartitionId, epoch: Epoch
    ) -> int | None:
        """Monotonic ms when ``region``'s store reached ``epoch`` (None: not seen in time)."""
        api = self.node.api
        deadline = _now_ms() + OPEN_WAIT_MS
        while _now_ms() < deadline:
            try:
                status, body, _ = await api.region_call(
                    region, "GET", "/v1/debug/partitions", None, None
                )
            except GeostoreError:
                status, body = 0, b""
            if status == 200:
                try:
                    parts = json.loads(body).get("partitions", [])
                except ValueError:
                    parts = []
                for p in parts:
                    if (
                        p.get("stream") == stream
                        and p.get("partition") == partition
                        and int(p.get("epoch", 0)) >= epoch
                    ):
                        return _now_ms()
            await asyncio.sleep(0.02)
        return None

    # -- region failover -----------------------------------------------------------------

    async def failover(self, lost: RegionId, now: bool) -> dict[str, Any]:
        """Move every partition homed in ``lost`` here (this node leads this region)."""
        meta = self._meta()
        here = self.node.region
        remaining = max(0, meta.observed_remaining_ms(lost))
        if remaining > 0 and not now:
            raise ApiError(
                ErrorCode.LEASE_HELD,
                f"region {lost} may still hold its home lease for {remaining} ms as {here} "
                "saw it renewed (lease plus clock-drift margin): a failover now could orphan "
                "appends it still acknowledges. Wait and retry, or force it with now=true",
                region=lost,
                remaining_ms=remaining,
                retry_after_ms=remaining,
            )
        contact = self.node.geo.contact_wall_ms(lost)
        homed = [
            (ms.definition.name, h.partition, h.epoch)
            for ms in meta.streams()
            for h in ms.homes
            if h.home == lost
        ]
        # partitions move independently: one metadata commit each, all in flight together
        rows = list(
            await asyncio.gather(
                *(self._fail_over_one(s, p, e, lost, contact) for s, p, e in homed)
            )
        )
        self.failovers += 1
        answer: dict[str, Any] = {
            "region": lost,
            "to": here,
            "now": now,
            "lease_remaining_ms": remaining,
            "partitions": rows,
        }
        if now and remaining > 0:
            answer["warning"] = (
                f"forced while {lost}'s lease may still be held for {remaining} ms: appends it "
                "acknowledged meanwhile are orphaned (they go to its quarantine when it returns)"
            )
        log.warning("region failover: %s", json.dumps(answer))
        return answer

    async def _fail_over_one(
        self, name: StreamName, part: PartitionId, epoch: int, lost: RegionId, contact: int | None
    ) -> dict[str, Any]:
        """Move one partition of the lost region here; its report row (or its error)."""
        meta = self._meta()
        group = self.node.data_group
        store = group.store
        geo = self.node.geo
        here = self.node.region
        row: dict[str, Any] = {"stream": name, "partition": part}
        local = store.home_of(name, part)
        if local.epoch != epoch:
            row["error"] = (
                f"region {here} is at epoch {local.epoch}, the metadata group at {epoch}: "
                "retry once it caught up"
            )
            return row
        known = geo.source_known(name, part)
        plan = plan_failover(
            name,
            part,
            lost,
            store.history(name, part),
            {here: store.watermark(name, part)},
            to=here,
            lost_last_seq=known,
        )
        cmd = plan.set_home
        try:
            await meta.submit(MetaMoveHome(name, part, here, cmd.epoch, cmd.fork_seq))
        except GeostoreError as err:
            row["error"] = f"the metadata group did not move it ({err}); run the failover again"
            return row
        try:
            applied = await self._apply_home_here(group, cmd)
        except GeostoreError as err:  # committed: the mirror applies it shortly
            log.info("failover of %s/%s: applied by the mirror instead (%s)", name, part, err)
            applied = None
        fork_commit = geo.applied_commit_wall_ms(name, part, plan.fork_seq)
        rpo_ms = -1
        if plan.lost_events == 0:
            rpo_ms = 0
        elif contact is not None and fork_commit is not None:
            rpo_ms = max(0, contact - fork_commit)
        row.update(
            {
                # how long the lost region had been silent here: what it acknowledged in
                # that time is unknown until it returns (its quarantine)
                "silent_ms": -1 if contact is None else max(0, _wall_ms() - contact),
                "epoch": cmd.epoch,
                "fork_seq": plan.fork_seq,
                "lost_last_seq": -1 if known is None else known,
                "lost_events": plan.lost_events,
                "rpo_ms": rpo_ms,
                "quarantined_here": applied.quarantined if applied else 0,
            }
        )
        return row

    # -- automatic policy ----------------------------------------------------------------

    def tick(self) -> None:
        """The automatic failover policy (``geo.auto_failover_after_ms``; 0: off).

        Run by every region's data-group leader while it holds its own lease (it hears the
        metadata group, which has a majority). A region whose lease expired (plus drift)
        ``auto_failover_after_ms`` ago and that still homes partitions is failed over to the
        live region nearest to it (ties: by name); every leader computes the same choice
        from the metadata it holds, only the chosen one acts, and should two act anyway the
        metadata group's epoch check lets one move win.
        """
        after = self.node.config.geo.auto_failover_after_ms
        meta = self.node.meta
        if after <= 0 or meta is None or self._auto_task is not None:
            return
        now = time.monotonic()
        if now < self._auto_next:
            return
        self._auto_next = now + AUTO_CHECK_S
        if not self.node.data_group.is_leader or not meta.lease_valid():
            return
        here = self.node.region
        topo = self.node.topology
        names = topo.region_names()
        homed = {h.home for s in meta.streams() for h in s.homes}
        for region in names:
            if region == here or region not in homed or meta.state.lease(region) is None:
                continue
            if meta.observed_remaining_ms(region) > -after:
                continue
            live = [
                r for r in names if r != region and (r == here or meta.observed_remaining_ms(r) > 0)
            ]
            target = min(live, key=lambda r: (topo.rtt_ms(region, r), r))
            if target != here:
                continue
            log.warning(
                "automatic failover: region %s silent for %d ms past its lease; %s takes its homes",
                region,
                -meta.observed_remaining_ms(region),
                here,
            )
            self._auto_task = asyncio.ensure_future(self._auto(RegionId(region)))
            return

    async def _auto(self, region: RegionId) -> None:
        try:
            answer = await self.failover(region, now=False)
            self.auto_failovers += 1
            self.last_auto = answer
        except (GeostoreError, TimeoutError) as exc:
            log.warning("automatic failover of %s failed (retried): %s", region, exc)
        except Exception:  # a bug must not kill the tick loop
            log.exception("automatic failover of %s failed", region)
        finally:
            self._auto_task = None

    # -- visibility ----------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        return {
            "moves_done": self.moves_done,
            "moves_aborted": self.moves_aborted,
            "failovers": self.failovers,
            "auto_failover_after_ms": self.node.config.geo.auto_failover_after_ms,
            "auto_failovers": self.auto_failovers,
            "last_auto_failover": self.last_auto,
            "moves": [
                {
                    "stream": r.move.stream,
                    "partition": r.move.partition,
                    "from": r.move.source,
                    "to": r.move.target,
                    "phase": r.move.phase.value,
                    "outcome": r.outcome,
                    "fence_seq": r.move.fence_seq,
                    "pauses_ms": dict(r.move.pauses_ms),
                }
                for r in self._moves
            ],
        }


__all__ = ["MOVE_TIMEOUT_MS", "MOVE_TIMEOUT_MS_MAX", "MoveOps"]
