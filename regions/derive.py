#!/usr/bin/env python3
"""Derive the [[links]] block of a topology file from public inter-region measurements.

Standard library only, so the figures in regions/*.toml can be reproduced anywhere:

    python regions/derive.py CLOUDPING.json us-east-1 eu-west-1 ap-southeast-1 \\
        [--azure-p50 P50.csv --azure-p95 P95.csv] [--doit RESULTS.csv]

Inputs (none of them ship with the repository; fetch them from their public sources):

- CLOUDPING.json: the CloudPing API matrix of AWS inter-region latency (cloudping.co), e.g.
  "p50 over one year" (the snapshot used here: 2025-05-29), shaped
  ``{"data": {src: {dst: ms}}}``. rtt_ms_p50 is the mean of the two directions.
- P50.csv / P95.csv: Microsoft's "Azure network round-trip latency statistics" (published on
  learn.microsoft.com; the 30-day window used here: 2026-07-30), saved as CSV with a
  ``Source`` column (one row per source region) and one column per destination, ms.
  jitter_ms = 0.73 x (P95 - P50), averaged over both directions, using the Azure regions in
  the same metro as the AWS ones (table COMPARABLE below). Why 0.73: the proxy adds uniform
  jitter of +-j to each one-way delay, so the round trip carries the sum of two such draws
  (a triangular law on [-2j, 2j]) whose 95th percentile is 1.37 j above the median;
  j = (P95 - P50) / 1.37 = 0.73 (P95 - P50). A pair whose P95 - P50 exceeds
  ROUTE_SWITCH_MS is a route change that happens part of the time (Microsoft's
  North Europe - Southeast Asia pair shows +60 ms about 5% of the time), not jitter: the next
  comparable Azure region is used instead, and the output says so.
- RESULTS.csv: the doitintl "intercloud-throughput" study (github.com/doitintl/
  intercloud-throughput, results of Feb 2022): single-stream iperf throughput between VMs.
  Its ``bitrate_Bps`` column is read as bits per second (iperf's unit; as bytes it would need
  TCP windows above Linux's default 6 MiB maximum at these RTTs). bandwidth_kbps =
  median over both directions and all runs / 8 / 1000, i.e. KB/s as Toxiproxy's bandwidth
  toxic counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Sequence

#: AWS region -> Azure regions in the same metro, best first.
COMPARABLE: dict[str, tuple[str, ...]] = {
    "us-east-1": ("East US",),  # Virginia
    "us-west-2": ("West US 2",),  # Oregon / Washington
    "eu-west-1": ("North Europe", "West Europe"),  # Dublin (then Amsterdam)
    "eu-central-1": ("Germany West Central",),  # Frankfurt
    "ap-southeast-1": ("Southeast Asia",),  # Singapore
    "ap-northeast-1": ("Japan East",),  # Tokyo
}

#: A P95 - P50 spread above this (ms) is a part-time route change, not jitter.
ROUTE_SWITCH_MS = 25.0
#: Uniform +-j per direction: the round trip's P95 - P50 is 1.37 j.
JITTER_PER_SPREAD = 0.73


def cloudping_rtt(path: str, a: str, b: str) -> float:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    return (float(data[a][b]) + float(data[b][a])) / 2.0


def _azure_rows(path: str) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            src = row.pop("Source")
            rows[src] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return rows


def azure_jitter(p50_path: str, p95_path: str, a: str, b: str) -> tuple[float, str] | None:
    """(jitter_ms, explanation) for AWS regions a, b, or None without a comparable pair."""
    p50, p95 = _azure_rows(p50_path), _azure_rows(p95_path)
    notes: list[str] = []
    for za in COMPARABLE.get(a, ()):
        for zb in COMPARABLE.get(b, ()):
            spreads = []
            for s, d in ((za, zb), (zb, za)):
                if s in p50 and d in p50[s] and s in p95 and d in p95[s]:
                    spreads.append(p95[s][d] - p50[s][d])
            if not spreads:
                continue
            spread = statistics.fmean(spreads)
            if spread > ROUTE_SWITCH_MS:
                notes.append(f"{za}/{zb} P95-P50 {spread:g} ms is a route switch, skipped")
                continue
            why = "; ".join([*notes, f"Azure {za}/{zb} P95-P50 {spread:g} ms"])
            return round(JITTER_PER_SPREAD * spread, 1), why
    return None


def doit_bandwidth(path: str, a: str, b: str, rtt_ms: float) -> tuple[int, str]:
    """(bandwidth_kbps, explanation) from AWS-to-AWS runs between a and b, both directions.

    A pair the study did not measure gets the study's median window over its RTT: single
    TCP streams there are window-limited (throughput x RTT is about the same on every
    AWS-to-AWS pair), so window / rtt is the honest estimate.
    """
    samples: list[float] = []
    windows_kb: list[float] = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["from_cloud"] != "AWS" or row["to_cloud"] != "AWS":
                continue
            bits = float(row["bitrate_Bps"])
            if row["avgrtt"] and float(row["avgrtt"]) > 10:
                windows_kb.append(bits / 8 / 1000 * float(row["avgrtt"]) / 1000)
            if {row["from_region"], row["to_region"]} == {a, b} and a != b:
                samples.append(bits)
    if samples:
        bits = statistics.median(samples)
        why = f"doitintl median of {len(samples)} runs, {bits / 1e6:.0f} Mbit/s"
        return round(bits / 8 / 1000), why
    window_kb = statistics.median(windows_kb)
    why = f"not measured by doitintl: its median window {window_kb:.0f} KB / rtt"
    return round(window_kb / rtt_ms * 1000), why


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cloudping", help="CloudPing JSON matrix ({'data': {src: {dst: ms}}})")
    parser.add_argument("regions", nargs="+", help="AWS region codes, in topology order")
    parser.add_argument("--azure-p50", help="Azure P50 round-trip CSV (rows are sources)")
    parser.add_argument("--azure-p95", help="Azure P95 round-trip CSV (same shape)")
    parser.add_argument("--doit", help="doitintl intercloud-throughput results CSV")
    args = parser.parse_args(argv)
    regions: list[str] = args.regions
    if bool(args.azure_p50) != bool(args.azure_p95):
        parser.error("--azure-p50 and --azure-p95 go together")

    width = max(len(r) for r in regions)
    print("# rtt_ms_p50 (CloudPing, mean of both directions)")
    print("# " + " " * width + "".join(f"{r:>{width + 2}}" for r in regions))
    for a in regions:
        cells = "".join(
            f"{'-' if a == b else f'{cloudping_rtt(args.cloudping, a, b):.1f}':>{width + 2}}"
            for b in regions
        )
        print(f"# {a:<{width}}{cells}")
    print()
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            rtt = round(cloudping_rtt(args.cloudping, a, b), 1)
            lines = ["[[links]]", f'a = "{a}"', f'b = "{b}"', f"rtt_ms_p50 = {rtt}"]
            if args.azure_p50:
                jitter = azure_jitter(args.azure_p50, args.azure_p95, a, b)
                if jitter is not None:
                    lines.append(f"jitter_ms = {jitter[0]}  # {jitter[1]}")
            if args.doit:
                bw = doit_bandwidth(args.doit, a, b, rtt)
                lines.append(f"bandwidth_kbps = {bw[0]}  # {bw[1]}")
            print("\n".join(lines))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
