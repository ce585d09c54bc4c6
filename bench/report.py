"""The benchmark report: result JSON files in, one Markdown file and PNG plots out.

Theory of operation
-------------------
:func:`render_report` reads every file given, sorts them into the two formats the
benchmarks write, and renders both into ``out_dir/report.md`` plus PNGs beside it:

- **comparison results** (bench/compare_schema.py, one file per mode per setting) are grouped
  by setting - topology, RTT scale, remote write share - so the modes of one setting sit side
  by side. Per group: a table per region (mode, p50, p99, the physical floor, both ratios to
  it, throughput), the issue's target figures, replication lag per link beside its RTT
  floor, WAN bytes raw and compressed, CPU (a run whose machine was over 80% busy is flagged
  CPU-bound), and plots: latency CDF per region per mode, throughput per mode, lag over
  time per link. Settings that differ only in RTT scale also get throughput and p50 against
  the scale. Floors come from bench/floor.py with the fsync p50 measured in the same run;
  the topology is the copy embedded in the result (``config.topology_toml``) or else
  ``regions/NAME.toml``.
- **plain results** (bench/results.py: name, config, metrics) get their metrics table.

Anything optional that a file lacks prints as "not measured"; a file that is not JSON or
follows neither format is a :class:`ReportError` naming it. Plots use matplotlib's Agg
backend (no display), imported only when a report is rendered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compare_schema import (
    CPU_BOUND_PCT,
    ComparisonError,
    cdf_from_histogram,
    cpu_bound,
    is_comparison,
    validate_comparison,
)
from bench.floor import MODES, append_floor_ms, lag_ack_floor_ms, ratio
from geostore.config import Topology, load_topology, parse_topology
from geostore.errors import ConfigError, GeostoreError

ROOT = Path(__file__).resolve().parents[1]
REGIONS_DIR = ROOT / "regions"
NOT_MEASURED = "not measured"
#: Issue targets the report states beside the measured figures.
TARGET_THROUGHPUT_X = 10.0
TARGET_SINGLE_P50_RATIO = 1.3
TARGET_LAG_SLACK_MS = 50.0
TARGET_LOCAL_VS_ONE_REGION_X = 2.0
MODE_COLORS = {"multi-leader": "tab:blue", "single-leader": "tab:orange"}
MODE_STYLES = {"multi-leader": "-", "single-leader": "--"}


class ReportError(GeostoreError):
    """A result file the report cannot read."""


# --- loading -----------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One comparison result and what the report derives from it."""

    path: Path
    doc: dict[str, Any]
    topology: Topology | None  # scaled to the run's RTT scale; None when not found
    label: str = ""

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.doc["config"])

    @property
    def mode(self) -> str:
        return str(self.doc["config"]["mode"])

    @property
    def scale(self) -> float:
        return float(self.doc["config"]["rtt_scale"])

    @property
    def share(self) -> float:
        return float(self.doc["config"].get("remote_write_share", 0.0))

    @property
    def fsync_p50_ms(self) -> float | None:
        fsync = self.doc.get("fsync_ms")
        return None if fsync is None else float(fsync["p50"])

    @property
    def leader_region(self) -> str | None:
        leader = self.doc["config"].get("leader_region")
        if leader is None and self.topology is not None and self.mode == "single-leader":
            return str(self.topology.region_names()[0])
        return None if leader is None else str(leader)

    def region_names(self) -> list[str]:
        measured = list(self.doc["regions"])
        if self.topology is None:
            return measured
        order = [r for r in self.topology.region_names() if r in measured]
        return order + [r for r in measured if r not in order]

    def floor_ms(self, region: str) -> float | None:
        """The append floor from ``region``; None without a topology or an fsync figure."""
        fsync = self.fsync_p50_ms
        if self.topology is None or fsync is None or region not in self.topology.region_names():
            return None
        intra = None if self.doc["config"].get("intra_rtt_emulated", False) else 0.0
        return append_floor_ms(
            self.topology,
            "single-leader" if self.mode == "single-leader" else "multi-leader",
            region,
            fsync,
            leader_region=self.leader_region,
            intra_rtt_ms=intra,
        )

    def lag_floor_ms(self, src: str, dst: str) -> float | None:
        """The floor of the measured (commit to acknowledgement) lag: one RTT."""
        if self.topology is None:
            return None
        try:
            return lag_ack_floor_ms(self.topology, src, dst)
        except (KeyError, AssertionError):
            return None

    def one_way_ms(self, src: str, dst: str) -> float | None:
        """The floor of the per-event apply lag: the data's one-way trip."""
        if self.topology is None:
            return None
        try:
            return self.topology.one_way_ms(src, dst)
        except (KeyError, AssertionError):
            return None

    def total_throughput(self) -> float:
        return sum(float(r["throughput_events_per_s"]) for r in self.doc["regions"].values())


@dataclass(slots=True)
class Plain:
    path: Path
    doc: dict[str, Any]


@dataclass(slots=True)
class Loaded:
    runs: list[Run] = field(default_factory=list)
    plains: list[Plain] = field(default_factory=list)


def _topology_for(doc: Mapping[str, Any], path: Path) -> Topology | None:
    config = doc["config"]
    scale = float(config["rtt_scale"])
    base: Topology | None = None
    try:
        if isinstance(config.get("topology_toml"), str):
            base = parse_topology(config["topology_toml"], f"{path}: config.topology_toml")
        else:
            candidate = REGIONS_DIR / f"{config['topology']}.toml"
            if candidate.exists():
                base = load_topology(candidate)
    except ConfigError as exc:
        raise ReportError(f"{path}: the run's topology does not load: {exc.message}") from None
    return None if base is None else base.scaled(scale)


def load_results(paths: Iterable[str | Path]) -> Loaded:
    out = Loaded()
    for raw in paths:
        path = Path(raw)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: not a JSON result: {exc}") from None
        if isinstance(doc, dict) and is_comparison(doc):
            try:
                validate_comparison(doc, str(path))
            except ComparisonError as exc:
                raise ReportError(exc.message) from None
            out.runs.append(Run(path, doc, _topology_for(doc, path)))
        elif isinstance(doc, dict) and isinstance(doc.get("metrics"), list) and "name" in doc:
            out.plains.append(Plain(path, doc))
        else:
            raise ReportError(
                f"{path}: neither a comparison result (schema) nor a benchmark result (metrics)"
            )
    return out


# --- formatting --------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_MEASURED
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.3g}"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:.2g}x" if value < 0.1 else f"{value:.2f}x"


def _vs_floor(measured: float | None, floor: float | None) -> str:
    """The ratio cell of a table: 'not measured' only when a figure is missing."""
    if measured is not None and floor is not None and floor <= 0:
        return "n/a (floor 0)"
    return _ratio(ratio(measured, floor))


def _bytes(value: Any) -> str:
    if value is None:
        return NOT_MEASURED
    v = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:,.0f} {unit}" if unit == "B" else f"{v:,.1f} {unit}"
        v /= 1024
    return f"{v:,.1f} GiB"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _get(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    cur: Any = mapping
    for key in keys:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


# --- plots -------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(region: Mapping[str, Any]) -> tuple[list[float], list[float], str]:
    """The points of a region's latency CDF and where they came from."""
    pairs: list[list[float]] | None = region.get("latency_cdf")
    source = "samples"
    if not pairs and isinstance(region.get("latency_hdr"), str):
        from hdrh.histogram import HdrHistogram

        pairs = cdf_from_histogram(HdrHistogram.decode(region["latency_hdr"]))
        source = "histogram"
    if not pairs:  # percentiles only: a coarse step curve, marked as such
        lat = region["latency_ms"]
        pairs = [[float(lat[k]), f] for k, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))]
        pairs = [p for p in pairs if p[0] is not None]
        if "max" in lat:
            pairs.append([float(lat["max"]), 1.0])
        pairs.sort()
        source = "percentiles only"
    return [p[0] for p in pairs], [p[1] for p in pairs], source


def _plot_cdf(runs: Sequence[Run], regions: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
    n = len(regions)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.0), squeeze=False, sharey=True)
    lows: list[float] = []
    highs: list[float] = []
    for ax, region in zip(axes[0], regions, strict=True):
        for run in runs:
            data = run.doc["regions"].get(region)
            if data is None:
                continue
            xs, ys, source = _cdf(data)
            color = MODE_COLORS.get(run.mode)
            label = run.label + ("" if source != "percentiles only" else " (percentiles)")
            ax.step(
                xs,
                ys,
                where="post",
                color=color,
                linestyle=MODE_STYLES.get(run.mode, "-"),
                label=label,
            )
            lows += [x for x in xs if x > 0]
            highs += xs
            floor = run.floor_ms(region)
            if floor is not None:
                ax.axvline(
                    floor,
                    color=color,
                    linestyle=":",
                    linewidth=1.2,
                    label=f"floor, {run.label}: {floor:.1f} ms",
                )
                lows.append(floor)
                highs.append(floor)
        for run in runs:
            one = run.doc.get("one_region")
            if run.mode == "multi-leader" and isinstance(one, Mapping):
                base = float(one["latency_ms"]["p50"])
                ax.axvline(
                    base,
                    color="dimgray",
                    linestyle="-.",
                    linewidth=1.0,
                    label=f"one-region p50 ({one['region']} alone): {base:.1f} ms",
                )
                lows.append(base)
                highs.append(base)
        ax.set_title(region)
        ax.set_xlabel("append latency (ms)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="upper left")  # a CDF leaves its upper left empty
    # one scale for every region, so the panels compare at a glance
    log = bool(lows and highs) and max(highs) / max(min(lows), 1e-9) > 30
    for ax in axes[0]:
        if log:  # 1-2-5 steps with plain numbers read better than powers of ten
            from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(min(lows) * 0.8, max(highs) * 1.25)  # the same range in every panel
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("fraction of appends ≤ latency")
    fig.suptitle(title + (" (log latency axis)" if log else ""))
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _plot_throughput(runs: Sequence[Run], regions: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
    groups = [*regions, "all regions"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(groups) + 2), 4.2))
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        values = [
            float(_get(run.doc["regions"], r, "throughput_events_per_s") or 0.0) for r in regions
        ]
        values.append(run.total_throughput())
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=run.label, color=MODE_COLORS.get(run.mode))
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("throughput (events/s)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)


def _plot_lag(runs: Sequence[Run], title: str, path: Path) -> bool:
    with_lag = [r for r in runs if any("lag_samples" in v for v in r.doc.get("links", {}).values())]
    if not with_lag:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(with_lag), 1, figsize=(9, 3.4 * len(with_lag)), squeeze=False)
    for ax, run in zip(axes[:, 0], with_lag, strict=True):
        floors: dict[float, str] = {}
        for i, (key, link) in enumerate(sorted(run.doc["links"].items())):
            samples = link.get("lag_samples")
            if not samples:
                continue
            color = f"C{i % 10}"
            ax.plot(
                [s[0] for s in samples],
                [s[1] for s in samples],
                color=color,
                linewidth=1.0,
                label=key,
            )
            floor = run.lag_floor_ms(link["src"], link["dst"])
            if floor is not None:
                pair = " / ".join(sorted((link["src"], link["dst"])))
                floors.setdefault(round(floor, 3), pair)
        # in the legend, one dash pattern each: labels written on the plot overlapped where
        # two region pairs have near floors
        dashes = [(1, 2), (4, 2), (4, 2, 1, 2), (1, 5), (6, 3, 1, 3, 1, 3)]
        for j, (value, pair) in enumerate(sorted(floors.items())):
            ax.axhline(
                value,
                color="dimgray",
                linewidth=1.0,
                dashes=dashes[j % len(dashes)],
                label=f"floor (RTT) {pair}: {value:.1f} ms",
            )
        ax.set_title(f"{run.label}: commit to acknowledgement (gray: its floor, one RTT)")
        ax.set_xlabel("time since the measured window began (s)")
        ax.set_ylabel("replication lag (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    _save(fig, path)
    return True


def _plot_overview(groups: Mapping[tuple[str, float, float], Sequence[Run]], path: Path) -> None:
    """Every setting side by side (region counts, write mixes, scales): aggregate throughput
    and the worst region's p50, one bar per mode."""
    plt = _pyplot()
    # fewest regions first, so a region-count sweep reads left to right
    keys = sorted(groups, key=lambda k: (max(len(r.doc["regions"]) for r in groups[k]), k))
    labels = [_group_title(k).replace(", ", "\n") for k in keys]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10.0, 2.4 * len(keys) + 3), 4.6))
    modes = [m for m in MODES if any(r.mode == m for k in keys for r in groups[k])]
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        xs = [g + (i - (len(modes) - 1) / 2) * width for g in range(len(keys))]
        tput, worst = [], []
        for k in keys:
            run = next((r for r in groups[k] if r.mode == mode), None)
            tput.append(run.total_throughput() if run else 0.0)
            p50s = (
                [float(v["latency_ms"]["p50"]) for v in run.doc["regions"].values()] if run else []
            )
            worst.append(max(p50s, default=0.0))
        color = MODE_COLORS.get(mode)
        bars = left.bar(xs, tput, width, label=mode, color=color)
        left.bar_label(bars, labels=[f"{v:,.0f}" for v in tput], fontsize=7, padding=2)
        bars = right.bar(xs, worst, width, label=mode, color=color)
        right.bar_label(bars, labels=[f"{v:,.0f}" for v in worst], fontsize=7, padding=2)
    for ax, ylabel, title in (
        (left, "aggregate throughput (events/s)", "throughput, all regions"),
        (right, "append latency p50 (ms), worst region", "p50 of the slowest region"),
    ):
        ax.set_xticks(range(len(keys)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Every setting, both modes")
    _save(fig, path)


def _plot_sweep(runs: Sequence[Run], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    modes = [m for m in MODES if any(r.mode == m for r in runs)]
    regions: list[str] = []
    for run in runs:
        regions += [r for r in run.region_names() if r not in regions]
    for mode in modes:
        mine = sorted((r for r in runs if r.mode == mode), key=lambda r: r.scale)
        scales = [r.scale for r in mine]
        left.plot(
            scales,
            [r.total_throughput() for r in mine],
            marker="o",
            color=MODE_COLORS.get(mode),
            label=mode,
        )
        for j, region in enumerate(regions):
            pts = [(r.scale, _get(r.doc["regions"], region, "latency_ms", "p50")) for r in mine]
            pts = [(s, v) for s, v in pts if v is not None]
            right.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                linestyle=MODE_STYLES.get(mode, "-"),
                color=f"C{j % 10}",
                label=f"{region}, {mode}",
            )
    left.set_xlabel("RTT scale (x the topology's RTTs)")
    left.set_ylabel("aggregate throughput (events/s)")
    left.set_title("throughput against RTT scale")
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    right.set_xlabel("RTT scale (x the topology's RTTs)")
    right.set_ylabel("append latency p50 (ms)")
    right.set_title("p50 against RTT scale (solid: multi-, dashed: single-leader)")
    right.legend(fontsize=7, loc="upper left")
    right.grid(True, alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)


# --- sections ----------------------------------------------------------------------------


def _group_key(run: Run) -> tuple[str, float, float]:
    return (str(run.doc["config"]["topology"]), run.scale, run.share)


def _group_title(key: tuple[str, float, float]) -> str:
    topology, scale, share = key
    title = f"{topology}, RTT x{scale:g}"
    return title + (f", {share:.0%} remote writes" if share else "")


def _label_runs(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.mode] = seen.get(run.mode, 0) + 1
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.mode] = counts.get(run.mode, 0) + 1
        run.label = run.mode if seen[run.mode] == 1 else f"{run.mode} #{counts[run.mode]}"


def _mode_order(run: Run) -> tuple[int, str]:
    return (MODES.index(run.mode) if run.mode in MODES else len(MODES), run.path.name)


def _config_line(run: Run) -> str:
    c = run.config
    parts = [f"`{run.path.name}`: {run.label}", f"workload {c.get('workload')}"]
    loop = c.get("loop")
    if loop == "closed" or (loop is None and "concurrency_per_region" in c):
        parts.append(f"closed loop, {c.get('concurrency_per_region', '?')} outstanding per region")
    elif loop == "open":
        parts.append(f"open loop, {c.get('rate_per_region', '?')} requests/s per region")
    parts.append(f"{c.get('duration_s')} s measured")
    if run.mode == "single-leader":
        parts.append(f"leader region {run.leader_region or NOT_MEASURED}")
    fsync = run.fsync_p50_ms
    parts.append(f"fsync p50 {_num(fsync, 2)} ms" if fsync is not None else "fsync " + NOT_MEASURED)
    if run.topology is None:
        parts.append("topology not found: floors not computed")
    return "- " + ", ".join(parts)


def _region_tables(runs: Sequence[Run], regions: Sequence[str]) -> list[str]:
    out: list[str] = []
    headers = [
        "mode",
        "p50 (ms)",
        "p99 (ms)",
        "floor (ms)",
        "p50 / floor",
        "p99 / floor",
        "throughput (events/s)",
    ]
    for region in regions:
        rows = []
        for run in runs:
            data = run.doc["regions"].get(region)
            if data is None:
                rows.append([run.label, *[NOT_MEASURED] * 6])
                continue
            lat = data["latency_ms"]
            floor = run.floor_ms(region)
            rows.append(
                [
                    run.label,
                    _num(lat["p50"], 2),
                    _num(lat["p99"], 2),
                    _num(floor, 2),
                    _vs_floor(lat["p50"], floor),
                    _vs_floor(lat["p99"], floor),
                    _num(float(data["throughput_events_per_s"])),
                ]
            )
        out += [f"**{region}**", "", *_table(headers, rows), ""]
    return out


def _targets(runs: Sequence[Run]) -> list[str]:
    """The issue's numbers for this setting, read from the results."""
    by_mode = {r.mode: r for r in runs}
    lines: list[str] = []
    multi, single = by_mode.get("multi-leader"), by_mode.get("single-leader")
    if multi and single and single.total_throughput() > 0:
        x = multi.total_throughput() / single.total_throughput()
        verdict = "met" if x >= TARGET_THROUGHPUT_X else "NOT met"
        lines.append(
            f"- aggregate throughput multi-leader / single-leader: {x:.1f}x "
            f"(target ≥ {TARGET_THROUGHPUT_X:g}x: {verdict})"
        )
    if single:
        ratios = [
            ratio(single.doc["regions"][r]["latency_ms"]["p50"], single.floor_ms(r))
            for r in single.region_names()
        ]
        known = [v for v in ratios if v is not None]
        if known:
            worst = max(known)
            verdict = "met" if worst <= TARGET_SINGLE_P50_RATIO else "NOT met"
            lines.append(
                f"- single-leader p50 / floor, worst region: {worst:.2f}x "
                f"(target ≤ {TARGET_SINGLE_P50_RATIO:g}x: {verdict})"
            )
        else:
            lines.append(f"- single-leader p50 / floor: {NOT_MEASURED}")
    if multi and isinstance(multi.doc.get("one_region"), Mapping):
        one = multi.doc["one_region"]
        base = float(one["latency_ms"]["p50"])
        local = {
            r: float(multi.doc["regions"][r]["latency_ms"]["p50"]) for r in multi.region_names()
        }
        worst_region = max(local, key=lambda r: local[r])
        local_x = ratio(local[worst_region], base)
        if local_x is not None:
            verdict = "met" if local_x <= TARGET_LOCAL_VS_ONE_REGION_X else "NOT met"
            lines.append(
                f"- multi-leader local append p50 / one-region p50: {local_x:.2f}x, worst region "
                f"{worst_region} ({local[worst_region]:.1f} ms against {base:.1f} ms: "
                f"{one['region']} alone, same load; target ≤ {TARGET_LOCAL_VS_ONE_REGION_X:g}x: "
                f"{verdict})"
            )
    for run in runs:
        worst_apply = _worst_lag_slack(run, "apply_lag_ms", run.one_way_ms)
        if worst_apply is not None:
            worst, where = worst_apply
            verdict = "met" if worst < TARGET_LAG_SLACK_MS else "NOT met"
            lines.append(
                f"- {run.label}: per-event replication lag (home commit to apply) p99 minus the "
                f"one-way delay, worst link: {worst:.1f} ms, {where} (target < "
                f"{TARGET_LAG_SLACK_MS:g} ms: {verdict})"
            )
        worst_ack = _worst_lag_slack(run, "lag_ms", run.lag_floor_ms)
        if worst_ack is not None:
            worst = worst_ack[0]
            verdict = "met" if worst < TARGET_LAG_SLACK_MS else "NOT met"
            lines.append(
                f"- {run.label}: oldest unacknowledged event's age (sampled each second) p99 "
                f"minus RTT, worst link: {worst:.1f} ms (target < {TARGET_LAG_SLACK_MS:g} ms: "
                f"{verdict}; measured to the acknowledgement, so its p99 minus the ack's way "
                f"back is under one-way + {TARGET_LAG_SLACK_MS:g} ms exactly when its p99 is "
                f"under RTT + {TARGET_LAG_SLACK_MS:g} ms)"
            )
    return lines


def _worst_lag_slack(
    run: Run, field: str, floor_of: Callable[[str, str], float | None]
) -> tuple[float, str] | None:
    """The largest p99 of ``field`` minus its floor over the run's links, with the link."""
    slack = []
    for link in run.doc.get("links", {}).values():
        p99 = _get(link, field, "p99")
        floor = floor_of(link["src"], link["dst"])
        if p99 is not None and floor is not None:
            slack.append((float(p99) - floor, f"{link['src']}->{link['dst']}"))
    return max(slack) if slack else None


def _link_tables(runs: Sequence[Run]) -> list[str]:
    lag_rows, wan_rows, apply_rows = [], [], []
    for run in runs:
        for key, link in sorted(run.doc.get("links", {}).items()):
            a50, a99 = _get(link, "apply_lag_ms", "p50"), _get(link, "apply_lag_ms", "p99")
            if a50 is None or a99 is None:
                continue
            one_way = run.one_way_ms(link["src"], link["dst"])
            over = None if one_way is None else float(a99) - one_way
            apply_rows.append(
                [
                    key,
                    run.label,
                    _num(a50, 2),
                    _num(a99, 2),
                    _num(one_way, 2),
                    _num(over, 2),
                    _num(link.get("apply_lag_events"), 0),
                ]
            )
    for run in runs:
        # single-leader has no geo layer, so no lag: its rows would only say "not measured"
        has_lag = any("lag_ms" in v for v in run.doc.get("links", {}).values())
        for key, link in sorted(run.doc.get("links", {}).items()):
            floor = run.lag_floor_ms(link["src"], link["dst"])
            p50, p99 = _get(link, "lag_ms", "p50"), _get(link, "lag_ms", "p99")
            if has_lag or run.mode != "single-leader":
                lag_rows.append(
                    [
                        key,
                        run.label,
                        _num(p50, 2),
                        _num(p99, 2),
                        _num(floor, 2),
                        _vs_floor(p50, floor),
                        _vs_floor(p99, floor),
                    ]
                )
            raw, packed = link.get("wan_bytes_raw"), link.get("wan_bytes_compressed")
            squeeze = f"{raw / packed:.1f}x" if raw and packed else NOT_MEASURED
            wire = link.get("wan_bytes_wire")
            wan_rows.append([key, run.label, _bytes(raw), _bytes(packed), squeeze, _bytes(wire)])
    out = ["#### Replication lag", ""]
    if apply_rows:
        out += [
            "Per event: its home leader's commit to its apply on the destination's leader "
            "(the receiving leader's histogram over the window; one clock on one machine, "
            "so exact; across machines their clock skew is in it). Target: p99 under the "
            f"one-way delay + {TARGET_LAG_SLACK_MS:g} ms.",
            "",
        ]
        out += _table(
            [
                "link",
                "mode",
                "p50 (ms)",
                "p99 (ms)",
                "floor: one-way (ms)",
                "p99 - one-way (ms)",
                "events",
            ],
            apply_rows,
        )
        out += [
            "",
            "Sampled each second at the home: the age of the oldest committed event the "
            "destination has not acknowledged yet (its trip there, the destination's commit "
            "and the acknowledgement's way back).",
            "",
        ]
    if lag_rows:
        out += _table(
            [
                "link",
                "mode",
                "p50 (ms)",
                "p99 (ms)",
                "floor: RTT (ms)",
                "p50 / floor",
                "p99 / floor",
            ],
            lag_rows,
        )
    else:
        out.append(NOT_MEASURED)
    out += ["", "#### WAN bytes", ""]
    if wan_rows:
        out += [
            "Raw and compressed: the geo shipper's batch payloads (CBOR, then zstd); wire: every "
            "byte the WAN emulator carried on the link in that direction (framing, heartbeats, "
            "acks and, single-leader, all Raft traffic and forwarded requests included).",
            "",
        ]
        out += _table(["link", "mode", "raw", "compressed", "ratio", "wire"], wan_rows)
    else:
        out.append(NOT_MEASURED)
    return [*out, ""]


def _cpu_lines(runs: Sequence[Run]) -> list[str]:
    out = ["#### CPU", ""]
    for run in runs:
        cpu = run.doc.get("cpu") or {}
        pct = cpu.get("machine_cpu_pct")
        bound = cpu_bound(run.doc)
        if bound is None:
            flag = f"machine CPU {NOT_MEASURED}"
        elif bound:
            flag = (
                f"**CPU-bound**: machine at {_num(pct)}% (over {CPU_BOUND_PCT:g}%); "
                "latency and throughput here measure the machine, not the design"
            )
        else:
            flag = f"machine at {_num(pct)}% CPU (not CPU-bound)"
        out.append(f"- {run.label}: {flag}")
        procs = cpu.get("processes") or {}
        waits = [float(p["runq_wait_s"]) for p in procs.values() if "runq_wait_s" in p]
        oncpu = [float(p["cpu_s"]) for p in procs.values() if "runq_wait_s" in p]
        if waits and sum(oncpu) > 0:
            out.append(
                f"- {run.label}: the measured processes waited {sum(waits):,.1f} s for a core "
                f"while they ran {sum(oncpu):,.1f} s ({sum(waits) / sum(oncpu):.1f} s waiting per "
                "second of CPU): time a request spends queued behind other processes"
            )
        if procs:
            out += [
                "",
                *_table(
                    ["process", "CPU seconds", "CPU % of one core", "run-queue wait (s)"],
                    [
                        [
                            name,
                            _num(p.get("cpu_s"), 2),
                            _num(p.get("cpu_pct")),
                            _num(p.get("runq_wait_s"), 2),
                        ]
                        for name, p in sorted(procs.items())
                    ],
                ),
                "",
            ]
    return [*out, ""]


def _environment_lines(paths_envs: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[str]:
    rows = []
    for path, env in paths_envs:
        commit = env.get("git_commit")
        load = env.get("load_average")
        rows.append(
            [
                path.name,
                str(env.get("cpu_count", NOT_MEASURED)),
                str(env.get("platform", NOT_MEASURED)),
                str(env.get("python", NOT_MEASURED)),
                commit[:12] if isinstance(commit, str) else NOT_MEASURED,
                str(env.get("timestamp_utc", NOT_MEASURED)),
                " / ".join(f"{x:g}" for x in load) if isinstance(load, list) else NOT_MEASURED,
            ]
        )
    headers = ["result file", "CPUs", "platform", "Python", "commit", "UTC time"]
    return [
        "## Environment",
        "",
        *_table([*headers, "load average 1/5/15 min"], rows),
        "",
    ]


def _plain_lines(plain: Plain) -> list[str]:
    doc = plain.doc
    out = [f"## {doc['name']} (`{plain.path.name}`)", ""]
    config = doc.get("config") or {}
    scalars = {k: v for k, v in config.items() if isinstance(v, str | int | float | bool)}
    if scalars:
        out += ["Config: " + ", ".join(f"{k} = {v}" for k, v in sorted(scalars.items())), ""]
    rows = []
    for m in doc["metrics"]:
        value = m.get("value")
        target = m.get("target")
        side = "≥ " if m.get("better", "higher") == "higher" else "≤ "
        met = {None: "", True: "yes", False: "NO"}.get(m.get("met"), "")
        rows.append(
            [
                str(m.get("name")),
                _num(float(value), 2) if isinstance(value, int | float) else NOT_MEASURED,
                str(m.get("unit", "")),
                "" if target is None else side + _num(float(target), 2),
                met,
            ]
        )
    out += _table(["metric", "value", "unit", "target", "met?"], rows)
    return [*out, ""]


# --- the report --------------------------------------------------------------------------


def render_report(
    result_paths: Sequence[str | Path], out_dir: str | Path, *, plots: bool = True
) -> Path:
    """Render ``out_dir/report.md`` and its PNGs from the result files; returns the .md path.
    ``plots=False`` writes the Markdown alone (tables only; no matplotlib)."""
    if not result_paths:
        raise ReportError("no result files given")
    loaded = load_results(result_paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# geostore benchmark report",
        "",
        f"Rendered from {len(result_paths)} result file(s). Latencies are in milliseconds; each "
        "is shown beside its physical floor (the emulated RTTs the write must cross plus one "
        "fsync measured in the same run; see docs/benchmarks.md) and the ratio to it.",
        "",
    ]
    groups: dict[tuple[str, float, float], list[Run]] = {}
    for run in loaded.runs:
        groups.setdefault(_group_key(run), []).append(run)
    if groups:
        lines += ["## Overview", ""]
        rows = []
        for key, runs in sorted(groups.items()):
            runs.sort(key=_mode_order)
            _label_runs(runs)
            for run in runs:
                ratios = [
                    ratio(run.doc["regions"][r]["latency_ms"]["p50"], run.floor_ms(r))
                    for r in run.region_names()
                ]
                known = [v for v in ratios if v is not None]
                rows.append(
                    [
                        _group_title(key),
                        run.label,
                        str(len(run.doc["regions"])),
                        _num(run.total_throughput()),
                        _ratio(max(known)) if known else NOT_MEASURED,
                        {None: NOT_MEASURED, True: "yes", False: "no"}[cpu_bound(run.doc)],
                    ]
                )
        lines += _table(
            [
                "setting",
                "mode",
                "regions",
                "throughput (events/s)",
                "worst p50 / floor",
                "CPU-bound",
            ],
            rows,
        )
        lines.append("")
        if plots and len(groups) >= 2:
            png = "overview.png"
            _plot_overview(groups, out / png)
            lines += [f"![throughput and worst p50 per setting]({png})", ""]

    for key, runs in sorted(groups.items()):
        title = _group_title(key)
        slug = _slug(f"{key[0]}-x{key[1]:g}" + (f"-remote{key[2]:g}" if key[2] else ""))
        regions: list[str] = []
        for run in runs:
            regions += [r for r in run.region_names() if r not in regions]
        lines += [f"## {title}", "", *(_config_line(r) for r in runs), ""]
        targets = _targets(runs)
        if targets:
            lines += ["Targets (issue 7):", "", *targets, ""]
        lines += ["### Append latency and throughput per region", ""]
        lines += _region_tables(runs, regions)
        if plots:
            cdf_png = f"latency-cdf-{slug}.png"
            _plot_cdf(runs, regions, f"Append latency CDF, {title}", out / cdf_png)
            tput_png = f"throughput-{slug}.png"
            _plot_throughput(runs, regions, f"Throughput per mode, {title}", out / tput_png)
            lines += [f"![latency CDF]({cdf_png})", "", f"![throughput]({tput_png})", ""]
        lines += ["### Links", "", *_link_tables(runs)]
        lag_png = f"lag-{slug}.png"
        if not plots:
            pass
        elif _plot_lag(runs, f"Replication lag over time, {title}", out / lag_png):
            lines += [f"![replication lag]({lag_png})", ""]
        else:
            lines += [f"Lag over time: {NOT_MEASURED}.", ""]
        lines += _cpu_lines(runs)

    sweeps: dict[tuple[str, float], list[Run]] = {}
    for run in loaded.runs:
        sweeps.setdefault((str(run.doc["config"]["topology"]), run.share), []).append(run)
    for (topology, share), runs in sorted(sweeps.items()):
        scales = sorted({r.scale for r in runs})
        if len(scales) < 2:
            continue
        title = f"RTT sweep, {topology}" + (f", {share:.0%} remote writes" if share else "")
        png = f"sweep-{_slug(topology)}" + (f"-remote{share:g}" if share else "") + ".png"
        if plots:
            _plot_sweep(runs, title, out / png)
        rows = [
            [
                f"{r.scale:g}",
                r.mode,
                _num(r.total_throughput()),
                _ratio(
                    max(
                        (
                            v
                            for v in (
                                ratio(r.doc["regions"][g]["latency_ms"]["p50"], r.floor_ms(g))
                                for g in r.region_names()
                            )
                            if v is not None
                        ),
                        default=None,
                    )
                ),
            ]
            for r in sorted(runs, key=lambda r: (r.scale, _mode_order(r)))
        ]
        lines += [
            f"## {title}",
            "",
            *_table(["RTT scale", "mode", "throughput (events/s)", "worst p50 / floor"], rows),
            "",
            f"![RTT sweep]({png})",
            "",
        ]

    if loaded.plains:
        lines += ["# Single-benchmark results", ""]
        for plain in loaded.plains:
            lines += _plain_lines(plain)
    envs: list[tuple[Path, Mapping[str, Any]]] = [
        (r.path, r.doc.get("environment") or {}) for r in loaded.runs
    ] + [(p.path, p.doc.get("environment") or {}) for p in loaded.plains]
    lines += _environment_lines(envs)
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report


def written_files(report: Path) -> list[Path]:
    """The report and the images it links, for callers that list what was written."""
    text = report.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    return [report, *(report.parent / i for i in images)]
