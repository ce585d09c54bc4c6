"""Proves the node config has complete documented defaults, layers a per-node override field
by field, refuses bad files with file, field and reason, and derives Raft timing per group
from the topology (LAN timing inside a region, about ten WAN RTTs across regions)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from geostore.config import (
    Config,
    RaftSettings,
    RaftTiming,
    Topology,
    config_from_dict,
    load_config,
    load_topology,
    parse_config,
    parse_topology,
    raft_timing,
)
from geostore.config.settings import SECTIONS, field_docs
from geostore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults -------------------------------------------------------------------------------


def test_no_file_gives_the_defaults() -> None:
    c = load_config()
    assert c == Config()
    assert c.raft.heartbeat_ticks < c.raft.election_ticks
    assert c.raft.wan_election_rtt_multiple == 10.0
    assert c.storage.fsync is True
    assert c.netem.port == 8474
    assert c.geo.lease_renew_ms < c.geo.lease_ms
    assert parse_config("") == c


def test_to_dict_lists_every_section_and_field() -> None:
    d = Config().to_dict()
    assert list(d) == ["raft", "storage", "geo", "limits", "netem", "process"]
    for name, cls in SECTIONS.items():
        assert list(d[name]) == [f.name for f in dataclasses.fields(cls)]
    assert d["raft"]["tick_ms"] == 20 and d["storage"]["fsync"] is True
    assert config_from_dict(d) == Config()  # the echo loads back to the same config


def test_the_brief_s_field_names_exist() -> None:
    names = {path for path, _, _ in field_docs()}
    expected = {
        "raft.tick_ms", "raft.heartbeat_ticks", "raft.election_ticks",
        "raft.wan_election_rtt_multiple", "raft.max_entries_per_msg", "raft.max_bytes_per_msg",
        "raft.max_inflight_msgs", "raft.snapshot_threshold_entries", "raft.snapshot_chunk_bytes",
        "storage.segment_bytes_max", "storage.fsync", "storage.group_commit_max_records",
        "storage.group_commit_max_bytes",
        "geo.batch_events_max", "geo.batch_bytes_max", "geo.linger_ms",
        "geo.inflight_batches_max", "geo.zstd_level", "geo.use_dictionary", "geo.heartbeat_ms",
        "geo.lease_ms", "geo.lease_renew_ms", "geo.lease_drift_ms",
        "limits.body_bytes_max", "limits.events_per_request_max", "limits.event_bytes_max",
        "limits.read_limit_max", "limits.query_range_us_max", "limits.tail_subscribers_max",
        "limits.tail_buffer_events_max", "limits.wait_ms_max", "limits.decompressed_bytes_max",
        "limits.frame_bytes_max",
        "netem.host", "netem.port", "netem.call_timeout_s",
    }  # fmt: skip
    assert expected <= names


def test_docs_table_lists_every_field_with_its_default() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for path, default, meaning in field_docs():
        shown = str(default).lower() if isinstance(default, bool) else repr(default)
        if isinstance(default, str):
            shown = f'"{default}"'
        row = f"| `{path}` | `{shown}` | {meaning} |"
        assert row in docs, f"docs/configuration.md lacks the row: {row}"


# -- layering -------------------------------------------------------------------------------


def test_file_then_override_field_by_field(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "cluster.toml",
        "[raft]\ntick_ms = 25\nelection_ticks = 40\n[geo]\nzstd_level = 5\n",
    )
    override = write(tmp_path, "node.toml", "[raft]\nelection_ticks = 50\n[netem]\nport = 9000\n")
    c = load_config(base, override)
    assert c.raft.tick_ms == 25  # from the file
    assert c.raft.election_ticks == 50  # the override wins
    assert c.geo.zstd_level == 5
    assert c.netem.port == 9000
    assert c.raft.heartbeat_ticks == RaftSettings().heartbeat_ticks  # default kept
    assert load_config(None, override).raft.tick_ms == 20
    assert load_config(base).raft.election_ticks == 40


def test_ints_are_accepted_for_float_fields() -> None:
    c = parse_config("[netem]\ncall_timeout_s = 2\n[raft]\nwan_election_rtt_multiple = 8\n")
    assert c.netem.call_timeout_s == 2.0 and isinstance(c.netem.call_timeout_s, float)
    assert c.raft.wan_election_rtt_multiple == 8.0


def test_fsync_false_is_allowed_as_the_negative_control() -> None:
    assert parse_config("[storage]\nfsync = false\n").storage.fsync is False


def test_config_from_dict_layers_over_a_base() -> None:
    base = parse_config("[raft]\ntick_ms = 25\n")
    c = config_from_dict({"raft": {"election_ticks": 60}}, "node", base=base)
    assert (c.raft.tick_ms, c.raft.election_ticks) == (25, 60)


# -- errors ---------------------------------------------------------------------------------

#: (case id, TOML text, expected field, a fragment of the reason)
INVALID: list[tuple[str, str, str, str]] = [
    ("unknown section", "[rafft]\ntick_ms = 1\n", "rafft", "unknown section"),
    ("unknown key", "[raft]\nelection_tick = 1\n", "raft.election_tick", "unknown key"),
    ("section not a table", "raft = 3\n", "raft", "must be a table"),
    ("string for int", '[raft]\ntick_ms = "10"\n', "raft.tick_ms", "integer, got a string"),
    ("float for int", "[raft]\ntick_ms = 10.0\n", "raft.tick_ms", "integer, got a float"),
    ("bool for int", "[raft]\ntick_ms = true\n", "raft.tick_ms", "integer, got a boolean"),
    ("int for bool", "[storage]\nfsync = 1\n", "storage.fsync", "boolean"),
    ("zero", "[raft]\nelection_ticks = 0\n", "raft.election_ticks", "> 0"),
    ("negative", "[geo]\nbatch_events_max = -5\n", "geo.batch_events_max", "> 0"),
    ("negative linger", "[geo]\nlinger_ms = -1\n", "geo.linger_ms", ">= 0"),
    ("zero float", "[netem]\ncall_timeout_s = 0\n", "netem.call_timeout_s", "> 0"),
    ("nan float", "[netem]\ncall_timeout_s = nan\n", "netem.call_timeout_s", "finite"),
    ("too large", "[geo]\nzstd_level = 23\n", "geo.zstd_level", "<= 22"),
    ("bad port", "[netem]\nport = 70000\n", "netem.port", "<= 65535"),
    ("empty host", '[netem]\nhost = ""\n', "netem.host", "non-empty string"),
    ("tiny segment", "[storage]\nsegment_bytes_max = 100\n", "storage.segment_bytes_max", ">="),
    (
        "heartbeat not below election",
        "[raft]\nelection_ticks = 3\n",
        "raft.election_ticks",
        "heartbeat_ticks (3) must be < election_ticks (3)",
    ),
    (
        "renew not below lease",
        "[geo]\nlease_renew_ms = 10000\n",
        "geo.lease_renew_ms",
        "must be < lease_ms",
    ),
    (
        "wan multiple below 2",
        "[raft]\nwan_election_rtt_multiple = 1.5\n",
        "raft.wan_election_rtt_multiple",
        ">= 2",
    ),
    (
        "batch larger than a frame",
        "[geo]\nbatch_bytes_max = 20000000\n",
        "geo.batch_bytes_max",
        "frame_bytes_max",
    ),
    (
        "event larger than the body",
        "[limits]\nbody_bytes_max = 1000\n",
        "limits.body_bytes_max",
        "event_bytes_max",
    ),
    ("malformed toml", "[raft]\ntick_ms = = 3\n", "line 2", "invalid TOML"),
]


@pytest.mark.parametrize(
    ("text", "field", "reason"), [pytest.param(t, f, r, id=i) for i, t, f, r in INVALID]
)
def test_invalid_config_names_file_field_and_reason(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    e = err.value
    assert (e.file, e.field) == (str(path), field), e.message
    assert reason in e.reason, e.message


def test_errors_in_the_override_name_the_override(tmp_path: Path) -> None:
    base = write(tmp_path, "cluster.toml", "[raft]\ntick_ms = 20\n")
    override = write(tmp_path, "node.toml", "[raft]\ntik_ms = 20\n")
    with pytest.raises(ConfigError) as err:
        load_config(base, override)
    assert (err.value.file, err.value.field) == (str(override), "raft.tik_ms")


def test_cross_field_error_names_the_file_that_broke_the_rule(tmp_path: Path) -> None:
    base = write(tmp_path, "cluster.toml", "[raft]\nheartbeat_ticks = 8\n")
    override = write(tmp_path, "node.toml", "[raft]\nelection_ticks = 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(base, override)
    assert (err.value.file, err.value.field) == (str(override), "raft.election_ticks")
    # the same rule broken by the base file alone names the base file
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "c2.toml", "[raft]\nheartbeat_ticks = 30\n"))
    assert err.value.field == "raft.heartbeat_ticks"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.toml")
    assert err.value.field == "<file>"


# -- raft timing ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three() -> Topology:
    return load_topology(ROOT / "regions" / "three-continents.toml")


def test_regional_group_uses_lan_timing(three: Topology) -> None:
    c = Config()
    t = raft_timing(c, three, ["eu-west-1"])
    assert t == RaftTiming(c.raft.tick_ms, c.raft.heartbeat_ticks, c.raft.election_ticks)
    assert t.election_ms == 300 and t.heartbeat_ms == 60


def test_cross_region_group_uses_ten_times_the_widest_rtt(three: Topology) -> None:
    c = Config()
    t = raft_timing(c, three, three.region_names())
    widest = three.max_rtt_ms()
    assert widest == pytest.approx(218.9)
    assert t.tick_ms == c.raft.tick_ms
    assert t.election_ticks == math.ceil(10 * widest / c.raft.tick_ms)
    assert t.election_ms >= 10 * widest
    # the heartbeat keeps the LAN heartbeat/election ratio
    assert t.heartbeat_ticks / t.election_ticks == pytest.approx(
        c.raft.heartbeat_ticks / c.raft.election_ticks, rel=0.05
    )
    assert t.heartbeat_ticks < t.election_ticks
    # a group spanning only the near pair spans a smaller RTT
    near = raft_timing(c, three, ["us-east-1", "eu-west-1"])
    assert near.election_ticks == math.ceil(10 * 69.6 / c.raft.tick_ms)
    assert near.election_ticks < t.election_ticks
    # duplicates and order do not matter
    assert raft_timing(c, three, ["eu-west-1", "us-east-1", "eu-west-1"]) == near


def test_cross_region_timing_follows_the_config_and_a_scaled_topology(three: Topology) -> None:
    c = parse_config("[raft]\ntick_ms = 5\nwan_election_rtt_multiple = 4\n")
    t = raft_timing(c, three, three.region_names())
    assert t.tick_ms == 5 and t.election_ticks == math.ceil(4 * 218.9 / 5)
    # near-zero WAN RTT: never below the LAN timing
    fast = raft_timing(Config(), three.scaled(0.01), three.region_names())
    assert (fast.heartbeat_ticks, fast.election_ticks) == (3, 15)


def test_cross_region_group_on_the_local_topology_keeps_lan_timing() -> None:
    local = load_topology(ROOT / "regions" / "local.toml")
    t = raft_timing(Config(), local, local.region_names())
    assert (t.heartbeat_ticks, t.election_ticks) == (3, 15)


def test_a_slow_lan_raises_a_regional_election_timeout() -> None:
    topo = parse_topology(
        '[[regions]]\nname = "a"\nintra_rtt_ms = 50\nnodes = ["a1", "a2", "a3"]\n', "slow.toml"
    )
    t = raft_timing(Config(), topo, ["a"])
    assert t.election_ms == 500 and t.heartbeat_ticks < t.election_ticks


def test_the_examples_in_the_docs_load() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    blocks = [b.split("```", 1)[0] for b in docs.split("```toml\n")[1:]]
    assert len(blocks) == 2
    topo = parse_topology(blocks[0], "docs-example")
    assert topo.link("ap-southeast-1", "us-east-1").bandwidth_kbps == 2000
    assert topo.node("euw1-n2").host == "10.0.1.11"
    assert topo.stream("flights").homes[2] == "ap-southeast-1"
    assert parse_config(blocks[1], "docs-example").raft.election_ticks == 25
