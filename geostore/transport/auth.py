"""Who may call the node's HTTP API: an aiohttp middleware over tokens and certificates.

Theory of operation
-------------------
Every request needs a role (:func:`default_role_for`: reads need ``read``, writes ``write``,
``/v1/admin/*`` and ``/v1/debug/*`` need ``admin``; health, the OpenAPI document and metrics
are open, and the peer endpoint authenticates by certificate in its own handler). The
middleware finds the caller's :class:`~geostore.config.tokens.Principal`:

* a **verified client certificate** of this cluster (the port is served with the node's TLS
  context, so a presented certificate was already checked against the cluster CA): a node
  (``geostore://<cluster>/node/<id>``, for requests nodes forward to each other) or an
  operator (``.../client/<name>``) gets every role;
* otherwise the ``Authorization: Bearer`` token, checked by the
  :class:`~geostore.config.tokens.TokenTable`.

A refusal is answered by the caller's ``on_error`` (the runtime's error renderer) with 401 or
403, plus ``WWW-Authenticate: Bearer`` on a 401, before the handler runs: a refused request
changes nothing. The header value is never logged nor echoed. The principal is stored in
``request[PRINCIPAL]`` for handlers and access logs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from geostore.config.tokens import ROLES, AuthError, Principal, TokenTable, Unauthorized
from geostore.transport.certs import peer_identity
from geostore.transport.wire import PEER_PATH

#: Paths anyone may call (liveness probes, the API description, scraping).
OPEN_PATHS = frozenset({"/v1/health", "/v1/openapi.json", "/metrics"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Where the middleware leaves the caller: ``request[PRINCIPAL]`` (absent on open paths).
PRINCIPAL = web.RequestKey("principal", Principal)

RoleFor = Callable[[str, str], str | None]
OnError = Callable[[web.Request, AuthError], web.StreamResponse]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def default_role_for(method: str, path: str) -> str | None:
    """The role a request needs, or None when it is open (or authenticated elsewhere)."""
    if path in OPEN_PATHS or path == PEER_PATH:
        return None
    if path.startswith(("/v1/admin/", "/v1/debug/")):
        return "admin"
    return "read" if method in _READ_METHODS else "write"


def certificate_principal(request: web.Request, cluster_id: str) -> Principal | None:
    """The principal of a verified client certificate of ``cluster_id``, if one was shown."""
    return transport_principal(request.transport, cluster_id)


def transport_principal(transport: Any, cluster_id: str) -> Principal | None:
    """The same, from the connection's transport (the append lane has no request object)."""
    if transport is None:
        return None
    ident = peer_identity(transport.get_extra_info("peercert"))
    if ident is None or ident.cluster_id != cluster_id:
        return None
    return Principal(f"{ident.kind}:{ident.name}", frozenset(ROLES))


def authorize_request(
    request: web.Request, tokens: TokenTable, cluster_id: str, needed_role: str
) -> Principal:
    """The caller of ``request`` if it holds ``needed_role``; AuthError otherwise."""
    by_cert = certificate_principal(request, cluster_id)
    if by_cert is not None:
        return by_cert
    return tokens.authorize(request.headers.get("Authorization"), needed_role)


def auth_middleware(
    tokens: TokenTable,
    cluster_id: str,
    on_error: OnError,
    role_for: RoleFor = default_role_for,
) -> Middleware:
    """An aiohttp middleware enforcing ``role_for`` with ``tokens`` and client certificates."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = role_for(request.method, request.path)
        if needed is None:
            return await handler(request)
        try:
            request[PRINCIPAL] = authorize_request(request, tokens, cluster_id, needed)
        except AuthError as err:
            response = on_error(request, err)
            if isinstance(err, Unauthorized):
                response.headers["WWW-Authenticate"] = 'Bearer realm="geostore"'
            return response
        return await handler(request)

    return middleware
