"""Trained compression dictionaries of the geo layer: when a home trains one, and how many a
receiver keeps (sans-IO).

Theory of operation:

- Small batches compress poorly alone: zstd has to learn a flight's field names and usual
  values again in every batch. A dictionary trained on the stream's own events gives it that
  knowledge up front (issue target: at least 1.5x fewer bytes at batches of 20 events or
  fewer). The home region's leader trains one per stream from the stream's first
  ``dictionary_train_events`` committed events (those of the partitions homed there),
  grouped into samples shaped exactly like the batch payloads it will compress
  (:func:`training_samples`: consecutive entries up to ``dictionary_batch_events_max``
  events, laid out by column), for the configured zstd level, and gives it to its shipper.
  Measured on flights (``bench/geo_core.py --ratio``): batch-shaped samples, 64 KiB
  trained on 5,000 events and level-matched tables each gain a few percent; a dictionary
  larger than about a third of its samples' bytes over-fits and loses, so
  :func:`train` sizes it to its samples (at most ``dictionary_bytes_max``).
- A dictionary is named by a hash of its bytes (``dictionary_id_of``), so any node can
  check that the bytes it got are the ones a batch names, and two leaders that trained the
  same bytes agree on the id without coordinating. A new home leader trains again (its
  commit points when it does may differ, so the id may too: receivers then learn one more).
- :class:`DictionaryTrainer` decides when (enough events committed, one training at a time
  per stream, a bounded number of attempts when zstd cannot train on the samples); the host
  runs :func:`train` (a pure CPU job; the runtime runs it off its event loop).
- :class:`DictionarySet` is what a receiver keeps: at most ``count_max`` dictionaries and
  ``bytes_max`` bytes, the least recently used (looked up to decode a batch, or added)
  evicted first. Evicting one that is still in use is safe: the next batch naming it is
  NACKed ``UNKNOWN_DICTIONARY`` and the shipper sends it again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from geostore.codec import CompressionDictionary, train_dictionary
from geostore.errors import CodecError
from geostore.ids import StreamName

from .batch import encode_entries
from .columns import encode_columns
from .messages import GeoEntry

#: zstd refuses to train on fewer samples than about this; fewer is not attempted.
SAMPLES_MIN = 8


def _groups(entries: Sequence[GeoEntry], events_max: int) -> list[list[GeoEntry]]:
    groups: list[list[GeoEntry]] = []
    events = 0
    for e in entries:
        if not groups or events + e.record_count > events_max:
            groups.append([])
            events = 0
        groups[-1].append(e)
        events += e.record_count
    return groups


def training_samples(
    entries: Sequence[GeoEntry], batch_events_max: int = 1, columnar: bool = True
) -> list[bytes]:
    """Samples shaped like the batches the dictionary will compress: consecutive entries
    grouped up to ``batch_events_max`` events (an entry alone when it is larger; smaller
    groups when that would give fewer than ``2 * SAMPLES_MIN`` samples), each encoded
    exactly as the shipper encodes a batch payload (by column, or by row)."""
    assert batch_events_max >= 1
    groups = _groups(entries, batch_events_max)
    # zstd wants many samples: with few training events, smaller groups (still whole entries)
    while len(groups) < 2 * SAMPLES_MIN and batch_events_max > 1:
        batch_events_max //= 2
        groups = _groups(entries, batch_events_max)
    samples = []
    for group in groups:
        sample = encode_columns(group) if columnar else None
        samples.append(sample if sample is not None else encode_entries(group))
    return samples


#: A dictionary is at most this fraction of its samples' bytes: a larger one over-fits
#: (flights, 20-event batches: 1,000 events make 90 KB of samples; a 64 KiB dictionary from
#: them gives 16% more bytes than a 32 KiB one, a 16 KiB one 2% more).
SAMPLE_BYTES_PER_DICTIONARY_BYTE = 3
#: Smallest dictionary size asked of zstd (it needs room for its entropy tables).
DICTIONARY_BYTES_MIN = 4096


def train(samples: Sequence[bytes], bytes_max: int, level: int = 3) -> CompressionDictionary:
    """A dictionary for zstd ``level`` of at most ``bytes_max`` bytes and a third of the
    samples' bytes, or CodecError (too few or small samples)."""
    if len(samples) < SAMPLES_MIN:
        raise CodecError(f"{len(samples)} samples are too few to train a dictionary")
    fitted = sum(map(len, samples)) // SAMPLE_BYTES_PER_DICTIONARY_BYTE
    return train_dictionary(samples, min(bytes_max, max(DICTIONARY_BYTES_MIN, fitted)), level)


@dataclass(slots=True)
class _Training:
    attempts: int = 0
    running: bool = False
    #: committed events at the last failed attempt: the next waits for twice as many
    failed_at_events: int = 0
    done: bool = False


class DictionaryTrainer:
    """When a home leader trains each stream's dictionary (no IO, no clock)."""

    def __init__(self, train_events: int, attempts_max: int = 3) -> None:
        assert train_events >= 1 and attempts_max >= 1
        self.train_events = train_events
        self.attempts_max = attempts_max
        self._streams: dict[StreamName, _Training] = {}

    def due(self, stream: StreamName, committed_events: int) -> bool:
        """Whether to start training ``stream`` now, with ``committed_events`` at home."""
        t = self._streams.get(stream)
        if t is None:
            t = self._streams[stream] = _Training()
        if t.done or t.running or t.attempts >= self.attempts_max:
            return False
        needed = max(self.train_events, 2 * t.failed_at_events)
        return committed_events >= needed

    def started(self, stream: StreamName) -> None:
        t = self._streams[stream]
        assert not t.running, "one training at a time per stream"
        t.running = True
        t.attempts += 1

    def finished(
        self, stream: StreamName, committed_events: int, dictionary: CompressionDictionary | None
    ) -> None:
        """A training ended: with a dictionary, or None when zstd could not train."""
        t = self._streams[stream]
        t.running = False
        if dictionary is not None:
            t.done = True
        else:
            t.failed_at_events = max(committed_events, 1)

    def trained(self, stream: StreamName) -> bool:
        t = self._streams.get(stream)
        return t is not None and t.done


class DictionarySet(Mapping[int, CompressionDictionary]):
    """Dictionaries by id, bounded by count and bytes, least recently used evicted first.

    A lookup (``d[id]``, ``d.get(id)``: what decoding a batch does) counts as a use.
    """

    def __init__(self, count_max: int, bytes_max: int) -> None:
        assert count_max >= 1 and bytes_max >= 1
        self.count_max = count_max
        self.bytes_max = bytes_max
        self._by_id: OrderedDict[int, CompressionDictionary] = OrderedDict()
        self._bytes = 0

    def __getitem__(self, dict_id: int) -> CompressionDictionary:
        d = self._by_id[dict_id]
        self._by_id.move_to_end(dict_id)
        return d

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._by_id))

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._by_id  # a membership test is not a use

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, d: CompressionDictionary) -> tuple[int, ...]:
        """Keep ``d`` (as the most recently used); returns the ids evicted to make room.

        A dictionary larger than ``bytes_max`` alone is not kept (returned as evicted).
        """
        if len(d.data) > self.bytes_max:
            return (d.dict_id,)
        old = self._by_id.pop(d.dict_id, None)
        if old is not None:
            self._bytes -= len(old.data)
        self._by_id[d.dict_id] = d
        self._bytes += len(d.data)
        evicted: list[int] = []
        while len(self._by_id) > self.count_max or self._bytes > self.bytes_max:
            victim, gone = self._by_id.popitem(last=False)
            assert victim != d.dict_id, "the newest dictionary fits alone"
            self._bytes -= len(gone.data)
            evicted.append(victim)
        return tuple(evicted)
