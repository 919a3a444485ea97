"""The DuckDB warehouse: connection, migrations, and the few write patterns the assets use.

DuckDB lets one process write a database file at a time, and a reader in another process
blocks writers. So connections here are short, a lock held by someone else is reported at
once with what to do about it, and every partition write replaces its days in one transaction.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias

import duckdb
import polars as pl
import pyarrow as pa

from .errors import WarehouseError, WarehouseLockedError

__all__ = [
    "DEFAULT_WAREHOUSE",
    "EXPORTED_VIEWS",
    "Warehouse",
    "apply_migrations",
    "export_views",
    "insert_frame",
    "replace_days",
    "replace_days_in_transaction",
    "transaction",
    "warehouse_path_from_env",
]

log = logging.getLogger(__name__)

DEFAULT_WAREHOUSE = "data/warehouse.duckdb"

# Views exported as Parquet after each run, so they can be queried without the warehouse lock.
EXPORTED_VIEWS = (
    "unmatched_visitors",
    "unmatched_accounts",
    "batches_in_doubt",
    "activity_drift",
    "sent_activities",
    "sent_metrics",
)

_LOCK_PID = re.compile(r"PID (\d+)")
# Table and view names are package constants; anything else is refused before it reaches SQL.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def warehouse_path_from_env(environ: dict[str, str] | None = None) -> Path:
    """The warehouse path: ``PENDO_PLANHAT_WAREHOUSE`` or ``data/warehouse.duckdb``.

    Args:
        environ: Environment to read; defaults to ``os.environ``.

    Returns:
        The path, relative paths taken from the working directory.
    """
    import os

    env = os.environ if environ is None else environ
    return Path(env.get("PENDO_PLANHAT_WAREHOUSE") or DEFAULT_WAREHOUSE)


class Warehouse:
    """A DuckDB warehouse file with migrations applied on first connect.

    Args:
        path: The database file; its directory is created on demand.
        lock_wait: Seconds to keep retrying while another process holds the file before
            raising `WarehouseLockedError`. Short on purpose: a user with the DuckDB CLI open
            should hear about it now, not after minutes of silent waiting.
    """

    def __init__(self, path: str | Path, *, lock_wait: float = 3.0) -> None:
        self.path = Path(path)
        self.lock_wait = lock_wait

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the warehouse, apply pending migrations, and close it on exit.

        Args:
            read_only: Open without the write lock (fails while a writer holds the file).

        Yields:
            An open DuckDB connection.

        Raises:
            WarehouseLockedError: Another process holds the file.
            WarehouseError: The file cannot be opened for another reason.
        """
        conn = self._open(read_only=read_only)
        try:
            if not read_only:
                key = str(self.path.resolve())
                with _migrate_lock:
                    if key not in _migrated:
                        apply_migrations(conn)
                        _migrated.add(key)
            yield conn
        finally:
            conn.close()

    def _open(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:
                text = str(exc)
                if "lock" not in text.lower():
                    raise WarehouseError(f"cannot open the warehouse {self.path}: {text}") from exc
                if time.monotonic() >= deadline:
                    pid = _LOCK_PID.search(text)
                    holder = f" (process {pid.group(1)})" if pid else ""
                    raise WarehouseLockedError(
                        f"the warehouse {self.path} is open in another process{holder}. "
                        "DuckDB allows one writer per file: close that session (for example quit "
                        "the duckdb CLI or a notebook holding it) and run again. For ad-hoc SQL "
                        "while runs write, query the Parquet exports in data/exports/ instead."
                    ) from exc
                time.sleep(0.2)


def _migration_files() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("pendo_assets.sql").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def apply_migrations(conn: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply the numbered migrations in ``pendo_assets/sql`` that are not yet recorded.

    Each migration runs in its own transaction and is recorded in ``_migrations``, so running
    this again is a no-op.

    Args:
        conn: An open read-write connection.

    Returns:
        The versions applied by this call.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM _migrations").fetchall()}
    applied: list[int] = []
    for version, name, sql in _migration_files():
        if version in done:
            continue
        with transaction(conn):
            conn.execute(sql)
            conn.execute(
                "INSERT INTO _migrations VALUES (?, ?, current_timestamp)", [version, name]
            )
        applied.append(version)
        log.info("applied warehouse migration %s", name)
    return applied


Frame: TypeAlias = pl.DataFrame | pa.Table


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``BEGIN`` on entry, ``COMMIT`` on a clean exit, ``ROLLBACK`` on any exception.

    Args:
        conn: An open connection, not already inside a transaction.

    Yields:
        The same connection.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert_frame(conn: duckdb.DuckDBPyConnection, table: str, frame: Frame) -> int:
    """Insert a Polars or Arrow frame into ``table`` by column name.

    Args:
        conn: An open connection (inside the caller's transaction, if any).
        table: Target table; a trusted identifier from this package, never user input.
        frame: Rows to insert; columns are matched by name.

    Returns:
        The number of rows inserted.
    """
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


def replace_days(
    conn: duckdb.DuckDBPyConnection,
    *,
    table: str,
    days: Sequence[date],
    frames: Sequence[Frame],
    where: str = "",
    params: Sequence[Any] = (),
) -> int:
    """Replace the rows of ``days`` in ``table`` with ``frames``, in one transaction.

    On any error the transaction is rolled back, so the previous rows of those days stay.

    Args:
        conn: An open read-write connection, not inside a transaction.
        table: Target table with a ``day`` column; a trusted identifier.
        days: The days to replace.
        frames: The new rows (may be empty: the days are then cleared).
        where: Extra SQL condition on the delete, with ``?`` placeholders (e.g. one pipeline).
        params: Values for the placeholders in ``where``.

    Returns:
        Rows inserted.
    """
    with transaction(conn):
        n = replace_days_in_transaction(
            conn, table=table, days=days, frames=frames, where=where, params=params
        )
    return n


def replace_days_in_transaction(
    conn: duckdb.DuckDBPyConnection,
    *,
    table: str,
    days: Sequence[date],
    frames: Sequence[Frame],
    where: str = "",
    params: Sequence[Any] = (),
) -> int:
    """`replace_days` for a caller that manages the transaction itself."""
    _check_identifier(table)
    if "'" in where or '"' in where or ";" in where:
        raise ValueError("where must hold ? placeholders, never quoted values")
    extra = f" AND ({where})" if where else ""
    conn.execute(
        f"DELETE FROM {table} WHERE day IN (SELECT UNNEST(?::DATE[])){extra}",
        [list(days), *params],
    )
    return sum(insert_frame(conn, table, frame) for frame in frames)


def _check_identifier(name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a table name of this package: {name!r}")


def export_views(
    conn: duckdb.DuckDBPyConnection, directory: Path, views: Sequence[str] = EXPORTED_VIEWS
) -> dict[str, int]:
    """Write each view to ``directory/<view>.parquet`` (atomically replacing the old file).

    Args:
        conn: An open connection.
        directory: Export folder, created on demand.
        views: View names (trusted identifiers).

    Returns:
        Rows written per view.
    """
    directory.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for view in views:
        _check_identifier(view)
        final = directory / f"{view}.parquet"
        tmp = directory / f".{view}.parquet.tmp"
        # The file name goes through the Python API, never into SQL text.
        conn.sql(f"SELECT * FROM {view}").write_parquet(str(tmp))
        tmp.replace(final)
        row = conn.execute(f"SELECT COUNT(*) FROM {view}").fetchone()
        counts[view] = int(row[0]) if row else 0
    return counts
