"""The scripted Raft scenarios (tests/scenarios/raft/*.txt) produce exactly their expected output.

Each file re-derives one rule of the Raft paper or dissertation (R1-R9, R12-R21 of the
reliability catalogue) as a script of campaigns, proposals, deliveries, drops, partitions,
ticks, crashes and restarts; hard ``expect`` lines and the harness's safety checks fail the
test even when the expected output is being rewrite (GEOSTORE_REWRITE=1).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.scenarios.runner import ScenarioError, parse, render, run_file

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios" / "raft").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    ok, actual = run_file(path)
    if not ok:
        diff = "".join(
            difflib.unified_diff(
                path.read_text().splitlines(True), actual.splitlines(True), "expected", "actual"
            )
        )
        pytest.fail(f"{path.name} differs (GEOSTORE_REWRITE=1 rewrites it):\n{diff}")


def test_there_are_scenarios_for_the_catalogue() -> None:
    names = " ".join(p.stem for p in SCENARIOS)
    for rid in [f"r{i}" for i in (*range(1, 10), *range(12, 22))]:
        assert f"{rid}_" in names, rid


def test_parse_render_round_trip() -> None:
    text = "# head\n> nodes 3\n> status\nout 1\nout 2\n\n# later\n> heal\n"
    script = parse(text)
    assert render(script, [s.expected for s in script.steps]) == text


def test_runner_reports_a_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("> nodes 3\n> status 1\nnot what it prints\n")
    ok, actual = run_file(f)
    assert not ok
    assert "1 follower t0" in actual


def test_failed_expectation_raises_even_when_rewriting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOSTORE_REWRITE", "1")
    f = tmp_path / "x.txt"
    f.write_text("> nodes 3\n> expect 1 role == leader\n")
    with pytest.raises(ScenarioError, match="got 'follower'"):
        run_file(f)


def test_rewrite_flag_replaces_the_expected_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "x.txt"
    f.write_text("# keep me\n> nodes 3\n> status 1\nstale line\n\n# and me\n> heal\n")
    monkeypatch.setenv("GEOSTORE_REWRITE", "1")
    ok, _ = run_file(f)
    assert ok
    text = f.read_text()
    assert "stale line" not in text and "1 follower t0" in text
    assert text.startswith("# keep me\n") and "\n# and me\n> heal\n" in text
    monkeypatch.delenv("GEOSTORE_REWRITE")
    assert run_file(f)[0]
