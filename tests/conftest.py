"""Shared fixtures. Tests never reach the internet: HTTP goes to the sandbox on loopback or to
``httpx.MockTransport``.

``env`` / ``make_env`` give a sandbox, a config written for it, a fresh warehouse and a fresh
``DAGSTER_HOME``, all pointed at by the environment, and helpers comparing what the sandbox's
Planhat received with the generator's ground truth (never with what the product computed).

The warehouse is a DuckDB file unless the test is parametrized over ``backend``
(``@pytest.mark.parametrize("backend", BACKENDS)``): ``"ducklake"`` gives a DuckLake with its
catalog in a fresh database of a throwaway Postgres cluster (`tests.postgres`, one per session)
and its Parquet files under the test's folder.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pendo_assets.config import Config, load_config
from pendo_assets.queries import EXPORTED_VIEWS
from pendo_assets.runner import SyncOutcome, run_sync
from pendo_assets.sandbox import Sandbox, SandboxSpec
from pendo_assets.warehouse import DUCKLAKE_PREFIX, Warehouse

from .postgres import PostgresCluster, postgres_bin, start_cluster

START = date(2026, 10, 27)
END = date(2026, 11, 9)  # 14 days, across the end of daylight saving time in New York (Nov 1)
DAYS = [START + timedelta(days=i) for i in range((END - START).days + 1)]
# Scenarios that need no 14 days run over four, still across the DST change.
SHORT = [date(2026, 10, 30) + timedelta(days=i) for i in range(4)]

SANDBOX_NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
#: Retries in tests: few, with waits in milliseconds; a server's Retry-After (1 s) is still
#: honoured in full (it is capped by retry_max_delay_seconds only).
FAST_RETRIES = {
    "request_timeout_seconds": 1,
    "retry_attempts": 3,
    "retry_backoff_seconds": 0.01,
    "retry_max_delay_seconds": 1.5,
}

# Tallies for the closing summary of a run of the suite (faults injected, bad rows served).
FAULT_TALLY: Counter[str] = Counter()
BAD_INPUT_TALLY: Counter[str] = Counter()
KILL_REPORTS: list[str] = []  # the head of each kill-harness report that passed


#: The warehouse backends an end-to-end test can be parametrized over.
BACKENDS = ["file", "ducklake"]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway Postgres cluster for the session (skipped where Postgres is not installed,
    except in CI, where `.ci/run` installs it)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = "Postgres is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = start_cluster(bin_dir)
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def backend() -> str:
    """The warehouse backend of `make_env`: ``file`` unless the test parametrizes it (or
    ``PENDO_PLANHAT_TEST_BACKEND=ducklake`` runs every end-to-end test on DuckLake)."""
    return os.environ.get("PENDO_PLANHAT_TEST_BACKEND") or "file"


@pytest.fixture
def ducklake(postgres_cluster: PostgresCluster, tmp_path: Path) -> Warehouse:
    """A fresh DuckLake warehouse: a new catalog database, data under ``tmp_path/data/lake``."""
    return Warehouse(
        DUCKLAKE_PREFIX + postgres_cluster.create_database(),
        data_path=str(tmp_path / "data" / "lake"),
    )


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """A fresh warehouse file under ``tmp_path``."""
    return Warehouse(tmp_path / "warehouse.duckdb")


@pytest.fixture
def conn(warehouse: Warehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    """An open connection to a fresh, migrated warehouse."""
    with warehouse.connect() as c:
        yield c


@dataclass
class Env:
    sandbox: Sandbox
    config: Config
    warehouse: Warehouse
    home: Path
    config_path: Path = field(default=Path())

    @property
    def data_dir(self) -> Path:
        return self.warehouse.local_dir

    @property
    def exports(self) -> Path:
        return self.data_dir / "exports"

    def sync(self, start: date = START, end: date = END, *, dry_run: bool = False) -> SyncOutcome:
        return run_sync(config=self.config, start=start, end=end, dry_run=dry_run)

    def actions(self) -> dict[str, str]:
        """Feature -> action, from the config and the sandbox's own feature names."""
        names = {f["id"]: f["name"] for f in self.sandbox.dataset.features()}
        return {f.id: f.action or names[f.id] for f in self.config.features}

    def pipelines(self) -> list[dict[str, Any]]:
        return [
            {
                "name": p.name,
                "model": p.model,
                "id_field": p.id_field,
                "metrics": dict(p.metrics),
                "pipeline": list(p.stages),
            }
            for p in self.config.pipelines
        ]

    def truth_activities(self, days: list[date] = DAYS) -> dict[tuple[str, str, str], int]:
        return self.sandbox.dataset.truth_activities(days=days, actions=self.actions())

    def truth_metrics(self, days: list[date] = DAYS) -> dict[tuple[str, str, str, str], float]:
        return self.sandbox.dataset.truth_metrics(days=days, pipelines=self.pipelines())

    def received_metrics(self) -> dict[tuple[str, str, str, str], float]:
        """What Planhat's metric charts show per day: last value or sum, as configured."""
        agg = {dim: p.aggregation for p in self.config.pipelines for dim in p.metrics.values()}
        return {
            key: (sum(values) if agg[key[0]] == "sum" else values[-1])
            for key, values in self.sandbox.received.metric_points().items()
        }

    def analytics_requests(self) -> int:
        return len(self.sandbox.received.requests(service="planhat_analytics"))

    def sql(self, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.warehouse.connect() as conn:
            return conn.execute(query, params or []).fetchall()

    def exported(self) -> dict[str, list[tuple[Any, ...]]]:
        """The Parquet exports, read by a DuckDB that never opens the warehouse."""
        with duckdb.connect() as conn:
            return {
                view: conn.execute(
                    "SELECT * FROM read_parquet(?) ORDER BY ALL",
                    [str(self.exports / f"{view}.parquet")],
                ).fetchall()
                for view in EXPORTED_VIEWS
            }

    def views(self) -> dict[str, list[tuple[Any, ...]]]:
        """The same views, from the warehouse."""
        return {view: self.sql(f"SELECT * FROM {view} ORDER BY ALL") for view in EXPORTED_VIEWS}

    def export_stamps(self) -> dict[str, int]:
        return {v: (self.exports / f"{v}.parquet").stat().st_mtime_ns for v in EXPORTED_VIEWS}

    def reconfigure(self, **overrides: Any) -> Config:
        """Rewrite the config with top-level overrides (mappings merged), and use it."""
        self.sandbox.write_config(self.config_path, start_date=date(2026, 10, 1), **overrides)
        self.config = load_config(self.config_path)
        return self.config


MakeEnv = Callable[..., Env]


@pytest.fixture
def make_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, request: pytest.FixtureRequest
) -> Iterator[MakeEnv]:
    """Build an `Env`: ``make_env(spec=..., sync={...}, **sandbox_kwargs)``.

    ``sync`` overrides the config's ``sync:`` section; the sandbox gets ``sandbox_kwargs``
    (``pendo_key=``, ``max_analytics_body=``, ...). At most one per test. The warehouse is of
    the test's ``backend``.
    """
    sandboxes: list[Sandbox] = []

    def build(
        *,
        spec: SandboxSpec | None = None,
        sync: dict[str, Any] | None = None,
        **sandbox_kwargs: Any,
    ) -> Env:
        assert not sandboxes, "one Env per test"
        spec = spec or SandboxSpec(seed=11, n_visitors=400, n_accounts=60, rows_per_day=1200)
        sandbox = Sandbox(spec, now=SANDBOX_NOW, **sandbox_kwargs)
        sandboxes.append(sandbox)
        overrides = {"sync": sync} if sync else {}
        config_path = sandbox.write_config(
            tmp_path / "pendo_planhat.yaml", start_date=date(2026, 10, 1), **overrides
        )
        if backend == "ducklake":
            warehouse: Warehouse = request.getfixturevalue("ducklake")
            assert warehouse.data_path is not None
            monkeypatch.setenv("PENDO_PLANHAT_DATA_PATH", warehouse.data_path)
        else:
            warehouse = Warehouse(tmp_path / "data" / "warehouse.duckdb")
            monkeypatch.delenv("PENDO_PLANHAT_DATA_PATH", raising=False)
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("PENDO_PLANHAT_CONFIG", str(config_path))
        monkeypatch.setenv("PENDO_PLANHAT_WAREHOUSE", warehouse.target)
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        return Env(
            sandbox,
            load_config(config_path),
            warehouse,
            tmp_path / "dagster_home",
            config_path,
        )

    yield build
    for sandbox in sandboxes:
        for fault in sandbox.faults.history:
            if fault.fired:
                FAULT_TALLY[f"{fault.service} {fault.kind}"] += fault.fired
        for injection in sandbox.pendo_rows.history:
            if injection.served:
                BAD_INPUT_TALLY["rows injected"] += len(injection.rows)
                BAD_INPUT_TALLY["fields edited"] += sum(len(v) for v in injection.edits.values())
        sandbox.close()


@pytest.fixture
def env(make_env: MakeEnv) -> Env:
    """The default `Env` of the end-to-end tests (14 days of ~1,200 rows a day)."""
    return make_env()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on a DuckLake warehouse ``ducklake`` (``-m "not ducklake"``
    leaves them out)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_lake = callspec is not None and callspec.params.get("backend") == "ducklake"
        if on_lake or "postgres_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ducklake)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FAULT_TALLY:
        total = sum(FAULT_TALLY.values())
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(FAULT_TALLY.items()))
        terminalreporter.write_line(f"sandbox faults injected: {total} ({parts})")
    if BAD_INPUT_TALLY:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(BAD_INPUT_TALLY.items()))
        terminalreporter.write_line(f"bad Pendo input served: {parts}")
    for report in KILL_REPORTS:
        for line in report.splitlines():
            terminalreporter.write_line(line)
