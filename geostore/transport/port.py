"""The transport port: what the node layer needs from "the network", and nothing more.

The node hands out messages with :meth:`PeerSender.send` and is handed incoming ones through
an ``OnMessage`` callback it registered. Delivery is best effort: a message may be dropped
(a full queue, a link reset, a stopping node) but is never corrupted, duplicated by the
transport, or reordered among the messages that do arrive from one sender over one link.
That is all Raft and the geo layer assume, so the real aiohttp links
(:mod:`geostore.transport.peer`) and a simulator's in-memory network implement the same port.

This module imports no asyncio or aiohttp, so the simulator can depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from geostore.ids import NodeId

#: Turns one message into bytes (the codec's ``encode_message``). Errors are programmer errors.
Encode = Callable[[object], bytes]
#: Turns bytes back into a message; may raise on bad bytes (counted by the transport).
Decode = Callable[[bytes], object]
#: Called once per received message, in arrival order, on the event loop; must not block.
OnMessage = Callable[[NodeId, object], None]


class PeerSender(Protocol):
    """Outbound half of the port."""

    def send(self, peer: NodeId, msg: object) -> bool:
        """Queue ``msg`` for ``peer`` without blocking.

        False when it was dropped at once (unknown peer, full queue, too large, stopping);
        True does not promise delivery.
        """
        ...
