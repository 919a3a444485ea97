"""The README's two Quick start commands, run from a clean clone as a newcomer would."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block, "the Quick start section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_exactly_two_commands():
    assert quickstart_lines() == ["make demo", "make test"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a fresh venv, a 90-day demo and a test run: past the suite's 600 s
def test_quickstart_commands_work_from_a_clean_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PENDO_", "PLANHAT_", "DAGSTER_", "VIRTUAL_ENV", "PYTEST_"))
    }
    demo, test = quickstart_lines()

    result = subprocess.run(
        demo, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "this matches the sandbox's ground truth" in result.stdout
    assert "0 activity and 0 metric items sent" in result.stdout
    assert (clone / "data" / "demo" / "exports" / "unmatched_visitors.parquet").exists()

    # The README's test command from the clean clone: its own venv, install, pytest and exit
    # code. Narrowed to two quick files: the outer run already runs everything, and running
    # this test again inside would recurse forever.
    env["PYTEST_ARGS"] = "-q tests/test_transforms.py tests/test_defs.py"
    result = subprocess.run(
        test, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
