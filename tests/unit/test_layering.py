"""Proves the layer rules of the package hold, that every module imports on its own,
and that the layering checker itself catches each kind of violation."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.layering import all_modules, check_tree

ROOT = Path(__file__).resolve().parents[2]


def test_package_follows_layer_rules() -> None:
    violations = check_tree(ROOT)
    assert not violations, "\n".join(map(str, violations))


def test_every_module_imports_alone() -> None:
    modules = all_modules(ROOT)
    assert "geostore.cli.main" in modules

    def try_import(name: str) -> tuple[str, int, str]:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        return name, proc.returncode, proc.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [r for r in pool.map(try_import, modules) if r[1] != 0]
    assert not failures, "\n".join(f"{n}: {err}" for n, _, err in failures)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        (
            "geostore/raft/core.py",
            "from geostore.runtime import x\n",
            "must not import geostore.runtime",
        ),
        ("geostore/raft/core.py", "import asyncio\n", "must not import asyncio"),
        ("geostore/store/core.py", "import time\n", "must not import time"),
        ("geostore/geo/core.py", "import random\nrandom.random()\n", "module-level random"),
        ("geostore/codec/x.py", "from random import randint\n", "random.Random instance"),
        (
            "geostore/sim/x.py",
            "import geostore.runtime.server\n",
            "must not import geostore.runtime",
        ),
        ("geostore/runtime/x.py", "from geostore import sim\n", "must not import geostore.sim"),
        (
            "geostore/client/x.py",
            "from geostore.store import q\n",
            "must not import geostore.store",
        ),
        ("geostore/node/x.py", "import aiohttp\n", "must not import aiohttp"),
        (
            "netem/x.py",
            "from geostore.runtime import y\n",
            "netem must not import geostore.runtime",
        ),
    ],
)
def test_checker_catches_violation(tmp_path: Path, rel: str, source: str, expected: str) -> None:
    root = _tree(tmp_path, {"geostore/__init__.py": "", "netem/__init__.py": "", rel: source})
    violations = check_tree(root)
    assert any(expected in str(v) for v in violations), violations


def test_checker_accepts_legal_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "geostore/__init__.py": "",
            "netem/__init__.py": "import asyncio\nfrom geostore.config import t\n",
            "geostore/raft/core.py": "import random\nfrom geostore.ids import Term\nr: random.Random\n",
            "geostore/runtime/x.py": "import asyncio\nfrom geostore.node import n\n",
            "geostore/cli/x.py": "from geostore.runtime import x\nfrom geostore.sim import y\n",
        },
    )
    assert check_tree(root) == []
