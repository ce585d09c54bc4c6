"""Tunables of the peer-link layer: queue and frame bounds, deadlines, backoff.

Every queue is bounded and every wait has a deadline; the numbers live here so a node's
config (and a test) can tighten them without touching the link code.
"""

from __future__ import annotations

from dataclasses import dataclass

from geostore.transport.wire import BATCH_HEADER_BYTES, LENGTH_PREFIX_BYTES


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Bounds and deadlines of :class:`geostore.transport.peer.PeerTransport`.

    Invariant checked at construction: a full batch always fits in one frame, so the sender
    never produces a frame its peer refuses (``batch_bytes_max`` plus framing overhead is at
    most ``frame_bytes_max``). A single message larger than ``batch_bytes_max`` still goes
    alone in a frame as long as it fits ``frame_bytes_max``; a larger one is dropped at
    ``send()`` and counted.
    """

    #: Messages waiting per peer before ``send()`` starts refusing (and counting drops).
    queue_messages_max: int = 4096
    #: Encoded bytes waiting per peer before ``send()`` starts refusing.
    queue_bytes_max: int = 64 * 1024 * 1024
    #: Messages coalesced into one WebSocket frame at most.
    batch_messages_max: int = 256
    #: Encoded message bytes coalesced into one frame at most (a lone larger message is allowed).
    batch_bytes_max: int = 1024 * 1024
    #: Largest WebSocket message accepted (aiohttp ``max_msg_size``); larger resets the link.
    frame_bytes_max: int = 16 * 1024 * 1024
    #: TCP connect plus HTTP upgrade of an outbound link.
    connect_timeout_s: float = 2.0
    #: From the upgrade to the welcome (dialer) or from the upgrade to the hello (acceptor).
    handshake_timeout_s: float = 2.0
    #: One frame write (waiting for the socket to drain); a stuck peer resets the link.
    #: Generous: on a slow WAN link a full batch may take seconds to drain, and a reset
    #: loses the frame in flight.
    send_timeout_s: float = 10.0
    #: WebSocket ping interval; a pong missing for half of it closes a half-open link. The
    #: ping queues behind data frames, so on a slow WAN link half of this must exceed the
    #: time to drain a batch or healthy links get reset. Raft's own check-quorum does not
    #: depend on it; it only makes a dead link reconnect sooner.
    heartbeat_s: float = 5.0
    #: Waiting for the peer's close frame when a link is closed.
    close_timeout_s: float = 1.0
    #: First reconnect delay; doubles per failed attempt (with jitter) up to ``backoff_max_ms``.
    backoff_base_ms: int = 50
    backoff_max_ms: int = 2000
    #: ``stop()`` flushes queued messages on live links for at most this long.
    stop_timeout_s: float = 2.0
    #: A repeated warning (refusal, decode error) of one peer is logged at most this often.
    log_repeat_s: float = 30.0

    def __post_init__(self) -> None:
        assert self.queue_messages_max >= 1
        assert self.queue_bytes_max >= 1
        assert self.batch_messages_max >= 1
        assert self.batch_bytes_max >= 1
        overhead = BATCH_HEADER_BYTES + self.batch_messages_max * LENGTH_PREFIX_BYTES
        assert self.batch_bytes_max + overhead <= self.frame_bytes_max, (
            "a full batch must fit in one frame"
        )
        assert self.connect_timeout_s > 0 and self.handshake_timeout_s > 0
        assert self.send_timeout_s > 0 and self.heartbeat_s > 0 and self.close_timeout_s > 0
        assert 0 < self.backoff_base_ms <= self.backoff_max_ms
        assert self.stop_timeout_s >= 0 and self.log_repeat_s >= 0

    @property
    def message_bytes_max(self) -> int:
        """The largest encoded message that still fits in a frame on its own."""
        return self.frame_bytes_max - BATCH_HEADER_BYTES - LENGTH_PREFIX_BYTES
