"""The DuckDB warehouse file: opening it, and its numbered migrations.

DuckDB lets one process write a database file at a time, and a reader in another process
blocks writers. So connections here are short, and a lock held by someone else is reported at
once with what to do about it. The statements run on the warehouse live in `pendo_assets.queries`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path

import duckdb

from . import queries
from .errors import WarehouseError, WarehouseLockedError

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_WAREHOUSE",
    "Warehouse",
    "apply_migrations",
    "memory_limit",
    "warehouse_path_from_env",
]

log = logging.getLogger(__name__)

DEFAULT_WAREHOUSE = "data/warehouse.duckdb"

_LOCK_PID = re.compile(r"PID (\d+)")
# One migration at a time in this process: two connections to one file must not both create.
_migrate_lock = threading.Lock()


def warehouse_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """The warehouse path: ``PENDO_PLANHAT_WAREHOUSE`` or ``data/warehouse.duckdb``.

    Args:
        environ: Environment to read; defaults to ``os.environ``.

    Returns:
        The path, relative paths taken from the working directory.
    """
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
                # Checked at every open (two short statements), never remembered per path: a
                # file deleted and created again in the same process needs them again.
                with _migrate_lock:
                    apply_migrations(conn)
            yield conn
        finally:
            conn.close()

    def _open(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                return duckdb.connect(
                    str(self.path), read_only=read_only, config={"memory_limit": memory_limit()}
                )
            except duckdb.IOException as exc:
                text = str(exc)
                if "lock" not in text.lower():
                    message = f"cannot open the warehouse {self.path}: {text}"
                    raise WarehouseError(message, path=str(self.path)) from exc
                if time.monotonic() >= deadline:
                    pid = _LOCK_PID.search(text)  # DuckDB's own message: the only place it says
                    raise WarehouseLockedError(
                        path=str(self.path), pid=int(pid.group(1)) if pid else None
                    ) from exc
                time.sleep(0.2)


#: DuckDB's own memory (its page cache and operators) per process; beyond it DuckDB spills to
#: disk. DuckDB's default, 80 % of RAM, lets the page cache grow with every day a run touches.
DEFAULT_MEMORY_LIMIT = "512MB"


def memory_limit() -> str:
    """``PENDO_PLANHAT_DUCKDB_MEMORY_LIMIT`` (DuckDB's syntax: ``512MB``, ``2GB``), or the default."""
    return os.environ.get("PENDO_PLANHAT_DUCKDB_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT


@cache
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
    done = queries.applied_migrations(conn)
    applied: list[int] = []
    for version, name, sql in _migration_files():
        if version in done:
            continue
        queries.apply_migration(conn, version=version, name=name, sql=sql)
        applied.append(version)
        log.info("applied warehouse migration %s", name)
    return applied
