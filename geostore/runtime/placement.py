"""Single-leader mode: keep the global group's leadership in the preferred region.

Theory of operation:

- In single-leader mode one Raft group spans every region, so where its leader sits decides
  every client's latency: a client pays the round trip to the leader's region, and the
  leader pays the round trip to its nearest quorum. The operator names the region that
  should lead (``raft.leader_region`` or ``--leader-region``; default: the topology's
  first region).
- Raft elects whoever times out first, and moves leadership on failure as it must; this
  module only *nudges*: every node tick, a leader outside the preferred region looks for
  a voter of that region that is live now (its progress is replicating and it answered
  since the last check-quorum round) and hands leadership to the most caught-up one with
  Raft's leadership transfer (the target is brought up to date, then told to campaign).
- A transfer stops proposals until it completes or aborts (after an election timeout), so
  after an attempt the leader waits two election timeouts before the next one: a target
  that died meanwhile costs one bounded pause, not a loop of them.
- Which region a voter is in comes from a live view (the topology's nodes, then the nodes
  added since with ``node add``, as the node's peer book learned them through
  ``/v1/admin/peers``): a voter added to the preferred region is a handover target at
  once, not after a restart.
- Nothing here is durable and nothing here is needed for safety: it is a placement policy
  on top of Raft's own elections.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from geostore.ids import LogIndex, NodeId, RegionId
from geostore.raft.records import ProgressState
from geostore.runtime.group import GroupRuntime

log = logging.getLogger("geostore.runtime.placement")


class LeaderPlacement:
    """Hands the group's leadership to the preferred region (see the module docstring)."""

    def __init__(
        self,
        group: GroupRuntime,
        preferred: RegionId,
        region_of: Mapping[NodeId, RegionId],
        election_ticks: int,
    ) -> None:
        self.group = group
        self.preferred = preferred
        #: read, never copied: the node keeps it current as peers are added
        self.region_of = region_of
        self.backoff_ticks = 2 * election_ticks
        self._ticks = 0
        self._next_try = 0
        self.attempts = 0
        self.last_target: NodeId | None = None

    def tick(self, *, stopping: bool = False) -> None:
        group = self.group
        self._ticks += 1
        if stopping or group.failed is not None or not group.is_leader:
            return
        if self.region_of.get(group.node_id) == self.preferred or self._ticks < self._next_try:
            return
        st = group.status()
        if st.transferee is not None:
            return
        candidates = [
            (p.match, nid)
            for nid, p in st.progress.items()
            if nid != group.node_id
            and nid in st.conf.voters
            and self.region_of.get(nid) == self.preferred
            and p.recent_active
            and p.state is ProgressState.REPLICATE
        ]
        if not candidates:
            return  # no live voter there now: look again next tick
        target = max(candidates)[1]
        self._next_try = self._ticks + self.backoff_ticks
        self.attempts += 1
        self.last_target = target
        accepted = group.transfer_leadership(target)
        log.info(
            "group %s: leader %s is outside the preferred region %s; transfer to %s %s",
            group.group_id,
            group.node_id,
            self.preferred,
            target,
            "started" if accepted else "refused",
        )

    def preferred_first(
        self, candidates: list[tuple[LogIndex, NodeId]]
    ) -> list[tuple[LogIndex, NodeId]]:
        """``(match, node)`` pairs ordered for a handover: live voters of the preferred region
        first (a voter that has not answered lately would only stall the transfer)."""
        progress = self.group.status().progress

        def key(c: tuple[LogIndex, NodeId]) -> tuple[bool, bool, int, str]:
            p = progress.get(c[1])
            live = p is not None and p.recent_active
            return (live, self.region_of.get(c[1]) == self.preferred, c[0], c[1])

        return sorted(candidates, key=key, reverse=True)

    def status_json(self) -> dict[str, Any]:
        leader = self.group.leader
        return {
            "preferred_region": self.preferred,
            "leader_region": None if leader is None else self.region_of.get(leader),
            "transfers_attempted": self.attempts,
            "last_target": self.last_target,
        }
