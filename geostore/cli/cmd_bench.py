"""``geostore bench``: the front door to the benchmarks in the repository's bench/ folder.

``list`` prints every benchmark script (a bench/*.py with a ``__main__`` block) and every
experiment file (bench/experiments/*.toml) with its one-line description. ``run NAME
[ARGS...]`` runs ``python -m bench.NAME ARGS...`` with this interpreter in a child process,
its output streaming straight through, and exits with its status. ``report RESULTS...
[--out DIR] [--no-plots]`` renders the Markdown report and PNG plots (bench/report.py).
``check FILE...`` validates experiment files. ``run-experiment FILE [--out DIR]
[--duration S] [--warmup S]`` runs every run of an experiment file (bench/compare.py: a real
cluster per mode, one load-generator process per region; the two options override the
file's figures, for a quick form), one result JSON per run in ``--out``, with a progress
line per second and a one-line summary per region; then render them with ``report``.

bench/ is not part of the installed package: it sits beside it in a source checkout. The
command finds it from the geostore package's own path, so it works from any directory of an
editable install, and says so in one line when there is no checkout to find.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

from geostore.errors import GeostoreError

HELP = "benchmarks and reports (bench list|run NAME|run-experiment FILE|report|check)"


class BenchNotFoundError(GeostoreError):
    """No bench/ folder beside the geostore package (not a source checkout)."""


def repo_root() -> Path:
    """The source checkout holding the geostore package and bench/ (BenchNotFoundError if none)."""
    import geostore

    root = Path(geostore.__file__).resolve().parents[1]
    if not (root / "bench" / "__init__.py").is_file():
        raise BenchNotFoundError(
            f"no bench/ folder beside the geostore package (looked in {root}); benchmarks "
            "run from a source checkout (git clone, then pip install -e .)"
        )
    return root


def _importable(root: Path) -> None:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def benchmarks(root: Path) -> dict[str, str]:
    """Benchmark name -> the first line of its docstring, read without importing it."""
    out: dict[str, str] = {}
    for path in sorted((root / "bench").glob("*.py")):
        if path.name.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8")
        if '__name__ == "__main__"' not in source:
            continue  # a library module (results, floor, report...), not a benchmark
        try:
            doc = ast.get_docstring(ast.parse(source)) or ""
        except SyntaxError:
            doc = ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else "(no description)"
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="action", required=True, metavar="{list,run,run-experiment,report,check}"
    )
    sub.add_parser("list", help="benchmarks and experiment files, one line each")
    run_p = sub.add_parser(
        "run",
        help="run bench/NAME.py with the remaining arguments",
        description="Run bench/NAME.py (as python -m bench.NAME) with the remaining arguments.",
    )
    run_p.add_argument("name", help="benchmark name (see 'geostore bench list')")
    run_p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    report_p = sub.add_parser("report", help="render result JSON files as Markdown + PNG plots")
    report_p.add_argument("results", nargs="+", help="result JSON files")
    report_p.add_argument("--out", default="bench-report", help="output folder (bench-report)")
    report_p.add_argument("--no-plots", action="store_true", help="tables only, no PNGs")
    exp_p = sub.add_parser(
        "run-experiment",
        help="run every run of an experiment file (one result JSON per run)",
        description="Bring a real cluster up per run (mode, topology, RTT scale), drive it "
        "with one load-generator process per region and write one comparison result each.",
    )
    exp_p.add_argument("file", help="experiment TOML (bench/experiments/)")
    exp_p.add_argument("--out", default="bench-results", help="result folder (bench-results)")
    exp_p.add_argument(
        "--duration", type=float, default=None, help="measured seconds per run (overrides file)"
    )
    exp_p.add_argument(
        "--warmup", type=float, default=None, help="warm-up seconds per run (overrides file)"
    )
    check_p = sub.add_parser("check", help="validate experiment files")
    check_p.add_argument("files", nargs="+", help="experiment TOML files")


def run(args: argparse.Namespace) -> int:
    root = repo_root()
    if args.action == "list":
        return _list(root)
    if args.action == "run":
        return _run(root, args.name, list(args.args))
    if args.action == "check":
        return _check(root, args.files)
    if args.action == "run-experiment":
        _importable(root)
        from bench.compare import run_experiment

        written = run_experiment(
            args.file, args.out, duration_s=args.duration, warmup_s=args.warmup
        )
        print(
            f"results: {len(written)} file(s) in {args.out}; geostore bench report {args.out}/*.json"
        )
        return 0
    assert args.action == "report", args.action
    _importable(root)
    from bench.report import render_report, written_files

    report = render_report(args.results, args.out, plots=not args.no_plots)
    images = len(written_files(report)) - 1
    print(f"report: {report} ({images} plot{'' if images == 1 else 's'})")
    return 0


def _list(root: Path) -> int:
    _importable(root)
    from bench.experiments import experiment_files, load_experiment

    found = benchmarks(root)
    width = max((len(n) for n in found), default=0)
    print("benchmarks (geostore bench run NAME [--help]):")
    for name, summary in found.items():
        print(f"  {name.ljust(width)}  {summary}")
    files = experiment_files()
    print("experiments (bench/experiments/; geostore bench check FILE):")
    width = max((len(p.name) for p in files), default=0)
    for path in files:
        try:
            summary = load_experiment(path).description or "(no description)"
        except GeostoreError as exc:
            summary = f"INVALID: {exc.message}"
        print(f"  {path.name.ljust(width)}  {summary}")
    return 0


def _run(root: Path, name: str, rest: list[str]) -> int:
    known = benchmarks(root)
    if name not in known:
        raise GeostoreError(
            f"no benchmark {name!r}; known: {', '.join(known) or 'none'} (geostore bench list)"
        )
    if rest[:1] == ["--"]:
        rest = rest[1:]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    # the child writes straight to our stdout/stderr, so its output streams as it comes
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *rest], env=env, check=False)
    return proc.returncode


def _check(root: Path, files: list[str]) -> int:
    _importable(root)
    from bench.experiments import load_experiment

    status = 0
    for file in files:
        try:
            exp = load_experiment(file)
        except GeostoreError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            status = 1
            continue
        print(f"ok: {file}: {exp.name}: {len(exp.runs())} runs")
    return status
