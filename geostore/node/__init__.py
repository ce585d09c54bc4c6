"""geostore.node: the synchronous wiring that turns a core's output into port calls.

:mod:`geostore.node.raft_host` hosts one Raft core (persist, send, apply, advance) over the
storage, transport and state-machine ports of :mod:`geostore.node.ports`; the simulator and
the asyncio runtime drive the same object.
"""
