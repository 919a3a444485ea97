"""Every statement the product runs on the warehouse, each a named function, typed in and out.

Assets, checks, the runner and the CLI call these; nothing else in the package writes SQL
(``tests/test_architecture.py`` holds to that). The tables and views are created by the numbered
files in ``sql/``, which `pendo_assets.warehouse` applies with `apply_migration` when it opens
the file. Every transaction goes through `transaction`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal, TypeAlias

import duckdb
import polars as pl
import pyarrow as pa

from ..models import FEATURE_EVENTS, EventSource

__all__ = [
    "EXPORTED_VIEWS",
    "BatchStatus",
    "Frame",
    "activity_drift_totals",
    "applied_migrations",
    "apply_migration",
    "attach_ducklake",
    "attach_postgres",
    "count_batches_in_doubt",
    "count_metric_drift",
    "delete_feature_actions",
    "delete_pipeline_day",
    "delete_raw_events_day",
    "duckdb_setting",
    "export_views",
    "feature_action_names",
    "for_ducklake",
    "insert_batch",
    "insert_creations",
    "insert_frame",
    "insert_quarantined_events",
    "insert_raw_events_stream",
    "install_extension",
    "installed_extensions",
    "is_ducklake",
    "load_extension",
    "mark_batch",
    "match_totals",
    "metric_drift_keys",
    "metric_drift_span",
    "quarantined_visitor_id_rows",
    "record_item_errors",
    "record_landed_day",
    "rejected_items_of_run",
    "release_advisory_lock",
    "replace_days",
    "replace_metric_readback",
    "replace_planhat_objects",
    "replace_planned_end_users",
    "replace_visitors",
    "resolve_batch_status",
    "select_batch_status",
    "select_batches_in_doubt",
    "select_created_end_user_ids",
    "select_current_activities",
    "select_current_metrics",
    "select_events",
    "select_feature_actions",
    "select_feature_events",
    "select_held_activity_keys",
    "select_held_metric_keys",
    "select_ledger_activities",
    "select_ledger_metrics",
    "select_metric_drift",
    "select_pending_creations",
    "select_pipeline_values",
    "select_planhat_objects",
    "select_sent_metric_days",
    "select_usage_pairs",
    "select_visitor_emails",
    "select_visitors",
    "sent_per_day",
    "set_duckdb_setting",
    "settle_creations",
    "settle_interrupted_batches",
    "sync_summary",
    "transaction",
    "try_advisory_lock",
    "use_catalog",
]

Conn: TypeAlias = duckdb.DuckDBPyConnection
Frame: TypeAlias = pl.DataFrame | pa.Table

# Views exported as Parquet after each run, so they can be queried without the warehouse lock.
EXPORTED_VIEWS = (
    "unmatched_visitors",
    "unmatched_accounts",
    "batches_in_doubt",
    "activity_drift",
    "sent_activities",
    "sent_metrics",
    "metric_drift",
)
# Table and view names are package constants; anything else is refused before it reaches SQL.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
BatchStatus = Literal[
    "prepared",
    "sending",
    "delivered",
    "failed",
    "discarded",
    "in_doubt",
    "resolved_delivered",
    "resolved_resend",
]

_IN_DAYS = "day IN (SELECT UNNEST(?::DATE[]))"


def _scalar(conn: Conn, sql: str, params: Sequence[object] = ()) -> int | float:
    row = conn.execute(sql, list(params)).fetchone()
    return row[0] if row and row[0] is not None else 0


# Transactions, generic writes, migrations and exports


@contextmanager
def transaction(conn: Conn) -> Iterator[Conn]:
    """``BEGIN`` on entry, ``COMMIT`` on a clean exit, ``ROLLBACK`` on any exception; every
    transaction of the product goes through here (``conn`` must not be in one already)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert_frame(conn: Conn, table: str, frame: Frame) -> int:
    """Insert a Polars or Arrow frame into ``table`` (a name of this package, never user input)
    by column name; returns the rows inserted."""
    _check_identifier(table)
    rows = frame.height if isinstance(frame, pl.DataFrame) else int(frame.num_rows)
    if rows == 0:
        return 0
    conn.register("_insert_frame", frame)
    try:
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _insert_frame")
    finally:
        conn.unregister("_insert_frame")
    return rows


def replace_days(conn: Conn, *, days: Sequence[date], frames: Mapping[str, Sequence[Frame]]) -> int:
    """Replace the rows of ``days`` in each table of ``frames`` with its frames (none: the days
    are cleared), all in one transaction, so on any error every table keeps its previous rows;
    returns the rows inserted."""
    with transaction(conn):
        for table in frames:
            _check_identifier(table)
            conn.execute(f"DELETE FROM {table} WHERE {_IN_DAYS}", [list(days)])
        return sum(
            insert_frame(conn, t, f) for t, table_frames in frames.items() for f in table_frames
        )


def _check_identifier(name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a table name of this package: {name!r}")


def applied_migrations(conn: Conn) -> set[int]:
    """The versions recorded in ``_migrations`` (the table is created when missing)."""
    ddl = (
        "CREATE TABLE IF NOT EXISTS _migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    conn.execute(for_ducklake(ddl) if is_ducklake(conn) else ddl)
    return {row[0] for row in conn.execute("SELECT version FROM _migrations").fetchall()}


def apply_migration(conn: Conn, *, version: int, name: str, sql: str) -> None:
    """Run one migration's DDL and record it, in one transaction (on DuckLake, as
    `for_ducklake` rewrites it)."""
    with transaction(conn):
        conn.execute(for_ducklake(sql) if is_ducklake(conn) else sql)
        conn.execute("INSERT INTO _migrations VALUES (?, ?, current_timestamp)", [version, name])


_TABLE_KEY = re.compile(r",\s*PRIMARY KEY\s*\([^)]*\)", re.IGNORECASE)
_COLUMN_KEY = re.compile(r"\s+PRIMARY KEY\b", re.IGNORECASE)
_SEQUENCE = re.compile(r"^\s*CREATE SEQUENCE\b[^;]*;", re.IGNORECASE | re.MULTILINE)
_BOOLEAN_DEFAULT = re.compile(r"\bDEFAULT\s+(true|false)\b", re.IGNORECASE)


def for_ducklake(sql: str) -> str:
    """A migration's DDL as DuckLake takes it: DuckLake has no PRIMARY KEY or UNIQUE
    constraint and no sequence, so keys become NOT NULL columns (the code keeps them unique:
    delete then insert, batch ids under the publish lock) and sequences are dropped (none is
    used); ``ADD COLUMN … DEFAULT false`` takes only a literal, so ``'false'``."""
    sql = _BOOLEAN_DEFAULT.sub(lambda m: f"DEFAULT '{m.group(1).lower()}'", sql)
    sql = _TABLE_KEY.sub("", sql)
    sql = _COLUMN_KEY.sub(" NOT NULL", sql)
    return _SEQUENCE.sub("", sql)


def is_ducklake(conn: Conn) -> bool:
    """Whether the connection's current catalog is a DuckLake."""
    row = conn.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return row is not None and row[0] == "ducklake"


# Opening a DuckLake, and the publish lock


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def installed_extensions(conn: Conn) -> set[str]:
    """Names of the DuckDB extensions installed on this machine (for this DuckDB version)."""
    rows = conn.execute("SELECT extension_name FROM duckdb_extensions() WHERE installed").fetchall()
    return {name for (name,) in rows}


def install_extension(conn: Conn, *, path: Path) -> None:
    """``INSTALL`` an extension from a local file (never from the network)."""
    conn.execute(f"INSTALL {_literal(str(path))}")


def load_extension(conn: Conn, *, name: str) -> None:
    """``LOAD`` an installed extension."""
    _check_identifier(name)
    conn.execute(f"LOAD {name}")


def attach_ducklake(
    conn: Conn, *, name: str, url: str, data_path: str | None, read_only: bool
) -> None:
    """Attach the DuckLake ``url`` (``ducklake:postgres:…``) as ``name`` and make it current."""
    _check_identifier(name)
    options = []
    if data_path:
        options.append(f"DATA_PATH {_literal(data_path)}")
    if read_only:
        options.append("READ_ONLY")
    suffix = f" ({', '.join(options)})" if options else ""
    conn.execute(f"ATTACH {_literal(url)} AS {name}{suffix}")
    conn.execute(f"USE {name}")


def use_catalog(conn: Conn, *, name: str) -> None:
    """Make the attached catalog ``name`` the connection's default (``USE``)."""
    _check_identifier(name)
    conn.execute(f"USE {name}")


def attach_postgres(conn: Conn, *, name: str, dsn: str) -> None:
    """Attach the Postgres database of libpq connection string ``dsn`` as ``name``."""
    _check_identifier(name)
    conn.execute(f"ATTACH {_literal(dsn)} AS {name} (TYPE postgres)")


def try_advisory_lock(conn: Conn, *, db: str, key: int) -> bool:
    """Try to take the transaction-level advisory lock ``key`` in the attached Postgres ``db``.

    On success the transaction stays open (the lock with it) until `release_advisory_lock`;
    otherwise nothing is left open.
    """
    _check_identifier(db)
    conn.execute("BEGIN TRANSACTION")
    row = conn.execute(
        "SELECT * FROM postgres_query(?, ?)",
        [db, f"SELECT pg_try_advisory_xact_lock({int(key)}) AS got"],
    ).fetchone()
    if row is not None and row[0]:
        return True
    conn.execute("ROLLBACK")
    return False


def release_advisory_lock(conn: Conn) -> None:
    """End the transaction holding an advisory lock, which releases it."""
    conn.execute("ROLLBACK")


def export_views(
    conn: Conn, directory: Path, views: Sequence[str] = EXPORTED_VIEWS
) -> dict[str, int]:
    """Write each view to ``directory/<view>.parquet`` (created on demand, the old file replaced
    atomically); returns the rows written per view."""
    directory.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for view in views:
        _check_identifier(view)
        final = directory / f"{view}.parquet"
        tmp = directory / f".{view}.parquet.tmp"
        # The file name goes through the Python API, never into SQL text.
        conn.sql(f"SELECT * FROM {view}").write_parquet(str(tmp))
        tmp.replace(final)
        counts[view] = int(_scalar(conn, f"SELECT COUNT(*) FROM {view}"))
    return counts


# Landing


def delete_raw_events_day(conn: Conn, *, source: EventSource, day: date) -> None:
    """Delete one day of ``source``'s raw and quarantined events (in the caller's transaction).

    ``day = ?`` rather than a list of days lets DuckDB skip row groups of other days.
    """
    for table in (source.raw_table, source.quarantine_table):
        _check_identifier(table)
        conn.execute(f"DELETE FROM {table} WHERE day = ?", [day])


def insert_raw_events_stream(
    conn: Conn, *, source: EventSource, view: str, day: date, now: datetime
) -> None:
    """Insert the decoded rows registered as ``view`` (an Arrow stream) into ``source``'s raw
    table."""
    table = source.raw_table
    _check_identifier(table)
    conn.execute(
        f"INSERT INTO {table} BY NAME "
        f"SELECT ?::DATE AS day, *, ?::TIMESTAMP AS extracted_at FROM {view}",
        [day, now],
    )


def insert_quarantined_events(
    conn: Conn, *, source: EventSource, day: date, now: datetime, path: Path
) -> None:
    """Insert a day's rejected rows, staged as Parquet at ``path``, into ``source``'s
    quarantine."""
    table = source.quarantine_table
    _check_identifier(table)
    conn.execute(
        f"INSERT INTO {table} BY NAME "
        "SELECT ?::DATE AS day, *, ?::TIMESTAMP AS extracted_at FROM read_parquet(?)",
        [day, now, str(path)],
    )


def delete_pipeline_day(conn: Conn, *, day: date, pipeline: str) -> None:
    """Delete one pipeline's raw results, values and quarantined rows of one day."""
    for table in ("raw_pipeline_results", "pipeline_values", "quarantine_pipeline_results"):
        conn.execute(f"DELETE FROM {table} WHERE day = ? AND pipeline = ?", [day, pipeline])


def record_landed_day(
    conn: Conn,
    *,
    source: str,
    day: date,
    rows: int,
    quarantined: int,
    pages: int,
    now: datetime,
) -> None:
    """Replace the ``landed_days`` entry of a source and day (in the caller's transaction).

    Delete then insert: DuckDB's INSERT OR REPLACE (an upsert on the primary key) costs twice as
    much, once per landed (pipeline) day.
    """
    conn.execute("DELETE FROM landed_days WHERE source = ? AND day = ?", [source, day])
    conn.execute(
        "INSERT INTO landed_days VALUES (?, ?, ?, ?, ?, ?)",
        [source, day, rows, quarantined, pages, now],
    )


def duckdb_setting(conn: Conn, name: str) -> str | None:
    """The current value of a DuckDB setting, as text."""
    row = conn.execute("SELECT current_setting(?)", [name]).fetchone()
    value = None if row is None else row[0]
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def set_duckdb_setting(conn: Conn, name: str, value: str | None) -> None:
    """``SET name = value`` (``value`` a SQL literal from this package), or ``RESET`` for None."""
    if value is None:
        conn.execute(f"RESET {name}")
    else:
        conn.execute(f"SET {name} = {value}")


def feature_action_names(conn: Conn, *, source: str | None = None) -> dict[str, str]:
    """``feature_id -> action`` of the known features (of one naming ``source``, or all)."""
    if source is None:
        rows = conn.execute("SELECT feature_id, action FROM feature_actions").fetchall()
    else:
        rows = conn.execute(
            "SELECT feature_id, action FROM feature_actions WHERE source = ?", [source]
        ).fetchall()
    return dict(rows)


def delete_feature_actions(conn: Conn, *, feature_ids: Sequence[str]) -> None:
    """Forget the actions of these features (in the caller's transaction)."""
    conn.execute(
        "DELETE FROM feature_actions WHERE feature_id IN (SELECT UNNEST(?::VARCHAR[]))",
        [list(feature_ids)],
    )


# Snapshot and matching


def replace_planhat_objects(conn: Conn, objects: pl.DataFrame) -> None:
    """Replace the whole Planhat snapshot in one transaction."""
    with transaction(conn):
        conn.execute("DELETE FROM planhat_objects")
        insert_frame(conn, "planhat_objects", objects)


def select_planhat_objects(conn: Conn) -> pl.DataFrame:
    """The snapshot's objects as matching needs them."""
    return conn.execute(
        "SELECT model, object_id, external_id, email, company_external_id FROM planhat_objects"
    ).pl()


def select_feature_actions(conn: Conn, *, feature_ids: Sequence[str]) -> pl.DataFrame:
    """``feature_id, action, weight, event_source`` of the configured features (pages, track
    types)."""
    return conn.execute(
        "SELECT feature_id, action, weight, event_source FROM feature_actions "
        "WHERE feature_id IN (SELECT UNNEST(?::VARCHAR[]))",
        [list(feature_ids)],
    ).pl()


def select_feature_events(conn: Conn, *, day: date) -> pl.DataFrame:
    """One day's raw feature-event rows, with the columns matching needs."""
    return select_events(conn, source=FEATURE_EVENTS, day=day)


def select_events(
    conn: Conn, *, source: EventSource, day: date, item_ids: Sequence[str] | None = None
) -> pl.DataFrame:
    """One day's raw rows of ``source`` (of ``item_ids`` when given) with the columns matching
    needs: ``day, visitor_id, account_id, feature_id`` (the feature, page or track type id)
    ``, num_events``; from the ``activity_events`` view over the raw tables."""
    ids = None if item_ids is None else list(item_ids)
    return conn.execute(
        "SELECT day, visitor_id, account_id, item_id AS feature_id, num_events "
        "FROM activity_events WHERE event_source = ? AND day = ? "
        "AND (?::VARCHAR[] IS NULL OR item_id IN (SELECT UNNEST(?::VARCHAR[])))",
        [source.name, day, ids, ids],
    ).pl()


def select_pipeline_values(
    conn: Conn, *, days: Sequence[date], pipelines: Sequence[str]
) -> pl.DataFrame:
    """The metric values of these pipelines and days."""
    return conn.execute(
        "SELECT day, pipeline, model, id, dimension_id, value, aggregation FROM pipeline_values "
        f"WHERE {_IN_DAYS} AND pipeline IN (SELECT UNNEST(?::VARCHAR[]))",
        [list(days), list(pipelines)],
    ).pl()


# Checks


def quarantined_visitor_id_rows(conn: Conn, *, days: Sequence[date]) -> list[tuple[date, int]]:
    """Per day, the rows quarantined for a missing or bad visitorId."""
    rows = conn.execute(
        "SELECT day, COUNT(*) FROM quarantine_feature_events "
        f"WHERE {_IN_DAYS} AND reason ILIKE 'visitorId%' GROUP BY day ORDER BY day",
        [list(days)],
    ).fetchall()
    return [(d, int(n)) for d, n in rows]


def match_totals(conn: Conn, *, days: Sequence[date]) -> tuple[int, int]:
    """Events matched, and identified events not matched, over ``days``."""
    day_list = list(days)
    matched = _scalar(
        conn, f"SELECT SUM(count) FROM matched_activities WHERE {_IN_DAYS}", [day_list]
    )
    unmatched = _scalar(
        conn,
        f"SELECT SUM(num_events) FROM unmatched_visitor_rows WHERE {_IN_DAYS} "
        "AND reason <> 'anonymous'",
        [day_list],
    )
    return int(matched), int(unmatched)


def select_batches_in_doubt(conn: Conn) -> list[tuple[int, str, str | None, int, datetime, str]]:
    """``batch_id, kind, aggregation, items, sent_at, note`` of every batch in doubt."""
    return conn.execute(
        "SELECT batch_id, kind, aggregation, items, sent_at, note FROM batches_in_doubt "
        "ORDER BY batch_id"
    ).fetchall()


def count_batches_in_doubt(conn: Conn) -> int:
    """How many batches have an unknown outcome."""
    return int(_scalar(conn, "SELECT COUNT(*) FROM batches_in_doubt"))


def activity_drift_totals(conn: Conn) -> tuple[int, int]:
    """Keys in ``activity_drift`` and the events Planhat holds beyond Pendo's counts."""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(sent - source), 0) FROM activity_drift"
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@cache
def _sql_file(name: str) -> str:
    return resources.files("pendo_assets.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


# The outbox, the ledger and the metric read-back live in `.ledger`.
# Pendo's visitors and the End Users this product creates live in `.identity`.
from .identity import (  # noqa: E402
    insert_creations,
    replace_planned_end_users,
    replace_visitors,
    select_created_end_user_ids,
    select_pending_creations,
    select_usage_pairs,
    select_visitor_emails,
    select_visitors,
    settle_creations,
)
from .ledger import (  # noqa: E402
    count_metric_drift,
    insert_batch,
    mark_batch,
    metric_drift_keys,
    metric_drift_span,
    record_item_errors,
    rejected_items_of_run,
    replace_metric_readback,
    resolve_batch_status,
    select_batch_status,
    select_current_activities,
    select_current_metrics,
    select_held_activity_keys,
    select_held_metric_keys,
    select_ledger_activities,
    select_ledger_metrics,
    select_metric_drift,
    select_sent_metric_days,
    sent_per_day,
    settle_interrupted_batches,
    sync_summary,
)
