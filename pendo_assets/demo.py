"""``pendo-planhat demo``: a backfill against the local sandbox, checked against its truth."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .sandbox import Sandbox, SandboxSpec

__all__ = ["demo_home", "demo_spec", "make_demo", "print_summary"]


def demo_spec(rows_per_day: int | None) -> SandboxSpec:
    """The demo's sandbox data: the default size, or scaled to ``rows_per_day``, with visitor
    emails and End Users found only by email."""
    from .sandbox import SandboxSpec

    if rows_per_day is None:
        return SandboxSpec(identity=True)
    return SandboxSpec.for_rows(rows_per_day, identity=True)


def print_summary(summary: dict[str, int | float]) -> None:
    width = max(len(k) for k in summary) if summary else 0
    for key, value in summary.items():
        print(f"  {key.replace('_', ' '):<{width}}  {value:,}")


def demo_home(demo_dir: Path) -> Path:
    """Where the demo's Dagster runs are recorded: ``DAGSTER_HOME`` when set, else
    ``<demo dir>/dagster_home`` (what ``pendo-planhat ui`` shows)."""
    return Path(os.environ.get("DAGSTER_HOME") or demo_dir / "dagster_home").absolute()


def make_demo(demo_dir: Path, *, days: int, rows_per_day: int | None) -> int:
    from .config import load_config
    from .runner import run_sync
    from .sandbox import Sandbox
    from .ui import prepare_dagster_home

    started = time.perf_counter()
    if demo_dir.exists():
        shutil.rmtree(demo_dir)  # the demo always starts from nothing
    demo_dir.mkdir(parents=True)
    home = demo_home(demo_dir)
    if home.is_relative_to(demo_dir.absolute()):
        prepare_dagster_home(home)
    os.environ["DAGSTER_HOME"] = str(home)
    (demo_dir / "sandbox.json").write_text(
        json.dumps({"rows_per_day": rows_per_day}), encoding="utf-8"
    )
    with Sandbox(demo_spec(rows_per_day)) as sandbox:
        config_path = demo_dir / "pendo_planhat.yaml"
        end = sandbox.dataset.today() - timedelta(days=1)
        start = end - timedelta(days=days - 1)
        # Visitors found by email too, End Users created for the rest that can be, and Pendo's
        # pages and track events as User Activities besides its features.
        sandbox.write_config(config_path, start_date=start, **sandbox.dataset.identity_config())
        env = {
            **sandbox.env(),
            "PENDO_PLANHAT_CONFIG": str(config_path),
            "PENDO_PLANHAT_WAREHOUSE": str(demo_dir / "warehouse.duckdb"),
        }
        os.environ.update(env)
        (demo_dir / "demo.env").write_text(
            "".join(f"{k}={v}\n" for k, v in {**env, "DAGSTER_HOME": str(home)}.items()),
            encoding="utf-8",
        )
        config = load_config(config_path)
        print(f"pendo-planhat demo: {days}-day backfill {start}..{end} against the local sandbox")
        window = [start + timedelta(days=i) for i in range(days)]
        truth = _truth(sandbox, config, window)  # before the sync creates End Users
        outcome = run_sync(config=config, start=start, end=end)
        print(f"\nBackfill run {outcome.run_id} ({time.perf_counter() - started:.0f} s):")
        print_summary(outcome.summary)
        print(_match_rates(outcome.summary))
        print(_verify_against_truth(sandbox, truth))
        rerun_start = max(start, end - timedelta(days=6))
        again = run_sync(config=config, start=rerun_start, end=end)
        print(
            f"Re-run of {rerun_start}..{end}: {again.summary.get('activity_items_sent', 0)} activity and "
            f"{again.summary.get('metric_items_sent', 0)} metric items sent "
            "(nothing changed, so nothing is sent twice)"
        )
    print("\nWhere to look next:")
    print("  Dagster UI on the same data:  make ui  (or .venv/bin/pendo-planhat ui)")
    print(
        f'  Unmatched visitors in SQL:    .venv/bin/python -c "import duckdb; '
        f'print(duckdb.sql(\\"SELECT reason, COUNT(*) FROM \'{demo_dir}/exports/unmatched_visitors.parquet\' GROUP BY reason\\"))"'
    )
    print(
        f"  The warehouse:                {demo_dir}/warehouse.duckdb (views unmatched_visitors, "
        "unmatched_accounts, sent_activities, sent_metrics, batches_in_doubt, activity_drift)"
    )
    print(
        outcome.last_line
        if outcome.exit_code
        else f"demo finished in {time.perf_counter() - started:.0f} s"
    )
    return outcome.exit_code or again.exit_code


def _truth(sandbox: Sandbox, config: Config, days: list[date]) -> dict[str, Any]:
    """The generator's ground truth of ``days`` for ``config``, against Planhat as it is now."""
    data = sandbox.dataset
    names = {i["id"]: i["name"] for i in [*data.features(), *data.pages(), *data.track_types()]}

    def actions(items: Any) -> dict[str, str]:
        return {i.id: i.action or names[i.id] for i in items if not i.is_metric}

    pipelines = [
        {
            "name": p.name,
            "model": p.model,
            "id_field": p.id_field,
            "metrics": dict(p.metrics),
            "pipeline": list(p.stages),
        }
        for p in config.pipelines
    ]
    return {
        "activities": sandbox.dataset.truth_activities_by_key(
            days=days,
            features=actions(config.features),
            pages=actions(config.pages),
            track_events=actions(config.track_events),
            end_user_keys=config.matching.end_user_keys,
            create_end_users=config.matching.create_end_users,
        ),
        "metrics": sandbox.dataset.truth_metrics(days=days, pipelines=pipelines),
        "aggregation": {dim: p.aggregation for p in config.pipelines for dim in p.metrics.values()},
    }


def _match_rates(summary: dict[str, int | float]) -> str:
    """The share of identified events matched, and what externalId alone would have matched."""
    identified = sum(
        summary.get(k, 0)
        for k in (
            "events_matched",
            "unmatched_no_enduser",
            "unmatched_ambiguous",
            "unmatched_ambiguous_email",
        )
    )
    if not identified:
        return "Match rate: no identified events"
    matched = summary.get("events_matched", 0) / identified
    by_id = summary.get("events_matched_by_externalId", 0) / identified
    return (
        f"Match rate: {matched:.1%} of identified events reached an End User "
        f"(by externalId alone: {by_id:.1%}; by email: "
        f"{summary.get('events_matched_by_email', 0) / identified:.1%}; End Users created: "
        f"{summary.get('events_matched_by_created', 0) / identified:.1%})."
    )


def _verify_against_truth(sandbox: Sandbox, truth: dict[str, Any]) -> str:
    """Compare what the sandbox's Planhat received with the generator's ground truth."""
    received = sandbox.received.activity_totals_by_key()
    points = sandbox.received.metric_points()
    agg = truth["aggregation"]
    got_m = {k: (sum(v) if agg.get(k[0]) == "sum" else v[-1]) for k, v in points.items()}
    want, want_m = truth["activities"], truth["metrics"]
    mark = "matches" if received == want and got_m == want_m else "DOES NOT match"
    return (
        f"Planhat now holds {sum(received.values()):,} events over {len(received):,} activity keys and "
        f"{len(got_m):,} metric values: this {mark} the sandbox's ground truth "
        f"({sum(want.values()):,} events, {len(want):,} keys, {len(want_m):,} metric values)."
    )
