"""Idempotent producers: the replicated, bounded record of recent appends per producer.

Theory of operation. A producer tags each request with ``(id, seq)``. Per partition (a
request may touch several; each partition decides alone), the table remembers, for each
producer, the highest seq applied and the results of the seqs in the window
``(max_seq - window, max_seq]``. On apply:

- a seq the table remembers is a *duplicate*: nothing is stored, the original result is
  answered (even if the request differs: the pair names the request);
- a seq at or below ``max_seq - window`` that it does not remember is *too old*: refused
  with a clear error, never applied a second time silently;
- any other seq is new (gaps are allowed: a request that definitely failed leaves one).

Bounds are deterministic, driven by log indexes and never by a clock: a producer idle for
more than ``idle_entries`` log entries is forgotten, and beyond ``producers_max`` the least
recently used producer is forgotten, as it is while the outcomes remembered over all
producers exceed ``outcomes_max`` (the memory bound). The table lives in the replicated
state and in snapshots, so every replica gives the same verdicts, and so does a restored one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from geostore.errors import ApiError, ErrorCode
from geostore.ids import LogIndex, PartitionId, StreamName

ProducerKey = tuple[StreamName, PartitionId, str]
#: first_seq, last_seq, epoch of an applied request.
Outcome = tuple[int, int, int]


@dataclass(slots=True)
class ProducerState:
    max_seq: int
    last_index: int
    #: seq -> outcome; insertion order is apply order (so mostly seq order).
    results: dict[int, Outcome] = field(default_factory=dict)


class ProducerTable:
    def __init__(
        self, window: int, producers_max: int, idle_entries: int, outcomes_max: int = 1 << 62
    ) -> None:
        assert window >= 1 and producers_max >= 1 and idle_entries >= 1
        assert outcomes_max >= window
        self.window = window
        self.producers_max = producers_max
        self.idle_entries = idle_entries
        self.outcomes_max = outcomes_max
        #: Outcomes remembered over all producers (kept equal to the sum of their windows).
        self.outcomes = 0
        #: Least recently used first (log indexes only grow, so this is also by last_index).
        self._producers: OrderedDict[ProducerKey, ProducerState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._producers)

    def lookup(self, key: ProducerKey, seq: int) -> Outcome | None:
        """The original outcome of a duplicate, None for a new seq; raises for a too old one."""
        st = self._producers.get(key)
        if st is None:
            return None
        hit = st.results.get(seq)
        if hit is not None:
            return hit
        if seq <= st.max_seq - self.window:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"producer {key[2]!r} seq {seq} is older than the dedup window "
                f"(latest {st.max_seq}, window {self.window}): it may have been applied already, "
                "so it is refused; use a new seq",
                reason="producer_seq_too_old",
                producer_id=key[2],
                seq=seq,
                max_seq=st.max_seq,
            )
        return None

    def touch(self, key: ProducerKey, index: LogIndex) -> None:
        """A duplicate counts as use: the producer is not idle."""
        st = self._producers.get(key)
        if st is not None:
            st.last_index = index
            self._producers.move_to_end(key)

    def record(self, key: ProducerKey, seq: int, outcome: Outcome, index: LogIndex) -> None:
        st = self._producers.get(key)
        if st is None:
            st = ProducerState(max_seq=seq, last_index=index)
            self._producers[key] = st
        assert seq not in st.results
        before = len(st.results)
        st.results[seq] = outcome
        st.max_seq = max(st.max_seq, seq)
        st.last_index = index
        self._producers.move_to_end(key)
        floor = st.max_seq - self.window
        # Cheap path: drop old seqs from the front (in-order producers); full sweep only
        # when out-of-order arrivals kept the dict above the window.
        res = st.results
        while res:
            first = next(iter(res))
            if first > floor:
                break
            del res[first]
        if len(res) > self.window:
            for s in [s for s in res if s <= floor]:
                del res[s]
        assert len(res) <= self.window
        self.outcomes += len(res) - before
        while len(self._producers) > self.producers_max or self.outcomes > self.outcomes_max:
            self._forget_oldest()

    def record_shipped(self, key: ProducerKey, seq: int, outcome: Outcome, index: LogIndex) -> None:
        """Remember a request the home region applied and shipped (its data applies anyway).

        The home already decided it was new, so nothing is refused here: a seq this table
        already remembers, or one below its window, only counts as use. This is what lets a
        producer's retry be recognised in this region after the home moves here.
        """
        st = self._producers.get(key)
        if st is not None and (seq in st.results or seq <= st.max_seq - self.window):
            self.touch(key, index)
            return
        self.record(key, seq, outcome, index)

    def forget_from(self, stream: StreamName, partition: PartitionId, first_seq: int) -> None:
        """Forget the outcomes of requests stored at ``first_seq`` or later in a partition.

        A failback moved those events to the quarantine: a producer's retry of such a request
        must be applied anew (it is not in the partition), not answered as a duplicate of
        seqs that now hold other events. ``max_seq`` stays: seqs below the window stay
        refused, as they may have been applied before. O(producers), run only on failback.
        """
        for key, st in self._producers.items():
            if key[0] != stream or key[1] != partition:
                continue
            gone = [s for s, o in st.results.items() if o[0] >= first_seq]
            for s in gone:
                del st.results[s]
            self.outcomes -= len(gone)

    def _forget_oldest(self) -> None:
        _, st = self._producers.popitem(last=False)
        self.outcomes -= len(st.results)

    def expire(self, index: LogIndex) -> None:
        """Forget producers idle for more than ``idle_entries`` entries (oldest first)."""
        horizon = index - self.idle_entries
        prods = self._producers
        while prods:
            key = next(iter(prods))
            if prods[key].last_index >= horizon:
                break
            self._forget_oldest()

    # --- snapshots ---

    def to_wire(self) -> list[Any]:
        return [
            [
                key[0],
                key[1],
                key[2],
                st.max_seq,
                st.last_index,
                [[s, *o] for s, o in st.results.items()],
            ]
            for key, st in self._producers.items()
        ]

    def load_wire(self, raw: list[Any]) -> None:
        for stream, part, pid, max_seq, last_index, results in raw:
            st = ProducerState(max_seq, last_index, {s: (a, b, e) for s, a, b, e in results})
            self._producers[(StreamName(stream), PartitionId(part), pid)] = st
            self.outcomes += len(st.results)

    def producers(self) -> list[tuple[ProducerKey, ProducerState]]:
        return list(self._producers.items())
