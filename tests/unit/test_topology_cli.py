"""Proves `geostore topology show|check` print the topology and its Raft timing, validate
topology and config together, and fail with one clear line and exit status 1; and that
regions/derive.py reproduces link figures from CloudPing-, Azure- and doitintl-shaped data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geostore.cli.main import main
from geostore.config import parse_topology

ROOT = Path(__file__).resolve().parents[2]
THREE = str(ROOT / "regions" / "three-continents.toml")


def test_show_prints_regions_matrix_links_streams_and_timing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["topology", "show", THREE]) == 0
    out = capsys.readouterr().out
    assert "topology three-continents" in out
    assert "use1-n1, use1-n2, use1-n3" in out
    # the RTT matrix row of us-east-1: intra, then the two WAN RTTs
    matrix = out.split("rtt_ms_p50 matrix")[1]
    body = matrix.splitlines()[2:]  # past the title and the column header
    row = next(line for line in body if line.strip().startswith("us-east-1 "))
    assert row.split()[1:] == ["0.5", "69.6", "218.9"]
    link = next(line for line in out.splitlines() if "eu-west-1 -> ap-southeast-1" in line)
    assert link.split()[3:] == ["182.2", "91.1", "9.1", "5808"]
    assert "flights" in out and "0=us-east-1 1=eu-west-1 2=ap-southeast-1" in out
    assert "regional us-east-1" in out and "15 (300 ms)" in out
    assert "metadata / single-leader" in out and "110 (2200 ms)" in out
    assert "raft timing (config: defaults)" in out


def test_show_uses_the_config_and_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[raft]\ntick_ms = 25\n")
    override = tmp_path / "o.toml"
    override.write_text("[raft]\nwan_election_rtt_multiple = 4\n")
    argv = ["topology", "show", THREE, "--config", str(config), "--override", str(override)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"config: {config} + {override}" in out
    assert "36 (900 ms)" in out  # ceil(4 x 218.9 / 25) ticks of 25 ms


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "show", THREE, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["topology"]["name"] == "three-continents"
    assert data["config"]["raft"]["tick_ms"] == 20
    spanning = data["raft_timing"][-1]
    assert spanning["regions"] == ["us-east-1", "eu-west-1", "ap-southeast-1"]
    assert spanning["election_ms"] == 2200


@pytest.mark.parametrize(
    "name", ["local.toml", "three-continents.toml", "two-near.toml", "five-regions.toml"]
)
def test_check_accepts_every_shipped_topology(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topology", "check", str(ROOT / "regions" / name)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {name.removesuffix('.toml')}: ")


def test_check_fails_with_one_line_naming_file_field_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(THREE).read_text().replace("rtt_ms_p50 = 218.9", "rtt_ms_p50 = -218.9"))
    assert main(["topology", "check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad}: links[1].rtt_ms_p50: must be >= 0")


def test_check_validates_the_config_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[raft]\nelection_tick = 3\n")
    assert main(["topology", "check", THREE, "--config", str(config)]) == 1
    assert f"{config}: raft.election_tick: unknown key" in capsys.readouterr().err
    assert main(["topology", "check", str(tmp_path / "absent.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_help_lists_both_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["topology", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "show" in out and "check" in out


# -- regions/derive.py -----------------------------------------------------------------------


def test_derive_reproduces_links_from_public_data_shapes(tmp_path: Path) -> None:
    cloudping = tmp_path / "cloudping.json"
    cloudping.write_text(
        json.dumps(
            {
                "metadata": {"percentile": "p_50"},
                "data": {
                    "us-east-1": {"us-east-1": 4.0, "eu-west-1": 69.0},
                    "eu-west-1": {"us-east-1": 71.0, "eu-west-1": 3.0},
                },
            }
        )
    )
    header = "Source,East US,North Europe,West Europe\n"
    p50 = tmp_path / "p50.csv"
    p50.write_text(header + "East US,,71,83\nNorth Europe,73,,17\n")
    p95 = tmp_path / "p95.csv"
    p95.write_text(header + "East US,,75,89\nNorth Europe,77,,19\n")
    doit = tmp_path / "doit.csv"
    doit.write_text(
        "timestamp,run_id,from_cloud,from_region,to_cloud,to_region,bitrate_Bps,avgrtt\n"
        "t,r,AWS,us-east-1,AWS,eu-west-1,128000000,70\n"
        "t,r,AWS,eu-west-1,AWS,us-east-1,136000000.0,70\n"
        "t,r,GCP,us-east1,AWS,eu-west-1,1,70\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "regions" / "derive.py"),
            str(cloudping),
            "us-east-1",
            "eu-west-1",
            "--azure-p50",
            str(p50),
            "--azure-p95",
            str(p95),
            "--doit",
            str(doit),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    out = result.stdout
    assert "rtt_ms_p50 = 70.0" in out  # mean of 69 and 71
    assert "jitter_ms = 2.9" in out  # 0.73 x mean(75-71, 77-73)
    assert "bandwidth_kbps = 16500" in out  # median 132 Mbit/s / 8000
    regions = (
        '[[regions]]\nname = "us-east-1"\nnodes = ["u1"]\n'
        '[[regions]]\nname = "eu-west-1"\nnodes = ["e1"]\n'
    )
    topo = parse_topology(regions + out, "derived")
    link = topo.link("eu-west-1", "us-east-1")
    assert (link.rtt_ms_p50, link.jitter_ms, link.bandwidth_kbps) == (70.0, 2.9, 16500)
