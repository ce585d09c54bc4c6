"""What travels on a peer link, as bytes and text, with no socket in sight (sans-IO).

Theory of operation
-------------------
A link is one WebSocket from a dialing node to an accepting node (``GET /v1/peer``).

1. Handshake, in TEXT frames of JSON (readable in a packet capture, tiny, once per link):
   the dialer sends a *hello* ``{type: "hello", protocol: "geostore-peer", version,
   cluster_id, node_id, to}``; the acceptor checks the protocol name, the version, the cluster
   id and that ``to`` is its own node id, then answers ``{type: "welcome", ...}`` with its own
   identity, or ``{type: "refused", reason, message}`` and closes. The dialer in turn checks
   that the welcome comes from the node it meant to reach (a proxy or a stale address could
   route it elsewhere).
2. Data, in BINARY frames, one per batch::

       frame := kind:u8 (=1) count:u32be { length:u32be message:length bytes }*count

   Messages are opaque bytes here (the caller's codec made them). A frame whose header,
   count or lengths do not add up exactly to its size is malformed: the receiver counts it
   and ignores it (WebSocket keeps message boundaries, so the next frame is still readable).

Backoff: reconnect delays grow as ``base * 2**attempt`` up to ``max`` with "equal jitter"
(half fixed, half drawn from the injected ``random.Random``), so a cluster restarting at once
does not reconnect in lockstep yet no delay collapses to zero.
"""

from __future__ import annotations

import enum
import json
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geostore.errors import CodecError, GeostoreError
from geostore.ids import NodeId

PROTOCOL_NAME = "geostore-peer"
PROTOCOL_VERSION = 1
#: The path of the inbound handler on the node's aiohttp app.
PEER_PATH = "/v1/peer"

FRAME_KIND_BATCH = 1
_HEADER = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")
BATCH_HEADER_BYTES = _HEADER.size
#: What a frame adds to each message it carries (its length prefix).
MESSAGE_PREFIX_BYTES = _LENGTH.size
LENGTH_PREFIX_BYTES = _LENGTH.size
#: A handshake text larger than this is malformed (ids are short).
HANDSHAKE_TEXT_MAX = 4096


class FrameError(CodecError):
    """A binary frame that is not a well-formed batch."""


class RefusalReason(enum.StrEnum):
    """Why an acceptor refused a hello (sent to the dialer and counted on both sides)."""

    MALFORMED = "malformed"
    WRONG_PROTOCOL = "wrong_protocol"
    WRONG_VERSION = "wrong_version"
    WRONG_CLUSTER = "wrong_cluster"
    WRONG_DESTINATION = "wrong_destination"
    STOPPING = "stopping"
    #: Only ever decided by the dialer: the welcome came from another node or cluster.
    WRONG_PEER = "wrong_peer"
    #: With TLS: the dialer presented no certificate (the server context lets it through
    #: only when client certificates are optional, for HTTPS API clients on the same port).
    UNAUTHENTICATED = "unauthenticated"
    #: With TLS: the certificate names another node or cluster than the hello (acceptor) or
    #: than the node dialed (dialer).
    IDENTITY_MISMATCH = "identity_mismatch"
    #: The (authenticated) dialer is not a member of this node's topology.
    NOT_MEMBER = "not_member"


class HandshakeRefused(GeostoreError):
    """The other side (or our check of its welcome) refused the link."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message, reason=str(reason))
        self.reason = reason


# --- data frames ---------------------------------------------------------------------------


def encode_batch(messages: Sequence[bytes]) -> bytes:
    """One frame carrying ``messages`` in order."""
    assert messages, "an empty batch is never sent"
    parts: list[bytes] = [_HEADER.pack(FRAME_KIND_BATCH, len(messages))]
    pack = _LENGTH.pack
    for m in messages:
        parts.append(pack(len(m)))
        parts.append(m)
    return b"".join(parts)


def decode_batch(frame: bytes) -> list[bytes]:
    """The messages of one frame, in order; :class:`FrameError` if it is malformed."""
    size = len(frame)
    if size < BATCH_HEADER_BYTES:
        raise FrameError("frame shorter than its header", frame_bytes=size)
    kind, count = _HEADER.unpack_from(frame, 0)
    if kind != FRAME_KIND_BATCH:
        raise FrameError(f"unknown frame kind {kind}", kind=kind)
    # Every message costs at least its length prefix: a count beyond that is a lie, and
    # checking it first keeps a hostile count from driving a long loop.
    if count == 0 or count * LENGTH_PREFIX_BYTES > size - BATCH_HEADER_BYTES:
        raise FrameError(f"frame count {count} does not fit its {size} bytes", count=count)
    out: list[bytes] = []
    offset = BATCH_HEADER_BYTES
    unpack = _LENGTH.unpack_from
    for _ in range(count):
        if offset + LENGTH_PREFIX_BYTES > size:
            raise FrameError("frame truncated in a length prefix", offset=offset)
        (length,) = unpack(frame, offset)
        offset += LENGTH_PREFIX_BYTES
        end = offset + length
        if end > size:
            raise FrameError("frame truncated in a message", offset=offset, length=length)
        out.append(frame[offset:end])
        offset = end
    if offset != size:
        raise FrameError("trailing bytes after the last message", trailing=size - offset)
    return out


# --- handshake -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The dialer's first message."""

    protocol: str
    version: int
    cluster_id: str
    node_id: NodeId
    to: NodeId


def hello_text(cluster_id: str, node_id: NodeId, to: NodeId) -> str:
    return json.dumps(
        {
            "type": "hello",
            "protocol": PROTOCOL_NAME,
            "version": PROTOCOL_VERSION,
            "cluster_id": cluster_id,
            "node_id": node_id,
            "to": to,
        }
    )


def welcome_text(cluster_id: str, node_id: NodeId) -> str:
    return json.dumps(
        {
            "type": "welcome",
            "protocol": PROTOCOL_NAME,
            "version": PROTOCOL_VERSION,
            "cluster_id": cluster_id,
            "node_id": node_id,
        }
    )


def refusal_text(reason: RefusalReason, message: str) -> str:
    return json.dumps({"type": "refused", "reason": str(reason), "message": message})


def _parse_object(text: str, what: str) -> dict[str, Any]:
    if len(text) > HANDSHAKE_TEXT_MAX:
        raise HandshakeRefused(RefusalReason.MALFORMED, f"{what} longer than {HANDSHAKE_TEXT_MAX}")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise HandshakeRefused(RefusalReason.MALFORMED, f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HandshakeRefused(RefusalReason.MALFORMED, f"{what} is not a JSON object")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = obj.get(name)
    # bool is an int subclass; a version of `true` is malformed, not 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HandshakeRefused(
            RefusalReason.MALFORMED, f"{what} field {name!r} missing or not {kind.__name__}"
        )
    return value


def parse_hello(text: str) -> Hello:
    """The hello in ``text``; :class:`HandshakeRefused` (MALFORMED) if it is not one."""
    obj = _parse_object(text, "hello")
    if obj.get("type") != "hello":
        raise HandshakeRefused(RefusalReason.MALFORMED, "first message is not a hello")
    return Hello(
        protocol=_field(obj, "protocol", str, "hello"),
        version=_field(obj, "version", int, "hello"),
        cluster_id=_field(obj, "cluster_id", str, "hello"),
        node_id=NodeId(_field(obj, "node_id", str, "hello")),
        to=NodeId(_field(obj, "to", str, "hello")),
    )


def check_hello(hello: Hello, cluster_id: str, node_id: NodeId) -> None:
    """Raise :class:`HandshakeRefused` unless ``hello`` may open a link to ``node_id``."""
    if hello.protocol != PROTOCOL_NAME:
        raise HandshakeRefused(
            RefusalReason.WRONG_PROTOCOL,
            f"protocol {hello.protocol!r} is not {PROTOCOL_NAME!r}",
        )
    if hello.version != PROTOCOL_VERSION:
        raise HandshakeRefused(
            RefusalReason.WRONG_VERSION,
            f"protocol version {hello.version} is not {PROTOCOL_VERSION}",
        )
    if hello.cluster_id != cluster_id:
        raise HandshakeRefused(
            RefusalReason.WRONG_CLUSTER,
            f"cluster id {hello.cluster_id!r} is not this node's {cluster_id!r}",
        )
    if hello.to != node_id:
        raise HandshakeRefused(
            RefusalReason.WRONG_DESTINATION,
            f"hello is addressed to node {hello.to!r} but reached node {node_id!r}",
        )


def check_answer(text: str, cluster_id: str, expected: NodeId) -> None:
    """Accept the acceptor's welcome, or raise :class:`HandshakeRefused` with its reason."""
    obj = _parse_object(text, "answer")
    kind = obj.get("type")
    if kind == "refused":
        raw_reason = obj.get("reason")
        try:
            reason = RefusalReason(str(raw_reason))
        except ValueError:
            reason = RefusalReason.MALFORMED
        message = obj.get("message")
        raise HandshakeRefused(reason, str(message) if message is not None else str(raw_reason))
    if kind != "welcome":
        raise HandshakeRefused(RefusalReason.MALFORMED, "answer is neither welcome nor refused")
    protocol = _field(obj, "protocol", str, "welcome")
    version = _field(obj, "version", int, "welcome")
    if protocol != PROTOCOL_NAME or version != PROTOCOL_VERSION:
        raise HandshakeRefused(
            RefusalReason.WRONG_VERSION, f"welcome speaks {protocol!r} version {version}"
        )
    their_cluster = _field(obj, "cluster_id", str, "welcome")
    their_id = _field(obj, "node_id", str, "welcome")
    if their_cluster != cluster_id or their_id != expected:
        raise HandshakeRefused(
            RefusalReason.WRONG_PEER,
            f"welcome from node {their_id!r} of cluster {their_cluster!r}, "
            f"expected node {expected!r} of cluster {cluster_id!r}",
        )


# --- backoff -------------------------------------------------------------------------------


def backoff_delay_s(attempt: int, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """The wait before reconnect number ``attempt`` (0-based), in seconds.

    Equal jitter: in ``[cap/2, cap]`` where ``cap = min(max_ms, base_ms * 2**attempt)``.
    """
    assert attempt >= 0 and 0 < base_ms <= max_ms
    # Cap the exponent so 2**attempt stays small after a long outage.
    cap_ms = min(max_ms, base_ms << min(attempt, 32))
    half = cap_ms / 2.0
    return (half + rng.uniform(0.0, half)) / 1000.0
