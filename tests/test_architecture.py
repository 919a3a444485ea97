"""Layering: the library layers never import Dagster, and their public surface is explicit."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pendo_assets"

DAGSTER_FREE = [
    "pendo_assets.clients",
    "pendo_assets.clients.pendo",
    "pendo_assets.clients.planhat",
    "pendo_assets.config",
    "pendo_assets.config_sources",
    "pendo_assets._config_yaml",
    "pendo_assets.delivery",
    "pendo_assets.errors",
    "pendo_assets.landing",
    "pendo_assets.models",
    "pendo_assets.queries",
    "pendo_assets.queries.ledger",
    "pendo_assets.readback",
    "pendo_assets.transforms",
    "pendo_assets.types",
    "pendo_assets.warehouse",
    "pendo_assets.sandbox",
]

WITH_ALL = [m for m in DAGSTER_FREE if m not in ("pendo_assets.sandbox",)]


def test_library_layers_never_import_dagster():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in DAGSTER_FREE)
        + "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        + "print(len(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr


@pytest.mark.parametrize("module", WITH_ALL)
def test_public_names_are_listed_in_all(module):
    mod = importlib.import_module(module)
    path = Path(mod.__file__)
    tree = ast.parse(path.read_text())
    public = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    }
    missing = public - set(mod.__all__)
    assert not missing, f"{module}: public but not in __all__: {sorted(missing)}"
    assert set(mod.__all__) <= set(dir(mod))


def test_only_the_query_layer_runs_sql():
    """Every statement lives in the `pendo_assets.queries` package (the sandbox aside)."""
    runs_sql = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sandbox" in path.parts or "queries" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"execute", "executemany", "sql", "query"}
            ):
                runs_sql.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert runs_sql == []
