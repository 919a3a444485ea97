"""The warehouse: opening it, its numbered migrations, and the lock publishing takes.

Two backends sit behind the one query layer (DESIGN.md section 5, *Warehouse backends*):

* A DuckDB file (the default). DuckDB lets one process write a database file at a time, and a
  reader in another process blocks writers. So connections here are short, and a lock held by
  someone else is reported at once with what to do about it.
* DuckLake (``ducklake:postgres:<libpq connection string>``): the catalog in Postgres, the data
  as Parquet under a data path (a folder or an object-store URL). Any number of processes read
  and write at once (DuckLake commits optimistically), so readers never block a sync; publishing
  stays one at a time through a Postgres advisory lock (`Warehouse.publish_lock`).

The DuckDB extensions DuckLake needs are loaded offline from their PyPI packages
(``duckdb-extension-ducklake``, ``duckdb-extension-postgres``). The statements run on the
warehouse live in `pendo_assets.queries`.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import re
import sys
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
    "DUCKLAKE_PREFIX",
    "Warehouse",
    "apply_migrations",
    "memory_limit",
    "redact_target",
    "return_freed_memory",
    "warehouse_from_env",
]

log = logging.getLogger(__name__)

DEFAULT_WAREHOUSE = "data/warehouse.duckdb"
DUCKLAKE_PREFIX = "ducklake:postgres:"
# The name the DuckLake catalog is attached under (what `USE` selects).
LAKE = "lake"
# The extensions DuckLake needs: DuckDB's name for each, and the PyPI package shipping it.
_EXTENSIONS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres_scanner": "duckdb_extension_postgres",
}
# pg_advisory_lock key of the publish step: 'pendo-planhat publish' hashed once, a constant.
PUBLISH_LOCK_KEY = 7_205_913_446_213_551_013
_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")

_LOCK_PID = re.compile(r"PID (\d+)")
# One migration at a time in this process: two connections to one file must not both create.
_migrate_lock = threading.Lock()


def warehouse_from_env(environ: Mapping[str, str] | None = None) -> Warehouse:
    """The warehouse named by ``PENDO_PLANHAT_WAREHOUSE`` (default ``data/warehouse.duckdb``)
    and, for DuckLake, ``PENDO_PLANHAT_DATA_PATH``.

    Args:
        environ: Environment to read; defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    return Warehouse(
        env.get("PENDO_PLANHAT_WAREHOUSE") or DEFAULT_WAREHOUSE,
        data_path=env.get("PENDO_PLANHAT_DATA_PATH") or None,
    )


def redact_target(target: str) -> str:
    """``target`` with any password in its libpq connection string replaced by ``***``."""
    return _URI_PASSWORD.sub(r"\1***@", _PASSWORD.sub(r"\1***", target))


class Warehouse:
    """The warehouse, with migrations applied on every read-write connect.

    Args:
        path: A DuckDB file (its directory is created on demand), or a DuckLake URL
            ``ducklake:postgres:<libpq connection string>``.
        data_path: DuckLake only: the folder or object-store URL (``s3://…``) of its Parquet
            files. Required the first time the catalog is created; afterwards the catalog
            remembers it.
        lock_wait: Seconds to keep retrying while another process holds the DuckDB file before
            raising `WarehouseLockedError`. Short on purpose: a user with the DuckDB CLI open
            should hear about it now, not after minutes of silent waiting.
    """

    def __init__(
        self, path: str | Path, *, data_path: str | None = None, lock_wait: float = 3.0
    ) -> None:
        self.target = str(path)
        self.is_lake = self.target.startswith(DUCKLAKE_PREFIX)
        #: The DuckDB file; for DuckLake, the local folder of exports and staging.
        self.path = Path(path) if not self.is_lake else _local_dir(data_path) / "ducklake"
        self.data_path = data_path
        self.lock_wait = lock_wait

    def __repr__(self) -> str:
        return f"Warehouse({redact_target(self.target)!r})"

    @property
    def local_dir(self) -> Path:
        """The local folder beside the warehouse: ``exports/`` and ``staging/`` live in it (the
        DuckDB file's folder; for DuckLake the parent of a local data path, else ``data``)."""
        return self.path.parent

    def with_lock_wait(self, lock_wait: float) -> Warehouse:
        """The same warehouse, waiting ``lock_wait`` seconds for a held file."""
        return Warehouse(self.target, data_path=self.data_path, lock_wait=lock_wait)

    @contextmanager
    def publish_lock(self, *, poll: float = 0.2) -> Iterator[None]:
        """Hold the warehouse's publish lock: one publisher at a time, across machines.

        A DuckDB file has one writer anyway, so this is a no-op there. On DuckLake it is a
        Postgres advisory lock on the catalog's database, held by a connection of its own for
        as long as the block runs; Postgres drops it when that connection ends, also when the
        process is killed. Waits (polling every ``poll`` seconds) while another publisher holds
        it.
        """
        if not self.is_lake:
            yield
            return
        base = self._lake_instance(read_only=False)
        with _lakes_lock:
            if (id(base), "pg") not in _attached:
                catalog = self.target[len(DUCKLAKE_PREFIX) :]
                try:
                    queries.attach_postgres(base, name=_LOCK_DB, dsn=catalog)
                except duckdb.Error as exc:
                    raise self._error(exc) from exc
                _attached.add((id(base), "pg"))
        conn = base.cursor()
        try:
            waited = False
            while not queries.try_advisory_lock(conn, db=_LOCK_DB, key=PUBLISH_LOCK_KEY):
                if not waited:
                    log.info("waiting for the publish lock: another publisher is sending")
                    waited = True
                time.sleep(poll)
            try:
                yield
            finally:
                queries.release_advisory_lock(conn)
        finally:
            conn.close()

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
        if self.is_lake:
            # A connection of the process's DuckLake instance (migrated when it was made).
            conn = self._lake_instance(read_only=read_only).cursor()
            try:
                queries.use_catalog(conn, name=LAKE)
                yield conn
            finally:
                conn.close()
            return
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
        return_freed_memory()
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

    def _lake_instance(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        """The process's DuckDB instance with this DuckLake attached, made on first use.

        Loading the extensions and attaching the catalog take most of a second, so they are
        done once per process; every `connect` is then a cursor of the instance (its own
        connection, with its own transactions, seeing every commit of other processes).
        """
        key = (os.getpid(), self.target, self.data_path, read_only)
        with _lakes_lock:
            base = _lakes.get(key)
            if base is not None:
                return base
            return_freed_memory()
            base = duckdb.connect(config={**_CONFIG, "memory_limit": memory_limit()})
            try:
                data_path = self.data_path
                _load_extensions(base, data_path=data_path)
                if data_path and "://" not in data_path and not read_only:
                    Path(data_path).mkdir(parents=True, exist_ok=True)
                queries.attach_ducklake(
                    base, name=LAKE, url=self.target, data_path=data_path, read_only=read_only
                )
                if not read_only:
                    _migrate_concurrently(base)
            except duckdb.Error as exc:
                base.close()
                raise self._error(exc) from exc
            except BaseException:
                base.close()
                raise
            _lakes[key] = base
            return base

    def _error(self, exc: BaseException) -> WarehouseError:
        where = redact_target(self.target)
        message = f"cannot open the warehouse {where}: {redact_target(str(exc))}"
        return WarehouseError(message, path=where)


_lakes: dict[tuple[int, str, str | None, bool], duckdb.DuckDBPyConnection] = {}
_attached: set[tuple[int, str]] = set()
_lakes_lock = threading.Lock()
# The catalog's Postgres database, attached (instance-wide) for the publish lock.
_LOCK_DB = "publish_lock_db"


def _migrate_concurrently(conn: duckdb.DuckDBPyConnection, *, attempts: int = 5) -> None:
    """`apply_migrations` where other processes may be migrating the same DuckLake: a commit
    that conflicts with theirs is rolled back, and the versions are read again."""
    for attempt in range(attempts):
        try:
            apply_migrations(conn)
            return
        except duckdb.TransactionException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


# No extension is ever downloaded: the ones DuckLake needs come from their PyPI packages.
_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def _local_dir(data_path: str | None) -> Path:
    if data_path and "://" not in data_path:
        return Path(data_path).parent
    return Path(DEFAULT_WAREHOUSE).parent


def _load_extensions(conn: duckdb.DuckDBPyConnection, *, data_path: str | None) -> None:
    """Install (once per machine, from the PyPI packages' files) and load DuckLake's
    extensions, and ``httpfs`` (package ``duckdb-extension-httpfs``) for an object-store data
    path."""
    installed = queries.installed_extensions(conn)
    wanted = dict(_EXTENSIONS)
    if data_path and "://" in data_path:
        wanted["httpfs"] = "duckdb_extension_httpfs"
    for name, package in wanted.items():
        if name not in installed:
            queries.install_extension(conn, path=_extension_file(package))
        queries.load_extension(conn, name=name)


def _extension_file(package: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WarehouseError(
            f"the DuckLake backend needs the Python package {package.replace('_', '-')} "
            f"(built for duckdb {duckdb.__version__})",
            path=package,
        ) from exc
    folder = Path(str(resources.files(module))) / "extensions" / f"v{duckdb.__version__}"
    files = sorted(folder.glob("*.duckdb_extension"))
    if not files:
        raise WarehouseError(
            f"{package.replace('_', '-')} has no build for duckdb {duckdb.__version__}: install "
            "the version matching duckdb",
            path=str(folder),
        )
    return files[0]


#: DuckDB's own memory (its page cache and operators) per process; beyond it DuckDB spills to
#: disk. DuckDB's default, 80 % of RAM, lets the page cache grow with every day a run touches.
DEFAULT_MEMORY_LIMIT = "512MiB"


def memory_limit() -> str:
    """``PENDO_PLANHAT_DUCKDB_MEMORY_LIMIT`` (DuckDB's syntax: ``512MiB``, ``2GiB``), or the default."""
    return os.environ.get("PENDO_PLANHAT_DUCKDB_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT


#: Allocations from this size up get a mapping of their own from glibc's malloc, unmapped when
#: freed (glibc's parameter ``M_MMAP_THRESHOLD``, -3 in ``malloc.h``).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3


@cache
def return_freed_memory() -> bool:
    """Make glibc's malloc give large freed blocks back to the system (once per process).

    glibc maps each block of 128 KiB or more on its own, but every such block freed raises that
    threshold to the block's size, up to 32 MiB: after a freed Pendo page body (the bytes of a
    day's short last page, ~25 MB) DuckDB's buffers of 1 to 16 MB (its Arrow results, column
    checkpoints), allocated by its worker threads, come out of per-thread malloc arenas, which
    keep the memory once the buffers are freed. A run over 10 days of 1M rows then held 400-600
    MB of freed memory from its first days on (peak RSS 1.4 GB; 0.95 GB with the threshold
    fixed). A threshold set once is never raised: every
    block of `MMAP_THRESHOLD` or more is unmapped when freed. Nothing is changed when the
    environment sets ``MALLOC_MMAP_THRESHOLD_`` or the C library is not glibc.

    Returns:
        Whether the threshold was set.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own malloc
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


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
