"""Node configuration: Raft timing, storage, geo shipping, API limits, the netem endpoint and
the process (garbage collector).

Theory of operation
-------------------
A config is six sections of typed fields, each with a documented default, so an empty file
(or no file) is a complete, valid configuration. :func:`load_config` layers, field by field:
defaults, then the cluster-wide file, then a per-node override file. Each layer is checked on
its own (unknown section or key, wrong type, out-of-range value: the error names the file
that said it); the merged result is then checked against the cross-field rules (for example
``raft.heartbeat_ticks < raft.election_ticks``), naming the file that set the offending field.

Each field carries its one-line meaning and range in its metadata; :func:`field_docs` lists
them, and a test checks the table in docs/configuration.md against it, so the documentation
cannot drift from the code.

:func:`raft_timing` turns the config and a topology into the timing of one Raft group:
a group inside one region uses the LAN timing of ``[raft]``; a group spanning regions uses an
election timeout of ``wan_election_rtt_multiple`` times the largest RTT it spans (never less
than the LAN timeout), with the heartbeat scaled by the same ratio.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geostore.config.topology import Topology, decode_toml, read_text
from geostore.errors import ConfigError
from geostore.ids import RegionId

__all__ = [
    "Config",
    "GeoSettings",
    "LimitsSettings",
    "NetemSettings",
    "ProcessSettings",
    "RaftSettings",
    "RaftTiming",
    "StorageSettings",
    "config_from_dict",
    "load_config",
    "parse_config",
    "raft_timing",
]

KIB = 1024
MIB = 1024 * 1024


def _f(
    default: Any,
    doc: str,
    *,
    minimum: float | None = 1,
    maximum: float | None = None,
    min_open: bool = False,
) -> Any:
    """A config field: default, one-line meaning (for the docs table) and allowed range.

    ``minimum`` is inclusive unless ``min_open``; the default 1 makes integers positive, and
    floats use ``minimum=0, min_open=True``. ``None`` disables the bound.
    """
    meta = {"doc": doc, "min": minimum, "max": maximum, "min_open": min_open}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class RaftSettings:
    tick_ms: int = _f(20, "Length of one Raft tick, ms (the clock of every Raft group).")
    heartbeat_ticks: int = _f(3, "Leader heartbeat interval of a regional group, in ticks.")
    election_ticks: int = _f(
        15,
        "Election timeout of a regional group, in ticks.",
    )
    wan_election_rtt_multiple: float = _f(
        10.0,
        "Election timeout of a group spanning regions, as a multiple of the largest RTT it "
        "spans (heartbeat scaled by the same ratio).",
        minimum=0,
        min_open=True,
    )
    leader_region: str = _f(
        "",
        "Single-leader mode: the region whose voter should lead the global group (empty: the "
        "topology's first region); a leader elsewhere hands over to it when it has a live voter.",
        minimum=None,
    )
    max_entries_per_msg: int = _f(256, "Most log entries in one AppendEntries message.")
    max_bytes_per_msg: int = _f(1 * MIB, "Most payload bytes in one AppendEntries message.")
    max_inflight_msgs: int = _f(
        64, "Most unacknowledged AppendEntries messages per follower (pipelining window)."
    )
    lazy_commit: bool = _f(
        True,
        "A follower holding every entry learns a new commit index at the next tick or from the "
        "next AppendEntries instead of from a message of its own (fewer messages under load; "
        "followers apply up to a tick later).",
        minimum=None,
    )
    snapshot_threshold_entries: int = _f(
        100_000, "Applied entries after which a snapshot is taken and the log prefix dropped."
    )
    snapshot_chunk_bytes: int = _f(1 * MIB, "Size of one InstallSnapshot chunk, bytes.")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    segment_bytes_max: int = _f(
        64 * MIB, "Size at which the log rolls over to a new segment file.", minimum=4 * KIB
    )
    fsync: bool = _f(
        True,
        "fsync before acknowledging. false is ONLY the unsafe negative-control switch: "
        "acknowledged writes may be lost on power failure.",
        minimum=None,
    )
    group_commit_max_records: int = _f(4096, "Most records made durable by one group-commit fsync.")
    group_commit_max_bytes: int = _f(4 * MIB, "Most bytes made durable by one group-commit fsync.")


@dataclass(frozen=True, slots=True)
class GeoSettings:
    batch_events_max: int = _f(1000, "Most events in one cross-region shipping batch.")
    batch_bytes_max: int = _f(1 * MIB, "Most uncompressed bytes in one shipping batch.")
    linger_ms: int = _f(
        20,
        "How long a shipper waits to fill a batch before sending it, ms (0: never); a batch "
        "also leaves once it holds dictionary_batch_events_max events (with a dictionary) or "
        "batch_events_max.",
        minimum=0,
    )
    inflight_batches_max: int = _f(
        16,
        "Unacknowledged batches per partition and destination (at least; more where the "
        "link's bandwidth-delay product needs them).",
    )
    zstd_level: int = _f(6, "zstandard compression level of shipped batches (1-22).", maximum=22)
    columnar_batches: bool = _f(
        True,
        "Lay a shipped batch's events out by column before zstd (fewer WAN bytes); set false "
        "while regions run a version that lacks it (rolling upgrade).",
        minimum=None,
    )
    use_dictionary: bool = _f(
        True,
        "Train a zstd dictionary per stream at the home leader and compress small batches "
        "with it (identified by a hash of its bytes).",
        minimum=None,
    )
    dictionary_train_events: int = _f(
        5000, "A stream's first committed events (at its home) the dictionary is trained on."
    )
    dictionary_bytes_max: int = _f(
        64 * KIB, "Largest dictionary a home trains or a receiving node accepts, bytes."
    )
    dictionary_batch_events_max: int = _f(
        20, "Batches of at most this many events are compressed with the stream's dictionary."
    )
    dictionaries_max: int = _f(
        64, "Dictionaries a receiving node keeps on disk (least recently used evicted)."
    )
    dictionaries_bytes_max: int = _f(
        8 * MIB, "Bytes of dictionaries a receiving node keeps (least recently used evicted)."
    )
    heartbeat_ms: int = _f(
        100, "Interval of geo heartbeats (watermarks, liveness) on an idle link, ms."
    )
    lease_ms: int = _f(
        10_000,
        "Home-region lease from the metadata group; appends stop when it lapses, ms (well "
        "above the metadata group's election timeout, 10x the widest RTT by default).",
    )
    lease_renew_ms: int = _f(3000, "Interval at which a home renews its lease, ms.")
    lease_drift_ms: int = _f(
        500,
        "Clock margin of a lease, ms: the holder stops this much before the lease ends, any "
        "other node counts it held until this much after.",
        minimum=0,
    )
    auto_failover_after_ms: int = _f(
        0,
        "Automatic region failover: this long after a region's home lease expired (plus the "
        "drift margin) with no renewal, the nearest live region takes its homes, ms; 0: off.",
        minimum=0,
    )


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    body_bytes_max: int = _f(8 * MIB, "Largest HTTP request body, bytes.")
    events_per_request_max: int = _f(10_000, "Most events in one append request.")
    event_bytes_max: int = _f(1 * MIB, "Largest single encoded event, bytes.")
    read_limit_max: int = _f(10_000, "Most events one read returns (larger limits are clamped).")
    query_range_us_max: int = _f(
        366 * 86_400 * 1_000_000, "Widest event-time range of one query or aggregate, us."
    )
    tail_subscribers_max: int = _f(1024, "Most concurrent live-tail subscribers per node.")
    tail_buffer_events_max: int = _f(
        10_000, "Events buffered per tail subscriber before it is cut off as too slow."
    )
    wait_ms_max: int = _f(30_000, "Longest wait a read may request (token or tail wait), ms.")
    decompressed_bytes_max: int = _f(
        64 * MIB, "Largest decompressed size of one batch (zstd bomb guard), bytes."
    )
    frame_bytes_max: int = _f(16 * MIB, "Largest wire or disk frame, bytes.")
    header_bytes_max: int = _f(
        8190,
        "Longest HTTP request line and longest single header field, bytes (431/400 beyond).",
        minimum=256,
    )
    headers_max: int = _f(128, "Most header fields in one HTTP request.")
    connections_max: int = _f(
        4096, "Most open client and peer connections per node; more are answered 503 and closed."
    )
    header_timeout_s: float = _f(
        10.0,
        "Deadline for a request's headers from their first byte (from the connection's "
        "start for its first request; a TLS handshake too), s.",
        minimum=0,
        min_open=True,
    )
    body_timeout_s: float = _f(
        30.0, "Deadline for reading one request body, s.", minimum=0, min_open=True
    )
    write_timeout_s: float = _f(
        30.0,
        "Deadline for writing one response, or one live-tail write, to a slow client, s.",
        minimum=0,
        min_open=True,
    )
    keepalive_timeout_s: float = _f(
        75.0,
        "An idle keep-alive HTTP connection is closed after this long, s.",
        minimum=0,
        min_open=True,
    )
    producer_window: int = _f(
        1024,
        "Recent seqs remembered per idempotent producer and partition; older ones are refused "
        "(same on every node of a region).",
    )
    producer_idle_entries: int = _f(
        1_000_000,
        "A producer idle for this many log entries is forgotten (same on every node of a region).",
    )
    producers_max: int = _f(
        10_000,
        "Producers remembered per region; the least recently used is forgotten beyond it "
        "(same on every node of a region).",
    )
    producer_outcomes_max: int = _f(
        100_000,
        "Append outcomes remembered over all producers, about 200 bytes each: the memory bound "
        "of the dedup table (same on every node of a region).",
    )
    quarantine_bytes_warn: int = _f(
        256 * MIB,
        "Quarantined event bytes (batch encoding) of the region above which the node warns (log, "
        "status, metric) at each failback; the quarantine keeps them on disk, never drops them "
        "on its own: export (or reappend), then clear.",
    )


@dataclass(frozen=True, slots=True)
class NetemSettings:
    host: str = _f("127.0.0.1", "Address of the Toxiproxy-compatible API.", minimum=None)
    port: int = _f(8474, "Port of the Toxiproxy-compatible API.", maximum=65535)
    call_timeout_s: float = _f(
        5.0, "Timeout of one call to the proxy API, seconds.", minimum=0, min_open=True
    )


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    gc_young_threshold: int = _f(
        20_000,
        "Net allocations of container objects between two young-generation garbage "
        "collections (CPython's default is 700: a node parsing 1,000-event requests then "
        "spends about a tenth of its CPU in the collector).",
    )
    gc_freeze: bool = _f(
        True,
        "Once the node has started, move every object that exists into the collector's "
        "permanent generation, so full collections no longer traverse them.",
        minimum=None,
    )
    append_lane: bool = _f(
        True,
        "Serve plain JSON appends (POST /v1/streams/{s}/events) on a lean HTTP/1.1 path "
        "beside aiohttp, with the same answers, limits and deadlines; any other request, or "
        "anything unusual about one, goes to aiohttp. Off: aiohttp serves everything.",
        minimum=None,
    )


#: section name -> settings class, in documentation order
SECTIONS: dict[str, type[Any]] = {
    "raft": RaftSettings,
    "storage": StorageSettings,
    "geo": GeoSettings,
    "limits": LimitsSettings,
    "netem": NetemSettings,
    "process": ProcessSettings,
}


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of a node. Every field has a default."""

    raft: RaftSettings = field(default_factory=RaftSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    geo: GeoSettings = field(default_factory=GeoSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    netem: NetemSettings = field(default_factory=NetemSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every section and field, plain JSON values (echoed by ``/v1/status``)."""
        return {
            name: {f.name: getattr(getattr(self, name), f.name) for f in dataclasses.fields(cls)}
            for name, cls in SECTIONS.items()
        }


def field_docs() -> list[tuple[str, Any, str]]:
    """(``section.field``, default, meaning) for every field, in order: the docs table."""
    rows: list[tuple[str, Any, str]] = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((f"{name}.{f.name}", f.default, f.metadata["doc"]))
    return rows


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "a table"
    )


def _coerce(file: str, path: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """Check one value against its field's type and range; return it in the field's type."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(file, path, f"must be a boolean (true/false), got {_kind(value)}")
        return value
    if kind == "str":
        # empty is allowed only where it is the default (it means "derive it")
        if not isinstance(value, str) or (not value and f.default != ""):
            raise ConfigError(file, path, f"must be a non-empty string, got {_kind(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, path, f"must be an integer, got {_kind(value)}")
        number: float = value
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(file, path, f"must be a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise ConfigError(file, path, f"must be finite, got {value!r}")
        number = float(value)
        value = number
    else:  # pragma: no cover - a new field type needs a branch here
        raise AssertionError(f"unsupported config field type {kind!r}")
    low, high, low_open = f.metadata["min"], f.metadata["max"], f.metadata["min_open"]
    if low is not None and (number <= low if low_open else number < low):
        if low_open:
            reason = f"must be > {low:g}"
        elif low == 1 and kind == "int":
            reason = "must be > 0"
        else:
            reason = f"must be >= {low:g}"
        raise ConfigError(file, path, f"{reason}, got {value!r}")
    if high is not None and number > high:
        raise ConfigError(file, path, f"must be <= {high:g}, got {value!r}")
    return value


#: ``{(section, key): (value, file, rank)}``: who set each field; a higher rank layered later.
_Values = dict[tuple[str, str], tuple[Any, str, int]]


def _layer(data: Mapping[str, Any], file: str, rank: int) -> _Values:
    """Validate one file's sections on their own; return the fields it sets."""
    out: _Values = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(file, section, f"unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(file, section, f"must be a table [{section}], got {_kind(body)}")
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        for key, value in body.items():
            path = f"{section}.{key}"
            if key not in fields:
                raise ConfigError(file, path, f"unknown key in [{section}]")
            out[(section, key)] = (_coerce(file, path, fields[key], value), file, rank)
    return out


_DEFAULTS_FILE = "<defaults>"


def _build(values: _Values) -> Config:
    sections = {}
    for name, cls in SECTIONS.items():
        kwargs = {k: v for (s, k), (v, _, _) in values.items() if s == name}
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    _check_cross_fields(config, values)
    return config


def _check_cross_fields(c: Config, values: _Values) -> None:
    """Rules between fields.

    The error names the field of the rule that was set last (the override file before the
    main file, a set field before a default) and the file that set it: that is the value the
    operator most likely has to change.
    """

    def fail(paths: Sequence[str], reason: str) -> ConfigError:
        best: tuple[int, int, str, str] | None = None
        for i, p in enumerate(paths):
            section, key = p.split(".")
            if (section, key) in values:
                _, file, rank = values[(section, key)]
                candidate = (rank, -i, p, file)
                if best is None or candidate > best:
                    best = candidate
        if best is None:  # every field a default: cannot happen while the defaults are valid
            return ConfigError(_DEFAULTS_FILE, paths[0], reason)
        return ConfigError(best[3], best[2], reason)

    rules: list[tuple[bool, Sequence[str], str]] = [
        (
            c.raft.heartbeat_ticks < c.raft.election_ticks,
            ("raft.heartbeat_ticks", "raft.election_ticks"),
            f"heartbeat_ticks ({c.raft.heartbeat_ticks}) must be < election_ticks "
            f"({c.raft.election_ticks}): followers would start elections under a live leader",
        ),
        (
            c.raft.wan_election_rtt_multiple >= 2,
            ("raft.wan_election_rtt_multiple",),
            f"must be >= 2 (an election needs at least one round trip; ~10 is usual), "
            f"got {c.raft.wan_election_rtt_multiple:g}",
        ),
        (
            c.raft.max_bytes_per_msg <= c.limits.frame_bytes_max,
            ("raft.max_bytes_per_msg", "limits.frame_bytes_max"),
            f"max_bytes_per_msg ({c.raft.max_bytes_per_msg}) must be <= limits.frame_bytes_max "
            f"({c.limits.frame_bytes_max}): a message must fit in one frame",
        ),
        (
            c.raft.snapshot_chunk_bytes <= c.limits.frame_bytes_max,
            ("raft.snapshot_chunk_bytes", "limits.frame_bytes_max"),
            f"snapshot_chunk_bytes ({c.raft.snapshot_chunk_bytes}) must be <= "
            f"limits.frame_bytes_max ({c.limits.frame_bytes_max})",
        ),
        (
            c.storage.group_commit_max_bytes <= c.storage.segment_bytes_max,
            ("storage.group_commit_max_bytes", "storage.segment_bytes_max"),
            f"group_commit_max_bytes ({c.storage.group_commit_max_bytes}) must be <= "
            f"segment_bytes_max ({c.storage.segment_bytes_max})",
        ),
        (
            c.geo.lease_renew_ms + c.geo.lease_drift_ms < c.geo.lease_ms,
            ("geo.lease_renew_ms", "geo.lease_drift_ms", "geo.lease_ms"),
            f"lease_renew_ms ({c.geo.lease_renew_ms}) + lease_drift_ms ({c.geo.lease_drift_ms}) "
            f"must be < lease_ms ({c.geo.lease_ms}): the lease would lapse between renewals",
        ),
        (
            c.geo.heartbeat_ms < c.geo.lease_ms,
            ("geo.heartbeat_ms", "geo.lease_ms"),
            f"heartbeat_ms ({c.geo.heartbeat_ms}) must be < lease_ms ({c.geo.lease_ms})",
        ),
        (
            c.geo.dictionary_bytes_max <= c.geo.dictionaries_bytes_max,
            ("geo.dictionary_bytes_max", "geo.dictionaries_bytes_max"),
            f"dictionary_bytes_max ({c.geo.dictionary_bytes_max}) must be <= "
            f"dictionaries_bytes_max ({c.geo.dictionaries_bytes_max}): a receiver could keep "
            "no dictionary",
        ),
        (
            c.geo.batch_bytes_max <= c.limits.frame_bytes_max,
            ("geo.batch_bytes_max", "limits.frame_bytes_max"),
            f"batch_bytes_max ({c.geo.batch_bytes_max}) must be <= limits.frame_bytes_max "
            f"({c.limits.frame_bytes_max}): a batch must fit in one frame",
        ),
        (
            c.geo.batch_bytes_max <= c.limits.decompressed_bytes_max,
            ("geo.batch_bytes_max", "limits.decompressed_bytes_max"),
            f"batch_bytes_max ({c.geo.batch_bytes_max}) must be <= "
            f"limits.decompressed_bytes_max ({c.limits.decompressed_bytes_max}): receivers "
            "would refuse every full batch",
        ),
        (
            c.limits.event_bytes_max <= c.limits.body_bytes_max,
            ("limits.event_bytes_max", "limits.body_bytes_max"),
            f"event_bytes_max ({c.limits.event_bytes_max}) must be <= body_bytes_max "
            f"({c.limits.body_bytes_max})",
        ),
        (
            c.limits.event_bytes_max <= c.geo.batch_bytes_max,
            ("limits.event_bytes_max", "geo.batch_bytes_max"),
            f"event_bytes_max ({c.limits.event_bytes_max}) must be <= geo.batch_bytes_max "
            f"({c.geo.batch_bytes_max}): a largest event could never be shipped",
        ),
        (
            c.limits.producer_window <= c.limits.producer_outcomes_max,
            ("limits.producer_window", "limits.producer_outcomes_max"),
            f"producer_window ({c.limits.producer_window}) must be <= producer_outcomes_max "
            f"({c.limits.producer_outcomes_max}): one producer's window must fit",
        ),
    ]
    for ok, paths, reason in rules:
        if not ok:
            raise fail(paths, reason)


def config_from_dict(
    data: Mapping[str, Any], file: str = "<dict>", *, base: Config | None = None
) -> Config:
    """A Config from already-decoded TOML data layered over ``base`` (defaults when None)."""
    values: _Values = {}
    if base is not None:
        for section, fields in base.to_dict().items():
            for key, value in fields.items():
                values[(section, key)] = (value, "<base config>", 0)
    values.update(_layer(data, file, 1))
    return _build(values)


def parse_config(text: str, file: str = "<string>", *, base: Config | None = None) -> Config:
    """A Config from TOML text, layered over ``base`` (defaults when None)."""
    return config_from_dict(decode_toml(text, file), file, base=base)


def load_config(path: str | Path | None = None, override: str | Path | None = None) -> Config:
    """Defaults, then the file at ``path``, then the per-node ``override`` file, field by field.

    Either file may be None (both None: the defaults). Each file is checked on its own, then
    the merged result against the cross-field rules; errors name the file that holds the bad
    value.
    """
    values: _Values = {}
    for rank, p in enumerate((path, override), start=1):
        if p is None:
            continue
        file = str(p)
        values.update(_layer(decode_toml(read_text(p), file), file, rank))
    return _build(values)


# ---------------------------------------------------------------------------------------
# Raft timing per group
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftTiming:
    """The timing of one Raft group: a tick length and heartbeat/election timeouts in ticks."""

    tick_ms: int
    heartbeat_ticks: int
    election_ticks: int

    @property
    def heartbeat_ms(self) -> int:
        return self.tick_ms * self.heartbeat_ticks

    @property
    def election_ms(self) -> int:
        return self.tick_ms * self.election_ticks


def raft_timing(
    config: Config, topology: Topology, regions_spanned: Sequence[RegionId | str]
) -> RaftTiming:
    """Timing for a Raft group whose voters sit in ``regions_spanned``.

    The election timeout is ``wan_election_rtt_multiple`` x the largest RTT the group spans
    (between its regions, or inside one), never below the LAN value of ``[raft]``; the
    heartbeat is scaled by the same factor so the heartbeat/election ratio is kept. Inside one
    region the LAN value wins (0.5 ms x 10 is far below it), so regional groups get exactly
    the ``[raft]`` timing.
    """
    r = config.raft
    spanned = list(dict.fromkeys(regions_spanned))
    assert spanned, "a Raft group spans at least one region"
    widest_rtt_ms = topology.widest_rtt_ms(spanned)
    election_ticks = max(
        r.election_ticks, math.ceil(r.wan_election_rtt_multiple * widest_rtt_ms / r.tick_ms)
    )
    if election_ticks == r.election_ticks:
        return RaftTiming(r.tick_ms, r.heartbeat_ticks, r.election_ticks)
    heartbeat_ticks = max(1, round(r.heartbeat_ticks * election_ticks / r.election_ticks))
    heartbeat_ticks = min(heartbeat_ticks, election_ticks - 1)
    timing = RaftTiming(r.tick_ms, heartbeat_ticks, election_ticks)
    assert 0 < timing.heartbeat_ticks < timing.election_ticks
    return timing
