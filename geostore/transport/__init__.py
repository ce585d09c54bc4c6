"""geostore.transport: how nodes carry messages to each other.

* :mod:`.port`: the port the node layer sees (``PeerSender``, the callback types), free of
  asyncio so the simulator can implement it;
* :mod:`.wire`: the link protocol as bytes (handshake, batch frames, backoff), sans-IO;
* :mod:`.settings`: bounds and deadlines;
* :mod:`.peer`: ``PeerTransport``, the aiohttp WebSocket links (import it from there; this
  package does not, so importing ``geostore.transport`` never loads aiohttp);
* :mod:`.certs`: the cluster CA, node certificates, TLS contexts and identities (mTLS);
* :mod:`.auth`: the HTTP API guard (bearer tokens and client certificates, roles per route).
"""

from geostore.transport.port import Decode, Encode, OnMessage, PeerSender
from geostore.transport.settings import TransportSettings

__all__ = ["Decode", "Encode", "OnMessage", "PeerSender", "TransportSettings"]
