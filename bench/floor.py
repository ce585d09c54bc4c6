"""Physical floors: the least latency a write can have, given the emulated RTTs and one fsync.

Theory of operation
-------------------
A latency figure means little alone; beside the time light and the disk need, it says how
much of it is overhead. The floors below are computed the same way for both modes from a
topology's median RTTs (``Topology.rtt_ms``, scaled for RTT sweeps) plus one fsync measured in
the same run:

- A Raft commit needs the leader's entry on a majority of the group's voters. The leader
  sends to every voter at once and each voter fsyncs before it acknowledges, so the commit
  waits for the *nearest quorum*: sort the voters by their RTT from the leader (the leader
  itself at 0, the other nodes of its region at the region's intra-region RTT), and the
  quorum's farthest member, the ``majority``-th in that order, decides. Add one fsync (the
  leader's own runs in parallel with the round trip, the follower's after it).
- The client reaches the leader first: ``RTT(client region, leader region)``, which is the
  intra-region RTT when both are in the same region.

So for an append from region ``r`` whose group is led from region ``L``::

    floor(r) = RTT(r, L) + quorum_rtt(L, voters) + fsync

- multi-leader: the group is region ``r``'s own nodes and ``L = r``, so the floor is
  ``intra(r) + intra(r) + fsync`` (a one-node region: ``intra(r) + fsync``);
- single-leader: the voters are every node of every region, ``L`` the leader region.

A replication lag floor is the link's one-way delay (half its RTT): data cannot reach the
other region sooner. The runner measures lag at the home, as the age of the oldest committed
event the destination has not *acknowledged*; that adds the acknowledgement's trip back, so
the floor of the measured figure is the round trip (:func:`lag_ack_floor_ms`), and the
issue's "lag p99 under one-way + 50 ms" reads as measured p99 under RTT + 50 ms.

``intra_rtt_ms`` overrides every region's intra-region RTT: a local cluster whose WAN emulator
delays only the links between regions has loopback, not a LAN, inside a region, and passes
0 here so that the floor stays a true lower bound. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from geostore.config import Topology

Mode = Literal["multi-leader", "single-leader"]
MODES: tuple[Mode, ...] = ("multi-leader", "single-leader")


def _rtt_ms(topology: Topology, a: str, b: str, intra_rtt_ms: float | None) -> float:
    if a == b and intra_rtt_ms is not None:
        return intra_rtt_ms
    return topology.rtt_ms(a, b)


def quorum_rtt_ms(
    topology: Topology,
    leader_region: str,
    voter_regions: Iterable[str] | None = None,
    *,
    intra_rtt_ms: float | None = None,
) -> float:
    """RTT from a leader in ``leader_region`` to the farthest member of its nearest majority.

    The voters are every node of ``voter_regions`` (all regions when None); the leader is one
    of the nodes of ``leader_region`` and answers itself at 0 ms.
    """
    names = list(topology.region_names() if voter_regions is None else voter_regions)
    assert leader_region in names, f"leader region {leader_region!r} holds no voter"
    rtts: list[float] = []
    for name in names:
        count = len(topology.region(name).nodes)
        here = _rtt_ms(topology, leader_region, name, intra_rtt_ms)
        if name == leader_region:
            rtts.append(0.0)  # the leader
            count -= 1
        rtts += [here] * count
    rtts.sort()
    majority = len(rtts) // 2 + 1
    return rtts[majority - 1]


def append_floor_ms(
    topology: Topology,
    mode: Mode,
    client_region: str,
    fsync_ms: float,
    *,
    leader_region: str | None = None,
    intra_rtt_ms: float | None = None,
) -> float:
    """The floor of one append from ``client_region`` in ``mode`` (see the module text).

    ``leader_region`` is the single-leader group's leader region (default: the topology's
    first region, as single-leader mode defaults to); multi-leader ignores it.
    """
    assert fsync_ms >= 0, fsync_ms
    if mode == "multi-leader":
        leader, voters = client_region, [client_region]
    else:
        assert mode == "single-leader", mode
        leader = leader_region if leader_region is not None else topology.region_names()[0]
        voters = list(topology.region_names())
    hop = _rtt_ms(topology, client_region, leader, intra_rtt_ms)
    return hop + quorum_rtt_ms(topology, leader, voters, intra_rtt_ms=intra_rtt_ms) + fsync_ms


def lag_floor_ms(topology: Topology, src: str, dst: str) -> float:
    """The least replication lag on the link ``src -> dst``: its one-way delay."""
    return topology.one_way_ms(src, dst)


def lag_ack_floor_ms(topology: Topology, src: str, dst: str) -> float:
    """The least *acknowledged* lag on ``src -> dst``: the data's one-way trip plus the
    acknowledgement's way back, one RTT."""
    return topology.one_way_ms(src, dst) + topology.one_way_ms(dst, src)


def ratio(measured: float | None, floor: float | None) -> float | None:
    """``measured / floor``; None when either is missing or the floor is 0."""
    if measured is None or floor is None or floor <= 0:
        return None
    return measured / floor
