"""Steady state: the daily sync re-pulls the days Pendo still changes (DESIGN.md section 5).

The fortnight test compares with ground truth computed by the sandbox's generator as the data
changes, never with what the product computed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from pendo_assets import partitions
from pendo_assets.build import build_definitions
from pendo_assets.cli import main
from pendo_assets.config import Config, parse_config
from pendo_assets.partitions import first_mutable_day, sync_window
from pendo_assets.sandbox import SandboxSpec
from tests.conftest import MakeEnv

CONFIG = """\
pendo:
  timezone: America/New_York
  start_date: 2026-09-01
features:
  - id: f1
sync:
  lookback_days: {lookback}
"""


def _config(lookback: int = 10) -> Config:
    return parse_config(CONFIG.format(lookback=lookback))


def _at(day: date, hour: int = 4, tz: str = "America/New_York") -> datetime:
    return datetime.combine(day, time(hour), ZoneInfo(tz))


def test_a_sync_without_a_range_covers_the_lookback_window_ending_yesterday() -> None:
    now = _at(date(2026, 11, 20))
    assert sync_window(_config(), now=now) == (date(2026, 11, 10), date(2026, 11, 19))
    assert sync_window(_config(3), now=now) == (date(2026, 11, 17), date(2026, 11, 19))
    # --end alone: the window ends there; --start alone: it runs to yesterday.
    end = date(2026, 10, 5)
    assert sync_window(_config(), end=end, now=now) == (date(2026, 9, 26), end)
    assert sync_window(_config(), start=end, now=now) == (end, date(2026, 11, 19))
    # Never before pendo.start_date.
    assert sync_window(_config(), end=date(2026, 9, 3), now=now) == (
        date(2026, 9, 1),
        date(2026, 9, 3),
    )
    # Yesterday in the subscription's timezone: 03:00 UTC on the 20th is still the 19th there.
    assert sync_window(_config(1), now=datetime(2026, 11, 20, 3, tzinfo=UTC)) == (
        date(2026, 11, 18),
        date(2026, 11, 18),
    )
    assert first_mutable_day(_config(), now) == date(2026, 11, 10)


def test_lookback_days_is_bounded() -> None:
    from pendo_assets.errors import ConfigError

    for bad in (0, 91):
        with pytest.raises(ConfigError, match=r"sync\.lookback_days") as caught:
            _config(bad)
        assert "1" in str(caught.value) and "90" in str(caught.value)


def test_the_schedule_runs_the_window_as_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PENDO_INTEGRATION_KEY", "PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN"):
        monkeypatch.setenv(name, "x")
    defs = build_definitions(_config(10))
    schedule = defs.resolve_schedule_def("daily_sync_schedule")
    assert schedule.execution_timezone == "America/New_York"
    assert schedule.cron_schedule == "0 3 * * *"
    context = dg.build_schedule_context(scheduled_execution_time=_at(date(2026, 11, 20), 3))
    requests = schedule.evaluate_tick(context).run_requests
    assert requests is not None and len(requests) == 1
    tags = requests[0].tags
    assert tags["dagster/asset_partition_range_start"] == "2026-11-10"
    assert tags["dagster/asset_partition_range_end"] == "2026-11-19"


LOOKBACK = 4
FIRST_TODAY = date(2026, 10, 20)
FORTNIGHT = [FIRST_TODAY + timedelta(days=n) for n in range(14)]
RESTATED_ON = FIRST_TODAY + timedelta(days=6)


@pytest.mark.slow
def test_a_fortnight_of_daily_syncs_without_a_range_leaves_planhat_equal_to_pendo(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each simulated day: late events grow the two days before yesterday, once a restatement
    shrinks two days, then `pendo-planhat sync` runs with no range (what the schedule runs).

    Planhat ends up holding, for every key, the most Pendo ever said while the day was in the
    window (counts cannot be retracted): exactly the final truth for keys that never shrank, and
    `activity_drift` lists exactly the keys that did.
    """
    spec = SandboxSpec(seed=5, n_visitors=150, n_accounts=25, rows_per_day=300)
    env = make_env(spec=spec, sync={"lookback_days": LOOKBACK})
    dataset = env.sandbox.dataset
    most_seen: dict[tuple[str, str, str], int] = {}
    covered: set[date] = set()
    for today in FORTNIGHT:
        now = _at(today, 4, env.config.pendo.timezone)
        env.sandbox.now = now
        monkeypatch.setattr(partitions, "_now", lambda tz, now=now: now.astimezone(tz))
        yesterday = today - timedelta(days=1)
        if today != FIRST_TODAY:  # late events for days an earlier run already sent
            for back in (1, 2):
                dataset.revise_day(yesterday - timedelta(days=back), grow=True)
        if today == RESTATED_ON:  # a Feature's rule edited: Pendo recounts two days, lower
            for back in (1, 2):
                dataset.revise_day(yesterday - timedelta(days=back), grow=False)
        window = [yesterday - timedelta(days=n) for n in range(LOOKBACK)]
        covered.update(window)
        for key, count in env.truth_activities(window).items():
            most_seen[key] = max(most_seen.get(key, 0), count)

        assert main(["sync"]) == 0, f"sync on {today} failed"

    days = sorted(covered)
    assert days[0] == FIRST_TODAY - timedelta(days=LOOKBACK)
    final = env.truth_activities(days)
    received = env.sandbox.received.activity_totals()
    assert received == most_seen
    shrunk = {k for k, n in most_seen.items() if final.get(k, 0) < n}
    assert shrunk, "the restatement must shrink some keys"
    assert {k: received[k] for k in most_seen if k not in shrunk} == {
        k: final[k] for k in most_seen if k not in shrunk
    }
    drift = env.sql("SELECT external_id, action, day::VARCHAR, sent, source FROM activity_drift")
    assert {(e, a, d): (s, src) for e, a, d, s, src in drift} == {
        k: (most_seen[k], final.get(k, 0)) for k in shrunk
    }
    # Metrics are corrected both ways (`last` resends, `sum` sends the signed difference).
    truth_metrics = env.truth_metrics(days)
    assert {k: v for k, v in env.received_metrics().items() if k in truth_metrics} == (
        truth_metrics
    )
    # A backfill of a day older than the window says, on that day's partition, it is final;
    # the days of the last scheduled run are not.
    assert main(["sync", "--start", str(days[0]), "--end", str(days[0])]) == 0
    instance = dg.DagsterInstance.get()

    def final(day: date) -> bool:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("pendo_feature_events"), asset_partitions=[str(day)]
            ),
            limit=1,
        ).records
        materialization = records[0].asset_materialization
        assert materialization is not None
        return bool(materialization.metadata["final"].value)

    assert final(days[0]) and not final(days[-1])
