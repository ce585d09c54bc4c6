"""Typed errors the client raises: every failure is an :class:`~geostore.errors.ApiError`.

A server answer with an error body becomes :class:`RequestFailed` carrying the code from
the body (the documented catalogue), the HTTP status it came with, ``Retry-After`` in
seconds and the node that answered. Failures that never got an answer (no node of the
region reachable, the call's deadline expired) are :class:`Unreachable` and
:class:`CallTimeout`; an append that timed out has an unknown outcome, which is why the
client tags appends with an idempotent producer: retrying with the same pair is safe.
A refusal by the node's API guard is :class:`Unauthenticated` (401) or :class:`Forbidden`
(403), never retried. Their text is the server's message, which never holds the token.
"""

from __future__ import annotations

from typing import Any

from geostore.errors import ApiError, ErrorCode

#: Codes worth retrying on another node or after Retry-After: the request was not applied
#: or, for an idempotent append, a retry is deduplicated by the server.
RETRYABLE_CODES = frozenset(
    {
        ErrorCode.NOT_LEADER,
        ErrorCode.NO_QUORUM,
        ErrorCode.MOVING,
        ErrorCode.REPLICATION_LAG,
        ErrorCode.LEASE_LAPSED,
        ErrorCode.UNAVAILABLE,
        ErrorCode.FENCED,
    }
)


class RequestFailed(ApiError):
    """The server answered with an error: ``code`` from its body, ``status`` its HTTP status."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int,
        retry_after_s: float | None = None,
        node: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(code, message, **details)
        self.status = status
        self.retry_after_s = retry_after_s
        self.node = node

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES or self.status == 503

    def __str__(self) -> str:
        where = f" from {self.node}" if self.node else ""
        return f"{self.status} {self.code}{where}: {self.message}"


class AuthFailed(RequestFailed):
    """The node refused the caller (401 or 403); the request changed nothing."""


class Unauthenticated(AuthFailed):
    """401: no bearer token, or one the cluster does not know (and no client certificate)."""


class Forbidden(AuthFailed):
    """403: a valid token that lacks the role the request needs (``role`` names it)."""


class Unreachable(ApiError):
    """No node of the client's region answered (every one refused or dropped the connection)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message, **details)


class TlsFailed(Unreachable):
    """The TLS handshake failed (the node's certificate is not from the trusted CA, or the node
    wants a client certificate): every node of the cluster shares the CA, so not retried."""


class CallTimeout(ApiError):
    """The call's deadline expired before an answer. For an append the outcome is unknown."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(ErrorCode.WAIT_TIMEOUT, message, **details)


def error_from_body(
    status: int, body: Any, *, retry_after_s: float | None, node: str | None
) -> RequestFailed:
    """The typed error for an error answer; tolerates bodies that are not the contract's."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        raw_code = err.get("code")
        message = str(err.get("message") or f"HTTP {status}")
        details = {
            k: v for k, v in err.items() if k not in ("code", "message") and isinstance(k, str)
        }
    else:
        raw_code = None
        message = f"HTTP {status}" + (f": {str(body)[:200]}" if body else "")
        details = {}
    try:
        code = ErrorCode(raw_code) if raw_code is not None else _code_for_status(status)
    except ValueError:
        details["unknown_code"] = raw_code
        code = _code_for_status(status)
    for reserved in ("status", "retry_after_s", "node"):
        details.pop(reserved, None)
    cls: type[RequestFailed] = RequestFailed
    if status == 401 or code is ErrorCode.UNAUTHORIZED:
        cls = Unauthenticated
    elif status == 403 or code is ErrorCode.FORBIDDEN:
        cls = Forbidden
    return cls(code, message, status=status, retry_after_s=retry_after_s, node=node, **details)


def _code_for_status(status: int) -> ErrorCode:
    return {
        400: ErrorCode.MALFORMED,
        401: ErrorCode.UNAUTHORIZED,
        403: ErrorCode.FORBIDDEN,
        404: ErrorCode.UNKNOWN_STREAM,
        409: ErrorCode.CONFLICT,
        413: ErrorCode.TOO_LARGE,
        421: ErrorCode.WRONG_REGION,
        503: ErrorCode.UNAVAILABLE,
        504: ErrorCode.WAIT_TIMEOUT,
    }.get(status, ErrorCode.INTERNAL)
