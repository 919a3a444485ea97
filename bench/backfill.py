"""Backfill benchmark: the demo-scale backfill end to end through Dagster, with its time split.

Runs `pendo_assets.runner.run_sync` (what ``pendo-planhat sync`` and ``demo`` run) over the
configured range against a sandbox process, with a fresh warehouse and ``DAGSTER_HOME``. The
wall time is split into:

* ``fetch_s`` / ``land_s``: time inside `landing`'s fetch and land functions (both sources),
  measured by wrapping them before the asset modules import them (for a day of feature events,
  streamed, its fetch time, and what landing added after the last page);
* ``match_s`` / ``publish_s`` / ``snapshot_s`` / ``checks_s``: each step's compute time, from the
  run's event log (step start to its first materialization or check evaluation);
* ``pendo_other_s``: the rest of the two Pendo steps' compute (feature names, per-day logging);
* ``overhead_s``: everything else, i.e. wall minus fetch, land, match and publish, of which
  ``framework_s`` is what Dagster itself spends (run creation, event storage, step orchestration).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from _harness import write_result

F = TypeVar("F", bound=Callable[..., Any])
TIMERS: dict[str, float] = defaultdict(float)


def _timed(bucket: str, fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMERS[bucket] += time.perf_counter() - started

    return wrapper  # type: ignore[return-value]


def _instrument() -> None:
    # The asset modules import these names when they are first imported: patch them before.
    from pendo_assets import landing

    for name, bucket in (
        ("fetch_pipeline_day", "fetch"),
        ("land_pipeline_day", "land"),
        ("resolve_feature_actions", "land"),
    ):
        setattr(landing, name, _timed(bucket, getattr(landing, name)))
    ingest = landing.ingest_feature_events

    @functools.wraps(ingest)
    def ingest_timed(*args: Any, **kwargs: Any) -> Any:
        # Fetching and landing overlap here: the day's fetch time is its own measure, landing is
        # what it added after the last page.
        started = time.perf_counter()
        try:
            day = ingest(*args, **kwargs)
        except BaseException:
            TIMERS["fetch"] += time.perf_counter() - started
            raise
        TIMERS["fetch"] += day.fetch_seconds
        TIMERS["land"] += time.perf_counter() - started - day.fetch_seconds
        return day

    landing.ingest_feature_events = ingest_timed  # type: ignore[assignment]


_FIRST_RESULT = {"ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION", "STEP_OUTPUT", "STEP_FAILURE"}


def step_compute_seconds(run_id: str) -> dict[str, float]:
    """Per step: seconds from its start to its first result event (its compute time)."""
    import dagster as dg

    starts: dict[str, float] = {}
    firsts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in dg.DagsterInstance.get().all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        kind = event.event_type_value
        if kind == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif kind in _FIRST_RESULT:
            firsts.setdefault(entry.step_key, entry.timestamp)
        elif kind == "STEP_SUCCESS":
            ends[entry.step_key] = entry.timestamp
    return {key: firsts.get(key, ends.get(key, start)) - start for key, start in starts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--start", required=True, type=date.fromisoformat)
    parser.add_argument("--end", required=True, type=date.fromisoformat)
    parser.add_argument("--profile", help="also write a cProfile of the run here")
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    import json

    env = json.loads(Path(args.port_file).read_text(encoding="utf-8"))["env"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    os.environ["PENDO_PLANHAT_CONFIG"] = args.config
    os.environ["PENDO_PLANHAT_WAREHOUSE"] = str(args.workdir / "warehouse.duckdb")
    os.environ["DAGSTER_HOME"] = str((args.workdir / "dagster_home").resolve())

    _instrument()
    from pendo_assets.config import load_config
    from pendo_assets.runner import run_sync

    config = load_config(args.config)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    outcome = run_sync(config=config, start=args.start, end=args.end)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    wall = time.perf_counter() - started
    if not outcome.success:
        raise SystemExit(f"the backfill failed: {outcome.failure}")
    assert outcome.run_id is not None
    steps = step_compute_seconds(outcome.run_id)
    match = steps.get("matched_activities", 0.0) + steps.get("matched_metrics", 0.0)
    publish = steps.get("planhat_publish", 0.0)
    snapshot = steps.get("planhat_snapshot", 0.0)
    pendo = steps.get("pendo_feature_events", 0.0) + steps.get("pendo_pipeline_results", 0.0)
    known = {
        "matched_activities",
        "matched_metrics",
        "planhat_publish",
        "planhat_snapshot",
        "pendo_feature_events",
        "pendo_pipeline_results",
    }
    checks = sum(v for k, v in steps.items() if k not in known)
    fetch, land = TIMERS["fetch"], TIMERS["land"]
    pendo_other = max(0.0, pendo - fetch - land)
    overhead = wall - fetch - land - match - publish
    framework = overhead - snapshot - checks - pendo_other
    write_result(
        args.result,
        {
            "days": len(outcome.days),
            "wall_s": round(wall, 2),
            "fetch_s": round(fetch, 2),
            "land_s": round(land, 2),
            "match_s": round(match, 2),
            "publish_s": round(publish, 2),
            "overhead_s": round(overhead, 2),
            "snapshot_s": round(snapshot, 2),
            "checks_s": round(checks, 2),
            "pendo_other_s": round(pendo_other, 2),
            "framework_s": round(framework, 2),
            "steps": {k: round(v, 2) for k, v in sorted(steps.items())},
            "summary": outcome.summary,
        },
    )


if __name__ == "__main__":
    main()
