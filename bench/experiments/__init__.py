"""Declarative experiments: which topologies, modes, RTT scales and workload a comparison runs.

Theory of operation
-------------------
An experiment file (TOML, one per experiment in this folder; format in docs/benchmarks.md)
names the sweep axes as lists - ``topologies``, ``modes``, ``rtt_scales`` and the workload's
``remote_write_shares`` - and everything else as single values. :func:`load_experiment`
validates the whole file before anything runs, so a typo fails in a second rather than an
hour into a sweep: unknown keys, wrong types, out-of-range numbers, topologies that do not
load, a leader region that some topology lacks. Each failure is an
:class:`ExperimentError` naming the file, the field path and the reason, like the topology
loader's errors.

:meth:`Experiment.runs` expands the axes into one :class:`RunSpec` per result file, in a
stable order (topology, scale, share, mode: the two modes of one setting run back to back,
so a slow drift of the machine touches both alike). ``RunSpec.config()`` is the ``config``
object of the comparison result (bench/compare_schema.py) that run writes.

Topology names resolve to ``regions/NAME.toml`` in the repository; a value containing ``/``
or ending in ``.toml`` is a path, relative to the experiment file's folder.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geostore.config import Topology, load_topology
from geostore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REGIONS_DIR = ROOT / "regions"
EXPERIMENTS_DIR = Path(__file__).resolve().parent

MODES = ("multi-leader", "single-leader")
WORKLOADS = ("flights", "weather", "synthetic")
LOOPS = ("closed", "open")

_TOP_KEYS = frozenset(
    {
        "name",
        "description",
        "topologies",
        "modes",
        "rtt_scales",
        "leader_region",
        "duration_s",
        "warmup_s",
        "workload",
        "one_region_baseline_s",
    }
)
_WORKLOAD_KEYS = frozenset(
    {"name", "loop", "concurrency_per_region", "rate_per_region", "batch", "remote_write_shares"}
)


class ExperimentError(ConfigError):
    """An experiment file that does not validate: file, field, reason."""


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    loop: str
    concurrency_per_region: int | None
    rate_per_region: float | None
    batch: int
    remote_write_shares: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run: one mode on one (scaled) topology with one write mix."""

    experiment: str
    topology: Topology  # unscaled; ``scaled_topology()`` applies ``rtt_scale``
    rtt_scale: float
    mode: str
    remote_write_share: float
    leader_region: str | None
    duration_s: float
    warmup_s: float
    workload: Workload

    def scaled_topology(self) -> Topology:
        return self.topology.scaled(self.rtt_scale)

    def config(self) -> dict[str, Any]:
        """The ``config`` object of this run's comparison result."""
        out: dict[str, Any] = {
            "experiment": self.experiment,
            "topology": self.topology.name,
            "rtt_scale": self.rtt_scale,
            "mode": self.mode,
            "workload": self.workload.name,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "loop": self.workload.loop,
            "batch": self.workload.batch,
            "remote_write_share": self.remote_write_share,
            "topology_toml": self.topology.to_toml(),
        }
        if self.workload.loop == "closed":
            out["concurrency_per_region"] = self.workload.concurrency_per_region
        else:
            out["rate_per_region"] = self.workload.rate_per_region
        if self.mode == "single-leader":
            out["leader_region"] = self.leader_region or self.topology.region_names()[0]
        return out


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    description: str
    path: str
    topologies: tuple[Topology, ...]
    modes: tuple[str, ...]
    rtt_scales: tuple[float, ...]
    leader_region: str | None
    duration_s: float
    warmup_s: float
    workload: Workload
    one_region_baseline_s: float = 0.0  # > 0: measure the first region alone after multi-leader

    def runs(self) -> list[RunSpec]:
        return [
            RunSpec(
                self.name,
                topology,
                scale,
                mode,
                share,
                self.leader_region,
                self.duration_s,
                self.warmup_s,
                self.workload,
            )
            for topology in self.topologies
            for scale in self.rtt_scales
            for share in self.workload.remote_write_shares
            for mode in self.modes
        ]


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, field: str, reason: str) -> ExperimentError:
        return ExperimentError(self.file, field, reason)

    def keys(self, table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(f"{where}{key}", f"unknown key (known: {known})")

    def string(self, value: Any, field: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def number(self, value: Any, field: str, *, low: float, positive: bool = False) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < low or (positive and value <= low):
            rule = f"> {low:g}" if positive else f">= {low:g}"
            raise self.fail(field, f"must be a finite number {rule}, got {value!r}")
        return float(value)

    def integer(self, value: Any, field: str, *, low: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.fail(field, f"must be an integer >= {low}, got {value!r}")
        return value

    def nonempty_list(self, value: Any, field: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(field, f"must be a non-empty array, got {value!r}")
        if len({repr(v) for v in value}) != len(value):
            raise self.fail(field, "has duplicates")
        return value


def _resolve_topology(name: str, base: Path) -> Path:
    if "/" in name or name.endswith(".toml"):
        return (base / name).resolve()
    return REGIONS_DIR / f"{name}.toml"


def experiment_from_dict(data: Mapping[str, Any], file: str, base: Path) -> Experiment:
    """Validate decoded TOML data; ``base`` is the folder relative topology paths start at."""
    c = _Checker(file)
    c.keys(data, _TOP_KEYS, "")
    for required in ("name", "topologies", "modes", "duration_s", "workload"):
        if required not in data:
            raise c.fail(required, "missing required key")
    name = c.string(data["name"], "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise c.fail("description", f"must be a string, got {description!r}")

    topologies: list[Topology] = []
    for i, raw in enumerate(c.nonempty_list(data["topologies"], "topologies")):
        field = f"topologies[{i}]"
        path = _resolve_topology(c.string(raw, field), base)
        if not path.exists():
            raise c.fail(field, f"no topology file {path}")
        try:
            topologies.append(load_topology(path))
        except ConfigError as exc:
            raise c.fail(field, f"topology does not load: {exc.message}") from None

    modes = tuple(
        c.string(m, f"modes[{i}]", MODES)
        for i, m in enumerate(c.nonempty_list(data["modes"], "modes"))
    )
    scales = tuple(
        c.number(s, f"rtt_scales[{i}]", low=0.0)
        for i, s in enumerate(c.nonempty_list(data.get("rtt_scales", [1.0]), "rtt_scales"))
    )
    leader: str | None = None
    if "leader_region" in data:
        leader = c.string(data["leader_region"], "leader_region")
        if "single-leader" not in modes:
            raise c.fail("leader_region", "given, but no single-leader mode is run")
        for t in topologies:
            if leader not in t.region_names():
                raise c.fail("leader_region", f"{leader!r} is not a region of {t.name!r}")
    duration = c.number(data["duration_s"], "duration_s", low=0.0, positive=True)
    warmup = c.number(data.get("warmup_s", 5.0), "warmup_s", low=0.0)
    baseline = c.number(data.get("one_region_baseline_s", 0.0), "one_region_baseline_s", low=0.0)
    if baseline > 0 and "multi-leader" not in modes:
        raise c.fail("one_region_baseline_s", "given, but no multi-leader mode is run")

    raw_w = data["workload"]
    if not isinstance(raw_w, Mapping):
        raise c.fail("workload", "must be a table")
    c.keys(raw_w, _WORKLOAD_KEYS, "workload.")
    if "name" not in raw_w:
        raise c.fail("workload.name", "missing required key")
    w_name = c.string(raw_w["name"], "workload.name", WORKLOADS)
    loop = c.string(raw_w.get("loop", "closed"), "workload.loop", LOOPS)
    concurrency: int | None = None
    rate: float | None = None
    if loop == "closed":
        if "rate_per_region" in raw_w:
            raise c.fail("workload.rate_per_region", "only for loop = 'open'")
        concurrency = c.integer(
            raw_w.get("concurrency_per_region", 4), "workload.concurrency_per_region", low=1
        )
    else:
        if "concurrency_per_region" in raw_w:
            raise c.fail("workload.concurrency_per_region", "only for loop = 'closed'")
        if "rate_per_region" not in raw_w:
            raise c.fail("workload.rate_per_region", "missing (required for loop = 'open')")
        rate = c.number(raw_w["rate_per_region"], "workload.rate_per_region", low=0, positive=True)
    batch = c.integer(raw_w.get("batch", 1), "workload.batch", low=1)
    shares_raw = c.nonempty_list(
        raw_w.get("remote_write_shares", [0.0]), "workload.remote_write_shares"
    )
    shares = []
    for i, s in enumerate(shares_raw):
        field = f"workload.remote_write_shares[{i}]"
        share = c.number(s, field, low=0.0)
        if share > 1:
            raise c.fail(field, f"a share is at most 1, got {s!r}")
        if share > 0 and any(len(t.regions) < 2 for t in topologies):
            raise c.fail(field, "remote writes need at least two regions in every topology")
        shares.append(share)
    workload = Workload(w_name, loop, concurrency, rate, batch, tuple(shares))
    return Experiment(
        name,
        description,
        file,
        tuple(topologies),
        modes,
        scales,
        leader,
        duration,
        warmup,
        workload,
        baseline,
    )


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate the experiment file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentError(str(path), "<file>", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(str(path), "<toml>", f"invalid TOML: {exc}") from None
    return experiment_from_dict(data, str(path), p.resolve().parent)


def experiment_files() -> list[Path]:
    """The experiment files shipped in this folder, by name."""
    return sorted(EXPERIMENTS_DIR.glob("*.toml"))
