"""The README's example output is what the command prints: regenerated here from the same inputs and
compared field by field ("..." in the README stands for a UID, which is new on every run)."""

import json
import re
from pathlib import Path

import pytest

from conftest import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_json_example() -> dict:
    block = re.search(r"`assess --json` prints.*?```json\n(.*?)```", README.read_text(), re.S)
    assert block, "the README lost its assess --json example"
    return json.loads(block.group(1))


def matches(example, actual, where="") -> list[str]:
    """Where ``actual`` differs from ``example``; floats to 3 decimals (CPUs differ in the last digits)."""
    if example == "...":
        return []
    if isinstance(example, dict):
        if set(example) != set(actual):
            return [f"{where}: keys {sorted(set(example) ^ set(actual))}"]
        return [m for key in example for m in matches(example[key], actual[key], f"{where}.{key}")]
    if isinstance(example, list):
        if len(example) != len(actual):
            return [f"{where}: {len(example)} items, not {len(actual)}"]
        return [m for n, (e, a) in enumerate(zip(example, actual)) for m in matches(e, a, f"{where}[{n}]")]
    if isinstance(example, float) and isinstance(actual, (int, float)):
        return [] if actual == pytest.approx(example, abs=2e-3) else [f"{where}: {example} vs {actual}"]
    return [] if example == actual else [f"{where}: {example!r} vs {actual!r}"]


def test_the_readmes_assess_json_example_is_a_real_run(tmp_path):
    assert run_cli("phantom", tmp_path / "demo", "--cases", "1").returncode == 0
    study = tmp_path / "demo" / "case000"
    result = run_cli("assess", study / "image", study / "candidates" / "auto02.dcm", "--roi", "Prostate", "--json")
    assert result.returncode == 0, result.stderr
    assert matches(readme_json_example(), json.loads(result.stdout)) == []


def test_the_comparison_sees_a_changed_value():
    example = {"a": [{"b": 0.5, "uid": "..."}], "c": "x"}
    assert matches(example, {"a": [{"b": 0.5004, "uid": "1.2.3"}], "c": "x"}) == []
    assert matches(example, {"a": [{"b": 0.51, "uid": "1.2.3"}], "c": "x"}) == [".a[0].b: 0.5 vs 0.51"]
    assert matches(example, {"a": [], "c": "x"}) == [".a: 1 items, not 0"]
