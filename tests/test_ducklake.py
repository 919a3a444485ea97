"""The DuckLake backend: a Postgres catalog and Parquet data behind the same query layer."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from importlib import resources
from pathlib import Path
from typing import IO

import duckdb
import polars as pl
import pytest

from pendo_assets import queries
from pendo_assets.errors import WarehouseError
from pendo_assets.warehouse import (
    DUCKLAKE_PREFIX,
    Warehouse,
    apply_migrations,
    redact_target,
    warehouse_from_env,
)

from .conftest import SHORT, Env, MakeEnv
from .postgres import PostgresCluster

DAY = date(2026, 11, 2)


def _relations(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()"
    ).fetchall()
    return {name for (name,) in rows}


def test_the_environment_names_the_backend(tmp_path: Path) -> None:
    file = warehouse_from_env({})
    assert not file.is_lake and file.path == Path("data/warehouse.duckdb")
    lake = warehouse_from_env(
        {
            "PENDO_PLANHAT_WAREHOUSE": "ducklake:postgres:host=db dbname=lake password=hunter2",
            "PENDO_PLANHAT_DATA_PATH": str(tmp_path / "data" / "lake"),
        }
    )
    assert lake.is_lake and lake.data_path == str(tmp_path / "data" / "lake")
    assert lake.local_dir == tmp_path / "data"  # exports/ and staging/ beside the data
    assert "hunter2" not in repr(lake)
    remote = warehouse_from_env(
        {
            "PENDO_PLANHAT_WAREHOUSE": "ducklake:postgres:postgresql://u:s3cret@db/lake",
            "PENDO_PLANHAT_DATA_PATH": "s3://bucket/lake/",
        }
    )
    assert remote.local_dir == Path("data")
    assert redact_target(remote.target) == "ducklake:postgres:postgresql://u:***@db/lake"


def test_every_migration_takes_the_ducklake_dialect() -> None:
    for entry in resources.files("pendo_assets.sql").iterdir():
        if entry.name[:3].isdigit():
            sql = queries.for_ducklake(entry.read_text(encoding="utf-8"))
            assert "PRIMARY KEY" not in sql.upper() and "SEQUENCE" not in sql.upper()
    assert queries.for_ducklake("a VARCHAR PRIMARY KEY,\n b INT,\n PRIMARY KEY (a, b)\n);") == (
        "a VARCHAR NOT NULL,\n b INT\n);"
    )
    assert queries.for_ducklake("ADD COLUMN r BOOLEAN DEFAULT false;") == (
        "ADD COLUMN r BOOLEAN DEFAULT 'false';"
    )


def test_migrations_create_every_table_and_view_on_ducklake(ducklake: Warehouse) -> None:
    with ducklake.connect() as conn:
        assert queries.is_ducklake(conn)
        assert apply_migrations(conn) == []
        lake = _relations(conn)
    with Warehouse(Path(ducklake.local_dir) / "w.duckdb").connect() as conn:
        assert not queries.is_ducklake(conn)
        file = _relations(conn)
    assert lake == file  # the same tables and views on both backends
    for view in ("unmatched_visitors", "sent_items", "item_lineage", "dry_run_diff"):
        assert view in lake


def test_the_outbox_and_ledger_work_on_ducklake(ducklake: Warehouse) -> None:
    items = pl.DataFrame(
        {
            "day": [DAY],
            "external_id": ["u1"],
            "action": ["Login"],
            "count": [3],
            "weight": [1.0],
            "company_external_id": ["c1"],
            "feature_ids": ["f1"],
        }
    )
    with ducklake.connect() as conn:
        first = queries.insert_batch(
            conn, kind="activities", aggregation=None, items=items, body_bytes=10, run_id="r"
        )
        second = queries.insert_batch(
            conn, kind="activities", aggregation=None, items=items, body_bytes=10, run_id="r"
        )
        assert (first, second) == (1, 2)
        queries.mark_batch(conn, batch_id=first, status="delivered", sent=True)
        with queries.transaction(conn):
            moved = queries.settle_interrupted_batches(
                conn, status="prepared", to="discarded", note="test"
            )
        assert moved == 1
        ledger = queries.select_ledger_activities(conn, days=[DAY])
        assert ledger.select("external_id", "sent").rows() == [("u1", 3)]
        queries.replace_days(conn, days=[DAY], frames={"matched_activities": [items]})
        assert queries.match_totals(conn, days=[DAY]) == (3, 0)


def test_a_ducklake_that_cannot_be_reached_says_so_without_the_password(tmp_path: Path) -> None:
    warehouse = Warehouse(
        DUCKLAKE_PREFIX + "host=127.0.0.1 port=1 user=x password=hunter2 connect_timeout=2",
        data_path=str(tmp_path / "lake"),
    )
    with pytest.raises(WarehouseError) as info, warehouse.connect():
        pass
    assert "cannot open the warehouse" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_an_object_store_data_path_needs_the_httpfs_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("duckdb_extension_httpfs") is not None:
        pytest.skip("duckdb-extension-httpfs is installed here")
    warehouse = Warehouse(DUCKLAKE_PREFIX + "host=127.0.0.1 port=1", data_path="s3://bucket/lake/")
    with pytest.raises(WarehouseError, match="duckdb-extension-httpfs"), warehouse.connect():
        pass


def test_the_cluster_fixture_gives_a_fresh_database_each_time(
    postgres_cluster: PostgresCluster,
) -> None:
    assert postgres_cluster.create_database() != postgres_cluster.create_database()


# --------------------------------------------------------------------------------------------
# Two deployments, one warehouse; and readers while a sync writes.

REPO = Path(__file__).resolve().parents[1]


def _process(args: list[str], **env: str) -> subprocess.Popen[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lake_processes", *args],
        env=environ,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ducklake"])
def test_two_publishers_started_at_once_never_send_a_key_twice(
    make_env: MakeEnv, tmp_path: Path
) -> None:
    env = make_env()
    # Land and match (a dry run sends nothing), so both publishers have the same work waiting.
    assert env.sync(SHORT[0], SHORT[1], dry_run=True).exit_code == 0
    assert env.analytics_requests() == 0
    go = tmp_path / "go"
    # Two deployments: each its own Dagster instance (so no shared pool), one warehouse.
    publishers = [
        _process(
            ["publish", SHORT[0].isoformat(), SHORT[1].isoformat(), str(go)],
            DAGSTER_HOME=str(tmp_path / f"dagster_{name}"),
        )
        for name in ("east", "west")
    ]
    try:
        while len(list(tmp_path.glob("go.ready.*"))) < 2:
            assert all(p.poll() is None for p in publishers), [p.communicate() for p in publishers]
            time.sleep(0.05)
        go.touch()  # both start publishing now
        outputs = [p.communicate(timeout=300)[0] for p in publishers]
    finally:
        for p in publishers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in publishers] == [0, 0], outputs

    received = env.sandbox.received.activities()
    sent_per_key = Counter((r.external_id, r.action, r.date) for r in received)
    assert sent_per_key and max(sent_per_key.values()) == 1
    assert env.sandbox.received.activity_totals() == env.truth_activities(SHORT[:2])
    assert env.received_metrics() == env.truth_metrics(SHORT[:2])
    # One publisher sent everything; the other waited for the lock and found nothing to send.
    assert len(env.sql("SELECT DISTINCT run_id FROM outbox_batches")) == 1


def _readme_reader_sql(env: Env) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    sql = next(b for b in readme.split("```sql")[1:] if "ATTACH 'ducklake:" in b).split("```")[0]
    catalog = env.warehouse.target
    return re.sub(r"'ducklake:postgres:[^']*'", "'" + catalog + "'", sql)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ducklake"])
def test_the_readme_sql_on_the_unmatched_views_runs_while_a_sync_writes(
    make_env: MakeEnv,
) -> None:
    env = make_env()
    sql = _readme_reader_sql(env)
    assert "unmatched_visitors" in sql and "unmatched_accounts" in sql
    with env.warehouse.connect():
        pass  # the catalog and its views exist; the sync below fills them
    log = env.data_dir.parent / "sync.log"
    with log.open("w") as out:
        sync = _process_sync(env, out)
        reads_during_sync = 0
        try:
            while sync.poll() is None and reads_during_sync < 2:
                reader = _process(["read", sql])
                answer = reader.communicate(timeout=120)[0]
                assert reader.returncode == 0, answer
                if sync.poll() is None:
                    reads_during_sync += 1
            assert sync.wait(timeout=300) == 0, log.read_text()
            after = _process(["read", sql])
            answer = after.communicate(timeout=120)[0]
            assert after.returncode == 0 and "no_enduser" in answer, answer
        finally:
            if sync.poll() is None:
                sync.kill()
                sync.wait()
    assert reads_during_sync >= 1  # a reader finished while the sync was still writing


def _process_sync(env: Env, out: IO[str]) -> subprocess.Popen[str]:
    argv = ["sync", "--start", SHORT[0].isoformat(), "--end", SHORT[1].isoformat()]
    return subprocess.Popen(
        [sys.executable, "-m", "pendo_assets.cli", *argv],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=env.data_dir.parent,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
