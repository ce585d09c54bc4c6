"""A small Prometheus registry: counters, gauges and histograms in the text exposition format.

Names are documented in docs/api.md. Labels are kept to a few fixed values (route
templates, status codes, group ids) so the number of series stays bounded.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

LabelKey = tuple[tuple[str, str], ...]
#: Label sets one counter or histogram keeps; further ones add to the overflow series, so a
#: label fed from requests (a route, a status) can never grow a node's memory without bound.
SERIES_MAX = 512
OVERFLOW: LabelKey = (("overflow", "true"),)

#: Latency buckets in seconds (0.5 ms .. 10 s).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


#: Geo replication buckets in seconds: WAN round trips lie between 1 ms and a few hundred.
GEO_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip


def _labels(key: LabelKey, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = key + extra
    if not items:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def label_key(**labels: str) -> LabelKey:
    """The series key of a label set (what :meth:`Counter.inc_key` takes)."""
    return tuple(sorted(labels.items()))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.inc_key(tuple(sorted(labels.items())) if labels else (), amount)

    def inc_key(self, key: LabelKey, amount: float = 1.0) -> None:
        """:meth:`inc` with the label set already as its key (:func:`label_key`): hot paths
        build a key once and keep it."""
        values = self._values
        if key not in values and len(values) >= SERIES_MAX:
            key = OVERFLOW
        values[key] = values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        out = super().render()
        for key, value in sorted(self._values.items()):
            out.append(f"{self.name}{_labels(key)} {_num(value)}")
        return out


class Gauge(_Metric):
    """A gauge read through a callback at scrape time (one series per label set)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._sources: dict[LabelKey, Callable[[], float]] = {}

    def set_source(self, fn: Callable[[], float], **labels: str) -> None:
        self._sources[tuple(sorted(labels.items()))] = fn

    def render(self) -> list[str]:
        out = super().render()
        for key, fn in sorted(self._sources.items(), key=lambda kv: kv[0]):
            out.append(f"{self.name}{_labels(key)} {_num(fn())}")
        return out


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS_S
    ) -> None:
        super().__init__(name, help_text)
        self._bounds = tuple(buckets)
        self._series: dict[LabelKey, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        self.observe_many(value, 1, **labels)

    def observe_many(self, value: float, count: int, **labels: str) -> None:
        """``count`` observations of the same ``value`` (events that share one commit time)."""
        key = tuple(sorted(labels.items())) if labels else ()
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= SERIES_MAX:
                key = OVERFLOW
                series = self._series.get(key)
            if series is None:
                series = ([0] * (len(self._bounds) + 1), [0.0])
                self._series[key] = series
        counts, total = series
        counts[bisect.bisect_left(self._bounds, value)] += count
        total[0] += value * count

    def render(self) -> list[str]:
        out = super().render()
        for key, (counts, total) in sorted(self._series.items()):
            running = 0
            for bound, n in zip((*self._bounds, math.inf), counts, strict=True):
                running += n
                le = (("le", _num(bound)),)
                out.append(f"{self.name}_bucket{_labels(key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(key)} {_num(total[0])}")
            out.append(f"{self.name}_count{_labels(key)} {running}")
        return out


class QuantileHistogram:
    """Fixed log-spaced buckets (about 4% wide) from 0.1 ms to ``max_ms``, for p50/p99 in
    status answers: bounded memory whatever the count, each quantile within one bucket.

    Values below the first bound count in the first bucket, above ``max_ms`` in the last.
    """

    FIRST_MS = 0.1
    GROWTH = 1.04

    def __init__(self, max_ms: float = 600_000.0) -> None:
        n = math.ceil(math.log(max_ms / self.FIRST_MS) / math.log(self.GROWTH)) + 1
        self._bounds = [self.FIRST_MS * self.GROWTH**i for i in range(n)]
        self._counts = [0] * (n + 1)
        self.count = 0
        self.max_ms = 0.0
        self.sum_ms = 0.0

    def observe(self, value_ms: float, count: int = 1) -> None:
        assert count >= 1
        self._counts[bisect.bisect_left(self._bounds, value_ms)] += count
        self.count += count
        self.sum_ms += value_ms * count
        self.max_ms = max(self.max_ms, value_ms)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (ms): the upper bound of its bucket (capped at the maximum seen)."""
        assert 0.0 <= q <= 1.0
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        running = 0
        for i, n in enumerate(self._counts):
            running += n
            if running >= rank:
                bound = self._bounds[i] if i < len(self._bounds) else self.max_ms
                return min(bound, self.max_ms)
        return self.max_ms


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str) -> Counter:
        m = Counter(name, help_text)
        self._metrics.append(m)
        return m

    def gauge(self, name: str, help_text: str) -> Gauge:
        m = Gauge(name, help_text)
        self._metrics.append(m)
        return m

    def histogram(
        self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS_S
    ) -> Histogram:
        m = Histogram(name, help_text, buckets)
        self._metrics.append(m)
        return m

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class NodeMetrics:
    """The documented metrics of one node."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.http_requests = r.counter(
            "geostore_http_requests_total", "HTTP requests answered, by route and status."
        )
        self.append_latency = r.histogram(
            "geostore_append_latency_seconds",
            "Time from receiving an append to answering it (committed and applied), seconds.",
        )
        self.events_appended = r.counter(
            "geostore_events_appended_total", "Events acknowledged by appends on this node."
        )
        self.fsync_latency = r.histogram(
            "geostore_fsync_seconds", "Duration of one Raft log fsync, seconds."
        )
        self.proposal_batch = r.counter(
            "geostore_proposals_total", "Entries proposed by this node, by group."
        )
        self.proposal_flushes = r.counter(
            "geostore_proposal_flushes_total",
            "Batches of proposals handed to Raft at once (entries/flushes = batching).",
        )
        self.leader_changes = r.counter(
            "geostore_leader_changes_total", "Changes of the leader this node sees, by group."
        )
        self.appends_throttled = r.counter(
            "geostore_appends_throttled_total",
            "Appends slowed or refused by lag-bounded backpressure, by action (slow, refuse).",
        )
        self.forwarded = r.counter(
            "geostore_forwarded_total", "Requests forwarded to the group leader, by route."
        )
        self.commit_index = r.gauge("geostore_raft_commit_index", "Raft commit index, by group.")
        self.applied_index = r.gauge("geostore_raft_applied_index", "Applied index, by group.")
        self.term = r.gauge("geostore_raft_term", "Current Raft term, by group.")
        self.is_leader = r.gauge("geostore_raft_is_leader", "1 when this node leads the group.")
        self.bytes_stored = r.gauge(
            "geostore_log_bytes_written", "Bytes written to the Raft log since start, by group."
        )
        self.durable_index = r.gauge(
            "geostore_log_durable_index", "Last log index covered by an fsync, by group."
        )
        self.tail_subscribers = r.gauge(
            "geostore_tail_subscribers", "Live-tail subscribers connected to this node."
        )
        self.quarantine_runs = r.gauge(
            "geostore_quarantine_runs", "Runs in the region's quarantine (failback), by group."
        )
        self.quarantine_events = r.gauge(
            "geostore_quarantine_events", "Events in the region's quarantine, by group."
        )
        self.quarantine_bytes = r.gauge(
            "geostore_quarantine_bytes",
            "Event bytes (batch encoding) in the region's quarantine, by group.",
        )
        self.geo_lag_events = r.gauge(
            "geostore_geo_lag_events",
            "Events committed at home not yet durable in the destination, by partition/dest.",
        )
        self.geo_lag_ms = r.gauge(
            "geostore_geo_lag_ms", "Age of the oldest unreplicated event, ms, by partition/dest."
        )
        self.geo_inflight = r.gauge(
            "geostore_geo_inflight_batches", "Shipped batches not yet acknowledged."
        )
        self.geo_bytes = r.gauge(
            "geostore_geo_shipped_bytes",
            "Bytes shipped by this leader's shipper, raw (CBOR) and compressed (zstd), "
            "by destination region.",
        )
        self.geo_replication = r.histogram(
            "geostore_geo_replication_seconds",
            "Home commit to the destination's ack of its durable apply, per acknowledged batch.",
            GEO_BUCKETS_S,
        )
        self.geo_apply_lag = r.histogram(
            "geostore_geo_apply_lag_seconds",
            "Per event: home commit (home leader's wall clock) to its apply in this region "
            "(this leader's wall clock), by stream, partition and source region; includes the "
            "clock skew between the two regions' machines.",
            GEO_BUCKETS_S,
        )
        self._geo_seen: set[tuple[str, int, str]] = set()

    def watch_geo(self, geo: Any) -> None:
        """Register the shipper's byte counters, one series per form and destination region
        (the lag series appear as partitions do)."""
        self._geo = geo
        for dst in geo.others:
            for kind in ("raw", "compressed"):
                self.geo_bytes.set_source(
                    _bind(geo.bytes_shipped, kind, dst), form=kind, destination=dst
                )

    def geo_partition(self, geo: Any, stream: str, partition: int, dst: str) -> None:
        """Series for one (partition, destination), once (bounded by partitions x regions)."""
        key = (stream, partition, dst)
        if key in self._geo_seen:
            return
        self._geo_seen.add(key)
        labels = {"stream": stream, "partition": str(partition), "destination": dst}
        for gauge, what in (
            (self.geo_lag_events, "events"),
            (self.geo_lag_ms, "ms"),
            (self.geo_inflight, "inflight"),
        ):
            gauge.set_source(_bind(geo.lag_of, stream, partition, dst, what), **labels)


def _bind(fn: Callable[..., float], *args: Any) -> Callable[[], float]:
    """A gauge source calling ``fn(*args)`` (a closure per series, no late binding)."""
    return lambda: float(fn(*args))
