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
# issue 22: 26 -> 4 (family objects, models/families.py). The 4 left are formats/style.py, which sits below
# models/ in the layer order and maps a folder's config.json model_type to its chat format itself.
BASELINE = 4


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


def test_every_model_type_has_one_family():
    from types import SimpleNamespace as Config  # family_of reads only model_type

    from mlxseek.errors import ConfigError
    from mlxseek.models import FAMILIES, MODEL_CLASSES, family_of

    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types)) and set(types) == set(MODEL_CLASSES)
    for f in FAMILIES:
        for t in f.model_types:
            assert family_of(Config(model_type=t)) is f
    try:
        family_of(Config(model_type="llama"))
    except ConfigError as e:
        assert e.field == "model_type" and "llama" in str(e)
    else:
        raise AssertionError("an unknown model_type has no family")


def test_family_branches_do_not_grow():
    counts = family_branches()
    print(f"{sum(counts.values())} family branches outside models/: {dict(counts)}")
    assert sum(counts.values()) <= BASELINE, dict(counts)


def test_a_checkpoint_carries_only_its_familys_drafters():
    import mlxseek
    from conftest import FIXTURES
    from mlxseek.models import family_of

    seen = set()
    for name in ("v3", "v32", "v4_flash", "trained_dspark"):
        model = mlxseek.load(FIXTURES / name, dtype="float32", tokenizer=False)[0]
        fam = family_of(model.config)
        assert set(model.drafters) <= set(fam.drafters), (name, model.drafters, fam.name)
        seen |= set(model.drafters)
    assert seen == {"mtp", "dspark"}  # the fixtures exercise both drafters
