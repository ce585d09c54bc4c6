"""Hosting the geo cores in a node: shipping committed batches between the regions' leaders.

Theory of operation:

- Placement is static for now: a partition's home region and epoch are those its stream was
  created with (the request's ``homes``, the topology's ``[[streams]]``, or round-robin over
  the regions; see :func:`fill_homes`), and every region holds the same stream definitions
  (``POST /v1/streams`` fans the creation out to the other regions). The global metadata
  group, home leases and failover replace this later; until then a home never changes.
- Only the leader of a region's data group hosts cores. On becoming leader it builds a
  :class:`~geostore.geo.Shipper` (the partitions homed here, to every other region) and a
  :class:`~geostore.geo.Receiver` (the partitions homed elsewhere, from the durable
  watermarks of the store); on losing leadership it drops both (neither keeps durable
  state: a new leader's shipper probes the receivers' watermarks and resumes from them).
- Every node tick, and soon after each flush that applied entries, the host reports each
  home partition's applied seq to the shipper (``on_committed``: the leader applies only
  committed entries), ticks both cores and sends what they return. The shipper reads batches through :class:`StoreLog`, the store's
  ``committed_entries``.
- A receiver's ``ProposeBatch`` becomes an ``ApplyRemote`` proposal in the region's own Raft
  log; when any ``ApplyRemote`` applies on the leader (whoever proposed it), the store's
  verdict goes back to the receiver, which acknowledges what the durable watermark covers.
  A refused or lost proposal tells the receiver ``on_propose_failed`` (the shipper resends).
- Envelopes travel over the node's :class:`~geostore.transport.peer.PeerTransport`, whose peers
  include every node of the other regions addressed through the WAN proxy of the link
  (``wan.json`` written by ``cluster up``), so the emulated latency applies. Only leaders send
  geo envelopes, so the sender of the last envelope from a region is taken as that region's
  leader; when nothing came from a region for ``LEADER_STALE_MS``, envelopes go to every node
  of it, and non-leaders drop what they get. Queues are the transport's (bounded, counted);
  the cores bound what is in flight (the shipper's window, one proposal per batch).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geostore.config import Topology
from geostore.errors import ConfigError
from geostore.geo import (
    ApplyVerdict,
    GeoApply,
    GeoApplyResult,
    GeoEntry,
    GeoEnvelope,
    GeoLogError,
    ProposeBatch,
    Receiver,
    ReceiverEffect,
    SendEnvelope,
    Shipper,
    Watermark,
    window_for_link,
)
from geostore.ids import NodeId, PartitionId, RegionId, Seq, StreamName
from geostore.store import (
    ApplyRemote,
    EventStore,
    Rejected,
    RemoteEntry,
    RemoteResult,
    decode_command,
    encode_command,
)

if TYPE_CHECKING:
    from geostore.runtime.node import NodeRuntime

log = logging.getLogger("geostore.runtime.geo")

#: Without an envelope from a region for this long, send to all of its nodes (its leader
#: may have moved), ms.
LEADER_STALE_MS = 1000


def load_wan_routes(path: str | None) -> dict[NodeId, dict[RegionId, str]]:
    """``wan.json`` of ``cluster up``: per destination node, per source region, the proxy URL."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return {
            NodeId(str(node)): {RegionId(str(r)): str(u) for r, u in by_region.items()}
            for node, by_region in raw.get("via", {}).items()
        }
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(path, "via", f"unreadable WAN routes: {exc}") from None


def fill_homes(topology: Topology, request: Any) -> Any:
    """The create request with every partition's home filled in (multi-region only).

    Homes come from the request, else the topology's ``[[streams]]`` entry of that name, else
    round-robin over the regions in topology order. One region: unchanged (no homes needed).
    """
    if len(topology.regions) < 2 or not isinstance(request, dict):
        return request
    name = request.get("name")
    partitions = request.get("partitions", 1)
    if not isinstance(partitions, int) or partitions < 1 or partitions > 1_000_000:
        return request  # validation answers it
    given = request.get("homes")
    if given is not None and not isinstance(given, dict):
        return request
    homes = {str(k): v for k, v in (given or {}).items()}
    spec = next((s for s in topology.streams if s.name == name), None)
    regions = [r.name for r in topology.regions]
    for p in range(partitions):
        if str(p) in homes:
            continue
        if spec is not None and p in spec.homes:
            homes[str(p)] = spec.homes[PartitionId(p)]
        else:
            homes[str(p)] = regions[p % len(regions)]
    return {**request, "homes": homes}


class StoreLog:
    """The shipper's :class:`~geostore.geo.CommittedLog` port over the leader's store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> Sequence[GeoEntry]:
        entries = self.store.committed_entries(
            stream, partition, from_seq, through_seq, events_max, bytes_max
        )
        if not entries:
            raise GeoLogError(f"{stream}/{partition}: nothing applied at seq {from_seq}")
        return [
            GeoEntry(e.seq, e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch)
            for e in entries
        ]


def to_apply_remote(cmd: GeoApply) -> ApplyRemote:
    """The store command of a validated shipped batch (field by field)."""
    return ApplyRemote(
        cmd.stream,
        cmd.partition,
        cmd.epoch,
        cmd.src_start,
        cmd.src_end,
        cmd.crc,
        tuple(
            RemoteEntry(e.seq, e.record_count, e.events, e.producer_id, e.producer_seq, e.epoch)
            for e in cmd.entries
        ),
    )


class GeoHost:
    """The geo cores of one node (see the module docstring)."""

    def __init__(
        self,
        node: NodeRuntime,
        wan_routes: dict[NodeId, dict[RegionId, str]],
        *,
        active: bool = True,
    ) -> None:
        self.node = node
        #: False in single-leader mode: one group holds every partition, nothing to ship;
        #: the host then only knows how this region reaches the other regions' nodes
        self.active = active
        self.region = node.region
        topo = node.topology
        self.others: tuple[RegionId, ...] = tuple(
            r.name for r in topo.regions if r.name != self.region
        )
        self.rtt_ms = {r: topo.rtt_ms(self.region, r) for r in self.others}
        #: nodes of each other region, and how this region reaches them (proxy or direct)
        self.remote_nodes: dict[RegionId, tuple[NodeId, ...]] = {
            r: tuple(topo.region(r).node_ids()) for r in self.others
        }
        self.remote_urls: dict[NodeId, str] = {}
        for nodes in self.remote_nodes.values():
            for n in nodes:
                via = wan_routes.get(n, {}).get(self.region)
                spec = topo.node(n)
                if via is None and spec.port is not None:
                    via = f"http://{spec.host or '127.0.0.1'}:{spec.port}"
                if via is not None:
                    self.remote_urls[n] = via
        # batches in flight per link: the bandwidth-delay product, never below the config
        batch_bytes = self.node.config.geo.batch_bytes_max
        self.windows = {
            r: max(
                node.config.geo.inflight_batches_max,
                window_for_link(
                    self.rtt_ms[r], topo.link(self.region, r).bandwidth_kbps, batch_bytes
                ),
            )
            for r in self.others
        }
        self.shipper: Shipper | None = None
        self.receiver: Receiver | None = None
        self._leader_of: dict[RegionId, tuple[NodeId, int]] = {}
        self._term = -1
        self.dropped_not_leader = 0
        self.envelopes_in = 0
        self.envelopes_out = 0
        self.propose_failures = 0
        self._kicked = False
        if active:
            group = node.data_group
            group.machine.on_remote_applied = self._on_remote_applied
            group.on_applied = self._kick

    @property
    def enabled(self) -> bool:
        return self.active and bool(self.others)

    # -- leadership --------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def _sync_role(self) -> None:
        group = self.node.data_group
        leading = group.is_leader and group.failed is None and not self.node.stopping
        term = group.host.core.term
        if leading and (self.shipper is None or term != self._term):
            self._term = term
            geo = self.node.config.geo
            self.shipper = Shipper(
                self.region,
                self.rtt_ms,
                geo,
                StoreLog(group.store),
                windows=self.windows,
                compression=True,
            )
            # the receiver trusts only what the state machine holds durably
            marks = {
                key: Watermark(wm.epoch, wm.seq) for key, wm in group.store.watermarks().items()
            }
            self.receiver = Receiver(self.region, marks)
            log.info("geo: %s hosts the shipper and receiver of %s", self.node.node_id, self.region)
        elif not leading and self.shipper is not None:
            self.shipper = None
            self.receiver = None
            log.info("geo: %s no longer hosts the cores of %s", self.node.node_id, self.region)

    # -- clock -------------------------------------------------------------------------------

    def _kick(self) -> None:
        """New entries applied: ship them now rather than at the next node tick."""
        if not self._kicked and self.enabled and self.shipper is not None:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self.tick)

    def tick(self) -> None:
        self._kicked = False
        if not self.enabled:
            return
        self._sync_role()
        shipper, receiver = self.shipper, self.receiver
        if shipper is None or receiver is None:
            return
        now = self._now_ms()
        store = self.node.data_group.store
        for d in store.streams():
            info = store.stream_info(d.name)
            for ph in info.homes:
                if ph.home != self.region:
                    continue
                last = store.watermark(d.name, ph.partition).seq
                shipper.on_committed(StreamName(d.name), ph.partition, ph.epoch, last, now)
                for dst in self.others:
                    self.node.metrics.geo_partition(self, d.name, ph.partition, dst)
        for env in shipper.tick(now):
            self._send(env)
        self._effects(receiver.tick(now))
        hist = self.node.metrics.geo_replication
        for _key, dst, _events, ms in shipper.drain_latencies():
            hist.observe(ms / 1000, destination=dst)

    # -- envelopes ---------------------------------------------------------------------------

    def on_envelope(self, peer: NodeId, env: GeoEnvelope) -> None:
        """An envelope from another region's leader (called by the transport)."""
        if (
            not self.enabled
            or env.dst_region != self.region
            or env.src_region not in self.remote_nodes
        ):
            self.dropped_not_leader += 1
            return
        now = self._now_ms()
        self._leader_of[env.src_region] = (peer, now)
        self._sync_role()
        shipper, receiver = self.shipper, self.receiver
        if shipper is None or receiver is None:
            self.dropped_not_leader += 1
            return
        self.envelopes_in += 1
        shipper.on_envelope(env, now)
        self._effects(receiver.on_envelope(env, now))
        for out in shipper.tick(now):
            self._send(out)

    def _send(self, env: GeoEnvelope) -> None:
        dst = env.dst_region
        known = self._leader_of.get(dst)
        if known is not None and self._now_ms() - known[1] < LEADER_STALE_MS:
            targets: tuple[NodeId, ...] = (known[0],)
        else:
            targets = self.remote_nodes.get(dst, ())
        for n in targets:
            if n in self.remote_urls:
                self.node.transport.send(n, env)
                self.envelopes_out += 1

    def _effects(self, effects: list[ReceiverEffect]) -> None:
        for eff in effects:
            if isinstance(eff, SendEnvelope):
                self._send(eff.envelope)
            elif isinstance(eff, ProposeBatch):
                self._propose(eff.cmd)
            # LearnDictionary: no trained dictionaries yet (GeoSettings.use_dictionary off)

    def _propose(self, cmd: GeoApply) -> None:
        group = self.node.data_group
        receiver = self.receiver
        try:
            (fut,) = group.propose([encode_command(to_apply_remote(cmd))])
        except Exception:  # not usable any more: the shipper resends after a timeout
            self.propose_failures += 1
            if receiver is not None:
                receiver.on_propose_failed(cmd.stream, cmd.partition)
            return

        def done(f: asyncio.Future[Any]) -> None:
            failed = f.cancelled() or f.exception() is not None
            if not failed and isinstance(f.result(), Rejected):
                failed = True
            if failed:
                self.propose_failures += 1
                if self.receiver is receiver and receiver is not None:
                    receiver.on_propose_failed(cmd.stream, cmd.partition)

        fut.add_done_callback(done)

    def _on_remote_applied(self, result: RemoteResult, data: bytes) -> None:
        """An ApplyRemote applied on this node (any proposer): tell the leader's receiver."""
        receiver = self.receiver
        if receiver is None or not self.node.data_group.is_leader:
            return
        cmd = decode_command(data)
        assert isinstance(cmd, ApplyRemote)
        header = GeoApply(
            cmd.stream, cmd.partition, cmd.epoch, cmd.src_start, cmd.src_end, cmd.crc, ()
        )
        wm = Watermark(result.watermark.epoch, result.watermark.seq)
        verdict = GeoApplyResult(wm, ApplyVerdict(result.verdict.value))
        self._effects(receiver.on_applied(header, verdict, self._now_ms()))

    def leader_seen(self, region: RegionId) -> NodeId | None:
        """The node of ``region`` that last sent this node a geo envelope (its leader then)."""
        seen = self._leader_of.get(region)
        return None if seen is None else seen[0]

    # -- visibility --------------------------------------------------------------------------

    def lag_rows(self) -> list[dict[str, Any]]:
        """Per (partition, destination): lag in events and ms, batches in flight, state."""
        shipper = self.shipper
        if shipper is None:
            return []
        now = self._now_ms()
        rows = []
        for stream, partition in shipper.partitions():
            for dst in shipper.destinations():
                lag = shipper.lag(stream, partition, dst, now)
                rows.append(
                    {
                        "stream": stream,
                        "partition": partition,
                        "destination": dst,
                        "state": lag.state.value,
                        "events": lag.events,
                        "ms": lag.ms,
                        "inflight_batches": lag.inflight_batches,
                        "acked": lag.acked,
                        "commit": lag.commit,
                    }
                )
        return rows

    def status_json(self) -> dict[str, Any]:
        shipper, receiver = self.shipper, self.receiver
        out: dict[str, Any] = {
            "placement": "static (stream homes, epoch as created); no metadata group, "
            "leases or failover yet",
            "role": "leader" if shipper is not None else "idle",
            "regions": list(self.others),
            "windows": dict(self.windows),
            "leaders_seen": {r: n for r, (n, _) in self._leader_of.items()},
            "envelopes_in": self.envelopes_in,
            "envelopes_out": self.envelopes_out,
            "dropped_not_leader": self.dropped_not_leader,
            "propose_failures": self.propose_failures,
        }
        if shipper is not None:
            s = shipper.stats
            out["shipper"] = {
                "batches_sent": s.batches_sent,
                "events_sent": s.events_sent,
                "bytes_raw": s.bytes_raw,
                "bytes_compressed": s.bytes_payload,
                "retransmits": s.retransmits,
                "rewinds": s.rewinds,
                "heartbeats_sent": s.heartbeats_sent,
            }
        if receiver is not None:
            out["incoming"] = self._incoming_rows(receiver)
            r = receiver.stats
            out["receiver"] = {
                "batches": r.batches,
                "proposed": r.proposed,
                "acks": r.acks,
                "gaps_nacked": r.gaps_nacked,
                "duplicates_reacked": r.duplicates_reacked,
                "propose_resets": r.propose_resets,
            }
        return out

    def _incoming_rows(self, receiver: Receiver) -> list[dict[str, Any]]:
        """Per partition homed elsewhere: the durable watermark here and the events behind
        the home's commit point as its last heartbeat told (0 until one arrived)."""
        store = self.node.data_group.store
        rows = []
        for d in store.streams():
            for ph in store.stream_info(d.name).homes:
                if ph.home is None or ph.home == self.region:
                    continue
                name = StreamName(d.name)
                wm = receiver.watermark(name, ph.partition)
                rows.append(
                    {
                        "stream": d.name,
                        "partition": ph.partition,
                        "source": ph.home,
                        "watermark": {"epoch": wm.epoch, "seq": wm.seq},
                        "behind_events": receiver.lag_events(name, ph.partition),
                        "pending_batches": receiver.pending(name, ph.partition),
                    }
                )
        return rows

    def bytes_shipped(self, kind: str) -> float:
        shipper = self.shipper
        if shipper is None:
            return 0.0
        return float(shipper.stats.bytes_raw if kind == "raw" else shipper.stats.bytes_payload)

    def lag_of(self, stream: StreamName, partition: PartitionId, dst: RegionId, what: str) -> float:
        shipper = self.shipper
        if shipper is None or (stream, partition) not in shipper.partitions():
            return 0.0
        lag = shipper.lag(stream, partition, dst, self._now_ms())
        return float({"events": lag.events, "ms": lag.ms, "inflight": lag.inflight_batches}[what])
