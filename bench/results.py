"""The one result format every geostore benchmark writes: JSON for machines, a table for people.

Usage::

    from bench.results import Metric, Result, emit, percentiles

    lat = percentiles(samples_ms)  # {"p50": ..., "p90": ..., "p99": ..., "max": ...}
    result = Result("storage", {"records": 1000}, [
        Metric("appends_per_s", 250_000, "1/s", target=200_000, better="higher"),
        Metric("durable_p99", lat["p99"], "ms", better="lower"),
    ])
    emit(result, out_dir=Path("results"))   # prints the table and the JSON line

A benchmark script takes ``--json-out PATH`` and passes it as ``json_out``. The environment
(CPU count, platform, Python, git commit, UTC time) is captured when the Result is made.
No dependency beyond the standard library (an hdrhistogram is accepted duck-typed).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


def environment() -> dict[str, Any]:
    """Where the numbers came from: enough to tell two runs' machines apart."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "git_commit": _git_commit(),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # how busy the machine was (runnable and disk-waiting tasks, 1/5/15 min averages)
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass(frozen=True, slots=True)
class Metric:
    """One measured figure; ``target`` (optional) is met when on the ``better`` side of it."""

    name: str
    value: float
    unit: str
    target: float | None = None
    better: Literal["higher", "lower"] = "higher"

    def __post_init__(self) -> None:
        assert self.better in ("higher", "lower"), self.better

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.better == "higher" else self.value <= self.target


@dataclass(frozen=True, slots=True)
class Result:
    """A benchmark run: its name, the configuration it ran with, and its metrics."""

    name: str
    config: dict[str, Any]
    metrics: list[Metric]
    env: dict[str, Any] = field(default_factory=environment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "environment": self.env,
            "metrics": [{**asdict(m), "met": m.met} for m in self.metrics],
            "targets_met": all(m.met is not False for m in self.metrics),
        }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{int(value):,}"


def table(result: Result) -> str:
    """The human table: metric, value, unit, target, met?"""
    rows = [("metric", "value", "unit", "target", "met?")]
    for m in result.metrics:
        met = {None: "", True: "yes", False: "NO"}[m.met]
        target = (
            "" if m.target is None else ("≥ " if m.better == "higher" else "≤ ") + _fmt(m.target)
        )
        rows.append((m.name, _fmt(m.value), m.unit, target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"== {result.name} =="]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1])]
        cells += [c.ljust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(
    result: Result,
    out_dir: Path | None = None,
    *,
    json_out: Path | None = None,
    stream: Any = None,
) -> dict[str, Any]:
    """Print the table and the JSON (one line); also write the JSON to ``json_out`` or to
    ``out_dir/<name>-<UTC time>.json``. Returns the dict."""
    stream = stream if stream is not None else sys.stdout
    doc = result.to_dict()
    line = json.dumps(doc, sort_keys=True)
    print(table(result), file=stream)
    print(line, file=stream)
    target: Path | None = json_out
    if target is None and out_dir is not None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = Path(out_dir) / f"{result.name}-{stamp}.json"
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


class _Histogram(Protocol):
    def get_value_at_percentile(self, percentile: float) -> int: ...

    def get_max_value(self) -> int: ...


PERCENTILES: Sequence[tuple[str, float]] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


def percentiles(samples: Iterable[float] | _Histogram) -> dict[str, float]:
    """p50/p90/p99/max of ``samples`` (nearest rank) or of an hdrhistogram ``HdrHistogram``."""
    if hasattr(samples, "get_value_at_percentile"):
        hist: Any = samples
        out = {k: float(hist.get_value_at_percentile(p)) for k, p in PERCENTILES}
        out["max"] = float(hist.get_max_value())
        return out
    data = sorted(samples)
    if not data:
        return {k: 0.0 for k, _ in PERCENTILES} | {"max": 0.0}
    n = len(data)
    out = {}
    for key, p in PERCENTILES:
        rank = max(1, -(-int(p * n) // 100))  # ceil(p/100 * n), at least 1
        out[key] = float(data[min(rank, n) - 1])
    out["max"] = float(data[-1])
    return out
