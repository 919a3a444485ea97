"""Shared fixtures. Tests never reach the internet: HTTP goes to the sandbox on loopback or to
``httpx.MockTransport``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from pendo_assets.warehouse import Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """A fresh warehouse file under ``tmp_path``."""
    return Warehouse(tmp_path / "warehouse.duckdb")


@pytest.fixture
def conn(warehouse: Warehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    """An open connection to a fresh, migrated warehouse."""
    with warehouse.connect() as c:
        yield c
