"""geostore.runtime: one node process (asyncio on uvloop, aiohttp, the file storage).

- :mod:`.node`: :class:`NodeRuntime`, the process: groups, peer transport, HTTP, clock,
  graceful shutdown;
- :mod:`.group`: :class:`GroupRuntime`, one hosted Raft group with group commit;
- :mod:`.machine`: the event store as the host's state machine, the batching host;
- :mod:`.api`, :mod:`.http`: the client API of docs/api.md and its OpenAPI document;
- :mod:`.wire`: wire registration of the Raft messages; :mod:`.blocks`: sealed blocks on
  disk; :mod:`.metrics`: Prometheus text; :mod:`.logs`: JSON logs with rotation.
"""
