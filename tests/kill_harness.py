"""Kill safety: SIGKILL ``pendo-planhat sync`` at random moments, restart it, compare with truth.

The sandbox runs as its own process (it outlives every kill) with a fixed seed and clock. Each
round starts ``pendo-planhat sync`` in its own process group, waits for a random moment in
landing (aimed with the run's per-day log lines) or in publish (from the step start Dagster
records in the run's event log), and SIGKILLs the group. After every kill, what the sandbox's
Planhat received is compared with ground truth: no activity total and no ``sum`` metric above
truth, every ``last`` metric value one that was true at some point, and no day left half landed
in the warehouse. Before most rounds a day is revised (Pendo reprocessing; counts only grow), so
publishes keep having something new to send. A few rounds are pinned, with the sandbox's fault
switches armed over its control API, to the moments that matter most: the kill lands while
Planhat holds an activity batch it is about to apply, while the client waits to retry after a
429, and while a ``last`` or a ``sum`` metric batch is in flight.

Then the sync runs to completion and the harness checks what a user would see: every key equals
truth except keys of batches listed in ``batches_in_doubt`` (those are at most truth), the
``no_batches_in_doubt`` asset check failed, ``pendo-planhat batches list`` exits 1. It settles each
batch in doubt the way a user would: compare Planhat's totals with ``sent_activities`` /
``sent_metrics``; if the batch's items are there, ``batches resolve ID --delivered``, if not,
``--resend``. It syncs again and expects every key to equal truth exactly; one more sync must send
nothing at all.

Run by ``tests/test_kill.py``; runnable alone for longer soaks::

    .venv/bin/python tests/kill_harness.py --kills 100 --seed 3 --keep /tmp/kill-soak
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import yaml

from pendo_assets.config import Config, load_config
from pendo_assets.errors import WarehouseError
from pendo_assets.sandbox import Dataset, SandboxSpec
from pendo_assets.warehouse import DUCKLAKE_PREFIX, Warehouse

ActivityKey = tuple[str, str, str]  # externalId, action, date
MetricKey = tuple[str, str, str, str]  # dimensionId, model, externalId, date

# Steps of the sync job -> the phase a kill inside them hit; asset check steps are "checks".
PHASES = {
    "pendo_feature_events": "landing",
    "pendo_pipeline_results": "landing",
    "planhat_snapshot": "snapshot/matching",
    "matched_activities": "snapshot/matching",
    "matched_metrics": "snapshot/matching",
    "planhat_publish": "publish",
}
# Pinned rounds: the kill lands while Planhat holds (or refused) one analytics request.
PINNED = (
    "planhat_applies_late",  # activities: Planhat holds the request, applies it after the kill
    "retry_after_429",  # activities: Planhat says 429, Retry-After 60; killed while waiting
    "last_metrics_in_flight",  # the `last` metric batch is held, applied after the kill
    "sum_metrics_in_flight",  # the `sum` metric batch is held, applied after the kill
)
# "<time> - dagster - INFO - sync_job - <run id> - <step> - <message>": the steps that aim kills.
STEP_LINE = re.compile(r" - (" + "|".join(PHASES) + r") - ")
RUN_ID = re.compile(r" - sync_job - ([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}) - ")
APPLIED_LATE = ("planhat_applies_late", "last_metrics_in_flight", "sum_metrics_in_flight")
# The client's warning before it waits out a refusal (clients/_http.py, before_sleep).
_RETRYING = "); retrying in "


# A day's raw rows and its landed_days entry are written in one transaction, with one stamp.
_TORN_DAYS = """
WITH raw AS (
    SELECT 'feature_events' AS source, day, extracted_at FROM raw_feature_events
    UNION ALL
    SELECT 'pipeline:' || pipeline, day, extracted_at FROM raw_pipeline_results
)
SELECT l.source, l.day, l.rows, COUNT(r.day) AS raw_rows, COUNT(DISTINCT r.extracted_at) AS stamps
FROM landed_days AS l LEFT JOIN raw AS r USING (source, day)
GROUP BY l.source, l.day, l.rows, l.extracted_at
HAVING COUNT(r.day) <> l.rows
    OR (COUNT(r.day) > 0 AND (COUNT(DISTINCT r.extracted_at) <> 1 OR min(r.extracted_at) <> l.extracted_at))
"""


class HarnessError(AssertionError):
    """The sync hung, failed unexpectedly, or broke an exactly-once invariant."""


@dataclass
class Settings:
    """What to run; the defaults fit CI (about a minute and a half on two cores)."""

    kills: int = 20
    seed: int = 2026
    start: date = date(2026, 10, 31)
    end: date = date(2026, 11, 2)  # three days, across the end of daylight saving time
    rows_per_day: int = 2000
    page_size: int = 1000  # a few Pendo pages per day
    now: str = "2026-11-20T12:00:00+00:00"
    sandbox_seed: int = 23
    revise_share: float = 0.4  # share of landing rounds that start with a revised day
    round_timeout: float = 150.0  # a sync that makes no progress this long is hung
    planhat_delay: float = 1.0  # how long the sandbox holds a pinned in-flight request
    # A libpq connection string of an empty Postgres database: the warehouse is then a DuckLake
    # with its catalog there and its data in the work folder (default: a DuckDB file).
    ducklake: str = ""


@dataclass
class KillRecord:
    """One SIGKILL and what it hit."""

    round: int
    scenario: str  # landing, publish, or a pinned scenario
    phase: str  # where it landed, from the step events Dagster recorded
    seconds: float  # after the process started
    step: str = ""  # the step it hit ("a ->": just after a)
    aim: str = ""  # the moment it aimed at
    statuses: dict[str, int] = field(default_factory=dict)  # the outbox after the kill
    in_flight: list[int] = field(default_factory=list)  # batches this kill left "sending"


@dataclass
class Report:
    """What happened, for the test's assertions and for people."""

    settings: Settings
    kills: list[KillRecord] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)  # rounds that ended before their moment
    revisions: list[str] = field(default_factory=list)
    final_exit_codes: list[int] = field(default_factory=list)
    in_doubt: list[dict[str, Any]] = field(default_factory=list)  # with resolution and evidence
    last_batches_resent: int = 0
    truth_checks: int = 0
    seconds: float = 0.0
    sync_seconds: float = 0.0  # of which spent with a sync process alive

    def phases(self) -> Counter[str]:
        return Counter(k.phase for k in self.kills)

    def summary(self, *, rounds: bool = True) -> str:
        """The report; without ``rounds``, only its head (no final exit codes, no round table)."""
        s = self.settings
        lines = [
            f"kill harness: {len(self.kills)} SIGKILLs survived in {self.seconds:.0f} s (seed "
            f"{s.seed}, {s.start}..{s.end}, ~{s.rows_per_day} rows/day, page size {s.page_size}, "
            f"{len(self.revisions)} day revisions)",
            "  kills by phase: " + ", ".join(f"{p} {n}" for p, n in sorted(self.phases().items())),
            f"  kills that left a batch in flight: {sum(1 for k in self.kills if k.in_flight)}; "
            f"'last' metric batches resent at the next start: {self.last_batches_resent}",
            f"  Planhat compared with truth {self.truth_checks} times: never a key above truth",
            f"  time with a sync running: {self.sync_seconds:.0f} s of {self.seconds:.0f} s",
        ]
        if self.missed:
            lines.append("  rounds that ended before their moment: " + "; ".join(self.missed))
        lines.append(f"  batches in doubt after the kills: {len(self.in_doubt)}")
        for b in self.in_doubt:
            kind = f"{b['kind']}/{b['aggregation']}" if b["aggregation"] else b["kind"]
            lines.append(
                f"    batch {b['batch_id']} ({kind}, {b['items']} items): {b['evidence']}"
                f" -> batches resolve {b['batch_id']} --{b['resolution']}"
            )
        if not rounds:
            return "\n".join(lines)
        lines.append(f"  final syncs exited {self.final_exit_codes}")
        lines.append(
            "  round  scenario                step hit                        at      outbox after"
        )
        for k in self.kills:
            outbox = ", ".join(f"{st} {n}" for st, n in sorted(k.statuses.items())) or "-"
            outbox += f"  [aim {k.aim}]" if os.environ.get("KILL_HARNESS_DEBUG") else ""
            flight = f" (in flight: {k.in_flight})" if k.in_flight else ""
            lines.append(
                f"  {k.round:>5}  {k.scenario:<22}  {k.step[:30]:<30}  {k.seconds:5.2f}s  {outbox}{flight}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------- sandbox


class SandboxProcess:
    """``python -m pendo_assets.sandbox`` in its own session, and its control API."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.port_file = workdir / "sandbox.json"
        self.config_path = workdir / "sandbox_config.yaml"
        self.log_path = workdir / "sandbox.log"
        argv = [
            *(sys.executable, "-m", "pendo_assets.sandbox", "--quiet"),
            *("--port-file", str(self.port_file), "--config", str(self.config_path)),
            *("--seed", str(settings.sandbox_seed), "--rows-per-day", str(settings.rows_per_day)),
            *("--now", settings.now, "--start-date", (settings.start - timedelta(30)).isoformat()),
        ]
        with self.log_path.open("wb") as log:
            # Its own session: never in a sync's process group, so it survives every kill.
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise HarnessError(
                    f"the sandbox did not start: {self.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        info = json.loads(self.port_file.read_text())
        self.env: dict[str, str] = dict(info["env"])
        self.http = httpx.Client(base_url=info["planhat_analytics_url"] + "/_sandbox/", timeout=60)

    def get(self, name: str, **params: Any) -> Any:
        response = self.http.get(name, params=params)
        response.raise_for_status()
        return response.json()

    def post(self, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(name, json=body or {})
        response.raise_for_status()
        return response.json()

    def activity_totals(self) -> dict[ActivityKey, int]:
        return {(e, a, d): int(n) for e, a, d, n in self.get("activity_totals")}

    def metric_points(self) -> dict[MetricKey, list[float]]:
        return {
            (k, m, e, d): [float(v) for v in vs] for k, m, e, d, vs in self.get("metric_points")
        }

    def analytics_requests(self) -> list[dict[str, Any]]:
        return list(self.get("requests", service="planhat_analytics"))

    def close(self) -> None:
        if hasattr(self, "http"):
            self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------------- truth


class Truth:
    """Ground truth from a local copy of the sandbox's data set (same spec, clock and revisions).

    Truth is per day, so a revision recomputes only its day.
    """

    def __init__(self, sandbox: SandboxProcess, config: Config, days: list[date]) -> None:
        remote = sandbox.get("spec")
        self.dataset = Dataset(
            SandboxSpec(**remote["spec"]), now=datetime.fromisoformat(remote["now"])
        )
        self.sandbox = sandbox
        names = {f["id"]: f["name"] for f in self.dataset.features()}
        self.actions = {f.id: f.action or names[f.id] for f in config.features}
        self.pipelines = [
            {
                "name": p.name,
                "model": p.model,
                "id_field": p.id_field,
                "metrics": dict(p.metrics),
                "pipeline": list(p.stages),
            }
            for p in config.pipelines
        ]
        self.aggregation = {d: p.aggregation for p in config.pipelines for d in p.metrics.values()}
        self._days: dict[date, tuple[dict[ActivityKey, int], dict[MetricKey, float]]] = {}
        self.last_values: dict[MetricKey, set[float]] = {}  # every value a key ever had
        for day in days:
            self._compute(day)

    def _compute(self, day: date) -> None:
        activities = self.dataset.truth_activities(days=[day], actions=self.actions)
        metrics = self.dataset.truth_metrics(days=[day], pipelines=self.pipelines)
        self._days[day] = (activities, metrics)
        for key, value in metrics.items():
            self.last_values.setdefault(key, set()).add(value)

    @property
    def activities(self) -> dict[ActivityKey, int]:
        return {k: v for a, _ in self._days.values() for k, v in a.items()}

    @property
    def metrics(self) -> dict[MetricKey, float]:
        return {k: v for _, m in self._days.values() for k, v in m.items()}

    def revise(self, day: date) -> None:
        """Revise a day in the sandbox and here; counts only grow (``grow=True``)."""
        self.sandbox.post("revise_day", {"day": day.isoformat(), "grow": True})
        self.dataset.revise_day(day, grow=True)
        self._compute(day)

    def shown(self, points: dict[MetricKey, list[float]]) -> dict[MetricKey, float]:
        """What Planhat shows per metric key: the sum, or the last value."""
        agg = self.aggregation
        return {k: (sum(v) if agg.get(k[0]) == "sum" else v[-1]) for k, v in points.items()}

    def above_truth(
        self, activities: dict[ActivityKey, int], points: dict[MetricKey, list[float]]
    ) -> list[str]:
        """What Planhat holds that truth never allowed: more than truth, or a value never true."""
        truth_a, truth_m = self.activities, self.metrics
        out = [
            f"activity {k}: Planhat holds {n}, truth is {truth_a.get(k, 0)}"
            for k, n in activities.items()
            if n > truth_a.get(k, 0)
        ]
        for key, values in points.items():
            if self.aggregation.get(key[0]) == "sum":
                if sum(values) > truth_m.get(key, 0.0):
                    out.append(
                        f"sum metric {key}: Planhat holds {sum(values)}, truth {truth_m.get(key)}"
                    )
            elif any(v not in self.last_values.get(key, ()) for v in values):
                out.append(
                    f"last metric {key}: got {values}, true were {self.last_values.get(key)}"
                )
        return out


# --------------------------------------------------------------------------------- one sync


class SyncProcess:
    """``pendo-planhat sync`` in its own process group, its merged output read line by line."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.ended = 0.0
        self.lines: list[str] = []
        self.seen: dict[str, float] = {}  # first log line of a step -> seconds after the start
        self.seen_at: dict[str, float] = {}  # the same, as wall-clock time (Dagster's clock)
        self.landed = 0  # "[n/N] <day>: ..." lines of the landing steps so far
        self.run_id: str | None = None
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: the kill takes all of it
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                at, wall = time.monotonic() - self.started, time.time()
                with self._changed:
                    self.lines.append(line)
                    step = STEP_LINE.search(line)
                    run = RUN_ID.search(line) if self.run_id is None else None
                    if run:
                        self.run_id = run[1]
                    if step and step[1] not in self.seen:
                        self.seen[step[1]], self.seen_at[step[1]] = at, wall
                    if step and PHASES[step[1]] == "landing" and " - [" in line:
                        self.landed += 1
                    self._changed.notify_all()
        with self._changed:
            self.seen["exit"] = time.monotonic() - self.started
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds or the process has ended; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate() and "exit" not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.01))
        return True

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def kill(self) -> float:
        """SIGKILL the process group; returns when, in seconds after the start."""
        at = self.ended = self.elapsed()
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(30)
        return at

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
            self.ended = self.elapsed()
        except subprocess.TimeoutExpired:
            self.kill()
            raise HarnessError(
                f"the sync did not finish in {timeout:.0f} s:\n{self.tail()}"
            ) from None
        self._reader.join(30)
        return rc

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.lines[-n:])

    def last_line(self) -> str:
        return self.lines[-1] if self.lines else ""


# --------------------------------------------------------------------------------- harness


class KillHarness:
    """Owns the sandbox, the warehouse, ``DAGSTER_HOME`` and the rounds of kills."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.rng = random.Random(settings.seed)
        self.report = Report(settings)
        span = (settings.end - settings.start).days + 1
        self.days = [settings.start + timedelta(days=i) for i in range(span)]
        self.warehouse = workdir / "warehouse" / "warehouse.duckdb"
        self.lake = (
            Warehouse(
                DUCKLAKE_PREFIX + settings.ducklake, data_path=str(workdir / "warehouse" / "lake")
            )
            if settings.ducklake
            else None
        )
        self.home = workdir / "dagster_home"
        self.sandbox = SandboxProcess(settings, workdir)
        try:
            config = yaml.safe_load(self.sandbox.config_path.read_text())
            config["sync"] = {"page_size": settings.page_size}
            self.config_path = workdir / "pendo_planhat.yaml"
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.truth = Truth(self.sandbox, load_config(self.config_path), self.days)
        except BaseException:
            self.sandbox.close()
            raise
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PENDO_", "PLANHAT_", "DAGSTER"))
        }
        self.env.update(self.sandbox.env)
        self.env.update(
            PENDO_PLANHAT_CONFIG=str(self.config_path),
            PENDO_PLANHAT_WAREHOUSE=self.lake.target if self.lake else str(self.warehouse),
            DAGSTER_HOME=str(self.home),
            PYTHONUNBUFFERED="1",
        )
        if self.lake is not None:
            self.env["PENDO_PLANHAT_DATA_PATH"] = str(self.lake.data_path)
        script = Path(sys.executable).with_name("pendo-planhat")
        self.cli = [str(script)] if script.exists() else [sys.executable, "-m", "pendo_assets.cli"]
        self.known_runs: set[str] = set()
        self.aim = ""
        self.sending: set[int] = set()
        # Durations learned from earlier rounds, to aim the kills (seconds).
        self.learned: dict[str, list[float]] = {
            "first_landed": [],  # process start -> first day landed (log line)
            "publish_offset": [],  # matched_metrics log line -> publish step start
            "publish": [],  # the publish step
        }

    def close(self) -> None:
        self.sandbox.close()

    def typical(self, name: str, default: float) -> float:
        values = self.learned[name][-6:]
        return statistics.median(values) if values else default

    # -- running the CLI -------------------------------------------------------------------

    def start_sync(self) -> SyncProcess:
        s = self.s
        argv = [*self.cli, "sync", "--start", s.start.isoformat(), "--end", s.end.isoformat()]
        return SyncProcess(argv, env=self.env, cwd=self.workdir)

    def cli_run(self, *args: str) -> tuple[int, str]:
        done = subprocess.run(
            [*self.cli, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout + done.stderr

    # -- reading state between runs (no process alive: no lock is held) --------------------

    @contextmanager
    def warehouse_sql(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        if self.lake is not None:
            try:
                opened = self.lake.connect(read_only=True)
                lake = opened.__enter__()
            except WarehouseError:  # no catalog yet: no sync got as far as creating it
                yield None
                return
            try:
                yield lake
            finally:
                opened.__exit__(None, None, None)
            return
        if not self.warehouse.exists():
            yield None
            return
        conn = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            yield conn
        finally:
            conn.close()

    def outbox(self) -> dict[str, int]:
        """Batches by status; also checks that no day was left half landed."""
        with self.warehouse_sql() as conn:
            tables = {t for (t,) in conn.execute("SHOW TABLES").fetchall()} if conn else set()
            if conn is None or "outbox_batches" not in tables:
                return {}
            rows = conn.execute("SELECT batch_id, status FROM outbox_batches").fetchall()
            torn = conn.execute(_TORN_DAYS).fetchall()
        if torn:
            raise HarnessError(f"days landed in part (source, day, rows, raw rows, stamps): {torn}")
        self.sending = {b for b, status in rows if status == "sending"}
        return dict(Counter(status for _, status in rows))

    def last_run(self, sync: SyncProcess) -> tuple[str, str]:
        """Where the latest run stopped (phase, step), and what its step times teach."""
        import dagster as dg

        self.report.sync_seconds += sync.ended

        if not (self.home / "dagster.yaml").exists():
            return "startup", ""
        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            runs = [r for r in instance.get_runs(limit=3) if r.run_id not in self.known_runs]
            if not runs:
                return "startup", ""  # killed before its Dagster run was created
            self.known_runs.add(runs[0].run_id)
            kinds = {
                dg.DagsterEventType.STEP_START,
                dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE,
            }
            started: dict[str, float] = {}
            ended: dict[str, float] = {}
            last_step = None
            for event in instance.all_logs(runs[0].run_id, of_type=kinds):
                if event.dagster_event is None or event.step_key is None:
                    continue
                start = event.dagster_event.event_type == dg.DagsterEventType.STEP_START
                (started if start else ended)[event.step_key] = event.timestamp
                last_step = event.step_key
        finally:
            instance.dispose()
        self._learn(sync, started, ended)
        running = [step for step in started if step not in ended]
        if running:
            return PHASES.get(running[-1], "checks"), running[-1]
        if last_step is None:
            return "startup", ""
        # Killed between two steps: count it with the step that just ended.
        phase = "checks" if last_step == "planhat_publish" else PHASES.get(last_step, "checks")
        return phase, f"{last_step} ->"

    def _learn(self, sync: SyncProcess, started: dict[str, float], ended: dict[str, float]) -> None:
        seen, seen_at, learned = sync.seen, sync.seen_at, self.learned
        if "pendo_feature_events" in seen:
            learned["first_landed"].append(seen["pendo_feature_events"])
        if "matched_metrics" in seen_at and "planhat_publish" in started:
            offset = started["planhat_publish"] - seen_at["matched_metrics"]
            learned["publish_offset"].append(max(offset, 0.0))
            if "planhat_publish" in ended:
                learned["publish"].append(ended["planhat_publish"] - started["planhat_publish"])

    def check_against_truth(self, when: str) -> None:
        points = self.sandbox.metric_points()
        problems = self.truth.above_truth(self.sandbox.activity_totals(), points)
        self.report.truth_checks += 1
        if problems:
            raise HarnessError(
                f"{when}: Planhat holds more than truth:\n  " + "\n  ".join(problems[:20])
            )

    # -- the rounds --------------------------------------------------------------------------

    def plan(self) -> list[str]:
        """A scenario per round: the pinned ones spread out, the others landing or publish."""
        n = self.s.kills
        rounds = [self.rng.choice(("landing", "publish")) for _ in range(n)]
        if n >= 2 * len(PINNED):
            for i, scenario in enumerate(PINNED):
                rounds[(2 * i + 1) * n // (2 * len(PINNED))] = scenario
        return rounds

    def run_kills(self) -> None:
        for i, scenario in enumerate(self.plan()):
            # Publish needs something new to send: a revised day always has some.
            if scenario != "landing" or (i and self.rng.random() < self.s.revise_share):
                day = self.rng.choice(self.days)
                self.truth.revise(day)
                self.report.revisions.append(day.isoformat())
            self.sandbox.post("faults/clear")
            requests_before = len(self.sandbox.analytics_requests())
            must_fire = self._arm(scenario)
            sync = self.start_sync()
            try:
                hit = self._wait_for_moment(sync, scenario, must_fire)
            except BaseException:
                sync.kill()
                raise
            if not hit:  # it got past its moment (or ended) first: let it finish
                rc = sync.finish(self.s.round_timeout)
                self._expect_ok(rc, sync, f"round {i} ({scenario})")
                self.last_run(sync)
                self.outbox()
                ended = f"exit {rc} at {sync.ended:.1f}s: {sync.last_line()}"
                self.report.missed.append(f"{i} ({scenario}, aimed {self.aim}; {ended})")
                self.check_against_truth(f"after round {i}")
                continue
            at = sync.kill()
            if scenario in APPLIED_LATE:
                self._await_late_apply(requests_before, must_fire)
            phase, step = self.last_run(sync)
            before = set(self.sending)
            statuses = self.outbox()
            flight = sorted(self.sending - before)
            record = KillRecord(
                i, scenario, phase, at, step=step, aim=self.aim, statuses=statuses, in_flight=flight
            )
            self.report.kills.append(record)
            self.check_against_truth(f"after kill {i} ({scenario}, {phase}, {at:.2f} s)")

    def _arm(self, scenario: str) -> int:
        """Arm a pinned scenario's sandbox faults; returns how many must fire before the kill."""

        def arm(path: str, kind: str, **params: Any) -> None:
            body = {"service": "planhat_analytics", "kind": kind, "path": path, "params": params}
            self.sandbox.post("faults", body)

        hold = {"seconds": self.s.planhat_delay}
        if scenario == "planhat_applies_late":
            arm("/analytics/bulk", "delay", **hold)
        elif scenario == "retry_after_429":
            arm("/analytics/bulk", "status", status=429, headers={"Retry-After": "60"})
        elif scenario == "last_metrics_in_flight":  # `last` batches are sent before `sum` ones
            arm("/dimensiondata", "delay", **hold)
        elif scenario == "sum_metrics_in_flight":
            arm("/dimensiondata", "delay", seconds=0)
            arm("/dimensiondata", "delay", **hold)
            return 2
        else:
            return 0
        return 1

    def _wait_for_moment(self, sync: SyncProcess, scenario: str, must_fire: int) -> bool:
        """Block until the moment to kill; False if the process ended first."""
        timeout, seen = self.s.round_timeout, sync.seen

        def until(predicate: Callable[[], bool]) -> bool:
            if not sync.wait_for(predicate, timeout):
                raise HarnessError(
                    f"the sync made no progress in {timeout:.0f} s (hung?):\n{sync.tail()}"
                )
            return "exit" not in seen

        self.aim = f"{must_fire} fault(s) fired"
        if must_fire:  # the moment is when the sandbox holds (or refused) the request
            # Poll the sandbox only once publish is near: polling steals its CPU.
            if not until(lambda: "matched_metrics" in seen):
                return False
            deadline = time.monotonic() + timeout
            while self.sandbox.get("faults")["fired"] < must_fire:
                if "planhat_publish" in seen or "exit" in seen:
                    return False  # nothing of that kind to send this time
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"the sync made no progress in {timeout:.0f} s:\n{sync.tail()}"
                    )
                time.sleep(0.01)
            if scenario == "retry_after_429":
                # The moment is the client's wait, which begins once it has recorded the
                # refused batch as not sent and said "retrying in": not the 429 itself.
                self.aim += ", then 'retrying in'"
                return until(lambda: any(_RETRYING in line for line in sync.lines[-50:]))
            return True
        if scenario == "landing":
            if self.rng.random() < 0.15:  # at startup or while the first day is fetched
                moment = self.rng.uniform(0.7, 1.0) * self.typical("first_landed", 2.5)
                self.aim = f"{moment:.2f}s after start"
                return until(lambda: sync.elapsed() >= moment)
            # After the n-th day landed (feature events, then pipelines): during the next one.
            n = self.rng.randint(1, 2 * len(self.days) - 1)
            if not until(lambda: sync.landed >= n):
                return False
            delay = self.rng.uniform(0, 0.1)
            self.aim = f"+{delay:.2f}s after landing line {n}"
        else:  # publish starts shortly after the matched_metrics log line
            if not until(lambda: "matched_metrics" in seen):
                return False
            if self._await_step(sync, "planhat_publish"):
                delay = self.rng.uniform(0, 0.8 * self.typical("publish", 0.3))
                self.aim = f"+{delay:.2f}s after publish started"
            else:  # no event log to read: aim from the log line
                offset = self.typical("publish_offset", 0.25)
                delay = offset + self.rng.uniform(0, 0.8 * self.typical("publish", 0.3))
                self.aim = f"+{delay:.2f}s after matched_metrics ({offset:.2f}+)"
        moment = sync.elapsed() + delay
        return until(lambda: sync.elapsed() >= moment)

    def _await_step(self, sync: SyncProcess, step: str) -> bool:
        """Wait for ``step`` to start, read from the run's event log; False if it cannot be read.

        Dagster keeps each run's events in ``history/runs/<run id>.db``, an SQLite file in WAL
        mode: a read-only reader never blocks the run writing it.
        """
        path = self.home / "history" / "runs" / f"{sync.run_id}.db"
        if sync.run_id is None or not path.exists():
            return False
        query = "SELECT 1 FROM event_logs WHERE dagster_event_type = 'STEP_START' AND step_key = ?"
        deadline = time.monotonic() + self.s.round_timeout
        while "exit" not in sync.seen and time.monotonic() < deadline:
            try:
                with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
                    if db.execute(query, [step]).fetchone():
                        return True
            except sqlite3.Error:
                return False
            time.sleep(0.005)
        if "exit" in sync.seen:
            return True  # the wait that follows finds it ended
        raise HarnessError(f"{step} never started in {self.s.round_timeout:.0f} s:\n{sync.tail()}")

    def _await_late_apply(self, requests_before: int, delayed: int) -> None:
        """The sandbox still holds the dead client's request: wait until it has applied it.

        Otherwise the next run could resend before the old request lands (see the report).
        """
        deadline = time.monotonic() + self.s.planhat_delay + 30
        while True:
            new = self.sandbox.analytics_requests()[requests_before:]
            if sum(1 for r in new if r["fault"] == "delay") >= delayed:
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"the sandbox never applied the request it was holding: {new}")
            time.sleep(0.05)

    @staticmethod
    def _expect_ok(rc: int, sync: SyncProcess, what: str) -> None:
        line = sync.last_line()
        # Exit 1 is fine only for a run that finished with batches in doubt, not one that failed.
        if rc == 0 or (rc == 1 and line.startswith("sync finished") and "in doubt" in line):
            return
        raise HarnessError(f"{what}: sync exited {rc}:\n{sync.tail()}")

    # -- after the kills ---------------------------------------------------------------------

    def sync_to_completion(self) -> SyncProcess:
        sync = self.start_sync()
        rc = sync.finish(self.s.round_timeout)
        self._expect_ok(rc, sync, "final sync")
        self.last_run(sync)
        self.report.final_exit_codes.append(rc)
        return sync

    def in_doubt(self) -> tuple[list[dict[str, Any]], set[ActivityKey], set[MetricKey]]:
        """``batches_in_doubt`` and the keys of their items, read with SQL as a user would."""
        with self.warehouse_sql() as conn:
            assert conn is not None
            batches = [
                dict(zip(("batch_id", "kind", "items", "aggregation"), row, strict=True))
                for row in conn.execute(
                    "SELECT batch_id, kind, items, aggregation FROM batches_in_doubt ORDER BY 1"
                ).fetchall()
            ]
            held_a = {
                (e, a, d.isoformat())
                for d, e, a in conn.execute(
                    "SELECT day, external_id, action FROM outbox_activity_items "
                    "JOIN batches_in_doubt USING (batch_id)"
                ).fetchall()
            }
            held_m = {
                (k, m, e, d.isoformat())
                for d, m, e, k in conn.execute(
                    "SELECT day, model, external_id, dimension_id FROM outbox_metric_items "
                    "JOIN batches_in_doubt USING (batch_id)"
                ).fetchall()
            }
        return batches, held_a, held_m

    def differences(self, held_a: set[ActivityKey], held_m: set[MetricKey]) -> list[str]:
        """Keys where Planhat differs from truth, but for held keys at or below truth."""
        got_a, want_a = self.sandbox.activity_totals(), self.truth.activities
        got_m, want_m = self.truth.shown(self.sandbox.metric_points()), self.truth.metrics
        out = []
        for key in got_a.keys() | want_a.keys():
            got, want = got_a.get(key, 0), want_a.get(key, 0)
            if got != want and not (key in held_a and got <= want):
                out.append(f"activity {key}: Planhat {got}, truth {want}, held {key in held_a}")
        for key in got_m.keys() | want_m.keys():
            value, true = got_m.get(key), want_m.get(key)
            if value != true and not (key in held_m and (value or 0.0) <= (true or 0.0)):
                out.append(f"metric {key}: Planhat {value}, truth {true}, held {key in held_m}")
        return sorted(out)

    def decide(self, batch: dict[str, Any]) -> tuple[str, str]:
        """What a user concludes from Planhat's totals: did this batch's items arrive?"""
        with self.warehouse_sql() as conn:
            assert conn is not None
            if batch["kind"] == "activities":
                got = self.sandbox.activity_totals()
                rows = conn.execute(
                    "SELECT i.external_id, i.action, i.day, i.count, COALESCE(s.count, 0) "
                    "FROM outbox_activity_items AS i LEFT JOIN sent_activities AS s "
                    "USING (day, external_id, action) WHERE i.batch_id = ?",
                    [batch["batch_id"]],
                ).fetchall()
                extra = [got.get((e, a, d.isoformat()), 0) - sent for e, a, d, _, sent in rows]
            else:  # only `sum` batches stay in doubt; Planhat shows their sum
                got_m = self.truth.shown(self.sandbox.metric_points())
                rows = conn.execute(
                    "SELECT i.dimension_id, i.model, i.external_id, i.day, i.value, "
                    "COALESCE(s.value, 0) FROM outbox_metric_items AS i LEFT JOIN sent_metrics AS s "
                    "USING (day, model, external_id, dimension_id) WHERE i.batch_id = ?",
                    [batch["batch_id"]],
                ).fetchall()
                extra = [
                    got_m.get((k, m, e, d.isoformat()), 0) - sent for k, m, e, d, _, sent in rows
                ]
        in_batch = [row[-2] for row in rows]  # each item's count or value in the batch
        if extra == in_batch:
            return "delivered", f"Planhat holds all {len(rows)} items beyond sent_{batch['kind']}"
        if not any(extra):
            return "resend", f"Planhat holds none of its {len(rows)} items"
        raise HarnessError(
            f"batch {batch['batch_id']} arrived in part: {extra[:8]} vs {in_batch[:8]}"
        )

    def check_passed(self) -> bool | None:
        """Whether ``no_batches_in_doubt`` passed in the latest run (None: it did not run)."""
        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            run = instance.get_runs(limit=1)[0]
            kind = dg.DagsterEventType.ASSET_CHECK_EVALUATION
            for event in instance.all_logs(run.run_id, of_type=kind):
                data = (
                    event.dagster_event.asset_check_evaluation_data if event.dagster_event else None
                )
                if data is not None and data.check_name == "no_batches_in_doubt":
                    return bool(data.passed)
            return None
        finally:
            instance.dispose()

    def finish(self) -> None:
        """Sync to the end, check, resolve what is in doubt, sync again, check exactly."""
        self.sandbox.post("faults/clear")
        first = self.sync_to_completion()
        batches, held_a, held_m = self.in_doubt()
        problems = self.differences(held_a, held_m)
        if problems:
            raise HarnessError(
                "after the kills, keys outside batches in doubt differ from truth:\n  "
                + "\n  ".join(problems[:20])
            )
        if any(b["aggregation"] == "last" for b in batches):
            raise HarnessError(f"a `last` metric batch is in doubt; it should be resent: {batches}")
        rc, listing = self.cli_run("batches", "list")
        check = self.check_passed()
        if batches:
            if first.proc.returncode != 1 or "in doubt" not in first.last_line():
                raise HarnessError(f"batches are in doubt but the sync said {first.last_line()!r}")
            if rc != 1 or any(str(b["batch_id"]) not in listing for b in batches):
                raise HarnessError(f"`batches list` exited {rc} with batches in doubt:\n{listing}")
            if check is not False:
                raise HarnessError(f"the no_batches_in_doubt check did not fail (passed: {check})")
        elif rc != 0 or check is not True:
            raise HarnessError(
                f"nothing is in doubt, yet `batches list` exited {rc} / check {check}"
            )
        for batch in batches:
            resolution, evidence = self.decide(batch)
            rc, out = self.cli_run("batches", "resolve", str(batch["batch_id"]), f"--{resolution}")
            if rc != 0:
                raise HarnessError(
                    f"`batches resolve {batch['batch_id']} --{resolution}`: {rc}\n{out}"
                )
            self.report.in_doubt.append({**batch, "resolution": resolution, "evidence": evidence})
        rc, listing = self.cli_run("batches", "list")
        if rc != 0:
            raise HarnessError(
                f"`batches list` exited {rc} after every batch was resolved:\n{listing}"
            )
        settled = self.sync_to_completion()
        if settled.proc.returncode != 0:
            raise HarnessError(f"the sync after resolving exited {settled.proc.returncode}")
        problems = self.differences(set(), set())
        if problems:
            raise HarnessError(
                "after resolving, Planhat differs from truth:\n  " + "\n  ".join(problems[:20])
            )
        if self.check_passed() is not True:
            raise HarnessError("the no_batches_in_doubt check did not pass after resolving")
        before = len(self.sandbox.analytics_requests())
        self.sync_to_completion()
        if len(self.sandbox.analytics_requests()) != before:
            raise HarnessError("a sync after everything settled sent something again")
        if self.sandbox.get("spec")["revisions"] != self.truth.dataset.revision_log():
            raise HarnessError("the local truth lost track of the sandbox's revisions")
        with self.warehouse_sql() as conn:
            assert conn is not None
            row = conn.execute(
                "SELECT COUNT(*) FROM outbox_batches WHERE status = 'discarded' "
                "AND aggregation = 'last' AND sent_at IS NOT NULL"
            ).fetchone()
            self.report.last_batches_resent = int(row[0]) if row else 0

    def run(self) -> Report:
        started = time.monotonic()
        self.run_kills()
        self.finish()
        self.report.seconds = time.monotonic() - started
        return self.report


def run_harness(settings: Settings, workdir: Path) -> Report:
    """Every round and the final checks, in ``workdir``; raises `HarnessError` on a breach."""
    harness = KillHarness(settings, workdir)
    try:
        return harness.run()
    finally:
        harness.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=Settings.kills)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--rows-per-day", type=int, default=Settings.rows_per_day)
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    args = parser.parse_args(argv)
    settings = Settings(kills=args.kills, seed=args.seed, rows_per_day=args.rows_per_day)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="pendo-planhat-kill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = run_harness(settings, workdir)
    except HarnessError as exc:
        print(f"FAILED: {exc}\n(files kept in {workdir})", file=sys.stderr)
        return 1
    print(report.summary())
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
