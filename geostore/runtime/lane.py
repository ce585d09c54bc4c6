"""The append lane: the node's most frequent request served without aiohttp's per-request
machinery.

Theory of operation
-------------------
A node answering single-event appends spends about as much CPU in aiohttp's request and
response objects, routing, middleware chain and writer as in the append itself (a trivial
aiohttp handler costs ~130 us of CPU per keep-alive request on the development machine, a
plain protocol answering the same bytes ~25 us). The lane is a second, narrow way in for
exactly one request shape, the JSON append::

    POST /v1/streams/<name>/events HTTP/1.1
    Content-Length: <n>
    Content-Type: application/json            (optional; "; charset=utf-8" allowed)
    Accept: <anything but application/cbor>  (optional)
    Authorization: Bearer <token>             (optional; required where tokens are)
    Host, User-Agent, Accept-Encoding, Connection: keep-alive   (optional, ignored)

Every connection starts in the lane (:class:`~geostore.runtime.guard.GuardedSite`). A head
is parsed here by :func:`parse_head`; anything else, or anything unusual about it (another
method, path or version, a query string, a percent-encoded or odd stream name, any other
header such as ``Transfer-Encoding``, ``Expect``, ``Content-Encoding`` or the node-only
headers, a duplicated one, a body over ``limits.body_bytes_max``, a caller the token table
refuses), hands the connection, with every byte received so far, to aiohttp for good: the
general path then answers it exactly as it always did (its errors, its limits, its 401 and
413 bodies). Handing over is safe at any point before the handler changed anything; the
handler (:meth:`~geostore.runtime.api.Api.lane_append`) hands back (None) before proposing
when the request needs the general path: the node is stopping or does not lead the group,
the body is not JSON it reads, or partitions are homed in another region.

What the general path guarantees holds in the lane: the same validation and the same
answer bytes (status, JSON body, ``Retry-After``, ``X-Geostore-Leader``), the request
counter and latency metrics, the in-flight count a graceful shutdown drains, the header,
body and write deadlines of the guard, aiohttp's keep-alive timeout on an idle connection,
and answers in request order on a pipelined connection (one request at a time).
``process.append_lane = false`` turns the lane off (every connection goes to aiohttp).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

#: The request line's fixed parts around the stream name.
_LINE_HEAD = b"POST /v1/streams/"
_LINE_TAIL = b"/events HTTP/1.1"
#: A head longer than this is not the lane's (aiohttp applies the configured limits).
HEAD_BYTES_MAX = 8192
#: The bytes a stream name may have in the lane: the store's name alphabet (letters,
#: digits, ``_ . -``), which needs no percent-decoding; others go to aiohttp, which decodes.
_NAME_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
#: RFC 9110 token characters (a header name).
_TOKEN_BYTES = _NAME_BYTES + b"!#$%&'*+^`|~"
#: The most lines a lane head has (the request line and a few headers; a repeated ignored
#: header is not the usual request, and aiohttp counts headers against its limit).
_LINES_MAX = 16
#: Headers the lane accepts and ignores.
_IGNORED = frozenset({b"host", b"user-agent", b"accept-encoding"})
_JSON_TYPES = frozenset(
    {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"}
)


class LaneHead(NamedTuple):
    """A parsed append head: the stream, the body's length, the Authorization value."""

    stream: str
    body_len: int
    authorization: str | None


#: Heads parsed lately: a client sends the same head bytes again and again (only the length
#: differs, over a few values), so most heads are a dictionary lookup. Bounded: at most
#: this many heads of at most ``_CACHED_HEAD_BYTES`` each, forgotten all at once when full.
_CACHE_MAX = 1024
_CACHED_HEAD_BYTES = 1024
_cache: dict[bytes, LaneHead | None] = {}


def parse_head(head: bytes) -> LaneHead | None:
    """The lane's request in ``head`` (the bytes before the blank line), or None when the
    request is anything else or anything about it is unusual (see the module)."""
    try:
        return _cache[head]
    except KeyError:
        pass
    parsed = _parse(head)
    if len(head) <= _CACHED_HEAD_BYTES:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[head] = parsed
    return parsed


def _parse(head: bytes) -> LaneHead | None:
    if b"\x00" in head:
        return None
    lines = head.split(b"\r\n")
    if len(lines) > _LINES_MAX:
        return None
    line = lines[0]
    if not (line.startswith(_LINE_HEAD) and line.endswith(_LINE_TAIL)):
        return None
    name = line[len(_LINE_HEAD) : len(line) - len(_LINE_TAIL)]
    if not name or name.translate(None, _NAME_BYTES):
        return None
    length: int | None = None
    authorization: str | None = None
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0 or b"\n" in line or b"\r" in line:
            return None
        key = line[:colon]
        if key.translate(None, _TOKEN_BYTES):
            return None  # whitespace before the colon, or a character no header name has
        key = key.lower()
        value = line[colon + 1 :].strip(b" \t")
        if key == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 15:
                return None
            length = int(value)
        elif key == b"content-type":
            if value.lower() not in _JSON_TYPES:
                return None
        elif key == b"accept":
            if b"application/cbor" in value:
                return None
        elif key == b"authorization":
            if authorization is not None:
                return None
            authorization = value.decode("latin-1")
        elif key == b"connection":
            if value.lower() != b"keep-alive":
                return None
        elif key not in _IGNORED:
            return None
    if not length:  # no body (or none announced): the general path says what is missing
        return None
    return LaneHead(name.decode("ascii"), length, authorization)


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = f"HTTP/1.1 {status} {reason}\r\n".encode()
        if len(_STATUS_LINES) < 64:
            _STATUS_LINES[status] = line
    return line


def answer_bytes(status: int, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 answer with a JSON body (keep-alive)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() if headers else b""
    return b"".join(
        (
            _status_line(status),
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nDate: ",
            _date(),
            b"\r\n",
            extra,
            b"\r\n",
            body,
        )
    )


#: The handler: (stream, body) -> (status, JSON body, extra headers), or None for the
#: general path (before anything changed).
LaneHandler = Callable[[str, bytes], Awaitable["tuple[int, bytes, dict[str, str]] | None"]]
#: The caller check: (Authorization value, the connection's transport) -> may it append?
#: False hands the request to the general path, which answers 401 or 403.
LaneAuthorizer = Callable[[str | None, Any], bool]


class AppendLane:
    """What the lane needs from the node: its handler, and who may write (None: anyone)."""

    __slots__ = ("authorize", "handle")

    def __init__(self, handle: LaneHandler, authorize: LaneAuthorizer | None = None) -> None:
        self.handle = handle
        self.authorize = authorize


__all__ = ["HEAD_BYTES_MAX", "AppendLane", "LaneHead", "answer_bytes", "parse_head"]
