"""One node process: the hosted Raft groups, peer links, the client API and the clock.

Theory of operation:

- One aiohttp application on one port serves the client API (:mod:`.api`) and the peer
  transport's WebSocket endpoint (``/v1/peer``); one :class:`PeerTransport` multiplexes the
  messages of every hosted group over one link per peer (messages name their group).
- Groups live in a map ``GroupId -> GroupRuntime``; in multi-leader mode that is the
  region's data group (``data-<region>``) and, with several regions, the global metadata
  group ``meta`` (:mod:`.meta`: catalog, homes, epochs, home leases); in single-leader
  mode the one global data group
  (``data-global``) whose voters are every node of every region; inbound messages are
  routed by their ``group`` field. In single-leader mode the geo host is off (every
  partition is led from one place), the peers of other regions are reached through their
  WAN proxies for Raft traffic and forwarded requests alike, and
  :class:`~geostore.runtime.placement.LeaderPlacement` keeps the leader in the preferred
  region.
- :class:`~geostore.runtime.geo.GeoHost` hosts the geo cores on the data group's leader;
  geo envelopes arrive on the same transport (the other regions' nodes are peers too,
  reached through the WAN proxies) and are routed to it instead of a group.
- The clock is one task that ticks every group every ``tick_ms`` of the monotonic clock.
  When the loop was held up (a long fsync) ticks are not replayed in a burst: a stalled
  node should look slow to its peers, not fire a volley of elections.
- Every task belongs to the node's TaskGroup; :meth:`NodeRuntime.run` returns after a
  graceful :meth:`NodeRuntime.shutdown`: refuse new requests, hand leadership to the most
  up-to-date follower, let in-flight requests finish (bounded), flush and fsync, stop the
  transport, close the HTTP server, close storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from geostore.codec import CodecLimits
from geostore.config import Config, Topology
from geostore.config.tokens import TokenTable
from geostore.errors import ApiError, ConfigError, ErrorCode, GeostoreError
from geostore.geo import GeoEnvelope
from geostore.ids import GroupId, NodeId, RegionId
from geostore.runtime.failover import MoveOps
from geostore.runtime.geo import GeoHost, fill_homes, load_wan_routes
from geostore.runtime.group import GroupRuntime, GroupSpec
from geostore.runtime.guard import GuardedSite, server_options
from geostore.runtime.lane import AppendLane
from geostore.runtime.meta import META_GROUP, MetaHost
from geostore.runtime.metrics import NodeMetrics
from geostore.runtime.placement import LeaderPlacement
from geostore.runtime.security import NodeSecurity
from geostore.runtime.wire import PeerDecoder, encode_peer_message
from geostore.transport.certs import NodeTls
from geostore.transport.peer import PeerTransport
from geostore.transport.settings import TransportSettings

log = logging.getLogger("geostore.runtime")

#: Addresses of nodes added after the topology was written (node id -> base URL).
PEER_BOOK = "peers.json"

#: Mode names of docs/api.md.
MODES = ("multi-leader", "single-leader")

#: The one data group of single-leader mode.
GLOBAL_GROUP = GroupId("data-global")


def data_group_id(region: str) -> GroupId:
    return GroupId(f"data-{region}")


def node_url(topology: Topology, node_id: str) -> str:
    spec = topology.node(node_id)
    if spec.host is None or spec.port is None:
        raise ConfigError(topology.path or topology.name, f"nodes.{node_id}", "has no host:port")
    return f"http://{spec.host}:{spec.port}"


class NodeRuntime:
    """A running node (see the module docstring)."""

    def __init__(
        self,
        topology: Topology,
        node_id: NodeId,
        config: Config,
        data_dir: str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        mode: str = "multi-leader",
        unsafe_no_fsync: bool = False,
        seed: int | None = None,
        bootstrap: bool = False,
        join: bool = False,
        wan_routes: str | None = None,
        leader_region: str | None = None,
        tls: NodeTls | None = None,
        tokens: TokenTable | None = None,
    ) -> None:
        self.topology = topology
        self.node_id = node_id
        self.config = config
        self.data_dir = data_dir
        if mode not in MODES:
            raise ConfigError("--mode", "mode", f"must be one of {list(MODES)}, not {mode!r}")
        self.mode = mode
        single = self.single_leader
        # single-leader: the region whose voter should lead (checked before opening storage)
        preferred = RegionId(leader_region or config.raft.leader_region or topology.regions[0].name)
        if single and preferred not in topology.region_names():
            raise ConfigError(
                "--leader-region",
                "raft.leader_region",
                f"{preferred!r} is not a region of {topology.name} "
                f"({', '.join(topology.region_names())})",
            )
        spec = topology.node(node_id)
        self.region: RegionId = spec.region
        self.host = host
        bound = port if port is not None else spec.port
        if bound is None:
            raise ConfigError(topology.path or topology.name, f"nodes.{node_id}", "needs a port")
        self.port = bound
        self.unsafe_no_fsync = unsafe_no_fsync
        self.rng = random.Random(seed)
        self.metrics = NodeMetrics()
        self.started_at = time.time()
        self.stopping = False
        self.groups: dict[GroupId, GroupRuntime] = {}
        self.stop_event = asyncio.Event()
        self.tail_subscribers = 0
        self._background: set[asyncio.Task[None]] = set()
        self.metrics.tail_subscribers.set_source(lambda: float(self.tail_subscribers))
        # who we talk to: the other nodes of our region (the data group's voters)
        region_nodes = topology.region(self.region).node_ids()
        self._peer_book = os.path.join(data_dir, PEER_BOOK)
        #: nodes added after the topology was written (``node add``), with their regions
        booked = self._load_peer_book()
        self.peer_regions: dict[NodeId, RegionId] = {
            n: r for n, (_, r, _) in booked.items() if r is not None
        }
        #: the client-facing API address of each node added since (``node add``): the
        #: address a client should use, where ``peer_urls`` holds this region's way there
        #: (a WAN proxy for another region's node); absent where the book does not know it
        self.peer_apis: dict[NodeId, str] = {n: a for n, (_, _, a) in booked.items() if a}
        # the topology wins over the book: a restart may give listed nodes new ports
        self.peer_urls: dict[NodeId, str] = {n: u for n, (u, _, _) in booked.items()}
        self.peer_urls.update({n: node_url(topology, n) for n in region_nodes})
        lim = config.limits
        # certificates and tokens (none: plain HTTP); every URL this node calls follows suit
        self.security = NodeSecurity(
            topology,
            node_id,
            self.region,
            lim,
            self.metrics,
            tls=tls,
            tokens=tokens,
            single_leader=single,
            known=lambda n: n in self.peer_urls,
            added_region=self.peer_regions.get,
        )
        self.peer_urls = {n: self.security.url(u) for n, u in self.peer_urls.items()}
        peers = {n: u for n, u in self.peer_urls.items() if n != node_id}
        settings = TransportSettings(frame_bytes_max=max(lim.frame_bytes_max, 2 << 20))
        routes = load_wan_routes(wan_routes)
        self.transport = PeerTransport(
            node_id,
            cluster_id=topology.name,
            peers=peers,
            encode=encode_peer_message,
            decode=PeerDecoder(CodecLimits(frame_bytes_max=settings.frame_bytes_max)),
            on_message=self._on_message,
            settings=settings,
            rng=random.Random(self.rng.random()),
            tls=tls,
            members=self.security.is_member,
        )
        if single:  # one group: every node of every region votes, WAN-sized timeouts
            gid = GLOBAL_GROUP
            voters = tuple(n.id for n in topology.nodes())
            spans = tuple(topology.region_names())
        else:
            gid = data_group_id(self.region)
            voters, spans = tuple(region_nodes), ()
        self.data_group = GroupRuntime(
            GroupSpec(
                gid,
                self.region,
                voters,
                os.path.join(data_dir, "groups", gid),
                bootstrap=bootstrap,
                join=join,
                spans=spans,
            ),
            node_id,
            topology,
            config,
            self.transport,
            self.metrics,
            unsafe_no_fsync=unsafe_no_fsync,
            rng=random.Random(self.rng.random()),
        )
        self.groups[gid] = self.data_group
        self.data_group.on_fatal = self._group_failed
        # the leaders of the other regions are reached through the WAN proxies
        self.geo = GeoHost(self, routes, active=not single)
        self.geo.remote_urls = {n: self.security.url(u) for n, u in self.geo.remote_urls.items()}
        if single:  # Raft peers and forwarded requests take the proxies too
            self.peer_urls.update(self.geo.remote_urls)
        listed = {n.id for n in topology.nodes()}
        for n, r in self.peer_regions.items():  # added to another region since (the book)
            if n not in listed and n in self.peer_urls:
                self._remote_peer(n, self.peer_urls[n], r)
        if self.geo.remote_urls:
            self.transport.update_peers({**peers, **self.geo.remote_urls})
        self.placement: LeaderPlacement | None = None
        if single:
            self.placement = LeaderPlacement(
                self.data_group,
                preferred,
                # live: nodes added since (the peer book) count as their region's at once
                ChainMap({n.id: n.region for n in topology.nodes()}, self.peer_regions),
                max(1, self.data_group.election_ms // self.data_group.tick_ms),
            )
        #: the global metadata group (multi-leader mode with several regions; else None:
        #: one region's data group or single-leader's global group holds the catalog)
        self.meta: MetaHost | None = None
        if not single and len(topology.regions) > 1:
            # its leader may sit in any region: forwarded requests reach it via the proxies
            self.peer_urls.update(self.geo.remote_urls)
            self.meta = MetaHost(
                self,
                bootstrap=bootstrap,
                join=join,
                unsafe_no_fsync=unsafe_no_fsync,
                rng=random.Random(self.rng.random()),
            )
            self.groups[META_GROUP] = self.meta.group
            self.meta.group.on_fatal = self._group_failed
        self.metrics.watch_geo(self.geo)
        #: the process exit status: 1 after a group failed
        self.exit_code = 0
        self.tick_ms = self.data_group.tick_ms
        self.session: aiohttp.ClientSession | None = None
        from geostore.runtime.api import FORWARDED_HEADER, REGION_HEADER, Api

        self.app = web.Application(
            client_max_size=lim.body_bytes_max + 1,
            middlewares=self.security.middlewares((FORWARDED_HEADER, REGION_HEADER)),
        )

        self.moves = MoveOps(self)
        self.api = Api(self)
        self.api.attach(self.app)
        self.transport.attach(self.app)
        self.runner: web.AppRunner | None = None

    @property
    def single_leader(self) -> bool:
        return self.mode == "single-leader"

    # -- peer input ------------------------------------------------------------------------

    def _on_message(self, peer: NodeId, msg: object) -> None:
        if not self.security.admit(peer, msg):
            return  # counted and logged: a sender saying what it may not
        if type(msg) is GeoEnvelope:
            self.geo.on_envelope(peer, msg)
            return
        group = self.groups.get(getattr(msg, "group", GroupId("")))
        if group is None:
            return  # a group we do not host (yet): Raft retries
        group.receive(msg)  # type: ignore[arg-type]

    def _load_peer_book(self) -> dict[NodeId, tuple[str, RegionId | None, str | None]]:
        """The peer book: node -> (url, region, client api). An entry is ``URL`` (a node of
        this region, as books before regions were recorded hold) or ``{"url": URL, "region":
        R, "api": API?}`` (``api``: the node's client-facing address, absent in older books;
        for a node of this region it is ``url``)."""
        try:
            with open(self._peer_book, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(self._peer_book, "peers", f"unreadable: {exc}") from None
        out: dict[NodeId, tuple[str, RegionId | None, str | None]] = {}
        try:
            for k, v in raw.items():
                if isinstance(v, dict):
                    region = v.get("region")
                    url = str(v["url"])
                    api = v.get("api")
                    if api is None and region in (None, self.region):
                        api = url  # this region reaches it directly, as a client does
                    out[NodeId(str(k))] = (
                        url,
                        None if region is None else RegionId(str(region)),
                        None if api is None else str(api),
                    )
                else:
                    out[NodeId(str(k))] = (str(v), None, str(v))
        except (AttributeError, KeyError) as exc:
            raise ConfigError(self._peer_book, "peers", f"unreadable: {exc!r}") from None
        return out

    def add_peer(
        self, node: NodeId, url: str, region: RegionId | None = None, api: str | None = None
    ) -> None:
        """Learn (durably) the address of a node that joined after the topology was written.

        ``region`` is the region it joined (default: this node's). A node of another region
        is a member of the metadata group only, reached at ``url`` (the WAN proxy through
        which this region reaches it); geo traffic may reach it too once it leads there.
        ``api`` is its client-facing address (what ``cluster.json`` lists, what a 421
        ``wrong_region`` answer names); default: ``url`` for a node of this region, else
        what the book knew (an older caller does not send it).
        """
        region = region or self.region
        # a known node keeps its region: moving it would let it pass another region's sender
        # checks and make it one of that region's geo destinations (node certificates may
        # call this route too)
        try:
            known: RegionId | None = self.topology.node(node).region
        except (KeyError, ConfigError):
            known = self.peer_regions.get(node) or (
                self.region if node in self._load_peer_book() else None
            )
        if known is not None and known != region:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{node} is a node of region {known}, not {region}",
                node=node,
            )
        url = self.security.url(url)
        if api is not None:
            api = self.security.url(api)
        elif region == self.region:
            api = url
        else:
            api = self.peer_apis.get(node)
        self.peer_urls[node] = url
        self.peer_regions[node] = region
        if api is not None:
            self.peer_apis[node] = api
        book = self._load_peer_book()
        book[node] = (url, region, api)
        os.makedirs(self.data_dir, exist_ok=True)
        tmp = self._peer_book + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            entries = {
                n: {"url": u, "region": r, **({"api": a} if a is not None else {})}
                for n, (u, r, a) in book.items()
            }
            json.dump(entries, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._peer_book)
        self._remote_peer(node, url, region)
        peers = {n: u for n, u in self.peer_urls.items() if n != self.node_id}
        self.transport.update_peers({**peers, **self.geo.remote_urls})
        log.info("node %s: peer %s of region %s is at %s", self.node_id, node, region, url)

    def _remote_peer(self, node: NodeId, url: str, region: RegionId | None) -> None:
        """A node added to another region: the geo host reaches it like that region's others."""
        geo = self.geo
        if region is None or region == self.region or region not in geo.remote_nodes:
            return
        geo.remote_urls[node] = url
        if node not in geo.remote_nodes[region]:
            geo.remote_nodes[region] = (*geo.remote_nodes[region], node)

    def client_url(self, node: NodeId) -> str | None:
        """The address a client should use for ``node`` (its direct API, as ``cluster.json``
        lists it, never a WAN proxy): the topology's, else the one ``node add`` told this
        node; None when this node does not know it."""
        try:
            return self.security.url(node_url(self.topology, node))
        except (KeyError, ConfigError):
            return self.peer_apis.get(node)

    def group_for_stream(self, stream: str) -> GroupRuntime:
        """The group that stores ``stream`` (one data group per region for now)."""
        return self.data_group

    def leader_url(self, group: GroupRuntime) -> str | None:
        leader = group.leader
        return None if leader is None else self.peer_urls.get(leader)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        tls = self.security.tls
        # the node's own calls (forwarded requests) present its certificate: mTLS
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=tls.client_ctx if tls else True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0),
        )
        lim = self.config.limits
        self.runner = web.AppRunner(
            self.app, shutdown_timeout=2.0, access_log=None, **server_options(lim)
        )
        await self.runner.setup()
        site = GuardedSite(
            self.runner,
            self.host,
            self.port,
            limits=lim,
            stats=self.security.guard,
            ssl_context=tls.server_ctx if tls else None,
            lane=(
                AppendLane(self.api.lane_append, self.security.lane_authorizer())
                if self.config.process.append_lane
                else None
            ),
        )
        await site.start()
        await self.transport.start()
        log.info(
            "node %s of region %s serving on %s://%s:%d (mode %s, fsync %s%s)",
            self.node_id,
            self.region,
            "https" if tls else "http",
            self.host,
            self.port,
            self.mode,
            "off (UNSAFE)" if self.data_group.unsafe_no_fsync else "on",
            ", tokens required" if self.security.tokens is not None else "",
        )

    async def run(
        self, *, handle_signals: bool = True, on_started: Callable[[], None] | None = None
    ) -> None:
        """Start, serve until SIGTERM/SIGINT (or :meth:`request_stop`), shut down.

        ``on_started`` runs once the node has started (the process's garbage-collector
        settings: :mod:`geostore.runtime.gctune`)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            if on_started is not None:
                on_started()
            async with asyncio.TaskGroup() as tg:
                ticker = tg.create_task(self._tick_loop(), name=f"ticks-{self.node_id}")
                await self.stop_event.wait()
                await self.shutdown(ticker)
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def _group_failed(self, group: GroupRuntime, exc: GeostoreError) -> None:
        log.critical("node %s stops: group %s failed", self.node_id, group.group_id)
        self.exit_code = 1
        self.request_stop()

    def request_stop(self) -> None:
        if not self.stop_event.is_set():
            log.info("node %s: stop requested", self.node_id)
            self.stop_event.set()

    async def _tick_loop(self) -> None:
        period_s = self.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time() + period_s
        seeded_term = -1
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            for group in self.groups.values():
                group.tick()
            self.geo.tick()
            if self.placement is not None:
                self.placement.tick(stopping=self.stopping)
            if self.meta is not None:  # catalog, mirror, leases (it creates topology streams)
                self.meta.tick()
                self.moves.tick()
            group = self.data_group
            if (
                self.meta is None
                and group.is_leader
                and group.host.core.term != seeded_term
                and self.topology.streams
            ):
                seeded_term = group.host.core.term
                task = asyncio.create_task(self._create_topology_streams(group))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            now = loop.time()
            next_at += period_s
            if next_at < now:  # held up: do not replay the missed ticks in a burst
                next_at = now + period_s

    async def _create_topology_streams(self, group: GroupRuntime) -> None:
        """A new leader creates the streams the topology declares (idempotent); only without
        a metadata group (one region, single-leader mode): else the meta leader does."""
        from geostore.store import encode_command

        for spec in self.topology.streams:
            request: dict[str, Any] = {"name": spec.name, "partitions": spec.partitions}
            if spec.key_field is not None:
                request["key_field"] = spec.key_field
            if spec.homes:
                request["homes"] = {str(p): r for p, r in spec.homes.items()}
            # single-leader mode: homes are reported, never routed by
            request = fill_homes(self.topology, request)
            try:
                cmd = group.store.validate_create(request)
                (result,) = await asyncio.wait_for(
                    asyncio.gather(*group.propose([encode_command(cmd)])), 10.0
                )
            except (GeostoreError, TimeoutError) as exc:
                log.warning("creating topology stream %s failed: %s", spec.name, exc)
                return
            log.info("topology stream %s: %s", spec.name, type(result).__name__)

    async def shutdown(self, ticker: asyncio.Task[None] | None = None) -> None:
        """Graceful stop: refuse, hand over leadership, drain, flush, close."""
        self.stopping = True
        self.api.wake_tails()
        for group in self.groups.values():
            await self._hand_over(group)
        await self.api.drain(timeout_s=2.0)
        for task in list(self._background):
            task.cancel()
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for group in self.groups.values():
            try:
                group.flush_to_disk()
            except Exception:  # keep closing the rest; recovery handles the tail
                log.exception("flush of group %s failed", group.group_id)
        await self.transport.stop()
        self.security.guard.close_lanes()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()
        for group in self.groups.values():
            group.close()
        log.info("node %s stopped", self.node_id)

    async def _hand_over(self, group: GroupRuntime) -> None:
        """If leading, transfer leadership to the most caught-up voter and wait (bounded)."""
        if not group.is_leader or group.failed is not None:
            return
        st = group.status()
        candidates = sorted(
            (
                (p.match, nid)
                for nid, p in st.progress.items()
                if nid != self.node_id and nid in st.conf.voters  # never to a learner
            ),
            reverse=True,
        )
        if not candidates:
            return
        if self.placement is not None:  # single-leader: keep it in the preferred region
            candidates = self.placement.preferred_first(candidates)
        target = candidates[0][1]
        if not group.transfer_leadership(target):
            log.warning("group %s: leadership transfer to %s refused", group.group_id, target)
            return
        deadline = asyncio.get_running_loop().time() + max(1.0, 2 * group.election_ms / 1000)
        while group.is_leader and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(self.tick_ms / 1000)  # the tick task still runs
        log.info(
            "group %s: leadership %s to %s",
            group.group_id,
            "handed" if not group.is_leader else "NOT handed",
            target,
        )

    def _quarantine_json(self) -> dict[str, Any]:
        """The size of this node's copy of the region's quarantine (see docs/operations.md)."""
        runs, events, size = self.data_group.store.quarantine_size()
        return _quarantine_size_json(runs, events, size, self.config.limits.quarantine_bytes_warn)

    def status_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "node": self.node_id,
            "region": self.region,
            "mode": self.mode,
            "api": self.security.url(f"http://{self.host}:{self.port}"),
            "tls": self.security.secure,
            "uptime_s": round(time.time() - self.started_at, 3),
            "stopping": self.stopping,
            # data groups only: the metadata group is under "meta"
            "groups": {gid: g.status_json() for gid, g in self.groups.items() if gid != META_GROUP},
            "partitions": [p.to_json() for p in self.data_group.store.partitions()],
            "quarantine": self._quarantine_json(),
            "replication_lag": self.geo.lag_rows(),
            "geo": self.geo.status_json(),
            "moves": self.moves.status_json(),
            **({"placement": self.placement.status_json()} if self.placement else {}),
            **(
                {"meta": self.meta.status_json(), "leases": self.meta.leases_json()}
                if self.meta is not None
                else {}
            ),
            "peers": self.transport.stats(),
            "security": self.security.to_json(),
            "config": {
                "raft": _fields(c.raft),
                "storage": _fields(c.storage),
                "limits": _fields(c.limits),
                "geo": _fields(c.geo),
                "process": _fields(c.process),
            },
        }


def _quarantine_size_json(runs: int, events: int, size: int, warn: int) -> dict[str, Any]:
    return {
        "runs": runs,
        "events": events,
        "bytes": size,
        "warn_bytes": warn,
        "over_warn": bool(warn) and size > warn,
    }


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
