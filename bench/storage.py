"""Storage benchmark: durable appends per second through group commit.

For 100-byte and 1 KiB records, in three shapes - one writer of single records, 64 concurrent
writers (threads) of single records, 64 concurrent writers of 64-record batches - it reports
durable records/s, MB/s, fsyncs/s, records per fsync and the p50/p99 time from submit to
durable. It also measures the raw fsync latency (4 KiB write + fdatasync) in the same run, since
that decides everything else and varies a lot with how busy the machine is, and the CPU cost
of putting sealed event blocks into the block store while a log is fsynced beside it.

    .venv/bin/python bench/storage.py [--quick] [--dir D] [--json-out PATH]

The data dir must be on a real file system (not tmpfs) for the fsync figures to mean anything;
by default a temporary directory under the repository is used and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `geostore` importable
    sys.path.insert(0, str(ROOT))

from bench.results import Metric, Result, emit, percentiles  # noqa: E402
from geostore.ids import Term  # noqa: E402
from geostore.storage import FileLogStore, GroupCommitLog  # noqa: E402

BATCHED_TARGET_RECORDS_PER_S = 200_000
WRITERS = 64
BATCH_RECORDS = 64


def fs_type(path: Path) -> str:
    """The file system type holding ``path`` (from /proc/mounts; "unknown" elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) < len(best):
            continue
        if target == parts[1] or target.startswith(parts[1].rstrip("/") + "/"):
            best, kind = parts[1], parts[2]
    return kind


def fsync_latency_ms(directory: Path, rounds: int) -> dict[str, float]:
    """The raw cost the group commit amortizes: a 4 KiB write plus fdatasync."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = b"\xab" * 4096
    samples = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return percentiles(samples)


def run_shape(
    directory: Path, record_bytes: int, writers: int, batch: int, seconds: float
) -> dict[str, float]:
    """Run one shape for ``seconds``; durable throughput and time-to-durable."""
    shutil.rmtree(directory, ignore_errors=True)
    log = FileLogStore(directory)
    glog = GroupCommitLog(log)
    records = [os.urandom(record_bytes) for _ in range(batch)]
    latencies: list[list[float]] = [[] for _ in range(writers)]
    counts = [0] * writers
    start_gate = threading.Barrier(writers + 1)
    stop_at = [0.0]

    def writer(slot: int) -> None:
        lat = latencies[slot]
        start_gate.wait()
        deadline = stop_at[0]
        n = 0
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= deadline:
                break
            glog.append_durable(records, Term(1))
            lat.append((perf() - t0) * 1000)
            n += batch
        counts[slot] = n

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    syncs0 = log.syncs
    cpu0 = time.process_time()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    cpu_s = time.process_time() - cpu0
    syncs = log.syncs - syncs0
    durable = glog.durable_index()
    glog.close()
    total = sum(counts)
    assert durable >= total, (durable, total)
    lat = percentiles([x for per in latencies for x in per])
    return {
        "records_per_s": total / elapsed,
        "mb_per_s": total * record_bytes / elapsed / 1e6,
        "fsyncs_per_s": syncs / elapsed,
        "records_per_fsync": total / max(1, syncs),
        "durable_p50_ms": lat["p50"],
        "durable_p99_ms": lat["p99"],
        # CPU of this process per durable record: what the figures cost independent of how
        # busy the machine is (the throughput figures are not)
        "cpu_us_per_record": cpu_s / max(1, total) * 1e6,
    }


SHAPES = (
    ("1w_single", 1, 1),
    (f"{WRITERS}w_single", WRITERS, 1),
    (f"{WRITERS}w_batch{BATCH_RECORDS}", WRITERS, BATCH_RECORDS),
)


def block_puts(directory: Path, block_bytes: int, seconds: float) -> dict[str, float]:
    """Sealed-block puts as a node makes them: one partition's blocks of ``block_bytes``
    while another thread appends to a log and fsyncs it (the group commit of the same node),
    a block-store flush every 64 blocks. Reports the putting thread's CPU microseconds per
    block (file system work included: it contends with the fsyncs) and blocks/s."""
    from geostore.ids import PartitionId, StreamName
    from geostore.runtime.blocks import FileBlockStore

    directory.mkdir(parents=True, exist_ok=True)
    store = FileBlockStore(str(directory / "blocks"))
    stop = threading.Event()

    def log_writer() -> None:
        fd = os.open(directory / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while not stop.is_set():
                os.write(fd, b"x" * 65536)
                os.fsync(fd)
        finally:
            os.close(fd)

    writer = threading.Thread(target=log_writer, daemon=True)
    writer.start()
    data = os.urandom(block_bytes)
    stream, part = StreamName("bench"), PartitionId(0)
    n = 0
    cpu0, t0 = time.thread_time(), time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            store.put(stream, part, n, data)
            n += 1
            if n % 64 == 0:
                store.flush()
        store.flush()
    finally:
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - t0
        stop.set()
        writer.join()
    return {"blocks_per_s": n / wall, "cpu_us_per_block": cpu / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under ~20 s)")
    parser.add_argument("--dir", type=Path, help="data dir parent (a real file system)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON result here")
    parser.add_argument("--seconds", type=float, help="seconds per shape")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    parent = args.dir or ROOT
    parent.mkdir(parents=True, exist_ok=True)
    if fs_type(parent) == "tmpfs":
        print(f"warning: {parent} is on tmpfs: fsync costs nothing there", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix=".storage-bench-", dir=parent))
    metrics: list[Metric] = []
    load_before = os.getloadavg()[0]
    try:
        fs_lat = fsync_latency_ms(work, 100 if args.quick else 500)
        metrics.append(Metric("fsync_4k_p50", fs_lat["p50"], "ms", better="lower"))
        metrics.append(Metric("fsync_4k_p99", fs_lat["p99"], "ms", better="lower"))
        for record_bytes, label in ((100, "100B"), (1024, "1KiB")):
            for shape, writers, batch in SHAPES:
                r = run_shape(work / "data", record_bytes, writers, batch, seconds)
                target = (
                    BATCHED_TARGET_RECORDS_PER_S
                    if record_bytes == 100 and batch == BATCH_RECORDS
                    else None
                )
                prefix = f"{label}_{shape}"
                metrics += [
                    Metric(f"{prefix}_records_per_s", r["records_per_s"], "1/s", target=target),
                    Metric(f"{prefix}_mb_per_s", r["mb_per_s"], "MB/s"),
                    Metric(f"{prefix}_fsyncs_per_s", r["fsyncs_per_s"], "1/s"),
                    Metric(f"{prefix}_records_per_fsync", r["records_per_fsync"], "1"),
                    Metric(f"{prefix}_durable_p50", r["durable_p50_ms"], "ms", better="lower"),
                    Metric(f"{prefix}_durable_p99", r["durable_p99_ms"], "ms", better="lower"),
                    Metric(
                        f"{prefix}_cpu_per_record", r["cpu_us_per_record"], "us", better="lower"
                    ),
                ]
        # a sealed block of 1,024 events of ~80 bytes, as the region benchmark makes them
        b = block_puts(work / "block-puts", 80_000, seconds)
        metrics += [
            Metric("block_put_80KB_per_s", b["blocks_per_s"], "1/s"),
            Metric("block_put_80KB_cpu", b["cpu_us_per_block"], "us", better="lower"),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = {
        "quick": args.quick,
        "seconds_per_shape": seconds,
        "writers": WRITERS,
        "batch_records": BATCH_RECORDS,
        "record_bytes": [100, 1024],
        "dir": str(parent),
        "fs_type": fs_type(parent),
        # other processes compete for the 2 cores and the disk: say how busy it was
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    emit(Result("storage", config, metrics), json_out=args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
