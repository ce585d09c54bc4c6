"""The import rules between geostore's layers, as a checker usable on any source tree.

Used by tests/unit/test_layering.py on the real package, and on deliberately broken
trees to show that the checker itself can fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

#: For each layer, the geostore layers it may import. A lower layer never imports a higher one.
ALLOWED: dict[str, frozenset[str]] = {
    "ids": frozenset(),
    "errors": frozenset({"ids"}),
    "codec": frozenset({"ids", "errors"}),
    "config": frozenset({"ids", "errors"}),
    "raft": frozenset({"ids", "errors", "codec"}),
    "geo": frozenset({"ids", "errors", "codec", "config"}),
    "store": frozenset({"ids", "errors", "codec", "config"}),
    "storage": frozenset({"ids", "errors", "codec", "config", "raft"}),
    "transport": frozenset({"ids", "errors", "codec", "config", "raft", "geo"}),
    "node": frozenset(
        {"ids", "errors", "codec", "config", "raft", "geo", "store", "storage", "transport"}
    ),
    "runtime": frozenset(
        {"ids", "errors", "codec", "config", "raft", "geo", "store", "storage", "transport", "node"}
    ),
    "sim": frozenset(
        {"ids", "errors", "codec", "config", "raft", "geo", "store", "storage", "transport", "node"}
    ),
    "client": frozenset({"ids", "errors", "codec"}),
    "cli": frozenset(
        {
            "ids",
            "errors",
            "codec",
            "config",
            "raft",
            "geo",
            "store",
            "storage",
            "transport",
            "node",
            "runtime",
            "sim",
            "client",
            "cli",
        }
    ),
    # the package root (geostore/__init__.py, __main__.py)
    "": frozenset({"cli"}),
}

#: Only these layers (and the top-level netem package) may use asyncio or aiohttp.
ASYNC_LAYERS = frozenset({"transport", "runtime", "client", "cli"})
#: Pure, deterministic layers: no clock, no sockets, no threads, no global random (node is
#: the synchronous wiring the simulator runs, so it is held to the same rule).
PURE_LAYERS = frozenset({"ids", "errors", "codec", "config", "raft", "geo", "store", "node"})
ASYNC_MODULES = frozenset({"asyncio", "aiohttp", "uvloop"})
IMPURE_MODULES = frozenset({"time", "socket", "threading", "selectors", "datetime"})
#: The top-level netem package may import these geostore layers.
NETEM_ALLOWED = frozenset({"ids", "errors", "config"})


@dataclass(frozen=True, slots=True)
class Violation:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def _layer_of(root: Path, path: Path) -> str:
    rel = path.relative_to(root / "geostore")
    if len(rel.parts) == 1:
        stem = rel.stem
        return stem if stem in ALLOWED else ""
    return rel.parts[0]


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _random_calls(tree: ast.AST) -> list[int]:
    """Lines that use module-level random (``random.x`` other than ``random.Random``)."""
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            lines.append(node.lineno)
    return lines


def _check_file(root: Path, path: Path, layer: str, is_netem: bool) -> list[Violation]:
    rel = str(path.relative_to(root))
    tree = ast.parse(path.read_text(), filename=rel)
    found: list[Violation] = []
    for line, module, names in _imports(tree):
        top = module.split(".")[0]
        if top == "geostore":
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target == "" and names:
                # "from geostore import errors" names the layer in the imported names
                targets = [n for n in names if n in ALLOWED]
            else:
                targets = [target]
            allowed = NETEM_ALLOWED if is_netem else ALLOWED[layer] | {layer}
            for t in targets:
                if t and t not in allowed:
                    who = "netem" if is_netem else f"layer {layer or 'geostore'}"
                    found.append(Violation(rel, line, f"{who} must not import geostore.{t}"))
        if top in ASYNC_MODULES and not is_netem and layer not in ASYNC_LAYERS:
            found.append(Violation(rel, line, f"layer {layer} must not import {top}"))
        if not is_netem and layer in PURE_LAYERS:
            if top in IMPURE_MODULES:
                found.append(Violation(rel, line, f"pure layer {layer} must not import {top}"))
            if top == "random" and any(n != "Random" for n in names):
                found.append(
                    Violation(rel, line, f"pure layer {layer} must take a random.Random instance")
                )
    if not is_netem and layer in PURE_LAYERS:
        for line in _random_calls(tree):
            found.append(
                Violation(rel, line, f"pure layer {layer} must not use module-level random")
            )
    return found


def check_tree(root: Path) -> list[Violation]:
    """Every layering violation under ``root/geostore`` and ``root/netem``."""
    violations: list[Violation] = []
    for path in sorted((root / "geostore").rglob("*.py")):
        violations += _check_file(root, path, _layer_of(root, path), is_netem=False)
    netem = root / "netem"
    if netem.is_dir():
        for path in sorted(netem.rglob("*.py")):
            violations += _check_file(root, path, "", is_netem=True)
    return violations


def all_modules(root: Path) -> list[str]:
    """Dotted names of every module of geostore and netem."""
    names = []
    for pkg in ("geostore", "netem"):
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] == "__main__":
                continue
            names.append(".".join(parts))
    return names
