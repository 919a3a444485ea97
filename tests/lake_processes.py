"""Processes for the DuckLake concurrency tests, each run as ``python -m tests.lake_processes``.

``publish START END GO``: one deployment's publish step. Builds the definitions from the
environment (its own ``DAGSTER_HOME``), writes ``GO.ready.<pid>``, waits until ``GO`` exists,
then runs the ``planhat_publish`` asset over the range as one Dagster run. Exit code 0 when the
run succeeded.

``read SQL``: a DuckDB session in a process of its own, as a user's: runs the statements of
``SQL`` (which loads the extensions and attaches the DuckLake) and prints each result's rows.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def publish(start: str, end: str, go: Path) -> int:
    import dagster as dg

    from pendo_assets.build import build_definitions
    from pendo_assets.config import load_config
    from pendo_assets.runner import ensure_dagster_home

    ensure_dagster_home()
    defs = build_definitions(load_config())
    job = defs.resolve_job_def("sync_job")
    instance = dg.DagsterInstance.get()
    go.with_name(f"{go.name}.ready.{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.01)
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("planhat_publish")],
        tags={
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        },
        raise_on_error=False,
    )
    return 0 if result.success else 1


def read(sql: str) -> int:
    import duckdb

    with duckdb.connect(config={"autoinstall_known_extensions": False}) as conn:
        for statement in conn.extract_statements(sql):
            result = conn.execute(statement)
            if result.description:
                print(result.fetchall())
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "publish":
        sys.exit(publish(args[0], args[1], Path(args[2])))
    sys.exit(read(args[0]))
