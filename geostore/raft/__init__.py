"""geostore.raft: the sans-IO Raft consensus core (etcd-io/raft's Ready/Step design).

Modules: :mod:`~geostore.raft.types` (value types shared with storage),
:mod:`~geostore.raft.messages` (peer messages), :mod:`~geostore.raft.records` (what the
core hands its host: results, read states, snapshot chunks, status),
:mod:`~geostore.raft.log` (the core's view of its log) and :mod:`~geostore.raft.core`
(:class:`~geostore.raft.core.RaftCore`, :class:`~geostore.raft.core.RaftConfig`,
:class:`~geostore.raft.core.Ready` with the host loop contract).
"""
