"""The key reference (laminae.config.reference) and docs/CONFIG.md: every key of the core schema
and of each built-in experiment's schema has a description, every key of the default config has
a row, and the page is what the schemas and conf/ generate today."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from laminae.config import compose_config
from laminae.config.reference import REGENERATE, key_reference, render_markdown, type_text
from laminae.config.validate import config_schema
from laminae.registry import discover

ROOT = Path(__file__).resolve().parents[1]


def undescribed(node: Mapping, path: str = "") -> list[str]:
    """Every key declared under `properties` (at any depth, through anyOf branches) without a
    description."""
    missing = []
    for key, child in (node.get("properties") or {}).items():
        if not str(child.get("description", "")).strip():
            missing.append(f"{path}{key}")
        missing += undescribed(child, f"{path}{key}.")
    for branch in node.get("anyOf", ()):
        missing += undescribed(branch, path)
    return missing


def leaves(node: object, path: str = "") -> list[str]:
    if isinstance(node, Mapping) and node:
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{path}{key}.")]
    return [path.rstrip(".")]


def test_every_key_of_the_core_and_built_in_schemas_has_a_description():
    schema = config_schema(discover((), ROOT))
    assert set(schema["properties"]) >= {"model", "qkv", "adjustments", "pathlength", "rotations"}
    assert undescribed(schema) == []


def test_every_key_of_the_default_config_has_a_row():
    rows = {row.key for section in key_reference(ROOT) for row in section.rows}
    cfg = compose_config([], ROOT / "conf", discover((), ROOT))
    keys = [key for key in leaves(cfg) if not key.startswith("stimuli.categories.")]   # a free mapping
    assert [key for key in keys if key not in rows] == []


def test_the_docs_page_is_up_to_date_with_the_schemas():
    page = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert page == render_markdown(ROOT), f"docs/CONFIG.md is out of date with the schemas: run {REGENERATE}"


def test_rows_say_type_default_and_description():
    rows = {row.key: row for section in key_reference(ROOT) for row in section.rows}
    assert (rows["qkv.n_permutations"].type, rows["qkv.n_permutations"].default) == ("integer >= 0", "1000")
    assert rows["qkv.rsa_method"].type == "pearson | spearman"
    assert rows["device"].runtime and not rows["qkv.seed"].runtime
    assert rows["qkv.claims"].default.startswith("4 claims: rsa_high")
    assert "description" not in rows["plot.dpi"].description and rows["plot.dpi"].description
    assert type_text({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}) == "number in (0, 1)"


def test_the_command_line_lists_an_external_experiment_too():
    result = subprocess.run([sys.executable, "-m", "laminae.config", "--root", str(ROOT), "model=tiny-gpt2",
                             "experiment_packages=[examples]"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "anisotropy.plot.colour" in result.stdout and "qkv.n_permutations" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "laminae.config", "--root", str(ROOT), "model=gpt3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("laminae: config key 'model'"), bad.stderr
