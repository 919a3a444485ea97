"""The warehouse file: migrations on open, and the one transaction helper."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pendo_assets import queries
from pendo_assets.warehouse import Warehouse, apply_migrations

DAY = date(2026, 11, 2)


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {name for (name,) in rows}


def test_migrations_are_recorded_and_applying_them_again_is_a_no_op(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb").connect() as conn:
        versions = queries.applied_migrations(conn)
        assert versions and min(versions) == 1
        assert apply_migrations(conn) == []
        assert {"raw_feature_events", "outbox_batches", "unmatched_visitors"} <= _tables(conn)


def test_a_warehouse_deleted_and_created_again_in_one_process_is_migrated_again(
    tmp_path: Path,
) -> None:
    # Two in-process `demo` runs do this: the first warehouse is removed, a new one opened at
    # the same path. Remembering "already migrated" per path for the process left it empty.
    path = tmp_path / "w.duckdb"
    with Warehouse(path).connect() as conn:
        assert "raw_feature_events" in _tables(conn)
    path.unlink()
    with Warehouse(path).connect() as conn:
        assert "raw_feature_events" in _tables(conn)
        assert conn.execute("SELECT COUNT(*) FROM raw_feature_events").fetchone() == (0,)


def test_a_failed_transaction_leaves_the_previous_rows(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"day": [DAY], "pipeline": ["p"], "model": ["Company"], "id": ["a"]},
        schema={"day": pl.Date, "pipeline": pl.String, "model": pl.String, "id": pl.String},
    ).with_columns(reason=pl.lit("no_object"))
    with Warehouse(tmp_path / "w.duckdb").connect() as conn:
        queries.replace_days(conn, days=[DAY], frames={"unmatched_account_rows": [frame]})
        # The second table's insert fails after the first table's day was cleared.
        bad = pl.DataFrame({"day": [DAY]}, schema={"day": pl.Date})
        with pytest.raises(duckdb.Error):
            queries.replace_days(
                conn, days=[DAY], frames={"unmatched_account_rows": [], "matched_metrics": [bad]}
            )
        assert conn.execute("SELECT id FROM unmatched_account_rows").fetchall() == [("a",)]


def test_duckdb_memory_is_bounded_by_default_and_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def limit() -> str:
        with Warehouse(tmp_path / "w.duckdb").connect() as conn:
            return str(queries.duckdb_setting(conn, "memory_limit"))

    monkeypatch.delenv("PENDO_PLANHAT_DUCKDB_MEMORY_LIMIT", raising=False)
    assert limit() == "512.0 MiB"
    monkeypatch.setenv("PENDO_PLANHAT_DUCKDB_MEMORY_LIMIT", "300MB")
    assert limit() == "286.1 MiB"


def test_identity_migration_keys_the_activities_already_sent_by_their_end_user(
    tmp_path: Path,
) -> None:
    """A warehouse from before End Users were the ledger's key: what was sent is keyed by the End
    User holding the externalId now (else by the externalId), so nothing is sent twice."""
    from pendo_assets.warehouse import _migration_files

    day = date(2026, 11, 2)
    with duckdb.connect(str(tmp_path / "old.duckdb")) as conn:
        queries.applied_migrations(conn)  # creates the record of migrations
        for version, name, sql in _migration_files():
            if version < 5:
                queries.apply_migration(conn, version=version, name=name, sql=sql)
        conn.execute(
            "INSERT INTO planhat_objects (model, object_id, external_id, snapshot_at) VALUES "
            "('EndUser', 'e1', 'u1', now()), ('EndUser', 'e2', 'dup', now()), "
            "('EndUser', 'e3', 'dup', now()), ('Company', 'c1', 'gone', now())"
        )
        conn.execute(
            "INSERT INTO outbox_batches (batch_id, kind, status, items, body_bytes, created_at) "
            "VALUES (1, 'activities', 'delivered', 3, 10, now())"
        )
        conn.execute(
            "INSERT INTO outbox_activity_items (batch_id, day, external_id, action, count, "
            "weight, feature_ids) VALUES (1, ?, 'u1', 'A', 5, 1, 'f'), (1, ?, 'dup', 'A', 2, 1, "
            "'f'), (1, ?, 'gone', 'A', 1, 1, 'f')",
            [day, day, day],
        )
        conn.execute(
            "INSERT INTO matched_activities (day, external_id, action, count, weight, "
            "feature_ids) VALUES (?, 'u1', 'A', 7, 1, 'f')",
            [day],
        )
        assert apply_migrations(conn) == [5, 6]
        assert conn.execute(
            "SELECT external_id, enduser_id FROM outbox_activity_items ORDER BY ALL"
        ).fetchall() == [("dup", "extid-dup"), ("gone", "extid-gone"), ("u1", "e1")]
        assert conn.execute(
            "SELECT day, external_id, action, count, matched_by, enduser_id FROM sent_activities "
            "ORDER BY ALL"
        ).fetchall() == [
            (day, "dup", "A", 2, "externalId", "extid-dup"),
            (day, "gone", "A", 1, "externalId", "extid-gone"),
            (day, "u1", "A", 5, "externalId", "e1"),
        ]
        # The End User's count grew from 5 to 7: the difference is pending, not all of it.
        assert conn.execute(
            "SELECT external_id, count, enduser_id FROM pending_activities"
        ).fetchall() == [("u1", 2, "e1")]


def _glibc() -> bool:
    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


# A fresh process: in a long one (the test session) a 2 MiB block may come from free memory the
# heap already has, which glibc hands out whatever the threshold.
_FRESH_PROCESS = """
import ctypes, sys
from pendo_assets.warehouse import MMAP_THRESHOLD, Warehouse
with Warehouse(sys.argv[1]).connect():
    pass
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(24 << 20))
block = libc.malloc(2 * MMAP_THRESHOLD)
size_field = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
libc.free(block)
print(size_field & 0x2)  # glibc's IS_MMAPPED bit: a mapping of its own, unmapped when freed
"""


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_large_blocks_freed_go_back_to_the_system_after_a_larger_one_was_freed(
    tmp_path: Path,
) -> None:
    # glibc raised its mmap threshold to the size of each large block freed: after a freed
    # ~25 MB page body, DuckDB's buffers of a few MB stayed in malloc arenas once freed.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "w.duckdb")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.strip() == "2"
