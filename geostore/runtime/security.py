"""Who may talk to a node: certificates, tokens, and what an authenticated peer may send.

Theory of operation
-------------------
A node runs in one of two postures:

* **secure** (``geostore node --certs DIR [--tokens FILE]``, the default of ``cluster up``):
  the one port serves TLS with the node's certificate. The TLS layer *asks* for a client
  certificate but does not require one (plain API clients come with HTTPS and a bearer
  token); a certificate that is shown must chain to the cluster CA or the handshake fails
  (counted in ``tls_refused``). The peer endpoint then requires a verified certificate
  naming a node of the topology, equal to the node id of the hello (see
  :mod:`geostore.transport.peer`). The node dials its peers, and makes its own HTTP calls
  (requests forwarded to a leader or another region), with its own certificate (mTLS), so a
  forwarded request is authorised as that node: :mod:`geostore.transport.auth` grants a
  node certificate of this cluster every role. With a token file, every route but the open
  ones (health, OpenAPI, metrics) needs a token holding the route's role: 401 without a
  valid one, 403 without the role, answered before any handler runs. Tokens without
  certificates are refused at start: forwarded requests would carry no credential.
* **insecure** (no ``--certs``): plain HTTP, no tokens; only for local experiments.

Whatever the posture, an authenticated link only proves *who* sent a message, so every
inbound message is checked against what that sender may say (:meth:`NodeSecurity.admit`):

* a Raft message must name its link's peer as ``src`` (no relaying, no spoofing), and in
  multi-leader mode come from a node of this region (the regional group's members), unless
  it belongs to the metadata group, whose members span every region;
* a geo envelope must come from a node of the envelope's ``src_region``.

A refused message changes nothing; it is counted per reason
(``geostore_peer_messages_refused_total``) and logged at most once per interval per reason.
Headers that only nodes send each other (forwarded, from-region) are refused with 403 on a
request that was not authenticated by a node certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from geostore.config import Topology
from geostore.config.settings import LimitsSettings
from geostore.config.tokens import AuthError, Forbidden, TokenTable
from geostore.errors import ConfigError, GeostoreError
from geostore.geo import GeoEnvelope
from geostore.ids import NodeId, RegionId
from geostore.runtime.guard import (
    GuardStats,
    LogEvery,
    body_deadline_middleware,
    deadlines_middleware,
    write_deadline_middleware,
)
from geostore.runtime.http import error_response
from geostore.runtime.lane import LaneAuthorizer
from geostore.runtime.meta import META_GROUP
from geostore.runtime.metrics import NodeMetrics
from geostore.transport.auth import (
    PRINCIPAL,
    Handler,
    auth_middleware,
    certificate_principal,
    transport_principal,
)
from geostore.transport.certs import NodeTls

log = logging.getLogger("geostore.runtime")

#: Why an inbound message was refused (the metric's ``reason`` label).
REFUSED_SPOOFED = "src_mismatch"  # a Raft message whose src is not the link's peer
REFUSED_FOREIGN = "foreign_region"  # a Raft message from a node of another region
REFUSED_GEO_REGION = "geo_wrong_region"  # a geo envelope from outside its source region


def https(url: str) -> str:
    """``url`` with the https scheme (node addresses are written ``http://`` in topologies)."""
    return "https://" + url.removeprefix("http://") if url.startswith("http://") else url


class NodeSecurity:
    """The security posture of one node (see the module docstring)."""

    def __init__(
        self,
        topology: Topology,
        node_id: NodeId,
        region: RegionId,
        limits: LimitsSettings,
        metrics: NodeMetrics,
        *,
        tls: NodeTls | None,
        tokens: TokenTable | None,
        single_leader: bool,
        known: Callable[[NodeId], bool],
        added_region: Callable[[NodeId], RegionId | None] = lambda n: None,
    ) -> None:
        if tokens is not None and tls is None:
            raise ConfigError(
                "--tokens",
                "tokens",
                "a token file needs certificates too (--certs): nodes forward requests to "
                "each other authenticated by their certificates",
            )
        if tls is not None and (tls.node_id != node_id or tls.cluster_id != topology.name):
            raise ConfigError(
                "--certs",
                "certificate",
                f"the certificate names node {tls.node_id!r} of cluster {tls.cluster_id!r}, "
                f"not node {node_id!r} of {topology.name!r}",
            )
        self.topology = topology
        self.node_id = node_id
        self.region = region
        self.limits = limits
        self.tls = tls
        self.tokens = tokens
        self.single_leader = single_leader
        self._known = known
        self._added_region = added_region
        self.guard = GuardStats()
        self.refused: dict[str, int] = {}
        self._log = LogEvery()
        r = metrics.registry
        self._refused_metric = r.counter(
            "geostore_peer_messages_refused_total",
            "Inbound peer messages refused by sender checks, by reason.",
        )
        conns = r.gauge("geostore_http_connections", "Open connections to the node's port.")
        conns.set_source(lambda: float(self.guard.connections))
        refusals = r.gauge(
            "geostore_http_guard_refusals",
            "Connections refused or dropped by the guard, by kind (cumulative).",
        )
        lane = r.gauge(
            "geostore_http_append_lane",
            "Appends the append lane answered (requests) and connections it handed to "
            "aiohttp (handovers), cumulative.",
        )
        lane.set_source(_stat(self.guard, "lane_requests"), kind="requests")
        lane.set_source(_stat(self.guard, "lane_handovers"), kind="handovers")
        for kind in (
            "connections_refused",
            "header_timeouts",
            "body_timeouts",
            "write_timeouts",
            "answers_undelivered",
        ):
            refusals.set_source(_stat(self.guard, kind), kind=kind)
        if tls is not None:
            tls_refused = r.gauge(
                "geostore_tls_handshakes_refused", "Failed TLS handshakes (cumulative)."
            )
            tls_refused.set_source(lambda: float(tls.refusals.total))

    @property
    def secure(self) -> bool:
        return self.tls is not None

    def url(self, url: str) -> str:
        """A node's base URL as this node must call it (https when secure)."""
        return https(url) if self.tls is not None else url

    # -- peer members and messages -------------------------------------------------------------

    def peer_region(self, peer: NodeId) -> RegionId | None:
        """The region of ``peer``: the topology's, else the one it was added to (``node
        add`` names it; ours when it did not say)."""
        try:
            return self.topology.node(peer).region
        except (KeyError, ConfigError):
            if not self._known(peer):
                return None
            return self._added_region(peer) or self.region

    def is_member(self, peer: NodeId) -> bool:
        """May ``peer`` hold a peer link to this node at all."""
        return self.peer_region(peer) is not None

    def admit(self, peer: NodeId, msg: object) -> bool:
        """May ``peer`` (authenticated by its link) send ``msg``? Counts and logs a refusal."""
        if type(msg) is GeoEnvelope:
            if self.peer_region(peer) != msg.src_region:
                return self._refuse(
                    REFUSED_GEO_REGION,
                    peer,
                    f"a geo envelope for source region {msg.src_region!r}",
                )
            return True
        src = getattr(msg, "src", None)
        if src is not None and src != peer:
            return self._refuse(REFUSED_SPOOFED, peer, f"a message naming {src!r} as its sender")
        if getattr(msg, "group", None) == META_GROUP and self.is_member(peer):
            return True  # the metadata group spans every region: any member may speak in it
        if not self.single_leader and self.peer_region(peer) != self.region:
            return self._refuse(REFUSED_FOREIGN, peer, "a Raft message for another region")
        return True

    def _refuse(self, reason: str, peer: NodeId, what: str) -> bool:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._refused_metric.inc(reason=reason)
        self._log.warning(
            f"refused:{reason}",
            "node %s refused %s from peer %s (%s)",
            self.node_id,
            what,
            peer,
            reason,
        )
        return False

    # -- HTTP --------------------------------------------------------------------------------

    def middlewares(self, node_only_headers: tuple[str, ...]) -> list[Middleware]:
        """The node's outer middlewares, outermost first: write deadline, auth, body deadline
        (without tokens, the two deadlines are one middleware: one layer less per request)."""
        if self.tokens is None:
            return [deadlines_middleware(self.limits, self.guard)]
        assert self.tls is not None
        return [
            write_deadline_middleware(self.limits, self.guard),
            auth_middleware(self.tokens, self.tls.cluster_id, _auth_error),
            _node_headers_middleware(self.tls.cluster_id, node_only_headers),
            body_deadline_middleware(self.limits, self.guard),
        ]

    def lane_authorizer(self) -> LaneAuthorizer | None:
        """Who may append through the append lane: anyone without tokens; else a holder of
        a token with the ``write`` role or of a verified certificate of this cluster (what
        the auth middleware lets through; the lane hands anyone else to it, for the 401 or
        403)."""
        if self.tokens is None:
            return None
        assert self.tls is not None
        tokens, cluster_id = self.tokens, self.tls.cluster_id

        def authorize(authorization: str | None, transport: Any) -> bool:
            if authorization is not None:
                try:
                    tokens.authorize(authorization, "write")
                    return True
                except AuthError:
                    pass
            return transport_principal(transport, cluster_id) is not None

        return authorize

    def to_json(self) -> dict[str, Any]:
        return {
            "tls": self.tls is not None,
            "tokens": self.tokens is not None,
            "guard": self.guard.to_json(),
            "messages_refused": dict(sorted(self.refused.items())),
            "tls_refused": dict(sorted(self.tls.refusals.by_reason.items())) if self.tls else {},
        }


def _stat(stats: GuardStats, name: str) -> Callable[[], float]:
    return lambda: float(getattr(stats, name))


def _auth_error(request: web.Request, err: GeostoreError) -> web.StreamResponse:
    return error_response(request, err)


def _node_headers_middleware(cluster_id: str, headers: tuple[str, ...]) -> Middleware:
    """Headers only nodes send each other need a node certificate (403 otherwise)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(h in request.headers for h in headers):
            who = certificate_principal(request, cluster_id)
            if who is None or not who.name.startswith("node:"):
                name = request[PRINCIPAL].name if PRINCIPAL in request else "anonymous"
                return error_response(
                    request,
                    Forbidden(
                        f"{', '.join(headers)} may only be sent by a node of the cluster",
                        token=name,
                    ),
                )
        return await handler(request)

    return middleware
