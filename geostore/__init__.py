"""geostore: a geo-replicated, multi-leader event store.

Layers, lowest first (each imports only from lower ones; see tests/unit/test_layering.py):

- ``ids``, ``errors``: value types and typed errors;
- ``codec``, ``config``: wire/disk encoding, topology and configuration files;
- ``raft``, ``geo``, ``store``: pure, deterministic cores (no asyncio, sockets, clock or global random);
- ``storage``, ``transport``: ports and their implementations;
- ``node``: synchronous wiring of cores to ports;
- ``runtime``, ``sim``, ``client``: the asyncio host, the deterministic simulator, the client;
- ``cli``: the ``geostore`` command.
"""

__version__ = "0.1.0"
