"""Model families as objects: generic code should ask the family, not test `model_type`. This counts the
places outside `models/` (and the config that defines the properties) that branch on the family: comparisons
with `model_type` or a "deepseek_*" literal, and reads of the family flags. The count may only go down;
lower BASELINE when a branch moves into a family object (issue 22's note has the per-file counts)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import mlxseek

ROOT = Path(mlxseek.__file__).parent
EXEMPT = ("models/", "config.py", "config_checks.py")
FLAGS = {"is_v4", "is_v4_family", "uses_dsa", "uses_csa2"}
BASELINE = 26  # main before issue 22: 23; +3 for V4.1 sizing (census, estimate x2) until it moves into its family


def _is_family(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "model_type" or isinstance(node, ast.Name) and \
            node.id == "model_type":
        return True
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("deepseek_v")


def family_branches() -> Counter:
    out: Counter = Counter()
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(EXEMPT):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(_is_family(n) for n in [node.left, *node.comparators]):
                out[rel] += 1
            elif isinstance(node, ast.Attribute) and node.attr in FLAGS:
                out[rel] += 1
    return out


def test_family_branches_do_not_grow():
    counts = family_branches()
    print(f"{sum(counts.values())} family branches outside models/: {dict(counts)}")
    assert sum(counts.values()) <= BASELINE, dict(counts)
