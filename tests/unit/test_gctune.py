"""The [process] settings reach CPython's collector: threshold set, start-up objects frozen.

Each case runs in a child interpreter, so the test process's own collector is untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geostore.config import parse_config
from geostore.errors import ConfigError

PROBE = """
import gc, json, sys
from geostore.config import parse_config
from geostore.errors import ConfigError
from geostore.runtime import gctune
config = parse_config(sys.argv[1])
gctune.apply_thresholds(config.process)
threshold = gc.get_threshold()
before = gc.get_freeze_count()
gctune.freeze_started(config.process)
print(json.dumps({"threshold": threshold, "before": before, "after": gc.get_freeze_count()}))
"""


def probe(toml: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, toml], check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_defaults_space_young_collections_and_freeze_start_up_objects() -> None:
    got = probe("")
    assert got["threshold"] == [20_000, 10, 10]
    assert got["before"] == 0
    assert isinstance(got["after"], int) and got["after"] > 1_000  # modules, classes, ...


def test_settings_from_the_file_are_applied() -> None:
    got = probe("[process]\ngc_young_threshold = 700\ngc_freeze = false\n")
    assert got["threshold"] == [700, 10, 10]
    assert got["after"] == 0


@pytest.mark.parametrize("bad", ["gc_young_threshold = 0", 'gc_freeze = "yes"'])
def test_a_threshold_of_zero_or_a_wrong_type_is_refused(bad: str) -> None:
    # 0 would switch the collector off: cycles would never be freed
    with pytest.raises(ConfigError, match=r"process\.gc_"):
        parse_config(f"[process]\n{bad}\n", "node.toml")
