"""The documented team deployment: Dagster's instance on Postgres (``deploy/dagster-postgres.yaml``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster._core.instance.config import dagster_instance_config

REPO = Path(__file__).resolve().parents[1]
INSTANCE = REPO / "deploy" / "dagster-postgres.yaml"


def test_the_postgres_instance_file_is_valid_dagster_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    shutil.copy(INSTANCE, tmp_path / "dagster.yaml")
    # Dagster's own schema: storage, run coordinator and concurrency keys (no connection made).
    config, _ = dagster_instance_config(str(tmp_path))
    assert set(config["storage"]) == {"postgres"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 1
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_the_readme_shows_the_instance_file_as_it_is() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = next(b for b in readme.split("```yaml\n")[1:] if "postgres_db" in b).split("```")[0]
    body = "".join(
        line for line in INSTANCE.read_text().splitlines(keepends=True) if not line.startswith("#")
    )
    assert block == body
