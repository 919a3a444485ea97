"""Running the sync job headless, as Dagster runs recorded in ``DAGSTER_HOME``.

Used by the ``sync`` and ``demo`` commands: runs show up in the Dagster UI like any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg

from .build import build_definitions
from .config import Config
from .errors import ConfigError
from .jobs import SYNC_JOB
from .partitions import last_complete_day
from .warehouse import Warehouse, warehouse_path_from_env

__all__ = [
    "REQUIRED_ENV",
    "SyncOutcome",
    "UsageError",
    "ensure_dagster_home",
    "run_sync",
    "sync_summary",
]

REQUIRED_ENV = ("PENDO_INTEGRATION_KEY", "PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN")

DEFAULT_INSTANCE_YAML = """\
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 1
  pools:
    default_limit: 1
    granularity: op
"""


class UsageError(ConfigError):
    """The command line asks for something that cannot be done (bad range, missing variable)."""


@dataclass
class SyncOutcome:
    """How a sync run ended, for the exit code and the last line."""

    success: bool
    run_id: str | None
    days: list[date]
    failure: str | None = None
    batches_in_doubt: int = 0
    summary: dict[str, int | float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.success and not self.batches_in_doubt else 1

    @property
    def last_line(self) -> str:
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else ""
        if not self.success:
            return f"sync failed for {span}: {self.failure}"
        if self.batches_in_doubt:
            return (
                f"sync finished for {span}, but {self.batches_in_doubt} batch(es) are in doubt: "
                "see `pendo-planhat batches list`"
            )
        return f"sync succeeded for {span}"


def ensure_dagster_home(environ: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """Make sure ``DAGSTER_HOME`` is set to an absolute path holding a ``dagster.yaml``.

    Unset, it defaults to ``./dagster_home`` (absolute). A relative value is made absolute
    (Dagster refuses relative paths).
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("DAGSTER_HOME") or "dagster_home").absolute()
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():
        instance_yaml.write_text(DEFAULT_INSTANCE_YAML, encoding="utf-8")
    env["DAGSTER_HOME"] = str(home)
    return home


def check_range(config: Config, start: date, end: date) -> list[date]:
    """The days of ``[start, end]``, or a `UsageError` naming what is wrong."""
    if end < start:
        raise UsageError(f"--end {end} is before --start {start}")
    if start < config.pendo.start_date:
        raise UsageError(
            f"--start {start} is before pendo.start_date {config.pendo.start_date} in {config.source}"
        )
    last = last_complete_day(config)
    if end > last:
        raise UsageError(
            f"--end {end} is not a complete day yet in {config.pendo.timezone}; the last complete day is {last}"
        )
    days = []
    day = start
    while day <= end:
        days.append(day)
        day = date.fromordinal(day.toordinal() + 1)
    return days


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise a `UsageError` naming every required variable that is not set."""
    env = os.environ if environ is None else environ
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        raise UsageError(
            "missing environment variable(s): "
            + ", ".join(missing)
            + " (set them in the environment or a .env file; see .env.example)"
        )


def run_sync(*, config: Config, start: date, end: date, dry_run: bool = False) -> SyncOutcome:
    """Run the sync job for ``[start, end]`` as one Dagster run in ``DAGSTER_HOME``.

    Raises:
        UsageError: Bad range or missing environment variables (nothing was run).
    """
    days = check_range(config, start, end)
    check_environment()
    ensure_dagster_home()
    defs = build_definitions(config)
    job = defs.resolve_job_def(SYNC_JOB)
    instance = dg.DagsterInstance.get()
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[-1].isoformat(),
            "pendo_planhat/command": "sync --dry-run" if dry_run else "sync",
        },
        run_config={
            "ops": {"planhat_publish": {"config": {"dry_run": dry_run}}},
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        },
        raise_on_error=False,
    )
    outcome = SyncOutcome(success=result.success, run_id=result.run_id, days=days)
    if not result.success:
        outcome.failure = _failure_message(result)
    warehouse = Warehouse(warehouse_path_from_env())
    with warehouse.connect() as conn:
        row = conn.execute("SELECT COUNT(*) FROM batches_in_doubt").fetchone()
        outcome.batches_in_doubt = int(row[0]) if row else 0
        outcome.summary = sync_summary(conn, days=days, run_id=result.run_id)
    return outcome


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            message = data.user_failure_data.description if data.user_failure_data else None
            if not message and data.error is not None:
                message = data.error.message.strip()
            failures.append(f"step {event.step_key}: {message}")
    return "; ".join(failures) or "the run failed (see the Dagster UI for the event log)"


def sync_summary(conn: object, *, days: list[date], run_id: str | None) -> dict[str, int | float]:
    """Headline numbers of a run, read back from the warehouse."""
    import duckdb

    assert isinstance(conn, duckdb.DuckDBPyConnection)

    def one(sql: str, params: list[object]) -> int | float:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row and row[0] is not None else 0

    in_days = "day IN (SELECT UNNEST(?::DATE[]))"
    return {
        "days": len(days),
        "events_landed": one(f"SELECT SUM(num_events) FROM raw_feature_events WHERE {in_days}", [days]),
        "rows_landed": one(f"SELECT SUM(rows) FROM landed_days WHERE source = 'feature_events' AND {in_days}", [days]),
        "rows_quarantined": one(f"SELECT SUM(quarantined) FROM landed_days WHERE {in_days}", [days]),
        "activity_keys_matched": one(f"SELECT COUNT(*) FROM matched_activities WHERE {in_days}", [days]),
        "events_matched": one(f"SELECT SUM(count) FROM matched_activities WHERE {in_days}", [days]),
        "unmatched_anonymous": one(f"SELECT SUM(num_events) FROM unmatched_visitors WHERE reason = 'anonymous' AND {in_days}", [days]),
        "unmatched_no_enduser": one(f"SELECT SUM(num_events) FROM unmatched_visitors WHERE reason = 'no_enduser' AND {in_days}", [days]),
        "unmatched_ambiguous": one(f"SELECT SUM(num_events) FROM unmatched_visitors WHERE reason = 'ambiguous' AND {in_days}", [days]),
        "unmatched_visitors": one(f"SELECT COUNT(DISTINCT visitor_id) FROM unmatched_visitors WHERE {in_days}", [days]),
        "metric_values_matched": one(f"SELECT COUNT(*) FROM matched_metrics WHERE {in_days}", [days]),
        "unmatched_account_ids": one(f"SELECT COUNT(DISTINCT id) FROM unmatched_accounts WHERE {in_days}", [days]),
        "activity_items_sent": one(
            "SELECT COUNT(*) FROM outbox_activity_items JOIN outbox_batches USING (batch_id) "
            "WHERE run_id = ? AND status = 'delivered'", [run_id]),
        "activity_events_sent": one(
            "SELECT SUM(count) FROM outbox_activity_items JOIN outbox_batches USING (batch_id) "
            "WHERE run_id = ? AND status = 'delivered'", [run_id]),
        "metric_items_sent": one(
            "SELECT COUNT(*) FROM outbox_metric_items JOIN outbox_batches USING (batch_id) "
            "WHERE run_id = ? AND status = 'delivered' AND error IS NULL", [run_id]),
        "requests": one("SELECT COUNT(*) FROM outbox_batches WHERE run_id = ? AND sent_at IS NOT NULL", [run_id]),
        "drift_keys": one("SELECT COUNT(*) FROM activity_drift", []),
    }
