"""Running the sync job headless, as Dagster runs recorded in ``DAGSTER_HOME``.

Used by the ``sync`` and ``demo`` commands: runs show up in the Dagster UI like any other.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from . import queries
from .build import build_definitions
from .config import Config
from .errors import UsageError, WarehouseError
from .jobs import SYNC_JOB
from .partitions import last_complete_day
from .queries import export_views
from .warehouse import warehouse_from_env

__all__ = [
    "REQUIRED_ENV",
    "SyncOutcome",
    "UsageError",
    "ensure_dagster_home",
    "run_sync",
]

log = logging.getLogger(__name__)

REQUIRED_ENV = ("PENDO_INTEGRATION_KEY", "PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN")

# Tag on every run this module starts; its values name the command.
COMMAND_TAG = "pendo_planhat/command"
_COMMANDS = ("sync", "sync --dry-run")
# Held (shared) by every live sync on an instance, in DAGSTER_HOME.
SYNC_LOCK_FILE = "pendo_planhat_sync.lock"
_UNFINISHED = (
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)

DEFAULT_INSTANCE_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 1
  pools:
    default_limit: 1
    granularity: op
"""


@dataclass
class SyncOutcome:
    """How a sync run ended, for the exit code and the last line."""

    success: bool
    run_id: str | None
    days: list[date]
    failure: str | None = None
    batches_in_doubt: int = 0
    summary: dict[str, int | float] = field(default_factory=dict)
    #: Metric items of this run that Planhat answered 200 to but listed in its ``errors``.
    items_rejected: int = 0
    first_rejection: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.success and not self.batches_in_doubt and not self.items_rejected else 1

    @property
    def last_line(self) -> str:
        """One line: what happened, naming the day, endpoint and status of a failure."""
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else ""
        doubt = f"{self.batches_in_doubt} batch(es) are in doubt: see `pendo-planhat batches list`"
        notes = [doubt] if self.batches_in_doubt else []
        if not self.success:
            also = "".join(f"; also {note}" for note in notes)
            return f"sync failed for {span}: {_one_line(self.failure or 'unknown error')}{also}"
        if self.items_rejected:
            first = f" (first: {_one_line(self.first_rejection)})" if self.first_rejection else ""
            notes.append(
                f"Planhat rejected {self.items_rejected} metric item(s){first}; they are not "
                "counted as sent and the next run sends them again (see outbox_metric_items.error)"
            )
        if notes:
            return f"sync finished for {span}, but " + "; and ".join(notes)
        return f"sync succeeded for {span}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ensure_dagster_home() -> Path:
    """Set ``DAGSTER_HOME`` (default ``./dagster_home``) to an absolute path (Dagster refuses
    relative ones) holding a ``dagster.yaml``."""
    home = Path(os.environ.get("DAGSTER_HOME") or "dagster_home").absolute()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DEFAULT_INSTANCE_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
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
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def check_environment() -> None:
    """Raise a `UsageError` naming every required variable that is not set."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
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
    warehouse = warehouse_from_env()
    try:
        # Before any Dagster run: a lock held elsewhere is reported in seconds, with what to do.
        with warehouse.connect():
            pass
    except WarehouseError as exc:
        return SyncOutcome(success=False, run_id=None, days=days, failure=str(exc))
    home = ensure_dagster_home()
    defs = build_definitions(config)
    job = defs.resolve_job_def(SYNC_JOB).with_logger_defs({"console": _console_logger})
    instance = dg.DagsterInstance.get()
    with _live_sync(home, instance):
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": days[0].isoformat(),
                "dagster/asset_partition_range_end": days[-1].isoformat(),
                COMMAND_TAG: _COMMANDS[1] if dry_run else _COMMANDS[0],
            },
            run_config={
                "ops": {
                    op: {"config": {"dry_run": dry_run}}
                    for op in ("planhat_publish", "planhat_end_users")
                    if op == "planhat_publish" or config.matching.create_end_users
                },
                "loggers": {"console": {"config": {"log_level": "INFO"}}},
            },
            raise_on_error=False,
        )
    failure = None if result.success else _failure_message(result)
    outcome = SyncOutcome(success=result.success, run_id=result.run_id, days=days, failure=failure)
    # After a failed run, do not wait long for the warehouse: the failure may be that very lock.
    after = warehouse if result.success else warehouse.with_lock_wait(0.5)
    try:
        with after.connect() as conn:
            outcome.batches_in_doubt = queries.count_batches_in_doubt(conn)
            outcome.summary = queries.sync_summary(conn, days=days, run_id=result.run_id)
            outcome.items_rejected, outcome.first_rejection = queries.rejected_items_of_run(
                conn, run_id=result.run_id
            )
            if not result.success:  # publish did not export: data/exports/ reflects every run
                export_views(conn, after.local_dir / "exports")
    except WarehouseError as exc:  # the lock was taken while the run was writing
        outcome.success = False
        if str(exc) not in (failure or ""):
            outcome.failure = f"{failure}; {exc}" if failure else str(exc)
    return outcome


@contextmanager
def _live_sync(home: Path, instance: dg.DagsterInstance) -> Iterator[None]:
    """Hold a shared lock in ``DAGSTER_HOME`` for the whole sync, after settling killed syncs.

    A sync killed outright (SIGKILL, the OOM killer, a reboot) never finishes its Dagster run:
    the run stays STARTED and keeps its ``warehouse`` pool slot, so every later run would wait
    for that slot forever. The kernel drops a dead process's lock, so a sync that can take the
    lock exclusively knows no other sync on this instance is alive, and that any unfinished run
    of ours belongs to a dead process.
    """
    if fcntl is None:
        yield
        return
    with open(home / SYNC_LOCK_FILE, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another sync is running: unfinished runs may be its own
        except OSError:
            yield  # no locks on this file system: live and dead runs cannot be told apart
            return
        else:
            _settle_abandoned_runs(instance)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


def _settle_abandoned_runs(instance: dg.DagsterInstance) -> None:
    """Mark our unfinished runs failed and free the pool slots they hold (no sync is alive)."""
    ours = {COMMAND_TAG: list(_COMMANDS)}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(_UNFINISHED), tags=ours)):
        log.warning(
            "run %s of an earlier `pendo-planhat %s` never finished (its process was killed); "
            "marking it failed",
            run.run_id,
            run.tags.get(COMMAND_TAG),
        )
        instance.report_run_failed(
            run, message="The process running this sync ended without finishing it (killed?)."
        )
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    holders = storage.get_concurrency_run_ids()
    if holders:
        for run in instance.get_runs(filters=dg.RunsFilter(run_ids=list(holders), tags=ours)):
            storage.free_concurrency_slots_for_run(run.run_id)


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The failed steps on one line: each step's headline (the first line of its description).

    Steps failing for the same reason (a warehouse lock hits every step) are named together.
    """
    by_message: dict[str, list[str]] = {}
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        message = data.user_failure_data.description if data.user_failure_data else None
        if not message and data.error is not None:
            error = data.error
            while error.cause is not None:  # the step's own exception, not Dagster's wrapper
                error = error.cause
            message = error.message.strip()
        headline = _one_line((message or "failed").strip().splitlines()[0])
        by_message.setdefault(headline, []).append(event.step_key or "?")
    if not by_message:
        return "the run failed (see the Dagster UI for the event log)"
    return "; ".join(f"{', '.join(steps)}: {headline}" for headline, steps in by_message.items())


class _NoFailureStack(logging.Filter):
    """Drop the Python stack from step failures raised on purpose (``dg.Failure``).

    Their description already says what failed and what to do; a stack trace under it reads
    like a crash. Any other exception keeps its stack.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if ".Failure: " in message and "\nStack Trace:\n" in message:
            record.msg = message.split("\nStack Trace:\n", 1)[0].rstrip()
            record.args = None
        return True


@dg.logger(
    {"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Dagster's console log on stderr, without stacks under deliberate failures.",
)
def _console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = logging.getLevelName(str(init_context.logger_config["log_level"]).upper())
    console = logging.Logger("dagster", level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s - %(name)s - %(levelname)s - %(message)s", "%Y-%m-%d %H:%M:%S %z"
        )
    )
    handler.addFilter(_NoFailureStack())
    console.addHandler(handler)
    return console
