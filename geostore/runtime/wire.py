"""Wire registration of the Raft messages, so the peer transport can carry them.

Geo envelopes (tags 200-219, registered by :mod:`geostore.geo.messages`) travel on the same
links between the leaders of different regions.

The Raft layer defines its messages as plain frozen dataclasses and does not register them
with the codec (it need not know about the wire). The runtime does it here, once, with fixed
tags: changing a tag breaks mixed-version clusters, so tags are only ever added.
"""

from __future__ import annotations

from geostore.codec import decode_message, encode_message, registered_messages, wire_message
from geostore.codec.limits import CodecLimits
from geostore.errors import CodecError
from geostore.geo import GeoEnvelope
from geostore.raft.messages import MESSAGE_TYPES, Message

#: First tag of the Raft messages (0x0100 + position in MESSAGE_TYPES). Fixed forever.
RAFT_TAG_BASE = 0x0100


def register_raft_messages() -> None:
    """Register every Raft message under its fixed tag (idempotent)."""
    known = registered_messages()
    for offset, cls in enumerate(MESSAGE_TYPES):
        tag = RAFT_TAG_BASE + offset
        if known.get(tag) is cls:
            continue
        wire_message(tag)(cls)


register_raft_messages()

_RAFT_CLASSES = frozenset(MESSAGE_TYPES)
#: What a peer link may carry: Raft messages, and geo envelopes between regions' leaders.
_PEER_CLASSES = _RAFT_CLASSES | {GeoEnvelope}


def encode_peer_message(msg: object) -> bytes:
    """Bytes of one Raft message (or geo envelope) for the transport."""
    return encode_message(msg)


class PeerDecoder:
    """Decodes one peer message; refuses anything but a Raft message or a geo envelope."""

    def __init__(self, limits: CodecLimits) -> None:
        self._limits = limits

    def __call__(self, data: bytes) -> Message | GeoEnvelope:
        msg = decode_message(data, self._limits)
        if type(msg) not in _PEER_CLASSES:
            raise CodecError(f"unexpected peer message {type(msg).__name__}")
        return msg  # type: ignore[return-value]
