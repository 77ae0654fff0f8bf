"""The module levels of docs/design.md: a module imports only from levels below its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fracturekit"

LEVELS = {
    "_files": -1,
    "_alloc": -1,
    "contracts": -1,
    "progress": 0,
    "render": -1,
    "config": 0,
    "calibration": 0,
    "metrics": 1,
    "io": 0,
    "synthetic": 0,
    "width": 0,
    "localisation": 0,
    "seg_metrics": 0,
    "masks": 1,
    "tiling": 1,
    "data": 1,
    "inspection": 2,
    "models": 1,
    "train": 2,
    "explain": 2,
    "export": 2,
    "predict": 2,
    "evaluate": 3,
    "scan": 3,
    "scan_segment": 2,
    "ray_predict": 3,
    "quantize": 3,
    "report": 2,
    "demo": 4,
    "cli": 5,
    "serve": 5,
}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n.split(".")[1] for n in names if n.startswith("fracturekit.") and n.count(".") >= 1}


def test_every_module_has_a_level() -> None:
    tops = {_top(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    missing = sorted(tops - set(LEVELS))
    assert not missing, f"add these modules to LEVELS and docs/design.md: {missing}"


def test_imports_only_go_down() -> None:
    bad = []
    for path in PACKAGE.rglob("*.py"):
        top = _top(path)
        if top in ("__init__", "__main__"):
            continue
        level = LEVELS[top]
        for other in _imported(ast.parse(path.read_text(encoding="utf-8"))):
            if other == top or other not in LEVELS:
                continue
            if LEVELS[other] >= level and other != "_files":
                bad.append(f"{path.relative_to(PACKAGE)} imports {other} (level {LEVELS[other]})")
    assert not bad, "\n".join(bad)
