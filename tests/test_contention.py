"""The warehouse held open by another process (a DuckDB CLI, a notebook) while a sync runs.

DuckDB allows one writer per file, and a reader in another process blocks it. A user who left
the DuckDB CLI open must hear at once what to close, in the sync's last line, with no stack
trace and no silent wait; nothing in the warehouse may be damaged; and the Parquet exports in
``data/exports/`` must stay readable meanwhile and be refreshed after every run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pendo_assets.runner import SyncOutcome
from pendo_assets.sandbox import SandboxSpec

from .conftest import FAST_RETRIES, Env, MakeEnv

SPEC = SandboxSpec(seed=11, n_visitors=300, n_accounts=40, rows_per_day=300)
DAYS = [date(2026, 11, 2), date(2026, 11, 3)]
CLI = Path(sys.executable).parent / "pendo-planhat"
# What the product must say, whichever step meets the lock first.
LOCKED = "is open in another process (process {pid}). DuckDB allows one writer per file: close"

# A stand-in for a user's DuckDB session in another process: it opens the warehouse (after a
# "go" line on stdin when asked to wait), reads from it, says "holding", and keeps the file open
# until its stdin closes.
HOLDER = """
import sys, duckdb
path, mode, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "wait"
if wait:
    sys.stdin.readline()
conn = duckdb.connect(path, read_only=mode == "read-only")
conn.execute("SELECT COUNT(*) FROM raw_feature_events").fetchall()
print("holding", flush=True)
sys.stdin.read()
conn.close()
"""

TABLES = (
    "raw_feature_events",
    "quarantine_feature_events",
    "raw_pipeline_results",
    "pipeline_values",
    "landed_days",
    "planhat_objects",
    "matched_activities",
    "matched_metrics",
    "unmatched_visitor_rows",
    "unmatched_account_rows",
    "outbox_batches",
    "outbox_activity_items",
    "outbox_metric_items",
    "feature_actions",
)


@pytest.fixture
def cenv(make_env: MakeEnv) -> Env:
    return make_env(spec=SPEC, sync=FAST_RETRIES)


@contextmanager
def held(path: Path, mode: str, *, wait: bool = False) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the warehouse (``read-write`` or ``read-only``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode, "wait" if wait else "now"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if not wait:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def fingerprint(env: Env) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the sync writes."""
    return {t: env.sql(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}


def assert_exact(env: Env) -> None:
    assert env.sandbox.received.activity_totals() == env.truth_activities(DAYS)
    assert env.received_metrics() == env.truth_metrics(DAYS)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "how"), [("read-write", "pendo-planhat sync"), ("read-only", "run_sync")]
)
def test_a_sync_against_a_warehouse_held_elsewhere_fails_fast_and_damages_nothing(
    cenv: Env, mode: str, how: str
) -> None:
    assert cenv.sync(DAYS[0], DAYS[-1]).exit_code == 0
    before, before_views = fingerprint(cenv), cenv.views()
    assert cenv.exported() == before_views
    cenv.sandbox.dataset.revise_day(DAYS[-1], grow=True)  # a run would have something to write
    requests = len(cenv.sandbox.received.requests())

    with held(cenv.warehouse.path, mode) as holder:
        started = time.monotonic()
        if how == "run_sync":
            outcome = cenv.sync(DAYS[0], DAYS[-1])
            code, last, stderr = outcome.exit_code, outcome.last_line, ""
        else:
            result = subprocess.run(
                [str(CLI), "sync", "--start", str(DAYS[0]), "--end", str(DAYS[-1])],
                env=os.environ.copy(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            code, last, stderr = (
                result.returncode,
                result.stdout.strip().splitlines()[-1],
                result.stderr,
            )
        elapsed = time.monotonic() - started
        # Meanwhile, what did not match can still be queried, from the exports.
        assert cenv.exported() == before_views

    assert code == 1, (last, stderr)
    assert elapsed < 30  # seconds, not DuckDB's ~100 s of silent retrying
    assert last.startswith(
        f"sync failed for {DAYS[0]}..{DAYS[-1]}: the warehouse {cenv.warehouse.path} "
        + LOCKED.format(pid=holder.pid)
    ), last
    assert "data/exports/" in last
    assert "Traceback" not in stderr and "Stack Trace" not in stderr
    # Stopped before any work: nothing was read or sent, nothing written.
    assert len(cenv.sandbox.received.requests()) == requests
    assert fingerprint(cenv) == before

    again = cenv.sync(DAYS[0], DAYS[-1])
    assert again.exit_code == 0, again.last_line
    assert_exact(cenv)
    # The exports follow every run.
    assert cenv.exported() == cenv.views() != before_views


@pytest.mark.slow
def test_a_lock_taken_while_the_run_writes_fails_the_steps_it_meets_with_the_same_message(
    make_env: MakeEnv,
) -> None:
    env = make_env(spec=SPEC, sync={**FAST_RETRIES, "request_timeout_seconds": 30})
    assert env.sync(DAYS[0], DAYS[-1]).exit_code == 0
    env.sandbox.dataset.revise_day(DAYS[-1], grow=True)
    # The Planhat snapshot's first request is held up long enough for the user to open DuckDB:
    # no step holds the warehouse while it waits for HTTP.
    slow = env.sandbox.faults.add(
        service="planhat_api", path="/endusers", kind="delay", seconds=2.5
    )
    outcome: list[SyncOutcome] = []
    with held(env.warehouse.path, "read-write", wait=True) as holder:
        run = threading.Thread(target=lambda: outcome.append(env.sync(DAYS[0], DAYS[-1])))
        run.start()
        deadline = time.monotonic() + 60
        while not slow.fired and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "holding"
        run.join(timeout=120)
    assert not run.is_alive()

    (result,) = outcome
    assert result.exit_code == 1
    line = result.last_line
    assert "\n" not in line
    message = f"the warehouse {env.warehouse.path} " + LOCKED.format(pid=holder.pid)
    assert line.startswith(f"sync failed for {DAYS[0]}..{DAYS[-1]}: ")
    assert line.count(message) == 1  # said once, for every step that met the lock
    steps = line.split(": ")[1].split(", ")
    assert "planhat_snapshot" in steps

    # Nothing damaged: once the other session is gone, a run lands, matches and publishes exactly.
    again = env.sync(DAYS[0], DAYS[-1])
    assert again.exit_code == 0, again.last_line
    assert_exact(env)
