"""Hosting the global metadata group in a node: catalog, placement mirror and home leases.

Theory of operation:

- Multi-leader mode with two regions or more: every node hosts the Raft group ``meta``
  running :class:`~geostore.store.meta.MetaState`. Its voters are one node per region (the
  first node of each region in topology order), every other node is a learner, so every
  node holds the catalog locally and the group survives the loss of a minority of regions
  (two regions: not the loss of either). Its election timeout is sized from the widest RTT
  it spans (``spans``, as single-leader's global group); its messages travel on the node's
  peer transport, to other regions through the WAN proxies like geo traffic.
- A node that does not lead ``meta`` reaches the leader over HTTP at
  ``POST /v1/admin/meta/propose`` (the leader's address as this node's region sees it: a
  WAN proxy for another region); the leader proposes and answers once committed.
- **Catalog.** ``POST /v1/streams`` proposes a ``MetaCreateStream`` (forwarded to the meta
  leader), the meta leader registers the topology's regions and creates its ``[[streams]]``
  once per term. Every region's *data-group leader* mirrors the applied catalog into its
  own data group with the store's ``CreateStream`` (homes included) and ``SetHome`` when an
  epoch moved on, so the data path (appends, shipping, reads) keeps reading homes and
  epochs from its own store. The create request is answered once the stream is in the
  metadata group and mirrored in the answering node's region (bounded wait).
- **Home lease.** The data-group leader of each region renews its region's lease every
  ``geo.lease_renew_ms``. It counts the lease valid until (its monotonic time when it
  *sent* the renewal) + ``lease_ms`` - ``lease_drift_ms``, once the renewal committed; it
  drops it when it stops leading. Any other node counts a region's lease possibly held
  until (its monotonic time when it *applied* the renewal) + ``lease_ms`` +
  ``lease_drift_ms``: a later failover may move that region's partitions only after
  :meth:`MetaHost.lease_expired_for_observer`. Appends to partitions homed here are
  acknowledged only while :meth:`MetaHost.lease_valid` (checked before proposing; an entry
  proposed under a valid lease that commits after it lapsed is still answered as a success,
  since it is durable here, and counted in ``geostore_lease_late_acks_total``).
- Nothing here is durable beyond the metadata group's own log: a restarted node replays it
  (observed renewals then count from the replay, the conservative direction).

- **Voter replacement.** The meta leader watches its voters' progress; a voter that has not
  answered for ``REPLACE_AFTER_ELECTIONS`` election timeouts is replaced by a live,
  caught-up learner of the same region (Raft single-server changes: promote the learner,
  remove the dead voter, add it back as a learner so it catches up when it returns). This
  needs a quorum, so it repairs the loss of a minority of voters before another one fails.

- **Membership** (``geostore node add|remove|replace``, through
  ``POST /v1/admin/meta/members``, forwarded to the meta leader): a node added to a region
  is registered in that region's node list (``MetaSetRegion``, so every node, whichever its
  topology file, knows its region) and added as a learner; it starts with an empty replica
  (``--join``) and catches up by log or snapshot. Removing a node that is a voter first
  promotes a live, caught-up learner of its region (one voter per region, as the voter
  replacement keeps it) unless another voter of its region answers (a rerun after an
  interrupted remove: no second promotion), refused with 409 ``conflict`` when its region
  has no other live node; a leader asked to remove itself hands its leadership over first (503, retried).
  Then the node leaves the configuration and its region's node list. Voter replacement
  finds the region of an added node in that list too. A change first confirms the leader's
  commit index (ReadIndex) and applies up to it, so a region list it proposes (whole, not a
  delta) never comes from a state that lacks an entry committed under the previous leader.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from geostore.config import Topology
from geostore.errors import ApiError, ErrorCode, GeostoreError
from geostore.ids import Epoch, GroupId, LogIndex, NodeId, RegionId, StreamName
from geostore.raft.records import ConfChange, ConfChangeOp
from geostore.raft.types import Entry, EntryKind, SnapshotMeta
from geostore.runtime.geo import fill_homes
from geostore.runtime.group import GroupRuntime, GroupSpec
from geostore.store import CreateStream, PartitionHome, Rejected, SetHome, encode_command
from geostore.store.meta import (
    MOVES_KEPT,
    Applied,
    LeaseRecord,
    MetaCommand,
    MetaCreateStream,
    MetaRenewLease,
    MetaResult,
    MetaSetRegion,
    MetaState,
    MetaStream,
    decode_meta,
    encode_meta,
)
from geostore.store.model import StreamInfo

if TYPE_CHECKING:
    from geostore.runtime.node import NodeRuntime

log = logging.getLogger("geostore.runtime.meta")

META_GROUP = GroupId("meta")
#: The internal route through which a node reaches the metadata leader.
PROPOSE_PATH = "/v1/admin/meta/propose"
#: How long one proposal (local or through the leader) may take before it counts as failed.
PROPOSE_TIMEOUT_S = 10.0
#: A meta voter silent this many election timeouts is replaced by a learner of its region.
REPLACE_AFTER_ELECTIONS = 3
#: How often the metadata leader looks for silent voters, seconds.
WATCH_EVERY_S = 0.1
#: The membership operations of ``POST /v1/admin/meta/members``.
MEMBER_OPS = ("add_learner", "remove")


def meta_members(topology: Topology) -> tuple[tuple[NodeId, ...], tuple[NodeId, ...]]:
    """Voters (the first node of each region, topology order) and learners (the rest)."""
    voters = tuple(r.nodes[0].id for r in topology.regions if r.nodes)
    learners = tuple(n.id for r in topology.regions for n in r.nodes[1:])
    return voters, learners


def result_json(result: MetaResult) -> dict[str, Any]:
    """A metadata command's answer as JSON (what the propose route returns)."""
    if isinstance(result, StreamInfo):
        return {"kind": "stream", "created": result.created, **result.to_json()}
    if isinstance(result, PartitionHome):
        return {"kind": "home", **result.to_json()}
    if isinstance(result, LeaseRecord):
        return {"kind": "lease", **result.to_json()}
    if isinstance(result, Applied):
        return {"kind": "applied", "changed": result.changed}
    return {"kind": "rejected", **result.error.to_body()}


class MetaMachine:
    """:class:`MetaState` as the Raft host's state machine; tells the host about leases."""

    def __init__(self, state: MetaState, on_lease: Callable[[LeaseRecord], None]) -> None:
        self.state = state
        self._on_lease = on_lease

    def apply(self, entry: Entry) -> object:
        if entry.kind is EntryKind.NORMAL:
            result = self.state.apply_entry(entry.index, entry.data)
            if type(result) is LeaseRecord:
                self._on_lease(result)
            return result
        self.state.advance(entry.index)
        return None

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.state.restore(data)
        for rec in self.state.leases().values():
            self._on_lease(rec)


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A region's lease as this node sees it now."""

    region: RegionId
    holder: NodeId
    duration_ms: int
    index: LogIndex
    renewals: int
    #: "holder" (this node leads the region: its own deadline) or "observer"
    view: str
    #: holder: until its own deadline; observer: until it may count the lease expired
    remaining_ms: int

    @property
    def valid(self) -> bool:
        return self.remaining_ms > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "duration_ms": self.duration_ms,
            "index": self.index,
            "renewals": self.renewals,
            "view": self.view,
            "remaining_ms": self.remaining_ms,
            "valid": self.valid,
        }


class MetaHost:
    """The metadata group of one node (see the module docstring)."""

    def __init__(
        self,
        node: NodeRuntime,
        *,
        bootstrap: bool,
        join: bool,
        unsafe_no_fsync: bool,
        rng: random.Random,
    ) -> None:
        self.node = node
        topo = node.topology
        geo = node.config.geo
        self.region = node.region
        self.lease_ms = geo.lease_ms
        self.renew_ms = geo.lease_renew_ms
        self.drift_ms = geo.lease_drift_ms
        self.voters, self.learners = meta_members(topo)
        self.state = MetaState()
        #: region -> (index of the renewal, monotonic s when this node applied it); set
        #: before the group exists: recovery applies the log while it is built
        self._observed: dict[RegionId, tuple[LogIndex, float]] = {}
        #: partitions whose missed moves are no longer all remembered (logged once each)
        self._unmirrorable: set[tuple[str, int]] = set()
        #: meta log index of this node's last granted renewal (valid once applied here)
        self._lease_index = 0
        self.machine = MetaMachine(self.state, self._lease_applied)
        self.group = GroupRuntime(
            GroupSpec(
                META_GROUP,
                node.region,
                self.voters,
                os.path.join(node.data_dir, "groups", META_GROUP),
                bootstrap=bootstrap,
                join=join,
                spans=tuple(topo.region_names()),
                learners=self.learners,
            ),
            node.node_id,
            topo,
            node.config,
            node.transport,
            node.metrics,
            unsafe_no_fsync=unsafe_no_fsync,
            rng=rng,
            machine=self.machine,
        )
        self.group.on_applied = self._meta_applied
        #: this node's own lease deadline (monotonic s), while it leads its region
        self._holder_until: float | None = None
        self._renewing = False
        self._next_renew = 0.0
        self._was_valid = False
        self._mirror_wanted = True
        self._mirroring = False
        self._data_term = -1
        self._seeded_term = -1
        self._last_active: dict[NodeId, float] = {}
        self._next_watch = 0.0
        self._replacing = False
        self._region_of = {n.id: n.region for n in topo.nodes()}
        #: membership changes this node made as meta leader (bounded: newest last)
        self.replacements: list[str] = []
        self.renewals = 0
        self.renew_failures = 0
        self.lapses = 0
        self.late_acks = 0
        m = node.metrics
        r = m.registry
        self.m_renewals = r.counter(
            "geostore_lease_renewals_total", "Home-lease renewals this node committed."
        )
        self.m_lapses = r.counter(
            "geostore_lease_lapses_total", "Times this node's home lease lapsed while leading."
        )
        self.m_late = r.counter(
            "geostore_lease_late_acks_total",
            "Appends proposed under a valid lease that committed after it lapsed.",
        )
        r.gauge(
            "geostore_lease_remaining_ms", "Home lease left on this region's leader, ms."
        ).set_source(lambda: float(max(0, self.holder_remaining_ms())))

    # -- membership --------------------------------------------------------------------------

    def member_regions(self) -> dict[NodeId, RegionId]:
        """Each known node's region: the topology's, then the metadata group's node lists
        (which also name the nodes added since the topology file was written)."""
        out = dict(self._region_of)
        for region, nodes in self.state.regions().items():
            for n in nodes:
                out[n] = region
        return out

    def members_json(self) -> dict[str, Any]:
        st = self.group.status()
        return {
            "group": META_GROUP,
            "leader": st.leader,
            "voters": sorted(st.conf.voters),
            "learners": sorted(st.conf.learners),
            "commit": st.commit,
            "regions": {r: list(ns) for r, ns in self.state.regions().items()},
        }

    async def change_member(self, op: str, node: NodeId, region: str | None) -> dict[str, Any]:
        """``add_learner`` or ``remove`` ``node`` (this node leads ``meta``); idempotent.

        The answer is :meth:`members_json` once the change is applied here; ``commit`` in it
        is what an added learner must apply before it holds everything committed so far.
        """
        assert op in MEMBER_OPS, op
        if self._replacing:
            raise ApiError(
                ErrorCode.UNAVAILABLE,
                "another membership change of the metadata group is in progress; retry",
                group=META_GROUP,
                retry_after_s=1,
            )
        self._replacing = True
        try:
            await self._read_all_committed()
            if op == "add_learner":
                await self._add_learner(node, region)
            else:
                await self._remove(node)
        finally:
            self._replacing = False
            self._last_active.pop(node, None)
        return self.members_json()

    async def _read_all_committed(self) -> None:
        """Apply everything committed before deciding: a new leader (the CLI retries at once
        after a hand-over) may lag in applying its predecessor's entries, and a region list
        computed from such a state would drop a node added just before (a lost update)."""
        try:
            index = await asyncio.wait_for(self.group.read_barrier(), PROPOSE_TIMEOUT_S)
            await asyncio.wait_for(self.group.wait_applied(index), PROPOSE_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(
                ErrorCode.WAIT_TIMEOUT,
                "the metadata leader did not confirm its commit index in time; retry",
                group=META_GROUP,
                retry_after_s=1,
            ) from None

    async def _add_learner(self, node: NodeId, region: str | None) -> None:
        regions = self.node.topology.region_names()
        if region is None or region not in regions:
            raise ApiError(
                ErrorCode.MALFORMED,
                f"region must be one of {list(regions)}, not {region!r}",
                field="region",
            )
        # the region its address was recorded with (sender checks, geo) must agree
        known = self.member_regions().get(node) or self.node.peer_regions.get(node)
        if known is not None and known != region:
            raise ApiError(
                ErrorCode.CONFLICT, f"{node} is a node of region {known}, not {region}", node=node
            )
        if node not in self.node.peer_urls:
            raise ApiError(
                ErrorCode.MALFORMED,
                f"the metadata leader {self.node.node_id} knows no address for {node}: "
                "POST /v1/admin/peers to it first",
            )
        rid = RegionId(region)
        listed = self.state.regions().get(rid)
        if listed is None:  # not registered yet (the leader registers the topology's)
            listed = tuple(self.node.topology.region(rid).node_ids())
        if node not in listed:
            await self.propose_local(MetaSetRegion(rid, (*listed, node)))
        conf = self.group.status().conf
        if node not in conf.voters and node not in conf.learners:
            await self._conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, node))

    async def _remove(self, node: NodeId) -> None:
        st = self.group.status()
        conf = st.conf
        if node in conf.voters:
            regions = self.member_regions()
            region = regions.get(node)

            def answers(n: NodeId) -> bool:
                p = st.progress.get(n)
                return n == self.node.node_id or (p is not None and p.recent_active)

            # the region's vote must stay on a node that answers: another voter of the
            # region counts only if it does (an interrupted remove whose promoted node died
            # since), unless the leaving voter is silent itself (nothing live is lost)
            if not any(
                v != node and regions.get(v) == region and (answers(v) or not answers(node))
                for v in conf.voters
            ):
                await self._promote_for(node, region, regions)
            if node == self.node.node_id:
                self._hand_over(node)
        conf = self.group.status().conf
        if node in conf.voters | conf.learners:
            await self._conf_change(ConfChange(ConfChangeOp.REMOVE, node))
        for rid, nodes in self.state.regions().items():
            if node in nodes:
                await self.propose_local(MetaSetRegion(rid, tuple(n for n in nodes if n != node)))

    async def _promote_for(
        self, voter: NodeId, region: RegionId | None, regions: dict[NodeId, RegionId]
    ) -> None:
        """Promote a live, caught-up learner of ``region`` so ``voter`` may leave."""
        st = self.group.status()
        others = sorted(n for n in st.conf.learners if n != voter and regions.get(n) == region)
        if not others:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{voter} holds region {region}'s vote in the metadata group and the region "
                "has no other node to take it over: add one first (geostore node add), "
                "then remove this one",
                node=voter,
            )
        now = time.monotonic()
        limit_s = REPLACE_AFTER_ELECTIONS * self.group.election_ms / 1000
        live = [
            n
            for n in others
            if (p := st.progress.get(n)) is not None
            and (p.recent_active or now - self._last_active.get(n, now) < limit_s)
        ]
        if not live:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{voter} holds region {region}'s vote in the metadata group and no other "
                f"node of the region answers the metadata leader ({', '.join(others)} silent "
                f"for {limit_s:g} s): bring one back or add a node first",
                node=voter,
            )
        ready = [(st.progress[n].match, n) for n in live if st.progress[n].match >= st.commit]
        if not ready:
            raise ApiError(
                ErrorCode.UNAVAILABLE,
                f"{', '.join(live)} of region {region} is still catching up in the metadata "
                f"group; {voter} leaves once one of them can take its vote: retry",
                retry_after_s=1,
            )
        await self._conf_change(ConfChange(ConfChangeOp.PROMOTE, max(ready)[1]))

    def _hand_over(self, me: NodeId) -> None:
        """The leader was asked to remove itself: lead no more first (the caller retries)."""
        st = self.group.status()
        candidates = [
            (p.match, nid)
            for nid, p in st.progress.items()
            if nid != me and nid in st.conf.voters and p.recent_active
        ]
        if candidates:
            self.group.transfer_leadership(max(candidates)[1])
        raise ApiError(
            ErrorCode.UNAVAILABLE,
            f"{me} leads the metadata group and is to leave it: handing leadership over "
            f"to {max(candidates)[1] if candidates else 'another voter'} first; retry",
            retry_after_s=1,
        )

    async def _conf_change(self, change: ConfChange) -> None:
        """Propose one configuration change and wait until it is applied here."""
        fut = self.group.propose_conf_change(change)  # a refusal raises a retryable 503
        try:
            await asyncio.wait_for(fut, PROPOSE_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(
                ErrorCode.WAIT_TIMEOUT,
                f"{change.op.name.lower()} {change.node} not applied in the metadata group "
                f"within {PROPOSE_TIMEOUT_S:g} s; retry",
                retry_after_s=1,
            ) from None
        self.replacements = [*self.replacements[-9:], f"{change.op.name.lower()} {change.node}"]
        log.info("metadata group: %s %s", change.op.name.lower(), change.node)

    # -- placement and leases: what other modules read ------------------------------------

    def home_of(self, stream: str, partition: int) -> PartitionHome | None:
        """The partition's home region and epoch in the metadata group (as applied here)."""
        return self.state.home_of(stream, partition)

    def streams(self) -> list[MetaStream]:
        return self.state.streams()

    def holder_remaining_ms(self) -> int:
        """This node's own lease left, ms (<= 0: none or lapsed); only a region leader has one."""
        until = self._holder_until
        if until is None:
            return 0
        return int((until - time.monotonic()) * 1000)

    def lease_valid(self) -> bool:
        """May this node acknowledge appends to partitions homed in its region now?

        A lease that starts (after none or a lapsed one) counts only once this node's
        metadata replica applied the renewal that granted it: every move committed before
        it is then known here, so a region returning after a failover never takes appends
        for a partition that moved away meanwhile (the append path compares the metadata
        epoch with its store's). Renewals of a valid lease extend it at once: no failover
        moves a region's partitions while its lease is held, and a planned move fences
        first.
        """
        return (
            self.node.data_group.is_leader
            and self.holder_remaining_ms() > 0
            and self.state.applied_index >= self._lease_index
        )

    def require_lease(self) -> None:
        """Raise the retryable 503 ``lease_lapsed`` unless :meth:`lease_valid`."""
        if self.lease_valid():
            return
        rec = self.state.lease(self.region)
        raise ApiError(
            ErrorCode.LEASE_LAPSED,
            f"region {self.region} holds no valid home lease from the metadata group "
            f"(last renewed at meta index {rec.index if rec else 'never'}; the metadata "
            "group may have no quorum or be unreachable from here), so appends to partitions "
            "homed here are refused: retry shortly (they are accepted again once the lease "
            "is renewed), or append in the partition's new home if it was moved",
            region=self.region,
            retry_after_s=1,
        )

    def note_ack(self) -> None:
        """An append committed: count it when the lease lapsed while it was in flight."""
        if not self.lease_valid():
            self.late_acks += 1
            self.m_late.inc()

    def lease_view(self, region: str) -> LeaseView | None:
        rec = self.state.lease(region)
        if rec is None:
            return None
        base = (rec.region, rec.holder, rec.duration_ms, rec.index, rec.renewals)
        if region == self.region and self.node.data_group.is_leader:
            # this node acknowledges for its region: its own (stricter) deadline decides
            return LeaseView(*base, "holder", self.holder_remaining_ms())
        return LeaseView(*base, "observer", self.observed_remaining_ms(region))

    def observed_remaining_ms(self, region: str) -> int:
        """How long another region's lease may still be held, as this node saw it applied."""
        rec = self.state.lease(region)
        if rec is None:
            return 0
        seen = self._observed.get(RegionId(region))
        if seen is None:
            # known from a snapshot, never seen applied here: count from now (conservative)
            seen = self._observed[RegionId(region)] = (rec.index, time.monotonic())
        until = seen[1] + (rec.duration_ms + self.drift_ms) / 1000
        return int((until - time.monotonic()) * 1000)

    def lease_expired_for_observer(self, region: str) -> bool:
        """True once no node of ``region`` can still believe it holds its lease (failover)."""
        return self.observed_remaining_ms(region) <= 0

    # -- proposals ---------------------------------------------------------------------------

    async def submit(
        self, cmd: MetaCommand, timeout_s: float = PROPOSE_TIMEOUT_S
    ) -> dict[str, Any]:
        """Commit ``cmd`` in the metadata group (here or through its leader); its answer as
        :func:`result_json`. A rejection raises its ApiError; no leader or no answer within
        ``timeout_s`` raises 503/504 (retryable)."""
        group = self.group
        if group.is_leader:
            result = await self.propose_local(cmd, timeout_s)
            return result_json(result)
        leader = group.leader
        session = self.node.session
        if session is None:
            raise ApiError(ErrorCode.UNAVAILABLE, "the node is not started", retry_after_s=1)
        url = None if leader is None else self.node.peer_urls.get(leader)
        if leader is not None and url is not None:
            # the leader itself: it must not forward again if it lost leadership meanwhile
            targets = [(leader, url, {"X-Geostore-Forwarded": self.node.node_id})]
        else:
            # no leader known (e.g. a joining node whose replica has not heard from the
            # leader yet): any voter, founding or current, forwards to its leader
            voters = sorted(set(self.voters) | self.group.status().conf.voters)
            targets = [
                (v, self.node.peer_urls[v], {})
                for v in voters
                if v != self.node.node_id and v in self.node.peer_urls
            ]
        if not targets:
            raise ApiError(
                ErrorCode.NO_QUORUM,
                "the metadata group has no known leader",
                group=META_GROUP,
                retry_after_s=1,
            )
        body = {"command": base64.b64encode(encode_meta(cmd)).decode()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: ApiError | None = None
        for target, base, headers in targets:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                async with session.post(
                    base + PROPOSE_PATH,
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as resp:
                    answer = await resp.json(content_type=None)
                    status = resp.status
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                last = ApiError(
                    ErrorCode.UNAVAILABLE,
                    f"metadata node {target} did not answer: {type(exc).__name__}",
                    retry_after_s=1,
                )
                continue
            if status == 200 and isinstance(answer, dict):
                return dict(answer.get("result") or {})
            err = answer.get("error", {}) if isinstance(answer, dict) else {}
            try:
                code = ErrorCode(str(err.get("code")))
            except ValueError:
                code = ErrorCode.UNAVAILABLE
            last = ApiError(code, f"metadata node {target}: {err.get('message', status)}")
            if status != 503:
                break  # an answer about the command itself: another node would say the same
        raise last or ApiError(ErrorCode.UNAVAILABLE, "no metadata node answered in time")

    async def propose_local(
        self, cmd: MetaCommand, timeout_s: float = PROPOSE_TIMEOUT_S
    ) -> MetaResult:
        """Propose on this node (it must lead); the applied answer; rejections raise."""
        (fut,) = self.group.propose([encode_meta(cmd)])
        try:
            result = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise ApiError(
                ErrorCode.WAIT_TIMEOUT,
                f"not committed in the metadata group within {timeout_s:g} s",
            ) from None
        if isinstance(result, Rejected):
            raise result.error
        assert isinstance(result, StreamInfo | PartitionHome | LeaseRecord | Applied), result
        return result

    async def propose_encoded(self, data: bytes) -> dict[str, Any]:
        """The propose route: a command another node encoded (decoded first: typed 400s)."""
        try:
            cmd = decode_meta(data)
        except GeostoreError as exc:
            raise ApiError(ErrorCode.MALFORMED, f"not a metadata command: {exc.message}") from None
        return result_json(await self.propose_local(cmd))

    # -- catalog -----------------------------------------------------------------------------

    async def create_stream(self, request: Any) -> StreamInfo:
        """Create a stream (this node leads ``meta``): homes filled in, validated, proposed."""
        body = fill_homes(self.node.topology, request)
        cmd = self.node.data_group.store.validate_create(body)
        result = await self.propose_local(MetaCreateStream(cmd))
        assert isinstance(result, StreamInfo), result
        return result

    def mirrored(self, name: str) -> bool:
        """Is stream ``name`` in this node's data store, with every epoch of the catalog?"""
        ms = self.state.stream(name)
        store = self.node.data_group.store
        if ms is None:
            return False
        try:
            local = store.stream_info(name)
        except ApiError:
            return False
        if len(local.homes) != len(ms.homes):
            return False  # another definition here (refused when mirrored): never mirrored
        return all(lh.epoch >= mh.epoch for mh, lh in zip(ms.homes, local.homes, strict=True))

    async def wait_mirrored(self, name: str, timeout_s: float) -> None:
        """Wait (bounded) until ``name`` is mirrored in this region; 504 after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        data = self.node.data_group
        while not self.mirrored(name):
            left = deadline - loop.time()
            if left <= 0:
                raise ApiError(
                    ErrorCode.WAIT_TIMEOUT,
                    f"stream {name!r} is in the metadata group but not yet in region "
                    f"{self.region} (its leader mirrors it); retry: creating it again is "
                    "idempotent",
                    retry_after_s=1,
                )
            waiter = asyncio.ensure_future(data.wait_applied_change())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), min(left, 0.05))
            except TimeoutError:
                waiter.cancel()

    def topology_ready(self) -> bool:
        """Every stream of the topology is in the catalog and mirrored here."""
        return all(self.mirrored(s.name) for s in self.node.topology.streams)

    # -- clock -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Called every node tick after the groups ticked."""
        node = self.node
        if node.stopping:
            return
        data = node.data_group
        leading = data.is_leader and data.failed is None
        if not leading:
            self._holder_until = None
        term = data.host.core.term
        if leading and term != self._data_term:
            self._data_term = term
            self._mirror_wanted = True
            self._next_renew = 0.0
        valid = self.lease_valid()
        if self._was_valid and not valid and leading:
            self.lapses += 1
            self.m_lapses.inc()
            log.warning("node %s: the home lease of %s lapsed", node.node_id, self.region)
        self._was_valid = valid
        now = time.monotonic()
        if leading and not self._renewing and now >= self._next_renew:
            self._renewing = True
            self._spawn(self._renew(), "lease")
        if leading and self._mirror_wanted and not self._mirroring:
            self._mirror_wanted = False
            self._mirroring = True
            self._spawn(self._mirror(), "mirror")
        g = self.group
        if g.is_leader and g.host.core.term != self._seeded_term and g.failed is None:
            self._seeded_term = g.host.core.term
            self._spawn(self._seed(), "seed")
        self._watch_voters(now)

    def _watch_voters(self, now: float) -> None:
        """Meta leader: a voter silent for ``REPLACE_AFTER_ELECTIONS`` election timeouts is
        replaced by a live, caught-up learner of its region (promote, then remove the dead
        voter, then add it back as a learner so it catches up if it returns)."""
        g = self.group
        if not g.is_leader or g.failed is not None:
            self._last_active.clear()
            return
        # seconds-scale decisions: a look every WATCH_EVERY_S is plenty (a group status per
        # node tick was a visible share of an idle meta leader's CPU)
        if now < self._next_watch:
            return
        self._next_watch = now + WATCH_EVERY_S
        st = g.status()
        for nid, p in st.progress.items():
            if p.recent_active or nid not in self._last_active:
                self._last_active[nid] = now
        if self._replacing:
            return
        limit_s = REPLACE_AFTER_ELECTIONS * self.group.election_ms / 1000
        regions: dict[NodeId, RegionId] | None = None
        for voter in sorted(st.conf.voters - {self.node.node_id}):
            if now - self._last_active.get(voter, now) < limit_s:
                continue
            if regions is None:  # added nodes' regions are in the metadata state
                regions = self.member_regions()
            region = regions.get(voter)
            if any(
                v != voter
                and regions.get(v) == region
                and (v == self.node.node_id or now - self._last_active.get(v, 0.0) < limit_s)
                for v in st.conf.voters
            ):
                # its region has another voter already (a replacement stopped halfway)
                self._replacing = True
                self._spawn(self._replace(voter, None), "replace")
                return
            spare = [
                (p.match, nid)
                for nid, p in st.progress.items()
                if nid in st.conf.learners
                and regions.get(nid) == region
                and p.recent_active
                and p.match >= st.commit
            ]
            if not spare:
                continue
            self._replacing = True
            self._spawn(self._replace(voter, max(spare)[1]), "replace")
            return

    async def _replace(self, dead: NodeId, learner: NodeId | None) -> None:
        log.warning(
            "metadata voter %s silent for %d election timeouts: replacing it by %s",
            dead,
            REPLACE_AFTER_ELECTIONS,
            learner or "the other voter of its region",
        )
        changes = [ConfChange(ConfChangeOp.PROMOTE, learner)] if learner is not None else []
        changes += [
            ConfChange(ConfChangeOp.REMOVE, dead),
            ConfChange(ConfChangeOp.ADD_LEARNER, dead),
        ]
        try:
            for change in changes:
                await self._conf_change(change)
        except GeostoreError as exc:
            log.warning("replacing metadata voter %s stopped: %s", dead, exc)
        finally:
            self._replacing = False
            self._last_active.pop(dead, None)

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"meta-{what}")
        bg = self.node._background
        bg.add(task)
        task.add_done_callback(bg.discard)

    def _meta_applied(self) -> None:
        self._mirror_wanted = True

    def _lease_applied(self, rec: LeaseRecord) -> None:
        self._observed[rec.region] = (rec.index, time.monotonic())

    async def _renew(self) -> None:
        sent = time.monotonic()
        # Only a lease that starts (none valid when sent) waits for this replica to apply
        # its renewal; extending a valid lease must not blink while the replica catches up.
        starting = not self.lease_valid()
        data = self.node.data_group
        term = data.host.core.term
        # a renewal that commits later than this would grant nothing: give up and resend
        timeout_s = max(0.05, (self.lease_ms - self.drift_ms) / 1000)
        try:
            answer = await self.submit(
                MetaRenewLease(self.region, self.node.node_id, self.lease_ms), timeout_s
            )
        except (GeostoreError, asyncio.CancelledError) as exc:
            self.renew_failures += 1
            # retry soon, but not in a tight loop
            self._next_renew = time.monotonic() + min(self.renew_ms, 250) / 1000
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("lease renewal of %s failed: %s", self.region, exc)
            return
        finally:
            self._renewing = False
        self._next_renew = sent + self.renew_ms / 1000
        if data.is_leader and data.host.core.term == term:
            until = sent + (self.lease_ms - self.drift_ms) / 1000
            self._holder_until = max(self._holder_until or 0.0, until)
            index = answer.get("index")
            if starting and isinstance(index, int):
                self._lease_index = max(self._lease_index, index)
        self.renewals += 1
        self.m_renewals.inc()

    async def _seed(self) -> None:
        """A new metadata leader registers the topology's regions and creates its streams."""
        topo = self.node.topology
        try:
            # "not registered" must mean not registered by any earlier leader either
            await self._read_all_committed()
            for r in topo.regions:
                # once registered, a region's node list follows the membership changes
                # (node add / remove); this node's topology file may predate them
                if r.name not in self.state.regions():
                    await self.propose_local(MetaSetRegion(r.name, tuple(n.id for n in r.nodes)))
            for spec in topo.streams:
                if self.state.stream(spec.name) is not None:
                    continue
                request: dict[str, Any] = {"name": spec.name, "partitions": spec.partitions}
                if spec.key_field is not None:
                    request["key_field"] = spec.key_field
                if spec.homes:
                    request["homes"] = {str(p): r for p, r in spec.homes.items()}
                info = await self.create_stream(request)
                log.info("topology stream %s created in the metadata group", info.definition.name)
        except GeostoreError as exc:
            log.warning("metadata leader could not register the topology: %s", exc)
            self._seeded_term = -1  # try again next tick while leading

    async def _mirror(self) -> None:
        """Copy the applied catalog into this region's data group (leader only)."""
        group = self.node.data_group
        store = group.store
        try:
            creates: list[bytes] = []
            moves: list[bytes] = []
            for ms in self.state.streams():
                d = ms.definition
                try:
                    local = store.stream_info(d.name)
                except ApiError:
                    homes = tuple((h.partition, h.home) for h in ms.homes if h.home is not None)
                    creates.append(
                        encode_command(
                            CreateStream(d.name, d.partitions, d.key_field, d.schema, homes)
                        )
                    )
                    continue
                if len(local.homes) != len(ms.homes):
                    continue  # another definition in this data group: logged when refused
                for mh, lh in zip(ms.homes, local.homes, strict=True):
                    if mh.epoch > lh.epoch:
                        moves += self._missed_moves(d.name, mh, lh.epoch)
            for batch in (creates, moves):
                if not batch or not group.is_leader:
                    continue
                results = await asyncio.wait_for(
                    asyncio.gather(*group.propose(batch)), PROPOSE_TIMEOUT_S
                )
                for res in results:
                    if isinstance(res, Rejected):
                        log.warning("mirroring the catalog in %s: %s", self.region, res.error)
            if moves:
                self._mirror_wanted = True  # creates first, then moves of the same round
        except (GeostoreError, TimeoutError) as exc:
            log.info("mirroring the catalog in %s failed (retried): %s", self.region, exc)
            self._mirror_wanted = True
        finally:
            self._mirroring = False

    def _missed_moves(
        self, stream: StreamName, home: PartitionHome, local_epoch: int
    ) -> list[bytes]:
        """The SetHome commands this region missed for one partition, in epoch order.

        Each carries its own fork: a region that was away during two moves must rewind to
        the first fork (what it wrote there is orphaned even if the second fork lies beyond
        it), so applying only the latest move would keep orphaned events (G7).
        """
        kept = self.state.moves_of(stream, home.partition)
        missed = [m for m in kept if m.epoch > local_epoch]
        if not missed:  # moved by a command that named no fork record: the latest home only
            return [encode_command(SetHome(stream, home.partition, home.home, Epoch(home.epoch)))]
        if len(missed) == len(kept) >= MOVES_KEPT:  # older moves were forgotten
            key = (stream, home.partition)
            if key not in self._unmirrorable:
                self._unmirrorable.add(key)
                log.error(
                    "%s/%s: region %s is at epoch %s but the metadata group remembers moves "
                    "only from epoch %s on; the forks in between are unknown, so this region "
                    "does not follow the partition (replace its nodes to rebuild it by "
                    "snapshot)",
                    stream,
                    home.partition,
                    self.region,
                    local_epoch,
                    missed[0].epoch,
                )
            return []
        return [
            encode_command(SetHome(stream, home.partition, m.home, m.epoch, m.fork_seq))
            for m in missed
        ]

    # -- visibility --------------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        g = self.group.status_json()
        regions = self.node.topology.region_names()
        out: dict[str, Any] = {
            "group": META_GROUP,
            "role": g["role"],
            "leader": g["leader"],
            "term": g["term"],
            "commit": g["commit"],
            "applied": g["applied"],
            "voters": g["voters"],
            "learners": g["learners"],
            "election_ms": self.group.election_ms,
            "failed": g["failed"],
            "ready": self.group.leader is not None
            and self.topology_ready()
            and (not self.node.data_group.is_leader or self.lease_valid()),
            "regions": {r: list(ns) for r, ns in self.state.regions().items()},
            "homes": [
                {"stream": s.definition.name, **h.to_json()}
                for s in self.state.streams()
                for h in s.homes
            ],
            "dictionaries": self.state.dictionary_ids(),
            "renewals": self.renewals,
            "renew_failures": self.renew_failures,
            "lapses": self.lapses,
            "late_acks": self.late_acks,
            "replacements": self.replacements[-10:],
        }
        if len(regions) == 2:
            out["warning"] = (
                "two regions: the metadata group has one voter in each and needs both, so "
                "losing either region stops lease renewals and appends everywhere"
            )
        return out

    def leases_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for region in self.state.leases():
            view = self.lease_view(region)
            if view is not None:
                out[region] = view.to_json()
        return out
