"""The client HTTP API of a node (docs/api.md), and its OpenAPI document.

Routing rules:

- Writes (stream creation, appends) run on the group leader. Any other node forwards the
  request unchanged to the leader it knows, over HTTP, marked ``X-Geostore-Forwarded`` so a
  request is forwarded at most once (a node that receives a forwarded request and does not
  lead answers 503 ``not_leader``; the client retries). No leader known within the wait:
  503 ``no_quorum``. The answer of a request forwarded to the region group's leader, and a
  ``not_leader`` refusal when a leader is known, name that leader in ``X-Geostore-Leader``,
  so a client sends its next calls there itself instead of paying the hop on every one.
- Between regions (multi-leader): a region commits client appends only for partitions it
  is home of, and only while it holds its home lease from the metadata group (503
  ``lease_lapsed`` otherwise, see :mod:`.meta`); the leader splits an append by home
  region, appends its own part and sends each other part to its home region
  (``route=reject``: 421 ``wrong_region`` with the home's address instead). Stream creation
  is proposed to the metadata group (forwarded to its leader, whichever region it is in)
  and answered once this node's region mirrored it. Requests between regions carry
  ``X-Geostore-From-Region`` and are never sent on to a third region.
- Single-leader mode (one global group): every write and every regional or strong read goes
  to the global leader, whichever region it is in (through the WAN proxy of its node, so
  the forward pays the emulated round trip); homes are reported, never routed by.
- Reads default to ``consistency=regional``: linearizable in the region through the
  leader's ReadIndex (forwarded to the leader like writes); ``strong`` of a partition homed
  in another region is served by that region; ``local`` reads this node's applied state.
  ``after=TOKEN`` waits (up to ``wait_ms``, capped by config) until this node applied what
  the token names, else 504 ``wait_timeout`` with the copy's watermark.
- An append is answered only after its entries are committed by a quorum and applied on the
  leader; a wait past ``append_timeout_s`` answers 504 with the outcome unknown (retry with
  the same producer id and seq: the retry is deduplicated).

:data:`ROUTES` is the single list both the router and ``/v1/openapi.json`` are built from,
so the document lists every route the node serves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from geostore import __version__
from geostore.errors import HTTP_STATUS, ApiError, ErrorCode, GeostoreError
from geostore.geo import CursorState
from geostore.ids import Epoch, NodeId, PartitionId, RegionId, StreamName
from geostore.raft.records import ConfChange, ConfChangeOp
from geostore.runtime.failover import MOVE_TIMEOUT_MS, MOVE_TIMEOUT_MS_MAX
from geostore.runtime.geo import fill_homes
from geostore.runtime.group import GroupRuntime
from geostore.runtime.guard import bounded_write
from geostore.runtime.http import (
    CBOR,
    JSON,
    decode_json,
    encode_answer,
    error_headers,
    error_response,
    int_param,
    internal_error,
    make_token,
    parse_token,
    plain_error,
    read_body,
    respond,
    wants_cbor,
)
from geostore.runtime.meta import MEMBER_OPS
from geostore.runtime.metrics import LabelKey, label_key
from geostore.store import (
    AppendResult,
    ClearQuarantine,
    PreparedAppend,
    QuarantineCleared,
    Rejected,
    StreamInfo,
    encode_command,
)
from geostore.store.failover import Admission, LagPolicy, admit_append, lag_refused
from geostore.store.model import INT64_MAX

if TYPE_CHECKING:
    from geostore.runtime.node import NodeRuntime

log = logging.getLogger("geostore.runtime.api")

FORWARDED_HEADER = "X-Geostore-Forwarded"
#: Marks a request one region sent another (a routed append, a strong
#: read): the receiving region serves it or refuses it, and never sends it on to a third.
REGION_HEADER = "X-Geostore-From-Region"
#: Names the node that leads the answering node's region group (``data-<region>``, or
#: single-leader's global group): set on the answers a follower forwarded to that leader and on
#: ``not_leader`` refusals when a leader is known. A client of the region sends its next calls
#: there directly, saving the forwarding hop (a hint: it fails over as usual when stale).
LEADER_HEADER = "X-Geostore-Leader"
#: How long a write waits for commit and apply before answering 504 (outcome unknown).
APPEND_TIMEOUT_S = 10.0
#: How long a request waits for a leader to be known before answering 503.
LEADER_WAIT_S = 5.0
#: Deadline of one forwarded request.
FORWARD_TIMEOUT_S = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_APPEND_FIELDS = frozenset({"events", "producer"})
NDJSON = "application/x-ndjson"
#: (route, status) label keys the request counter keeps built (more are built per request).
REQUEST_KEYS_MAX = 1024
#: A quarantine export is written in chunks of at most this many bytes (bounded memory).
EXPORT_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str  # "query" | "path"
    kind: str  # "integer" | "string"
    doc: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: str  # name of the Api method
    summary: str
    params: tuple[Param, ...] = ()
    body: str | None = None  # schema name of the request body
    ok: int = 200
    #: further success statuses with the same body (e.g. 200 for an idempotent re-create)
    also_ok: tuple[int, ...] = ()
    ok_schema: str = "Object"
    ok_type: str = JSON
    errors: tuple[int, ...] = (400, 404, 503)
    tags: tuple[str, ...] = field(default=("events",))


_S = Param("s", "path", "string", "stream name", True)
_PART = Param("partition", "query", "integer", "partition (default 0)")
_CONS = Param(
    "consistency", "query", "string", "local | regional (default) | strong: see docs/api.md"
)
_AFTER = Param("after", "query", "string", "token of an append: read your writes")
_WAIT = Param("wait_ms", "query", "integer", "how long to wait for the token (default 0)")
_QSTREAM = Param("stream", "query", "string", "only this stream's quarantine")
_QPART = Param("partition", "query", "integer", "only this partition (needs stream)")

ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/v1/streams", "create_stream", "Create a stream (idempotent)",
        body="StreamRequest", ok=201, also_ok=(200,), ok_schema="Stream",
        errors=(400, 409, 413, 503, 504),
        tags=("streams",),
    ),
    Route(
        "POST", "/v1/streams/{s}/events", "append", "Append events (acknowledged after commit)",
        params=(_S, Param("route", "query", "string",
                          "reject: 421 instead of forwarding to the home region")),
        body="AppendRequest", ok_schema="AppendResponse",
        errors=(400, 404, 409, 413, 421, 503, 504),
    ),
    Route(
        "GET", "/v1/streams/{s}/events", "read", "Read events by seq range or time range",
        params=(
            _S, _PART,
            Param("from_seq", "query", "integer", "first seq (default 0)"),
            Param("limit", "query", "integer", "most events returned (clamped by config)"),
            Param("from_ts", "query", "integer", "time range start, microseconds, inclusive"),
            Param("to_ts", "query", "integer", "time range end, microseconds, exclusive"),
            _CONS, _AFTER, _WAIT,
        ),
        ok_schema="ReadResponse", errors=(400, 404, 413, 503, 504),
    ),
    Route(
        "GET", "/v1/streams/{s}/aggregate", "aggregate",
        "count/min/max/sum/avg of a numeric field over a time range",
        params=(
            _S,
            Param("field", "query", "string", "numeric body field", True),
            Param("from_ts", "query", "integer", "range start, microseconds", True),
            Param("to_ts", "query", "integer", "range end (exclusive), microseconds", True),
            Param("partition", "query", "integer", "one partition (default: all)"),
            Param("window_us", "query", "integer", "fixed window length, microseconds"),
            Param("scan_limit", "query", "integer", "allow a bounded scan of a non-indexed field"),
            _CONS, _AFTER, _WAIT,
        ),
        ok_schema="AggregateResponse", errors=(400, 404, 413, 503, 504),
    ),
    Route(
        "GET", "/v1/streams/{s}/tail", "tail", "Live tail as server-sent events",
        params=(_S, _PART, Param("from_seq", "query", "integer", "first seq (default: next)")),
        ok_type="text/event-stream", ok_schema="String", errors=(400, 404, 413, 503),
    ),
    Route(
        "GET", "/v1/status", "status", "Node, groups, partitions, config",
        ok_schema="Status", errors=(), tags=("operations",),
    ),
    Route(
        "GET", "/v1/health", "health", "200 when the node serves, 503 with the reason",
        ok_schema="Health", errors=(503,), tags=("operations",),
    ),
    Route(
        "GET", "/metrics", "metrics", "Prometheus text format",
        ok_type="text/plain", ok_schema="String", errors=(), tags=("operations",),
    ),
    Route(
        "GET", "/v1/openapi.json", "openapi", "This document",
        ok_schema="Object", errors=(), tags=("operations",),
    ),
    Route(
        "GET", "/v1/debug/partitions", "debug_partitions",
        "Per partition: epoch, last applied seq, rolling hash of the applied log",
        ok_schema="Partitions", errors=(), tags=("operations",),
    ),
    Route(
        "GET", "/v1/quarantine", "quarantine",
        "Runs of events that a failback moved out of their partition in this region",
        params=(
            _QSTREAM, _QPART,
            Param("limit", "query", "integer", "most runs listed (clamped by config)"),
            Param("consistency", "query", "string", "local | regional (default)"),
        ),
        ok_schema="Quarantine", errors=(400, 404, 503, 504), tags=("operations",),
    ),
    Route(
        "GET", "/v1/quarantine/export", "quarantine_export",
        "This node's copy of the region's quarantined events, one JSON object a line",
        params=(_QSTREAM, _QPART),
        ok_type=NDJSON, ok_schema="String", errors=(400, 404, 503), tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/quarantine/clear", "quarantine_clear",
        "Drop quarantined runs of the region (after an export): replicated, answers the counts",
        body="QuarantineClearRequest", ok_schema="QuarantineCleared",
        errors=(400, 404, 503, 504), tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/peers", "add_peer",
        "Tell this node the address of a node added to its region or another one",
        body="PeerRequest", ok_schema="Object", errors=(400, 409), tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/members", "change_members",
        "Membership change of the region's group (one at a time; forwarded to the leader)",
        body="MembersRequest", ok_schema="Object", errors=(400, 409, 503, 504),
        tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/meta/members", "meta_members",
        "Membership change of the metadata group: add a learner, remove a node (a voter hands "
        "its region's vote to a caught-up learner first); forwarded to the metadata leader",
        body="MetaMembersRequest", ok_schema="MetaMembers", errors=(400, 409, 503, 504),
        tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/meta/propose", "meta_propose",
        "Internal: commit a metadata command (nodes reach the metadata leader with it)",
        body="MetaProposeRequest", ok_schema="Object", errors=(400, 404, 409, 503, 504),
        tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/leader/transfer", "leader_transfer",
        "Hand this node's leadership of its data group to another voter",
        body="TransferRequest", ok_schema="Object", errors=(400, 503), tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/partitions/{s}/{p}/move", "partition_move",
        "Planned move of a partition's home to another region: fence, drain, bump, open",
        params=(_S, Param("p", "path", "integer", "partition", True)),
        body="MoveRequest", ok_schema="MoveResponse", errors=(400, 404, 503, 504),
        tags=("operations",),
    ),
    Route(
        "POST", "/v1/admin/regions/{r}/failover", "region_failover",
        "Move every partition homed in a lost region to the region of this request's target",
        params=(Param("r", "path", "string", "the lost region", True),),
        body="FailoverRequest", ok_schema="FailoverResponse", errors=(400, 409, 503, 504),
        tags=("operations",),
    ),
)  # fmt: skip


#: Refusals of a home region that a forwarding region answers with the same code.
_PASSED_ON = frozenset(
    {ErrorCode.MOVING.value, ErrorCode.LEASE_LAPSED.value, ErrorCode.REPLICATION_LAG.value}
)


class Api:
    """The handlers of one node."""

    def __init__(self, node: NodeRuntime) -> None:
        self.node = node
        self.limits = node.config.limits
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tail_wakers: set[asyncio.Event] = set()
        self._request_keys: dict[tuple[str, int], LabelKey] = {}
        #: lag-bounded backpressure: the RPO bound of each stream that names one (topology)
        self._lag_policies: dict[str, LagPolicy] = {
            s.name: LagPolicy(s.rpo_ms) for s in node.topology.streams if s.rpo_ms is not None
        }

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        for route in ROUTES:
            handler: Handler = getattr(self, route.handler)
            app.router.add_route(route.method, route.path, handler, name=route.handler)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        self._enter()
        response: web.StreamResponse
        try:
            if self.node.stopping and route not in ("/v1/status", "/v1/health", "/metrics"):
                raise ApiError(ErrorCode.UNAVAILABLE, "the node is shutting down", retry_after_s=1)
            response = await handler(request)
        except GeostoreError as exc:
            err, headers = self._refusal(request.match_info.get("s"), exc)
            response = respond(request, err.http_status, err.to_body(), headers)
        except web.HTTPException as exc:
            if exc.status == 413:
                response = error_response(
                    request, ApiError(ErrorCode.TOO_LARGE, "request body too large")
                )
            else:
                code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
                response = plain_error(request, exc.status, code, f"{exc.reason}: {request.path}")
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(request, internal_error(exc))
        finally:
            self._leave()
        self._count_request(route, response.status)
        return response

    def _enter(self) -> None:
        """A request is in flight (a graceful shutdown drains them)."""
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _refusal(
        self, stream: str | None, exc: GeostoreError
    ) -> tuple[GeostoreError, dict[str, str]]:
        """How a typed error is answered, on either path: the error (an unmirrored stream's
        refusal becomes a retryable 503) and its headers (``Retry-After`` on a 503, and
        :data:`LEADER_HEADER` naming the leader on a ``not_leader`` refusal)."""
        err = self._unmirrored_stream(stream, exc)
        headers = error_headers(err)
        if exc.code is ErrorCode.NOT_LEADER:
            leader = self.node.data_group.leader
            if leader is not None and leader != self.node.node_id:
                headers[LEADER_HEADER] = leader
        return err, headers

    def _count_request(self, route: str, status: int) -> None:
        # the label key of (route, status), built once: bounded, routes and statuses are few
        key = self._request_keys.get((route, status))
        if key is None:
            key = label_key(route=route, status=str(status))
            if len(self._request_keys) < REQUEST_KEYS_MAX:
                self._request_keys[(route, status)] = key
        self.node.metrics.http_requests.inc_key(key)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until no request is in flight."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)

    def wake_tails(self) -> None:
        for ev in self._tail_wakers:
            ev.set()

    # -- leader routing ---------------------------------------------------------------------

    async def _leader_or_forward(
        self, request: web.Request, group: GroupRuntime, body: bytes | None
    ) -> web.StreamResponse | None:
        """None when this node leads (serve here); else the leader's answer."""
        if group.is_leader:
            return None
        if FORWARDED_HEADER in request.headers:
            raise ApiError(
                ErrorCode.NOT_LEADER,
                f"{self.node.node_id} does not lead {group.group_id} (any more)",
                leader=group.leader,
                retry_after_s=1,
            )
        leader = await group.wait_leader(LEADER_WAIT_S)
        if leader is None:
            raise ApiError(
                ErrorCode.NO_QUORUM,
                f"group {group.group_id} has no leader",
                group=group.group_id,
                retry_after_s=1,
            )
        if leader == self.node.node_id:
            return None  # became leader while waiting
        url = self.node.peer_urls.get(leader)
        session = self.node.session
        if url is None or session is None:
            raise ApiError(ErrorCode.UNAVAILABLE, f"leader {leader} has no known address")
        headers: dict[str, str] = {FORWARDED_HEADER: self.node.node_id}
        for name in ("Content-Type", "Accept", REGION_HEADER):
            if name in request.headers:
                headers[name] = request.headers[name]
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        self.node.metrics.forwarded.inc(route=route)
        try:
            async with session.request(
                request.method,
                url + request.path_qs,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            ) as resp:
                data = await resp.read()
                out_headers = {}
                if "Retry-After" in resp.headers:
                    out_headers["Retry-After"] = resp.headers["Retry-After"]
                if group is self.node.data_group:
                    # the leader's own refusal names whom it knows (or no one); any other
                    # answer came from the leader: name it, so the client skips this hop
                    hint = resp.headers.get(LEADER_HEADER)
                    if hint is None and resp.status != 503:
                        hint = leader
                    if hint is not None:
                        out_headers[LEADER_HEADER] = hint
                return web.Response(
                    status=resp.status,
                    body=data,
                    content_type=resp.content_type,
                    headers=out_headers,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(
                ErrorCode.UNAVAILABLE,
                f"forwarding to leader {leader} failed: {type(exc).__name__}",
                leader=leader,
                retry_after_s=1,
            ) from None

    async def _await_all(self, futures: list[asyncio.Future[Any]]) -> list[Any]:
        # One plain timer that fails the waiting futures, rather than ``asyncio.timeout``
        # (a cancellation scope costs several times as much, on every append).
        timer = asyncio.get_running_loop().call_later(APPEND_TIMEOUT_S, _expire, futures)
        try:
            if len(futures) == 1:  # the usual append: no gathering future needed
                return [await futures[0]]
            return await asyncio.gather(*futures)
        finally:
            timer.cancel()

    # -- writes -----------------------------------------------------------------------------

    async def create_stream(self, request: web.Request) -> web.StreamResponse:
        raw, body = await read_body(request, self.limits.body_bytes_max)
        if self.node.meta is not None:  # several regions: the metadata group holds the catalog
            return await self._create_in_meta(request, raw, body)
        group = self.node.group_for_stream("")
        forwarded = await self._leader_or_forward(request, group, raw)
        if forwarded is not None:
            return forwarded
        # one region, or single-leader's one group: homes are reported, never routed by
        body = fill_homes(self.node.topology, body)
        cmd = group.store.validate_create(body)
        (result,) = await self._await_all(group.propose([encode_command(cmd)]))
        if isinstance(result, Rejected):
            raise result.error
        assert isinstance(result, StreamInfo), result
        return respond(request, 201 if result.created else 200, result.to_json())

    async def _create_in_meta(
        self, request: web.Request, raw: bytes, body: Any
    ) -> web.StreamResponse:
        """Propose the stream into the metadata group (through its leader), then answer once
        this node's region mirrored it (bounded): a read here right after finds it."""
        meta = self.node.meta
        assert meta is not None
        forwarded = await self._leader_or_forward(request, meta.group, raw)
        if forwarded is None:
            result = await meta.create_stream(body)
            name: str = result.definition.name
            status, answer = (201 if result.created else 200), result.to_json()
        elif forwarded.status not in (200, 201):
            return forwarded
        else:
            name = str(body.get("name")) if isinstance(body, dict) else ""
        await meta.wait_mirrored(name, APPEND_TIMEOUT_S)
        if forwarded is not None:
            return forwarded
        return respond(request, status, answer)

    async def region_call(
        self, region: str, method: str, path_qs: str, data: bytes | None, ctype: str | None
    ) -> tuple[int, bytes, str]:
        """One request to another region: its leader first (as last seen), then its other
        nodes, through the WAN proxy; a node that does not lead forwards to its leader."""
        geo = self.node.geo
        session = self.node.session
        nodes = list(geo.remote_nodes.get(RegionId(region), ()))
        if not nodes or session is None:
            raise ApiError(ErrorCode.UNAVAILABLE, f"region {region} is not reachable from here")
        leader = geo.leader_seen(RegionId(region))
        if leader in nodes:
            nodes.remove(leader)
            nodes.insert(0, leader)
        headers: dict[str, str] = {REGION_HEADER: self.node.region}
        if ctype is not None:
            headers["Content-Type"] = ctype
        last = "no node answered"
        for node in nodes:
            url = geo.remote_urls.get(node)
            if url is None:
                continue
            try:
                async with session.request(
                    method,
                    url + path_qs,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
                ) as resp:
                    answer = await resp.read()
                    if resp.status == 503 and node != nodes[-1]:
                        last = f"{node}: 503"
                        continue  # no leader known there, or shutting down: try another
                    self.node.metrics.forwarded.inc(route=f"region:{region}")
                    return resp.status, answer, resp.content_type
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = f"{node}: {type(exc).__name__}"
        raise ApiError(
            ErrorCode.UNAVAILABLE,
            f"region {region} did not answer ({last})",
            region=region,
            retry_after_s=1,
        )

    def _home_urls(self, region: str) -> list[str]:
        """Client addresses of a region's nodes, for a client to send there.

        Which nodes: the region's node list in the metadata group (replicated: it names the
        nodes added since with ``node add`` and drops those removed with ``node remove``);
        before the region is registered there, the topology's nodes and those the peer book
        learned through ``/v1/admin/peers``. Each at its client-facing address, as
        ``cluster.json`` lists it (:meth:`NodeRuntime.client_url`: never the WAN proxy
        through which this region reaches it); a node whose address this node does not know
        is left out. The region's leader as this node last saw it first.
        """
        node = self.node
        rid = RegionId(region)
        members = None if node.meta is None else node.meta.state.regions().get(rid)
        if not members:
            listed = node.topology.region(region).node_ids()
            added = [n for n, r in sorted(node.peer_regions.items()) if r == rid]
            members = (*listed, *(n for n in added if n not in listed))
        urls = {n: u for n in members if (u := node.client_url(n)) is not None}
        if not urls:  # never an empty list: the topology's addresses at worst
            urls = {n: u for n in node.topology.region(region).node_ids()
                    if (u := node.client_url(n)) is not None}  # fmt: skip
        leader = node.geo.leader_seen(rid)
        # a stable sort: the leader first, the rest in the order above
        return [urls[n] for n in sorted(urls, key=lambda n: n != leader)]

    async def append(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        stream = request.match_info["s"]
        raw, body = await read_body(request, self.limits.body_bytes_max)
        group = self.node.group_for_stream(stream)
        forwarded = await self._leader_or_forward(request, group, raw)
        if forwarded is not None:
            return forwarded
        prepared, homes = self._prepare_append(group, stream, body)
        if homes is not None and any(
            homes.get(b.partition, self.node.region) != self.node.region for b in prepared.batches
        ):
            return await self._route_append(request, group, stream, body, homes, t0)
        outcomes = await self._commit_append(group, stream, prepared, homes)
        if wants_cbor(request):
            data = self._append_answer(stream, prepared.batches, outcomes, t0, cbor=True)
            return web.Response(body=data, content_type=CBOR)
        data = self._append_answer(stream, prepared.batches, outcomes, t0, cbor=False)
        return web.Response(body=data, headers=_JSON_HEADERS)

    def _prepare_append(
        self, group: GroupRuntime, stream: str, body: Any
    ) -> tuple[PreparedAppend, dict[int, str] | None]:
        """Validate an append body (typed errors; nothing changes): the prepared batches, and
        the partitions' homes where multi-leader homes them (None: no routing to decide)."""
        if not isinstance(body, dict):
            raise ApiError(ErrorCode.MALFORMED, 'the body must be an object {"events": [...]}')
        if not body.keys() <= _APPEND_FIELDS:
            extra = set(body) - _APPEND_FIELDS
            raise ApiError(ErrorCode.MALFORMED, f"unknown fields {sorted(map(str, extra))}")
        if "events" not in body:
            raise ApiError(ErrorCode.MALFORMED, "events is missing", field="events")
        prepared = group.store.validate_append(
            stream,
            body["events"],
            now_us=time.time_ns() // 1000,
            producer=body.get("producer"),
            rr_counter=group.rr_counter,
        )
        # several regions, multi-leader: only home partitions commit here (single-leader: one
        # group holds every partition, homes are reported but do not route)
        if self.node.geo.others and not self.node.single_leader:
            return prepared, self._homes(group, stream)
        return prepared, None

    async def _commit_append(
        self,
        group: GroupRuntime,
        stream: str,
        prepared: PreparedAppend,
        homes: dict[int, str] | None,
    ) -> list[Any]:
        """Propose the prepared batches (all homed here) and wait: one outcome per batch."""
        if homes:
            await self._admit_lag(stream, (b.partition for b in prepared.batches))
            self._require_lease()
            self._require_placement(group, stream, {b.partition for b in prepared.batches})
        group.rr_counter = prepared.rr_counter
        futures = group.propose([encode_command(b) for b in prepared.batches])
        outcomes = await self._await_all(futures)
        self._lease_after_commit()
        return outcomes

    def _append_answer(
        self, stream: str, batches: Sequence[Any], outcomes: list[Any], t0: float, *, cbor: bool
    ) -> bytes:
        """The 200 answer's body (counted in the metrics); the first error when no batch
        committed."""
        metrics = self.node.metrics
        if len(outcomes) == 1 and type(outcomes[0]) is AppendResult and not cbor:
            # the usual answer (one partition, committed, JSON): written by hand
            res = outcomes[0]
            metrics.events_appended.inc(0 if res.duplicate else res.last_seq - res.first_seq + 1)
            metrics.append_latency.observe(time.perf_counter() - t0)
            token = make_token(stream, [(res.partition, res.epoch, res.last_seq)])
            return append_answer_json(res, token)
        results, token_parts, errors, stored = _append_outcomes(batches, outcomes)
        if errors and not token_parts:
            raise errors[0]
        metrics.events_appended.inc(stored)
        metrics.append_latency.observe(time.perf_counter() - t0)
        return encode_answer({"results": results, "token": make_token(stream, token_parts)}, cbor)

    async def lane_append(
        self, stream: str, raw: bytes
    ) -> tuple[int, bytes, dict[str, str]] | None:
        """An append through the node's append lane (:mod:`geostore.runtime.lane`): the JSON
        body ``raw`` of ``POST /v1/streams/{stream}/events`` from a caller the lane already
        authorised. The answer (status, JSON body, extra headers), exactly what the aiohttp
        route answers, or None *before anything changed* when the request needs the general
        path: the node is stopping, does not lead the group (forwarding), the body is not
        JSON it can read, or partitions are homed in another region (routing)."""
        node = self.node
        if node.stopping:
            return None
        group = node.group_for_stream(stream)
        if not group.is_leader:
            return None
        t0 = time.perf_counter()
        try:
            body = decode_json(raw)
        except (ValueError, RecursionError):
            return None  # the general path says what is wrong, with its hint
        self._enter()
        headers: dict[str, str] = _NO_HEADERS
        try:
            prepared, homes = self._prepare_append(group, stream, body)
            if homes is not None and any(
                homes.get(b.partition, node.region) != node.region for b in prepared.batches
            ):
                return None
            outcomes = await self._commit_append(group, stream, prepared, homes)
            status = 200
            data = self._append_answer(stream, prepared.batches, outcomes, t0, cbor=False)
        except GeostoreError as exc:  # answered as the middleware answers it
            err, headers = self._refusal(stream, exc)
            status = err.http_status
            data = encode_answer(err.to_body(), False)
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("POST /v1/streams/%s/events failed", stream)
            status = 500
            data = encode_answer(internal_error(exc).to_body(), False)
        finally:
            self._leave()
        self._count_request(_APPEND_ROUTE, status)
        return status, data, headers

    def _homes(self, group: GroupRuntime, stream: str) -> dict[int, str]:
        """Partition -> home region, for partitions with a home (none: homed everywhere)."""
        info = group.store.stream_info(stream)
        return {h.partition: h.home for h in info.homes if h.home is not None}

    async def _route_append(
        self,
        request: web.Request,
        group: GroupRuntime,
        stream: str,
        body: dict[str, Any],
        homes: dict[int, str],
        t0: float,
    ) -> web.StreamResponse:
        """An append that touches partitions homed elsewhere: refuse (421) or forward.

        Each event gets its partition explicitly (the same routing rules), the events are
        split by home region, this region's part is appended here and every other part is
        sent to its home region; the answer merges the per-partition results and tokens.
        A remote region never commits client appends for a partition it does not home.
        """
        here = self.node.region
        events = body["events"]
        producer = body.get("producer")
        if isinstance(producer, dict) and isinstance(producer.get("seq"), int):
            base = zlib.crc32(str(producer.get("id", "")).encode()) + producer["seq"]
        else:
            base = group.rr_counter
            group.rr_counter += len(events)
        by_region: dict[str, list[Any]] = {}
        for i, ev in enumerate(events):
            p = group.store.route_event(stream, ev, rr_counter=base + i)
            by_region.setdefault(homes.get(p, here), []).append({**ev, "partition": p})
        remote = sorted(r for r in by_region if r != here)
        if request.query.get("route") == "reject" or REGION_HEADER in request.headers:
            home = remote[0]
            addresses = self._home_urls(home)
            raise ApiError(
                ErrorCode.WRONG_REGION,
                f"{stream}: partitions homed in {remote} are not written in {here}; "
                f"send them to their home region",
                home=home,
                homes={str(p): r for p, r in sorted(homes.items())},
                address=addresses[0],
                addresses=addresses,
            )
        results: list[dict[str, Any]] = []
        token_parts: list[tuple[int, int, int]] = []
        errors: list[ApiError] = []
        stored = 0
        tasks = {
            r: asyncio.ensure_future(
                self.region_call(
                    r,
                    "POST",
                    request.path,
                    json.dumps(
                        {"events": evs, **({"producer": producer} if producer else {})}
                    ).encode(),
                    JSON,
                )
            )
            for r, evs in by_region.items()
            if r != here
        }
        try:
            if here in by_region:
                res, parts, errs, n = await self._append_here(
                    group, stream, by_region[here], producer
                )
                results += res
                token_parts += parts
                errors += errs
                stored += n
            for r, task in tasks.items():
                partitions = sorted({ev["partition"] for ev in by_region[r]})
                try:
                    status, answer, _ = await task
                    decoded = json.loads(answer)
                except (ApiError, ValueError) as exc:
                    err = (
                        exc
                        if isinstance(exc, ApiError)
                        else ApiError(ErrorCode.UNAVAILABLE, f"region {r} answered garbage")
                    )
                    errors.append(err)
                    results += [{"partition": p, **err.to_body()} for p in partitions]
                    continue
                if status != 200:
                    home_code = decoded.get("error", {}).get("code")
                    err = ApiError(
                        # the home's own retryable refusal keeps its code (a move, a lease)
                        ErrorCode(home_code) if home_code in _PASSED_ON else ErrorCode.UNAVAILABLE,
                        f"home region {r} answered {status}: "
                        f"{decoded.get('error', {}).get('message', '')}",
                        region=r,
                        retry_after_s=1,
                    )
                    errors.append(err)
                    results += [
                        {"partition": p, **decoded} if "error" in decoded else err.to_body()
                        for p in partitions
                    ]
                    continue
                results += decoded.get("results", [])
                token = decoded.get("token")
                if token:
                    token_parts += parse_token(token)[1]
        finally:
            for task in tasks.values():
                task.cancel()
        if errors and not token_parts:
            raise errors[0]
        results.sort(key=lambda item: int(item.get("partition", -1)))
        self.node.metrics.events_appended.inc(stored)
        self.node.metrics.append_latency.observe(time.perf_counter() - t0)
        return respond(
            request, 200, {"results": results, "token": make_token(stream, sorted(token_parts))}
        )

    async def _append_here(
        self, group: GroupRuntime, stream: str, events: list[Any], producer: Any
    ) -> tuple[list[dict[str, Any]], list[tuple[int, int, int]], list[ApiError], int]:
        """Append events of this region's partitions: results, token parts, errors, count."""
        prepared = group.store.validate_append(
            stream, events, now_us=time.time_ns() // 1000, producer=producer
        )
        await self._admit_lag(stream, (b.partition for b in prepared.batches))
        self._require_lease()
        self._require_placement(group, stream, {b.partition for b in prepared.batches})
        outcomes = await self._await_all(
            group.propose([encode_command(b) for b in prepared.batches])
        )
        self._lease_after_commit()
        return _append_outcomes(prepared.batches, outcomes)

    def _unmirrored_stream(self, name: str | None, err: GeostoreError) -> GeostoreError:
        """A stream the metadata group has but this region has not mirrored yet (a moment
        after its creation elsewhere): a retryable 503 rather than 404."""
        meta = self.node.meta
        if meta is None or name is None or err.code is not ErrorCode.UNKNOWN_STREAM:
            return err
        if meta.state.stream(name) is None:
            return err
        return ApiError(
            ErrorCode.UNAVAILABLE,
            f"stream {name!r} exists but region {self.node.region} has not mirrored it yet; "
            "retry shortly",
            stream=name,
            retry_after_s=1,
        )

    def _require_lease(self) -> None:
        """Partitions homed here take appends only under a valid home lease (503 otherwise)."""
        if self.node.meta is not None:
            self.node.meta.require_lease()

    def _require_placement(
        self, group: GroupRuntime, stream: str, partitions: Iterable[int]
    ) -> None:
        """Refuse (503 ``moving``) appends to a partition the metadata group moved on from.

        The data path reads homes from this region's store, which follows the metadata
        group a moment later (the leader mirrors each move). In that moment, and while a
        region that was away catches up, the store still names this region: the metadata
        epoch is the truth. With :meth:`MetaHost.lease_valid` (which waits until this
        replica applied the renewal) every move committed before the lease is seen here.
        """
        meta = self.node.meta
        if meta is None:
            return
        for part in partitions:
            moved = meta.home_of(stream, part)
            if moved is None:
                continue
            local = group.store.home_of(stream, part)
            if moved.epoch > local.epoch:
                raise ApiError(
                    ErrorCode.MOVING,
                    f"{stream}/{part} moved to {moved.home} (epoch {moved.epoch}); region "
                    f"{self.node.region} is still at epoch {local.epoch} and applies the move "
                    "shortly: retry (the client then writes to the new home)",
                    home=moved.home,
                    epoch=moved.epoch,
                    retry_after_ms=100,
                )

    def _lease_after_commit(self) -> None:
        """Committed while the lease was valid at proposal: durable here, answered as a
        success even if the lease lapsed meanwhile (counted); new appends are refused."""
        if self.node.meta is not None:
            self.node.meta.note_ack()

    async def _admit_lag(self, stream: str, partitions: Iterable[int]) -> None:
        """Lag-bounded backpressure before proposing an append of home partitions.

        Streams with an ``rpo_ms`` bound (topology ``[[streams]]``): the worst replication lag
        (age of the oldest event not yet durable there, as this home leader's shipper knows
        it) over the appended partitions and every other region decides with
        :func:`~geostore.store.failover.admit_append`: admitted, slowed by a delay (slept
        here), or refused with the retryable 503 ``replication_lag``, so that what a failover
        to any surviving region can lose stays within the bound. The whole request is
        admitted or refused together. Counted in ``geostore_appends_throttled_total``.

        A region whose home lease has expired as this node saw it (it is down or cut off
        from the metadata group: no failover would pick it) does not count, so one lost
        region does not stop bounded streams everywhere until it returns.
        """
        policy = self._lag_policies.get(stream)
        shipper = self.node.geo.shipper
        if policy is None or shipper is None:
            return
        meta = self.node.meta
        live = [
            d
            for d in shipper.destinations()
            if meta is None or meta.state.lease(d) is None or not meta.lease_expired_for_observer(d)
        ]
        now_ms = int(time.monotonic() * 1000)  # the clock the shipper's commit marks use
        worst_ms, worst_p = 0, 0
        for p in set(partitions):
            for dst in live:
                try:
                    lag = shipper.lag(StreamName(stream), PartitionId(p), dst, now_ms)
                except KeyError:  # not reported to this shipper yet: nothing shipped to lag
                    continue
                # fenced: another region is home now; the append fails on its epoch anyway
                if lag.state is not CursorState.FENCED and lag.ms > worst_ms:
                    worst_ms, worst_p = lag.ms, p
        action, delay_ms = admit_append(worst_ms, policy)
        if action is Admission.ADMIT:
            return
        self.node.metrics.appends_throttled.inc(action=action.value)
        if action is Admission.REFUSE:
            raise lag_refused(stream, worst_p, worst_ms, policy)
        await asyncio.sleep(delay_ms / 1000)

    async def meta_propose(self, request: web.Request) -> web.StreamResponse:
        """Internal: another node's metadata command, proposed here when this node leads."""
        raw, body = await read_body(request, self.limits.body_bytes_max)
        meta = self.node.meta
        if meta is None:
            raise ApiError(ErrorCode.UNAVAILABLE, "no metadata group in this mode or topology")
        command = body.get("command") if isinstance(body, dict) else None
        if isinstance(command, str):
            try:
                command = base64.b64decode(command, validate=True)
            except ValueError:
                command = None
        if not isinstance(command, bytes):
            raise ApiError(ErrorCode.MALFORMED, 'body must be {"command": base64 of a command}')
        forwarded = await self._leader_or_forward(request, meta.group, raw)
        if forwarded is not None:
            return forwarded
        return respond(request, 200, {"result": await meta.propose_encoded(command)})

    async def add_peer(self, request: web.Request) -> web.StreamResponse:
        _, body = await read_body(request, self.limits.body_bytes_max)
        node, url = (body.get("node"), body.get("url")) if isinstance(body, dict) else (0, 0)
        region = body.get("region", self.node.region) if isinstance(body, dict) else None
        api = body.get("api") if isinstance(body, dict) else None
        if (
            not isinstance(node, str)
            or not node
            or not isinstance(url, str)
            or not isinstance(api, str | None)
        ):
            raise ApiError(
                ErrorCode.MALFORMED,
                'body must be {"node": ID, "url": URL, "region": R?, "api": URL?}',
            )
        for name, value in (("url", url), ("api", api)):
            if value is not None and not value.startswith(("http://", "https://")):
                raise ApiError(
                    ErrorCode.MALFORMED,
                    f"{name} must be http(s)://host:port, not {value!r}",
                    field=name,
                )
        if region not in self.node.topology.region_names():
            raise ApiError(
                ErrorCode.MALFORMED,
                f"region must be one of {list(self.node.topology.region_names())}",
                field="region",
            )
        self.node.add_peer(
            NodeId(node),
            url.rstrip("/"),
            RegionId(region),
            None if api is None else api.rstrip("/"),
        )
        answer = {"node": node, "url": url, "region": region}
        return respond(request, 200, answer if api is None else {**answer, "api": api})

    async def meta_members(self, request: web.Request) -> web.StreamResponse:
        """Add a learner to the metadata group or remove a node (see MetaHost.change_member)."""
        raw, body = await read_body(request, self.limits.body_bytes_max)
        meta = self.node.meta
        if meta is None:
            raise ApiError(
                ErrorCode.MALFORMED,
                "no metadata group here: it exists in multi-leader mode with two regions or more",
            )
        op, node = (body.get("op"), body.get("node")) if isinstance(body, dict) else (0, 0)
        region = body.get("region") if isinstance(body, dict) else None
        if op not in MEMBER_OPS or not isinstance(node, str) or not node:
            raise ApiError(
                ErrorCode.MALFORMED,
                f'body must be {{"op": one of {list(MEMBER_OPS)}, "node": ID, "region": R?}}',
            )
        if region is not None and not isinstance(region, str):
            raise ApiError(ErrorCode.MALFORMED, "region must be a string", field="region")
        forwarded = await self._leader_or_forward(request, meta.group, raw)
        if forwarded is not None:
            return forwarded
        return respond(request, 200, await meta.change_member(op, NodeId(node), region))

    async def change_members(self, request: web.Request) -> web.StreamResponse:
        raw, body = await read_body(request, self.limits.body_bytes_max)
        ops = {
            "add_learner": ConfChangeOp.ADD_LEARNER,
            "add_voter": ConfChangeOp.ADD_VOTER,
            "promote": ConfChangeOp.PROMOTE,
            "remove": ConfChangeOp.REMOVE,
        }
        op, node = (body.get("op"), body.get("node")) if isinstance(body, dict) else (0, 0)
        if op not in ops or not isinstance(node, str) or not node:
            raise ApiError(
                ErrorCode.MALFORMED, f'body must be {{"op": one of {sorted(ops)}, "node": ID}}'
            )
        group = self.node.data_group
        forwarded = await self._leader_or_forward(request, group, raw)
        if forwarded is not None:
            return forwarded
        conf = group.status().conf
        if ops[op] is not ConfChangeOp.REMOVE and (
            NodeId(node) in conf.voters
            or (ops[op] is ConfChangeOp.ADD_LEARNER and NodeId(node) in conf.learners)
        ):
            # already so (a resumed 'node add' repeats its steps): Raft would refuse the
            # repeat as invalid, which a client can only retry until its deadline
            answer = {"voters": sorted(conf.voters), "learners": sorted(conf.learners)}
            return respond(request, 200, {**answer, "already": True})
        if ops[op] is not ConfChangeOp.REMOVE and NodeId(node) not in self.node.peer_urls:
            raise ApiError(
                ErrorCode.MALFORMED, f"no address known for {node}: POST /v1/admin/peers first"
            )
        sec = self.node.security
        home = sec.peer_region(NodeId(node))
        if (
            ops[op] is not ConfChangeOp.REMOVE
            and not sec.single_leader
            and home != self.node.region
        ):
            # the peer book knows nodes of other regions too (metadata group): one of them
            # here would have its messages refused, and as a voter only raise the quorum
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{node} is a node of region {home}, not of {self.node.region}",
                node=node,
            )
        await self._await_all([group.propose_conf_change(ConfChange(ops[op], NodeId(node)))])
        conf = group.status().conf
        return respond(
            request, 200, {"voters": sorted(conf.voters), "learners": sorted(conf.learners)}
        )

    async def leader_transfer(self, request: web.Request) -> web.StreamResponse:
        _, body = await read_body(request, self.limits.body_bytes_max)
        if not isinstance(body, dict) or not isinstance(body.get("to"), str):
            raise ApiError(ErrorCode.MALFORMED, 'body must be {"to": NODE_ID}')
        group = self.node.data_group
        if not group.is_leader:
            raise ApiError(ErrorCode.NOT_LEADER, "this node does not lead", leader=group.leader)
        if not group.transfer_leadership(NodeId(body["to"])):
            raise ApiError(ErrorCode.UNAVAILABLE, "the transfer was refused", retry_after_s=1)
        return respond(request, 202, {"transferring_to": body["to"]})

    # -- moves and failovers ---------------------------------------------------------------

    async def _in_region(
        self, request: web.Request, region: str, raw: bytes | None
    ) -> web.StreamResponse | None:
        """None when this node leads ``region``'s data group; else that leader's answer."""
        if region != self.node.region:
            if REGION_HEADER in request.headers:
                raise ApiError(
                    ErrorCode.MOVING,
                    f"{self.node.region} was asked to act for {region}: placement is changing, "
                    "retry shortly",
                    retry_after_ms=200,
                )
            status, answer, ctype = await self.region_call(
                region, request.method, request.path_qs, raw, JSON
            )
            return web.Response(status=status, body=answer, content_type=ctype)
        return await self._leader_or_forward(request, self.node.data_group, raw)

    async def partition_move(self, request: web.Request) -> web.StreamResponse:
        raw, body = await read_body(request, self.limits.body_bytes_max)
        moves = self.node.moves
        stream = StreamName(request.match_info["s"])
        try:
            partition = PartitionId(int(request.match_info["p"]))
        except ValueError:
            raise ApiError(ErrorCode.MALFORMED, "partition must be an integer") from None
        if not isinstance(body, dict) or not body.keys() <= {"to", "timeout_ms"}:
            raise ApiError(ErrorCode.MALFORMED, 'body must be {"to": REGION, "timeout_ms": N?}')
        to = moves.check_region(body.get("to"), "to")
        timeout_ms = body.get("timeout_ms", MOVE_TIMEOUT_MS)
        if type(timeout_ms) is not int or not 1 <= timeout_ms <= MOVE_TIMEOUT_MS_MAX:
            raise ApiError(
                ErrorCode.MALFORMED,
                f"timeout_ms must be an integer in 1..{MOVE_TIMEOUT_MS_MAX}",
                field="timeout_ms",
            )
        meta = self.node.meta
        if meta is None:
            raise ApiError(
                ErrorCode.MALFORMED,
                "moving a home needs multi-leader mode with two regions or more",
            )
        if meta.state.stream(stream) is None:
            raise ApiError(ErrorCode.UNKNOWN_STREAM, f"no stream {stream!r}", stream=stream)
        home = meta.home_of(stream, partition)
        if home is None:
            raise ApiError(
                ErrorCode.UNKNOWN_PARTITION,
                f"stream {stream!r} has no partition {partition}",
                stream=stream,
            )
        if home.home is None:
            raise ApiError(ErrorCode.MALFORMED, f"{stream}/{partition} has no home region")
        answer = await self._in_region(request, home.home, raw)
        if answer is not None:
            return answer
        return respond(request, 200, await moves.move(stream, partition, to, timeout_ms))

    async def region_failover(self, request: web.Request) -> web.StreamResponse:
        raw, body = await read_body(request, self.limits.body_bytes_max)
        moves = self.node.moves
        lost = moves.check_region(request.match_info["r"], "region")
        if not isinstance(body, dict) or not body.keys() <= {"to", "now"}:
            raise ApiError(ErrorCode.MALFORMED, 'body must be {"to": REGION, "now": bool?}')
        to = moves.check_region(body.get("to"), "to")
        now = body.get("now", False)
        if type(now) is not bool:
            raise ApiError(ErrorCode.MALFORMED, "now must be true or false", field="now")
        if to == lost:
            raise ApiError(ErrorCode.MALFORMED, "to must be another region than the lost one")
        answer = await self._in_region(request, to, raw)
        if answer is not None:
            return answer
        return respond(request, 200, await moves.failover(lost, now))

    # -- reads ------------------------------------------------------------------------------

    async def _consistent(
        self, request: web.Request, group: GroupRuntime, partition: int | None = None
    ) -> web.StreamResponse | None:
        """Make the read consistent as asked; a response when it was forwarded instead."""
        consistency = request.query.get("consistency", "regional")
        if consistency not in ("local", "regional", "strong"):
            raise ApiError(
                ErrorCode.MALFORMED,
                f"consistency must be local, regional or strong, not {consistency!r}",
                field="consistency",
            )
        if consistency == "strong" and partition is not None and not self.node.single_leader:
            home = self._homes(group, request.match_info["s"]).get(partition)
            if home is not None and home != self.node.region:
                # linearizable globally: the home region's leader serves it
                if REGION_HEADER in request.headers:
                    raise ApiError(
                        ErrorCode.WRONG_REGION,
                        f"partition {partition} is homed in {home}, not {self.node.region}",
                        home=home,
                    )
                status, answer, ctype = await self.region_call(
                    home, "GET", request.path_qs, None, None
                )
                return web.Response(status=status, body=answer, content_type=ctype)
        if consistency != "local":
            forwarded = await self._leader_or_forward(request, group, None)
            if forwarded is not None:
                return forwarded
            try:
                async with asyncio.timeout(APPEND_TIMEOUT_S):
                    await group.read_barrier()
            except TimeoutError:
                raise ApiError(
                    ErrorCode.WAIT_TIMEOUT, "the read could not be confirmed in time"
                ) from None
        token = request.query.get("after")
        if token:
            await self._wait_token(request, group, token)
        return None

    async def _wait_token(self, request: web.Request, group: GroupRuntime, token: str) -> None:
        stream, parts = parse_token(token)
        wait_ms = int_param(request, "wait_ms", 0, minimum=0) or 0
        wait_ms = min(wait_ms, self.limits.wait_ms_max)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000

        def reached() -> bool:
            for p, epoch, seq in parts:
                try:
                    # 409 superseded_epoch for a position a fork orphaned: a wait for it
                    # would never end (checked on every wake-up: a failback may land mid-wait)
                    group.store.check_position(stream, p, epoch, seq)
                    if group.store.partition_info(stream, p).last_seq < seq:
                        return False
                except ApiError as err:
                    if err.code is ErrorCode.UNKNOWN_STREAM:
                        return False  # its creation is not applied here yet
                    raise
            return True

        while not reached():
            left = deadline - loop.time()
            if left <= 0:
                raise ApiError(
                    ErrorCode.WAIT_TIMEOUT,
                    f"this node has not applied the token's writes within {wait_ms} ms",
                    watermark=self._watermarks(group, stream, [p for p, _, _ in parts]),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(group.wait_applied_change()), left)

    @staticmethod
    def _watermarks(group: GroupRuntime, stream: str, partitions: list[int]) -> dict[str, Any]:
        """What this copy applied of each partition: ``{partition: {epoch, seq}}``."""
        out: dict[str, Any] = {}
        for p in sorted(set(partitions)):
            try:
                info = group.store.partition_info(stream, p)
            except ApiError:
                continue
            out[str(p)] = {"epoch": info.epoch, "seq": info.last_seq}
        return out

    def _limit(self, request: web.Request) -> int | None:
        limit = int_param(request, "limit", None, minimum=1)
        return None if limit is None else min(limit, self.limits.read_limit_max)

    def _ts_range(self, request: web.Request, required: bool) -> tuple[int, int] | None:
        from_ts = int_param(request, "from_ts")
        to_ts = int_param(request, "to_ts")
        if from_ts is None and to_ts is None and not required:
            return None
        if from_ts is None or to_ts is None:
            raise ApiError(ErrorCode.MALFORMED, "from_ts and to_ts go together", field="to_ts")
        if to_ts < from_ts:
            raise ApiError(ErrorCode.MALFORMED, "to_ts is before from_ts", field="to_ts")
        span = to_ts - from_ts
        if span > self.limits.query_range_us_max:
            raise ApiError(
                ErrorCode.TOO_LARGE,
                f"time range of {span} us, at most {self.limits.query_range_us_max}",
                field="to_ts",
            )
        return from_ts, to_ts

    async def read(self, request: web.Request) -> web.StreamResponse:
        stream = request.match_info["s"]
        group = self.node.group_for_stream(stream)
        partition = int_param(request, "partition", 0)
        from_seq = int_param(request, "from_seq", 0, minimum=0)
        limit = self._limit(request)
        rng = self._ts_range(request, required=False)
        forwarded = await self._consistent(request, group, partition or 0)
        if forwarded is not None:
            return forwarded
        store = group.store
        if rng is None:
            result = store.read(stream, partition or 0, from_seq, limit)
        else:
            result = store.read_time_range(stream, partition or 0, rng[0], rng[1], from_seq, limit)
        return respond(request, 200, result.to_json())

    async def aggregate(self, request: web.Request) -> web.StreamResponse:
        stream = request.match_info["s"]
        group = self.node.group_for_stream(stream)
        fld = request.query.get("field")
        if not fld:
            raise ApiError(ErrorCode.MALFORMED, "field is required", field="field")
        rng = self._ts_range(request, required=True)
        assert rng is not None
        partition = int_param(request, "partition")
        window_us = int_param(request, "window_us", minimum=1)
        scan_limit = int_param(request, "scan_limit", minimum=1)
        forwarded = await self._consistent(request, group, partition)
        if forwarded is not None:
            return forwarded
        result = group.store.aggregate(
            stream,
            fld,
            rng[0],
            rng[1],
            partition=partition,
            window_us=window_us,
            scan_limit=scan_limit,
        )
        return respond(request, 200, result.to_json())

    async def tail(self, request: web.Request) -> web.StreamResponse:
        stream = request.match_info["s"]
        group = self.node.group_for_stream(stream)
        partition = int_param(request, "partition", 0) or 0
        info = group.store.partition_info(stream, partition)  # 404s first
        from_seq = int_param(request, "from_seq", info.last_seq + 1, minimum=0)
        assert from_seq is not None
        node = self.node
        if node.tail_subscribers >= self.limits.tail_subscribers_max:
            raise ApiError(
                ErrorCode.TOO_LARGE,
                f"{node.tail_subscribers} tail subscribers on this node, "
                f"at most {self.limits.tail_subscribers_max}",
            )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        node.tail_subscribers += 1
        wake = asyncio.Event()
        self._tail_wakers.add(wake)
        unsubscribe = group.store.subscribe(stream, partition, lambda *_: wake.set())
        batch = min(self.limits.tail_buffer_events_max, self.limits.read_limit_max)
        next_seq = from_seq
        try:
            while not node.stopping:
                wake.clear()
                result = group.store.events_since(stream, partition, next_seq, batch)
                for ev in result.events:
                    data = json.dumps(ev.to_json(), default=str, separators=(",", ":"))
                    line = f"id: {ev.seq}\nevent: event\ndata: {data}\n\n".encode()
                    await bounded_write(resp, line, self.limits.write_timeout_s)
                next_seq = result.next_seq
                if result.events:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), timeout=15.0)
                except TimeoutError:
                    await bounded_write(resp, b": keep-alive\n\n", self.limits.write_timeout_s)
        except (ConnectionResetError, ConnectionError):
            pass
        except TimeoutError:  # a subscriber that does not read: drop it, free its slot
            node.security.guard.write_timeouts += 1
            if request.transport is not None:
                request.transport.close()
        finally:
            unsubscribe()
            self._tail_wakers.discard(wake)
            node.tail_subscribers -= 1
        return resp

    # -- quarantine -------------------------------------------------------------------------

    def _quarantine_filter(
        self, request: web.Request, group: GroupRuntime
    ) -> tuple[str | None, int | None]:
        """The ``stream``/``partition`` filter of a quarantine request (404 for unknown)."""
        stream = request.query.get("stream") or None
        partition = int_param(request, "partition", None, minimum=0)
        if partition is not None and stream is None:
            raise ApiError(ErrorCode.MALFORMED, "partition needs stream", field="partition")
        if stream is not None:
            definition = group.store.stream(stream)  # 404 unknown_stream
            if partition is not None and partition >= definition.partitions:
                raise ApiError(
                    ErrorCode.UNKNOWN_PARTITION,
                    f"{stream} has {definition.partitions} partitions, not {partition}",
                    partition=partition,
                )
        return stream, partition

    async def quarantine(self, request: web.Request) -> web.StreamResponse:
        """The region's quarantined runs (replicated in its data group): regional by default
        (forwarded to the leader, as reads are), ``consistency=local`` this node's copy."""
        group = self.node.data_group
        stream, partition = self._quarantine_filter(request, group)
        limit = self._limit(request) or self.limits.read_limit_max
        forwarded = await self._consistent(request, group)
        if forwarded is not None:
            return forwarded
        runs = group.store.quarantine(stream, partition)
        return respond(
            request,
            200,
            {
                "region": self.node.region,
                "node": self.node.node_id,
                "runs_total": len(runs),
                "events_total": sum(r.record_count for r in runs),
                "bytes_total": sum(r.size_bytes for r in runs),
                "truncated": len(runs) > limit,
                "runs": [
                    {
                        "stream": r.stream,
                        "partition": r.partition,
                        "epoch": r.epoch,
                        "superseded_by": r.superseded_by,
                        "fork_seq": r.fork_seq,
                        "first_seq": r.first_seq,
                        "last_seq": r.last_seq,
                        "record_count": r.record_count,
                        "size_bytes": r.size_bytes,
                        "parts": r.parts,
                        "producer_id": r.producer_id,
                        "producer_seq": r.producer_seq,
                    }
                    for r in runs[:limit]
                ],
            },
        )

    async def quarantine_export(self, request: web.Request) -> web.StreamResponse:
        """This node's copy of the quarantined events as JSON lines, streamed in chunks of at
        most :data:`EXPORT_CHUNK_BYTES` (memory stays bounded whatever the quarantine holds;
        the runs are immutable, so a failback landing meanwhile does not disturb it). Served
        from the local copy: ask the region's leader for the latest (the CLI does)."""
        group = self.node.data_group
        stream, partition = self._quarantine_filter(request, group)
        resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        timeout_s = self.limits.write_timeout_s
        chunk = bytearray()
        try:
            for event in group.store.quarantine_events(stream, partition):
                chunk += json.dumps(event, default=str, separators=(",", ":")).encode()
                chunk += b"\n"
                if len(chunk) >= EXPORT_CHUNK_BYTES:
                    await bounded_write(resp, bytes(chunk), timeout_s)
                    chunk.clear()
            if chunk:
                await bounded_write(resp, bytes(chunk), timeout_s)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        except TimeoutError:  # a reader that does not read: drop it
            self.node.security.guard.write_timeouts += 1
            if request.transport is not None:
                request.transport.close()
        return resp

    async def quarantine_clear(self, request: web.Request) -> web.StreamResponse:
        """Commit a ClearQuarantine in the region's data group (through its leader)."""
        raw, body = await read_body(request, self.limits.body_bytes_max)  # {} clears everything
        if not isinstance(body, dict) or not body.keys() <= {
            "stream",
            "partition",
            "through_epoch",
        }:
            raise ApiError(
                ErrorCode.MALFORMED,
                'body must be {"stream"?: S, "partition"?: P, "through_epoch"?: E}',
            )
        stream, partition, through = (body.get(k) for k in ("stream", "partition", "through_epoch"))
        if stream is not None and (not isinstance(stream, str) or not stream):
            raise ApiError(ErrorCode.MALFORMED, "stream must be a non-empty string", field="stream")
        for name, v in (("partition", partition), ("through_epoch", through)):
            if v is not None and (type(v) is not int or not 0 <= v <= INT64_MAX):
                raise ApiError(ErrorCode.MALFORMED, f"{name} must be an integer >= 0", field=name)
        if partition is not None and stream is None:
            raise ApiError(ErrorCode.MALFORMED, "partition needs stream", field="partition")
        group = self.node.data_group
        forwarded = await self._leader_or_forward(request, group, raw)
        if forwarded is not None:
            return forwarded
        if stream is not None:
            group.store.stream(stream)  # 404 early (apply decides for good)
        cmd = ClearQuarantine(
            StreamName(stream) if stream is not None else None,
            PartitionId(partition) if partition is not None else None,
            Epoch(through) if through is not None else None,
        )
        (result,) = await self._await_all(group.propose([encode_command(cmd)]))
        if isinstance(result, Rejected):
            raise result.error
        assert isinstance(result, QuarantineCleared), result
        log.warning(
            "quarantine of region %s cleared (stream %s, partition %s, through epoch %s): "
            "%d runs, %d events, %d bytes dropped",
            self.node.region, stream, partition, through, result.runs, result.events, result.bytes,
        )  # fmt: skip
        return respond(request, 200, {"region": self.node.region, **result.to_json()})

    # -- operations -------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        return respond(request, 200, self.node.status_json())

    async def health(self, request: web.Request) -> web.StreamResponse:
        node = self.node
        reasons = []
        if node.stopping:
            reasons.append("shutting down")
        for gid, group in node.groups.items():
            if group.failed is not None:
                reasons.append(f"group {gid}: storage failed: {group.failed.message}")
            elif group.leader is None and not (node.meta and group is node.meta.group):
                reasons.append(f"group {gid}: no leader known")
        if reasons:
            err = ApiError(ErrorCode.UNAVAILABLE, "; ".join(reasons), retry_after_s=1)
            return error_response(request, err)
        return respond(request, 200, {"status": "ok", "node": node.node_id})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        text = self.node.metrics.registry.render()
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return respond(request, 200, openapi_document())

    async def debug_partitions(self, request: web.Request) -> web.StreamResponse:
        group = self.node.data_group
        return respond(
            request,
            200,
            {
                "node": self.node.node_id,
                "group": group.group_id,
                "applied_index": group.host.applied,
                "partitions": [p.to_json() for p in group.store.partitions()],
            },
        )


# --- OpenAPI ---------------------------------------------------------------------------------

_OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}
_SCHEMAS: dict[str, Any] = {
    "Object": _OBJ,
    "String": {"type": "string"},
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": [str(c) for c in ErrorCode]},
                    "message": {"type": "string"},
                },
                "additionalProperties": True,
            }
        },
    },
    "StreamRequest": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "partitions": {"type": "integer", "minimum": 1},
            "key_field": {"type": "string"},
            "schema": _OBJ,
            "homes": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Stream": _OBJ,
    "Event": {
        "type": "object",
        "required": ["body"],
        "properties": {
            "ts": {"type": "integer", "description": "microseconds since the Unix epoch"},
            "key": {"type": "string"},
            "partition": {"type": "integer"},
            "body": {},
        },
    },
    "AppendRequest": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "producer": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "seq": {"type": "integer"}},
            },
        },
    },
    "AppendResponse": {
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": _OBJ},
            "token": {"type": "string"},
        },
    },
    "ReadResponse": {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": _OBJ},
            "next_seq": {"type": "integer"},
            "stats": _OBJ,
        },
    },
    "AggregateResponse": {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "min": {"type": "number", "nullable": True},
            "max": {"type": "number", "nullable": True},
            "sum": {"type": "number"},
            "avg": {"type": "number", "nullable": True},
            "windows": {"type": "array", "items": _OBJ},
            "stats": _OBJ,
        },
    },
    "Quarantine": {
        "type": "object",
        "required": ["region", "runs", "runs_total", "events_total"],
        "properties": {
            "region": {"type": "string"},
            "node": {"type": "string"},
            "runs_total": {"type": "integer"},
            "events_total": {"type": "integer"},
            "bytes_total": {"type": "integer"},
            "truncated": {"type": "boolean"},
            "runs": {"type": "array", "items": _OBJ},
        },
    },
    "QuarantineClearRequest": {
        "type": "object",
        "properties": {
            "stream": {"type": "string", "description": "only this stream (default: all)"},
            "partition": {"type": "integer", "minimum": 0, "description": "needs stream"},
            "through_epoch": {
                "type": "integer",
                "minimum": 0,
                "description": "only runs superseded by this epoch or an older one",
            },
        },
    },
    "QuarantineCleared": {
        "type": "object",
        "required": ["region", "cleared", "left"],
        "properties": {
            "region": {"type": "string"},
            "cleared": {"$ref": "#/components/schemas/QuarantineSize"},
            "left": {"$ref": "#/components/schemas/QuarantineSize"},
        },
    },
    "QuarantineSize": {
        "type": "object",
        "required": ["runs", "events", "bytes"],
        "properties": {
            "runs": {"type": "integer"},
            "events": {"type": "integer"},
            "bytes": {"type": "integer"},
        },
    },
    "Status": _OBJ,
    "Health": _OBJ,
    "Partitions": _OBJ,
    "PeerRequest": {
        "type": "object",
        "required": ["node", "url"],
        "properties": {
            "node": {"type": "string"},
            "url": {"type": "string"},
            "region": {"type": "string", "description": "its region (default: this node's)"},
            "api": {
                "type": "string",
                "description": "its client-facing address, listed in 421 wrong_region answers "
                "(default: url for a node of this node's region)",
            },
        },
    },
    "MetaMembersRequest": {
        "type": "object",
        "required": ["op", "node"],
        "properties": {
            "op": {"type": "string", "enum": ["add_learner", "remove"]},
            "node": {"type": "string"},
            "region": {"type": "string", "description": "add_learner: the node's region"},
        },
    },
    "MetaMembers": {
        "type": "object",
        "required": ["group", "voters", "learners", "commit"],
        "properties": {
            "group": {"type": "string"},
            "leader": {"type": ["string", "null"]},
            "voters": {"type": "array", "items": {"type": "string"}},
            "learners": {"type": "array", "items": {"type": "string"}},
            "commit": {"type": "integer", "description": "the leader's commit index"},
            "regions": {"type": "object", "description": "region -> its nodes"},
        },
    },
    "MembersRequest": {
        "type": "object",
        "required": ["op", "node"],
        "properties": {
            "op": {"type": "string", "enum": ["add_learner", "add_voter", "promote", "remove"]},
            "node": {"type": "string"},
        },
    },
    "MetaProposeRequest": {
        "type": "object",
        "required": ["command"],
        "properties": {"command": {"type": "string", "description": "base64 of the command"}},
    },
    "TransferRequest": {
        "type": "object",
        "required": ["to"],
        "properties": {"to": {"type": "string"}},
    },
    "MoveRequest": {
        "type": "object",
        "required": ["to"],
        "properties": {
            "to": {"type": "string", "description": "target region (the current home: unfence)"},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": MOVE_TIMEOUT_MS_MAX},
        },
    },
    "MoveResponse": {
        "type": "object",
        "required": ["stream", "partition", "from", "to", "changed", "epoch"],
        "properties": {
            "stream": {"type": "string"},
            "partition": {"type": "integer"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "changed": {"type": "boolean"},
            "epoch": {"type": "integer"},
            "fork_seq": {"type": "integer"},
            "pauses_ms": {"type": "object", "additionalProperties": {"type": "integer"}},
            "pause_ms": {"type": "integer"},
            "opened": {"type": "boolean"},
            "unfenced": {"type": "boolean"},
        },
    },
    "FailoverRequest": {
        "type": "object",
        "required": ["to"],
        "properties": {
            "to": {"type": "string", "description": "the surviving region taking the homes"},
            "now": {"type": "boolean", "description": "skip the lease wait (see docs)"},
        },
    },
    "FailoverResponse": {
        "type": "object",
        "required": ["region", "to", "now", "partitions"],
        "properties": {
            "region": {"type": "string"},
            "to": {"type": "string"},
            "now": {"type": "boolean"},
            "lease_remaining_ms": {"type": "integer"},
            "warning": {"type": "string"},
            "partitions": {"type": "array", "items": _OBJ},
        },
    },
}

_REASONS = {
    400: "malformed request",
    404: "unknown stream or partition",
    409: "conflict",
    413: "over a limit",
    421: "wrong region: the partition is homed in another region (route=reject)",
    503: "not available now (no leader, home lease lapsed, shutting down); see Retry-After",
    504: "a wait bound expired",
}


#: The Content-Type of JSON answers, as ``respond`` writes it.
_JSON_HEADERS = {"Content-Type": f"{JSON}; charset=utf-8"}
_NO_HEADERS: dict[str, str] = {}
#: The append route's label in the request counter (the route's canonical path).
_APPEND_ROUTE = next(r.path for r in ROUTES if r.handler == "append")


def append_answer_json(result: AppendResult, token: str) -> bytes:
    """The JSON answer to an append of one committed batch, byte for byte what
    :func:`~geostore.runtime.http.respond` writes for ``{"results": [item], "token": token}``
    (compact separators; the token is base64url, which needs no escaping)."""
    dup = ',"duplicate":true' if result.duplicate else ""
    return (
        f'{{"results":[{{"partition":{int(result.partition)},"first_seq":{int(result.first_seq)},'
        f'"last_seq":{int(result.last_seq)},"epoch":{int(result.epoch)}{dup}}}],'
        f'"token":"{token}"}}'
    ).encode()


def _expire(futures: list[asyncio.Future[Any]]) -> None:
    """An append's wait ran out: its futures that are still open fail with ``wait_timeout``
    (the group's resolver skips a future that is done already)."""
    for fut in futures:
        if not fut.done():
            fut.set_exception(
                ApiError(
                    ErrorCode.WAIT_TIMEOUT,
                    f"not committed within {APPEND_TIMEOUT_S:g} s; the outcome is unknown "
                    "(retry with the same producer id and seq)",
                )
            )


def _append_outcomes(
    batches: Sequence[Any], outcomes: Sequence[Any]
) -> tuple[list[dict[str, Any]], list[tuple[int, int, int]], list[ApiError], int]:
    """Per batch of an append, its answer item; the token parts (partition, epoch, last seq)
    of the batches that committed; their errors; and how many events were newly stored
    (a deduplicated retry stores none)."""
    results: list[dict[str, Any]] = []
    parts: list[tuple[int, int, int]] = []
    errors: list[ApiError] = []
    stored = 0
    for batch, outcome in zip(batches, outcomes, strict=True):
        if isinstance(outcome, Rejected):
            errors.append(outcome.error)
            results.append({"partition": batch.partition, **outcome.error.to_body()})
            continue
        assert isinstance(outcome, AppendResult), outcome
        item = outcome.to_json()
        if outcome.duplicate:
            item["duplicate"] = True
        else:
            stored += outcome.last_seq - outcome.first_seq + 1
        results.append(item)
        parts.append((outcome.partition, outcome.epoch, outcome.last_seq))
    return results, parts, errors, stored


def _media(schema: str, ctype: str = JSON) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    if ctype == JSON:
        return {JSON: {"schema": ref}, CBOR: {"schema": ref}}
    return {ctype: {"schema": ref}}


#: Handlers that forward to the region group's leader (their answers may carry
#: :data:`LEADER_HEADER`); a ``not_leader`` refusal carries it on any route.
_LEADER_ROUTED = frozenset(
    {
        "create_stream",
        "append",
        "read",
        "aggregate",
        "quarantine",
        "quarantine_clear",
        "change_members",
        "partition_move",
        "region_failover",
    }
)
_LEADER_HEADER_DOC = {
    "description": "the node id of the region group's leader, on an answer a follower "
    "forwarded to it or on a not_leader refusal: send later calls there (docs/api.md)",
    "required": False,
    "schema": {"type": "string"},
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of :data:`ROUTES`."""
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "operationId": r.handler,
            "summary": r.summary,
            "tags": list(r.tags),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.doc,
                    "schema": {"type": p.kind},
                }
                for p in r.params
            ],
            "responses": {
                str(r.ok): {"description": "success", "content": _media(r.ok_schema, r.ok_type)},
                **{
                    str(code): {
                        "description": "success (already so)",
                        "content": _media(r.ok_schema, r.ok_type),
                    }
                    for code in r.also_ok
                },
                **{
                    str(code): {"description": _REASONS[code], "content": _media("Error")}
                    for code in r.errors
                },
            },
        }
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": _media(r.body)}
        for status, response in op["responses"].items():
            # a forwarded answer names the leader whatever its status (a 400, 404 or 421 of
            # the leader as much as its 200)
            if status == "503" or r.handler in _LEADER_ROUTED:
                response["headers"] = {LEADER_HEADER: {"$ref": "#/components/headers/Leader"}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "geostore node API",
            "version": __version__,
            "description": "Every node serves every route; see docs/api.md. Errors are "
            '{"error": {"code", "message", ...}}; codes and statuses: '
            + ", ".join(f"{c}={s}" for c, s in HTTP_STATUS.items()),
        },
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "headers": {"Leader": _LEADER_HEADER_DOC}},
    }
