"""Hosting the geo cores in a node: shipping committed batches between the regions' leaders.

Theory of operation:

- Placement comes from the global metadata group (:mod:`.meta`): a stream's homes are chosen
  at creation (the request's ``homes``, the topology's ``[[streams]]``, or round-robin over
  the regions; see :func:`fill_homes`), and each region's leader mirrors the catalog, homes
  and epochs into its own data group, which is where this module reads them.
- Only the leader of a region's data group hosts cores. On becoming leader it builds a
  :class:`~geostore.geo.Shipper` (the partitions homed here, to every other region) and a
  :class:`~geostore.geo.Receiver` (the partitions homed elsewhere, from the durable
  watermarks of the store); on losing leadership it drops both (neither keeps durable
  state: a new leader's shipper probes the receivers' watermarks and resumes from them).
- Every node tick, and soon after each flush that applied entries, the host reports each
  home partition's applied seq to the shipper (``on_committed``: the leader applies only
  committed entries), ticks both cores and sends what they return. The shipper reads batches through :class:`StoreLog`, the store's
  ``committed_entries``. The node's tick (20 ms by default) is too coarse to end a batch's
  ``geo.linger_ms`` on time: after each tick of the shipper (node tick, kick, timer,
  incoming envelope) the host sets one timer for the moment the earliest lingering batch
  falls due (``Shipper.linger_due_ms``).
- A receiver's ``ProposeBatch`` becomes an ``ApplyRemote`` proposal in the region's own Raft
  log; when any ``ApplyRemote`` applies on the leader (whoever proposed it), the store's
  verdict goes back to the receiver, which acknowledges what the durable watermark covers.
  A refused or lost proposal tells the receiver ``on_propose_failed`` (the shipper resends).
- Dictionaries (``geo.use_dictionary``): the home leader trains one per stream from the
  stream's first ``geo.dictionary_train_events`` committed events, off the event loop (a
  worker thread; :class:`~geostore.geo.dictionary.DictionaryTrainer` decides when), and
  hands it to its shipper, which compresses batches of at most
  ``geo.dictionary_batch_events_max`` events with it. Trained dictionaries outlive a
  shipper rebuilt on the same node (term change); a new home leader trains its own.
- A receiving leader stores every dictionary it learns in a :class:`DictionaryStore`; the
  one used now is :class:`FileDictionaryStore`: one fsync'd file per id under the node's
  data dir, bounded by ``geo.dictionaries_max``/``geo.dictionaries_bytes_max`` (the
  receiver's least recently used are deleted). Choice: the file store, not the group's
  replicated state, because a dictionary is only a cache: a new leader of the receiving
  region that lacks it answers ``unknown_dictionary`` and gets it in one round trip, and
  the data itself never depends on it (proposals carry decoded entries). It keeps the
  store's commands unchanged and the dictionary off the region's Raft log. The metadata
  group will hold dictionaries by id later; a ``DictionaryStore`` over it then replaces the
  file store, so every node of a region has them before it leads.
- Per-event lag: the home reports its wall clock with each commit point; batches carry
  these commit marks; when an ``ApplyRemote`` applies on the receiving leader, the host
  records ``now (wall ms) - home commit (wall ms)`` for each event of the batch, per
  (stream, partition, source region), in a bounded histogram (``replication_lag`` rows with
  ``direction: in`` in ``/v1/status``; ``geostore_geo_apply_lag_seconds`` in ``/metrics``).
  Across machines this includes the clocks' skew; on one machine it is exact. Marks live
  in memory between proposal and apply, so a batch proposed by a previous leader is
  applied without a lag sample.
- Envelopes travel over the node's :class:`~geostore.transport.peer.PeerTransport`, whose peers
  include every node of the other regions addressed through the WAN proxy of the link
  (``wan.json`` written by ``cluster up``), so the emulated latency applies. Only leaders send
  geo envelopes, so the sender of the last envelope from a region is taken as that region's
  leader; when nothing came from a region for ``LEADER_STALE_MS``, the last leader still gets
  the shipper's envelopes and every other node of the region a heartbeat, which the current
  leader acks (never yet heard from: every node gets the envelope); non-leaders drop what
  they get. Queues are the transport's (bounded, counted);
  the cores bound what is in flight (the shipper's window, one proposal per batch).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from geostore.codec import CompressionDictionary, dictionary_id_of
from geostore.config import Topology
from geostore.errors import CodecError, ConfigError
from geostore.geo import (
    ApplyVerdict,
    GeoApply,
    GeoApplyResult,
    GeoBatch,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoLogError,
    LearnDictionary,
    ProposeBatch,
    Receiver,
    ReceiverEffect,
    SendEnvelope,
    Shipper,
    ShipperStats,
    Watermark,
    window_for_link,
)
from geostore.geo.dictionary import DictionaryTrainer, train, training_samples
from geostore.ids import Epoch, NodeId, PartitionId, RegionId, Seq, StreamName
from geostore.runtime.metrics import QuantileHistogram
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

#: Proposed batches whose commit marks wait for their apply (older ones are forgotten).
MARKS_PENDING_MAX = 4096
#: (stream, partition, source) series of the per-event lag histogram kept on one node.
LAG_SERIES_MAX = 4096
#: Partitions whose source positions a node tracks for failover reports (more: unknown).
SOURCE_KEYS_MAX = 65_536
#: Most bytes of committed entries read as dictionary training samples.
TRAIN_SAMPLE_BYTES_MAX = 8 * 1024 * 1024
#: Training samples are read this many events at a time, the event loop free in between.
TRAIN_READ_CHUNK_EVENTS = 250


def _wall_ms() -> int:
    return int(time.time() * 1000)


class DictionaryStore(Protocol):
    """Where a receiving node keeps the dictionaries it learned (durably), by id.

    Today one fsync'd file per id (:class:`FileDictionaryStore`); the metadata group can
    back this later so that every node of a region holds them before it leads.
    """

    def load(self) -> list[CompressionDictionary]:
        """Every stored dictionary whose bytes match its id, least recently stored first."""
        ...

    def put(self, dictionary: CompressionDictionary) -> None:
        """Store durably (returns once on disk)."""
        ...

    def remove(self, dict_id: int) -> None: ...


class FileDictionaryStore:
    """One file ``<id>.zdict`` per dictionary: written to a temporary file, fsync'd, renamed
    and the folder fsync'd, so a crash leaves the old state or the whole new file."""

    SUFFIX = ".zdict"

    def __init__(self, folder: str, bytes_max: int) -> None:
        self.folder = folder
        self.bytes_max = bytes_max

    def _path(self, dict_id: int) -> str:
        return os.path.join(self.folder, f"{dict_id}{self.SUFFIX}")

    def load(self) -> list[CompressionDictionary]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        found: list[tuple[float, CompressionDictionary]] = []
        for name in names:
            path = os.path.join(self.folder, name)
            if not name.endswith(self.SUFFIX):
                if name.endswith(".tmp"):  # a write a crash interrupted
                    os.unlink(path)
                continue
            try:
                dict_id = int(name[: -len(self.SUFFIX)])
                if os.path.getsize(path) > self.bytes_max:
                    raise ValueError("over the size bound")
                with open(path, "rb") as f:
                    data = f.read()
                if dictionary_id_of(data) != dict_id:
                    raise ValueError("bytes do not match the id")
                found.append((os.path.getmtime(path), CompressionDictionary(dict_id, data)))
            except (OSError, ValueError) as exc:
                log.warning("geo: dropping dictionary file %s: %s", path, exc)
                os.unlink(path)
        return [d for _, d in sorted(found, key=lambda x: (x[0], x[1].dict_id))]

    def put(self, dictionary: CompressionDictionary) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = self._path(dictionary.dict_id)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(dictionary.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_folder()

    def remove(self, dict_id: int) -> None:
        try:
            os.unlink(self._path(dict_id))
        except FileNotFoundError:
            return
        self._sync_folder()

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


async def read_training_entries(
    store: EventStore,
    stream: StreamName,
    region: RegionId,
    events_max: int,
    chunk_events: int,
    bytes_max: int,
) -> list[GeoEntry]:
    """The first committed entries of ``stream``'s partitions homed in ``region``: whole
    entries, up to ``events_max`` events and ``bytes_max`` bytes (at least one entry per
    partition that has any), for training a dictionary.

    Read ``chunk_events`` at a time with a yield to the event loop between chunks: 5,000
    single-event entries took 0.2-0.45 s in one piece on a busy machine, past the election
    timeout, and the region changed leader whenever it trained a dictionary. Raises
    GeoLogError when they are not readable here.
    """
    assert events_max >= 1 and chunk_events >= 1 and bytes_max >= 1
    log_port = StoreLog(store)
    entries: list[GeoEntry] = []
    events = bytes_read = 0
    for ph in store.stream_info(stream).homes:
        if ph.home != region:
            continue
        last = store.watermark(stream, ph.partition).seq
        next_seq = 0
        while next_seq <= last and events < events_max and bytes_read < bytes_max:
            got = log_port.read_committed(
                stream,
                ph.partition,
                Seq(next_seq),
                last,
                min(chunk_events, events_max - events),
                bytes_max - bytes_read,
            )
            entries.extend(got)
            events += sum(e.record_count for e in got)
            bytes_read += sum(len(e.events) for e in got)
            next_seq = got[-1].last_seq + 1
            await asyncio.sleep(0)
    return entries


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
        #: what this node's shippers built, over the node's lifetime (every shipper it hosts
        #: counts into it), so the counters never go back when leadership moves
        self.ship_stats: ShipperStats | None = None
        self.receiver: Receiver | None = None
        self._leader_of: dict[RegionId, tuple[NodeId, int]] = {}
        self._term = -1
        self._placement = -1
        self.dropped_not_leader = 0
        self.envelopes_in = 0
        self.envelopes_out = 0
        self.propose_failures = 0
        self._kicked = False
        #: the call that ticks again when a lingering batch falls due (see ``_arm_linger``)
        self._linger_timer: asyncio.TimerHandle | None = None
        #: (applied index, shipper) at the last scan of the store (see ``tick``)
        self._scanned: tuple[int, Shipper | None] | None = None
        geo = node.config.geo
        self.dictionary_store: DictionaryStore = FileDictionaryStore(
            os.path.join(node.data_dir, "dictionaries"), geo.dictionary_bytes_max
        )
        self.dictionary_errors = 0
        self._trainer = DictionaryTrainer(geo.dictionary_train_events)
        #: dictionaries this node trained as home leader, kept across shipper rebuilds
        self._trained: dict[StreamName, CompressionDictionary] = {}
        #: commit marks of proposed batches until they apply (bounded, oldest dropped)
        self._marks: OrderedDict[
            tuple[StreamName, PartitionId, Epoch, Seq, Seq],
            tuple[RegionId, tuple[tuple[Seq, int], ...]],
        ] = OrderedDict()
        #: per-event lag at apply, per (stream, partition, source region)
        self.apply_lag: dict[tuple[str, int, str], QuantileHistogram] = {}
        self._training_tasks: set[asyncio.Task[None]] = set()
        # What a failover reports (RPO): per partition homed elsewhere the highest seq its
        # home said it committed (batches, heartbeats) and the home commit wall time of the
        # last event applied here; per region the wall time of its last envelope.
        self._source_known: dict[tuple[str, int], int] = {}
        self._applied_marks: dict[tuple[str, int], tuple[int, int]] = {}
        self._contact_wall: dict[RegionId, int] = {}
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
        placement = group.store.placement_version
        if leading and (self.shipper is None or term != self._term or placement != self._placement):
            # A move (or failback) changes what this region ships and receives, and may
            # rewind a receiver's watermark to a fork: fresh cores probe every destination
            # and take the store's durable watermarks, as after a leader change.
            self._term = term
            self._placement = placement
            geo = self.node.config.geo
            self.shipper = Shipper(
                self.region,
                self.rtt_ms,
                geo,
                StoreLog(group.store),
                windows=self.windows,
                dictionaries=self._trained,
                compression=True,
            )
            # counters count for the node's lifetime: across rebuilds and leadership changes
            if self.ship_stats is None:
                self.ship_stats = self.shipper.stats
            else:
                self.shipper.stats = self.ship_stats
            # the receiver trusts only what the state machine holds durably
            marks = {
                key: Watermark(wm.epoch, wm.seq) for key, wm in group.store.watermarks().items()
            }
            stored = self._load_dictionaries()
            self.receiver = Receiver(
                self.region,
                marks,
                dictionaries=stored,
                dictionaries_max=geo.dictionaries_max,
                dictionaries_bytes_max=geo.dictionaries_bytes_max,
                dictionary_bytes_max=geo.dictionary_bytes_max,
            )
            kept = set(self.receiver.dictionary_ids())
            for d in stored:
                if d.dict_id not in kept:  # over the bounds (the config shrank)
                    self._remove_dictionary(d.dict_id)
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

    def _arm_linger(self, shipper: Shipper, now_ms: int) -> None:
        """A batch lingering to fill is due before the next node tick: tick again then (the
        node's clock is coarser than ``geo.linger_ms``; one timer at a time, the earliest)."""
        due = shipper.linger_due_ms()
        if due is None or due <= now_ms or due >= now_ms + self.node.tick_ms:
            return  # (a batch due now waits for a window slot: an ack ticks it out)
        timer = self._linger_timer
        if timer is not None:
            if timer.when() <= self._loop_time_of(due):
                return
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._linger_timer = loop.call_at(self._loop_time_of(due), self._linger_fired)

    def _loop_time_of(self, due_ms: int) -> float:
        """``due_ms`` (this host's monotonic ms) on the event loop's clock."""
        loop = asyncio.get_running_loop()
        return loop.time() + max(0, due_ms - self._now_ms()) / 1000

    def _linger_fired(self) -> None:
        self._linger_timer = None
        self.tick()

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
        # what the shipper learns from the store changes only when entries are applied (or
        # the cores were rebuilt): most ticks of a quiet or busy node skip the scan
        seen = (store.applied_index, shipper)
        if seen != self._scanned:
            self._scanned = seen
            self._scan(store, shipper, now)
        for env in shipper.tick(now):
            self._send(env)
        self._arm_linger(shipper, now)
        self._effects(receiver.tick(now))
        hist = self.node.metrics.geo_replication
        for _key, dst, _events, ms in shipper.drain_latencies():
            hist.observe(ms / 1000, destination=dst)

    def _scan(self, store: EventStore, shipper: Shipper, now: int) -> None:
        """Tell the shipper each home partition's committed end; train dictionaries due."""
        wall = _wall_ms()
        train = self.node.config.geo.use_dictionary
        for d in store.streams():
            info = store.stream_info(d.name)
            committed = 0
            name = StreamName(d.name)
            for ph in info.homes:
                if ph.home != self.region:
                    continue
                last = store.watermark(d.name, ph.partition).seq
                committed += last + 1
                shipper.on_committed(name, ph.partition, ph.epoch, last, now, wall)
                for dst in self.others:
                    self.node.metrics.geo_partition(self, d.name, ph.partition, dst)
            if train and committed > 0 and self._trainer.due(name, committed):
                self._start_training(name, committed)

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
        self._contact_wall[env.src_region] = _wall_ms()
        self._note_source(env)
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
        # an ack that freed the window, or a probe answer, may have left a batch lingering
        self._arm_linger(shipper, now)

    def _note_source(self, env: GeoEnvelope) -> None:
        known = self._source_known
        for item in env.items:
            if type(item) is GeoBatch:
                pairs: tuple[tuple[str, int, int], ...] = (
                    (item.stream, item.partition, item.src_end),
                )
            elif type(item) is GeoHeartbeat and not item.reply:
                pairs = tuple((p.stream, p.partition, p.seq) for p in item.positions)
            else:
                continue
            for stream, part, seq in pairs:
                key = (stream, part)
                if key in known or len(known) < SOURCE_KEYS_MAX:
                    known[key] = max(known.get(key, -1), seq)

    def source_known(self, stream: str, partition: int) -> int | None:
        """The highest seq of a partition homed elsewhere that its home said it committed
        (None: nothing heard since this node started)."""
        return self._source_known.get((stream, partition))

    def contact_wall_ms(self, region: str) -> int | None:
        """Wall ms of the last geo envelope this node got from ``region`` (None: never)."""
        return self._contact_wall.get(RegionId(region))

    def applied_commit_wall_ms(self, stream: str, partition: int, seq: int) -> int | None:
        """The home commit wall time of the last event applied here, when that event is at
        or before ``seq`` (what a failover forking at ``seq`` keeps); None when unknown."""
        mark = self._applied_marks.get((stream, partition))
        return None if mark is None or mark[0] > seq else mark[1]

    def _send(self, env: GeoEnvelope, *, shipped: bool = True) -> None:
        """Send to the destination region's leader (every node of it when that is unknown or
        silent); the shipper's envelopes (``shipped``) count into its per-destination bytes."""
        dst = env.dst_region
        known = self._leader_of.get(dst)
        leader = known[0] if known is not None else None
        stale = known is None or self._now_ms() - known[1] >= LEADER_STALE_MS
        targets = self.remote_nodes.get(dst, ()) if stale or leader is None else (leader,)
        # Silent for a while but known: the last leader still gets the envelope; the other
        # nodes get only a heartbeat, which the region's current leader acks (so it becomes
        # known), instead of a copy of every batch: on an overloaded machine silences of a
        # second are common, and each copy costs the WAN bytes and the CPU of a whole
        # envelope for a node that drops it. (Batches sent to a leader that lost its role
        # are resent to the new one after the retransmission timeout.)
        probe: GeoEnvelope | None = None
        if stale and leader is not None and shipped and self.shipper is not None:
            probe = GeoEnvelope(env.src_region, dst, (self.shipper.heartbeat(),))
        stats = self.ship_stats if shipped else None
        per = stats.destinations.get(dst) if stats is not None else None
        copies = 0
        for n in targets:
            if n not in self.remote_urls:
                continue
            out = env if probe is None or n == leader else probe
            size = self.node.transport.send_sized(n, out)
            self.envelopes_out += 1
            if per is not None and size:
                per.envelope_bytes += size
                per.envelope_copies += 1 if copies else 0
                copies += 1

    def _effects(self, effects: list[ReceiverEffect]) -> None:
        for eff in effects:
            if isinstance(eff, SendEnvelope):
                self._send(eff.envelope, shipped=False)  # the receiver's acks
            elif isinstance(eff, ProposeBatch):
                self._propose(eff.cmd, eff.src_region, eff.commit_marks)
            elif isinstance(eff, LearnDictionary):
                self._store_dictionary(eff)

    # -- dictionaries ------------------------------------------------------------------------

    def _load_dictionaries(self) -> list[CompressionDictionary]:
        try:
            return self.dictionary_store.load()
        except OSError as exc:  # unreadable folder: start empty, shippers resend on demand
            self.dictionary_errors += 1
            log.warning("geo: cannot load stored dictionaries: %s", exc)
            return []

    def _store_dictionary(self, eff: LearnDictionary) -> None:
        """Keep a learned dictionary on disk (a cache: a failure costs one more fetch)."""
        try:
            self.dictionary_store.put(eff.dictionary)
        except OSError as exc:
            self.dictionary_errors += 1
            log.warning("geo: cannot store dictionary %d: %s", eff.dictionary.dict_id, exc)
        for dict_id in eff.evicted:
            self._remove_dictionary(dict_id)

    def _remove_dictionary(self, dict_id: int) -> None:
        try:
            self.dictionary_store.remove(dict_id)
        except OSError as exc:
            self.dictionary_errors += 1
            log.warning("geo: cannot remove dictionary %d: %s", dict_id, exc)

    def _start_training(self, stream: StreamName, committed: int) -> None:
        """Read the stream's first committed events on the event loop, a chunk at a time,
        then encode the samples and train in a worker thread."""
        self._trainer.started(stream)
        task = asyncio.get_running_loop().create_task(self._train(stream, committed))
        self._training_tasks.add(task)
        task.add_done_callback(self._training_tasks.discard)

    async def _train(self, stream: StreamName, committed: int) -> None:
        geo = self.node.config.geo
        dictionary: CompressionDictionary | None = None
        t0 = time.perf_counter()
        try:
            try:
                entries = await read_training_entries(
                    self.node.data_group.store,
                    stream,
                    self.region,
                    geo.dictionary_train_events,
                    TRAIN_READ_CHUNK_EVENTS,
                    TRAIN_SAMPLE_BYTES_MAX,
                )
            except GeoLogError as exc:  # the first events are not readable here
                log.info("geo: cannot read training events of %s: %s", stream, exc)
                return
            read_ms = (time.perf_counter() - t0) * 1000

            def samples_then_train() -> CompressionDictionary:
                # Both in the worker thread: encoding 5,000 events as batch payloads is
                # ~0.3 s of CPU (more on a busy machine), which on the event loop held
                # heartbeats back past the election timeout. Here the loop gets the
                # interpreter every switch interval; zstd trains without it.
                samples = training_samples(
                    entries, geo.dictionary_batch_events_max, geo.columnar_batches
                )
                return train(samples, geo.dictionary_bytes_max, geo.zstd_level)

            t1 = time.perf_counter()
            try:
                dictionary = await asyncio.to_thread(samples_then_train)
            except CodecError as exc:
                log.info("geo: no dictionary for %s yet (%s)", stream, exc.message)
                return
        finally:
            self._trainer.finished(stream, committed, dictionary)
        self._trained[stream] = dictionary
        if self.shipper is not None:
            self.shipper.set_dictionary(stream, dictionary)
        log.info(
            "geo: trained dictionary %d (%d bytes) for %s from %d events "
            "(read in %.0f ms on the event loop, encoded and trained in %.0f ms aside)",
            dictionary.dict_id,
            len(dictionary.data),
            stream,
            sum(e.record_count for e in entries),
            read_ms,
            (time.perf_counter() - t1) * 1000,
        )

    # -- proposals ---------------------------------------------------------------------------

    def _propose(
        self,
        cmd: GeoApply,
        src: RegionId | None = None,
        commit_marks: tuple[tuple[Seq, int], ...] = (),
    ) -> None:
        group = self.node.data_group
        receiver = self.receiver
        if src is not None and commit_marks:
            key = (cmd.stream, cmd.partition, cmd.epoch, cmd.src_start, cmd.src_end)
            self._marks[key] = (src, commit_marks)
            self._marks.move_to_end(key)
            while len(self._marks) > MARKS_PENDING_MAX:
                self._marks.popitem(last=False)
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
        if self.node.data_group.store.placement_version != self._placement:
            return  # a move (a failback's rewind to a fork) applied: cores rebuilt next tick
        cmd = decode_command(data)
        assert isinstance(cmd, ApplyRemote)
        marks = self._marks.pop(
            (cmd.stream, cmd.partition, cmd.epoch, cmd.src_start, cmd.src_end), None
        )
        if marks is not None and result.verdict.value == ApplyVerdict.APPLIED.value:
            self._record_lag(cmd, *marks)
        header = GeoApply(
            cmd.stream, cmd.partition, cmd.epoch, cmd.src_start, cmd.src_end, cmd.crc, ()
        )
        wm = Watermark(result.watermark.epoch, result.watermark.seq)
        verdict = GeoApplyResult(wm, ApplyVerdict(result.verdict.value))
        self._effects(receiver.on_applied(header, verdict, self._now_ms()))

    def _record_lag(
        self, cmd: ApplyRemote, src: RegionId, marks: tuple[tuple[Seq, int], ...]
    ) -> None:
        """Each event's lag: this leader's wall clock now minus its home commit wall time."""
        key = (str(cmd.stream), int(cmd.partition), str(src))
        if marks:
            pkey = (key[0], key[1])
            if pkey in self._applied_marks or len(self._applied_marks) < SOURCE_KEYS_MAX:
                last, wall = marks[-1]
                self._applied_marks[pkey] = (min(last, cmd.src_end), wall)
        hist = self.apply_lag.get(key)
        if hist is None:
            if len(self.apply_lag) >= LAG_SERIES_MAX:
                return
            hist = self.apply_lag[key] = QuantileHistogram()
        now = _wall_ms()
        prev = cmd.src_start - 1
        prom = self.node.metrics.geo_apply_lag
        for last, commit_ms in marks:
            last = min(last, cmd.src_end)
            n = last - prev
            if n <= 0:
                continue
            lag_ms = max(0, now - commit_ms)  # a clock behind the home's reads as 0
            hist.observe(lag_ms, n)
            prom.observe_many(lag_ms / 1000, n, stream=key[0], partition=str(key[1]), source=key[2])
            prev = last

    def leader_seen(self, region: RegionId) -> NodeId | None:
        """The node of ``region`` that last sent this node a geo envelope (its leader then)."""
        seen = self._leader_of.get(region)
        return None if seen is None else seen[0]

    # -- visibility --------------------------------------------------------------------------

    def lag_rows(self) -> list[dict[str, Any]]:
        """On the leader: per home partition and destination (``direction: out``) the
        shipping lag in events and ms, batches in flight, state; then per partition homed
        elsewhere and source region (``direction: in``) the per-event lag measured here at
        apply (home commit wall clock to this leader's wall clock): p50, p99, max, count."""
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
                        "direction": "out",
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
        for (lag_stream, lag_partition, src), hist in sorted(self.apply_lag.items()):
            rows.append(
                {
                    "direction": "in",
                    "stream": lag_stream,
                    "partition": lag_partition,
                    "source": src,
                    "events_measured": hist.count,
                    "p50_ms": hist.quantile(0.5),
                    "p99_ms": hist.quantile(0.99),
                    "max_ms": hist.max_ms,
                }
            )
        return rows

    def status_json(self) -> dict[str, Any]:
        shipper, receiver = self.shipper, self.receiver
        out: dict[str, Any] = {
            "placement": "metadata group (homes and epochs mirrored into the data group)",
            "role": "leader" if shipper is not None else "idle",
            "regions": list(self.others),
            "windows": dict(self.windows),
            "leaders_seen": {r: n for r, (n, _) in self._leader_of.items()},
            "envelopes_in": self.envelopes_in,
            "envelopes_out": self.envelopes_out,
            "dropped_not_leader": self.dropped_not_leader,
            "propose_failures": self.propose_failures,
        }
        if self.ship_stats is not None:
            s = self.ship_stats
            out["shipper"] = {
                "batches_sent": s.batches_sent,
                "events_sent": s.events_sent,
                "bytes_raw": s.bytes_raw,
                "bytes_compressed": s.bytes_payload,
                "retransmits": s.retransmits,
                "rewinds": s.rewinds,
                "replayed": s.replayed,
                "gaps_nacked": s.gaps_nacked,
                "heartbeats_sent": s.heartbeats_sent,
                "batches_with_dictionary": s.batches_with_dictionary,
                "dictionaries_sent": s.dictionaries_sent,
                "dictionary_nacks": s.dictionary_nacks,
                "dictionaries": {
                    str(k): v for k, v in (shipper.dictionary_ids() if shipper else {}).items()
                },
                "destinations": {
                    str(dst): {
                        "batches_sent": d.batches_sent,
                        "events_sent": d.events_sent,
                        "bytes_raw": d.bytes_raw,
                        "bytes_compressed": d.bytes_payload,
                        "retransmits": d.retransmits,
                        "envelope_bytes": d.envelope_bytes,
                        "envelope_copies": d.envelope_copies,
                    }
                    for dst, d in s.destinations.items()
                },
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
                "unknown_dictionary": r.unknown_dictionary,
                "dictionaries_learned": r.dictionaries_learned,
                "dictionaries_refused": r.dictionaries_refused,
                "dictionaries_evicted": r.dictionaries_evicted,
                "dictionaries": list(receiver.dictionary_ids()),
                "dictionary_store_errors": self.dictionary_errors,
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

    def bytes_shipped(self, kind: str, dst: RegionId | None = None) -> float:
        """Bytes this node's shippers built into batches, ``raw`` or ``compressed``, for
        ``dst`` (every destination when None), over the node's lifetime; 0 on a node that
        never led its region."""
        total = self.ship_stats
        if total is None:
            return 0.0
        stats = total if dst is None else total.destinations.get(dst)
        if stats is None:
            return 0.0
        return float(stats.bytes_raw if kind == "raw" else stats.bytes_payload)

    def lag_of(self, stream: StreamName, partition: PartitionId, dst: RegionId, what: str) -> float:
        shipper = self.shipper
        if shipper is None or (stream, partition) not in shipper.partitions():
            return 0.0
        lag = shipper.lag(stream, partition, dst, self._now_ms())
        return float({"events": lag.events, "ms": lag.ms, "inflight": lag.inflight_batches}[what])
