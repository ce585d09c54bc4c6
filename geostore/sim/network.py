"""The simulated network: per-link delay, loss, duplication, reordering and partitions.

Theory of operation: a message sent from ``src`` to ``dst`` is given a fate when it is sent:
dropped, or delivered after one or more delays (more than one when it is duplicated). The
base one-way delay of a link is half the RTT between the two nodes' zones (a small RTT
matrix drawn from the seed), plus exponential jitter; a reordering fault adds a large extra
jitter so later messages overtake earlier ones. Partitions are counts of active cuts per
directed link, so overlapping faults (a symmetric split and a one-way cut sharing a link)
heal independently. Everything random comes from the network's own ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from geostore.ids import NodeId


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    dropped_cut: int = 0
    dropped_loss: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass(slots=True)
class SimNetwork:
    """Link model: call :meth:`fate` for each message to get its delivery delays (ms)."""

    rng: random.Random
    rtt_ms: dict[tuple[NodeId, NodeId], float]
    jitter_ms_mean: float = 0.5
    loss_p: float = 0.0
    dup_p: float = 0.0
    reorder_p: float = 0.0
    reorder_jitter_ms: float = 30.0
    cuts: dict[tuple[NodeId, NodeId], int] = field(default_factory=dict)
    stats: NetStats = field(default_factory=NetStats)

    def cut(self, src: NodeId, dst: NodeId) -> None:
        """Start dropping everything on the directed link src -> dst."""
        self.cuts[(src, dst)] = self.cuts.get((src, dst), 0) + 1

    def uncut(self, src: NodeId, dst: NodeId) -> None:
        count = self.cuts.get((src, dst), 0)
        assert count > 0, f"uncut of a link that is not cut: {src}->{dst}"
        if count == 1:
            del self.cuts[(src, dst)]
        else:
            self.cuts[(src, dst)] = count - 1

    def is_cut(self, src: NodeId, dst: NodeId) -> bool:
        return (src, dst) in self.cuts

    def heal(self) -> None:
        """Drop every cut and rate fault."""
        self.cuts.clear()
        self.loss_p = self.dup_p = self.reorder_p = 0.0

    def one_way_ms(self, src: NodeId, dst: NodeId) -> float:
        return self.rtt_ms.get((src, dst), 1.0) / 2.0

    def fate(self, src: NodeId, dst: NodeId) -> list[float]:
        """The delays after which copies of a message arrive; empty when it is dropped."""
        self.stats.sent += 1
        if (src, dst) in self.cuts:
            self.stats.dropped_cut += 1
            return []
        rng = self.rng
        if self.loss_p and rng.random() < self.loss_p:
            self.stats.dropped_loss += 1
            return []
        base = self.rtt_ms.get((src, dst), 1.0) / 2.0
        delays = [base + rng.expovariate(1.0 / self.jitter_ms_mean)]
        if self.reorder_p and rng.random() < self.reorder_p:
            self.stats.reordered += 1
            delays[0] += rng.uniform(0.0, self.reorder_jitter_ms)
        if self.dup_p and rng.random() < self.dup_p:
            self.stats.duplicated += 1
            delays.append(base + rng.uniform(0.0, self.reorder_jitter_ms))
        return delays


def draw_rtt_matrix(rng: random.Random, nodes: list[NodeId]) -> dict[tuple[NodeId, NodeId], float]:
    """A symmetric RTT matrix: nodes spread over 1-3 zones, 0.5-2 ms inside one, 5-40 across.

    Stands in for a topology file's RTT matrix so a seed alone fixes the network.
    """
    zones = rng.randint(1, 3)
    zone_of = {n: rng.randrange(zones) for n in nodes}
    zone_rtt: dict[tuple[int, int], float] = {}
    for a in range(zones):
        for b in range(a, zones):
            rtt = rng.uniform(0.5, 2.0) if a == b else rng.uniform(5.0, 40.0)
            zone_rtt[(a, b)] = zone_rtt[(b, a)] = rtt
    return {(a, b): zone_rtt[(zone_of[a], zone_of[b])] for a in nodes for b in nodes if a != b}
