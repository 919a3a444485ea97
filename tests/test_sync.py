"""The sync end to end: Dagster runs against the sandbox, compared with the generator's truth.

Every comparison is against ground truth computed by the sandbox from its own labelled data
(which visitors have exactly one End User, which accounts one Company, ...), never against
what the product computed.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import dagster as dg
import pytest

from pendo_assets.delivery import Publisher

# The env fixture lives in conftest.py (shared with the fault, bad-input and contention tests);
# these names stay importable from here.
from .conftest import BACKENDS, DAYS, END, SHORT, START, Env  # noqa: F401


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_14_day_sync_delivers_exactly_the_truth_and_a_rerun_sends_nothing(env: Env) -> None:
    outcome = env.sync()
    assert outcome.exit_code == 0, outcome.last_line
    truth = env.truth_activities()
    assert truth and env.sandbox.received.activity_totals() == truth
    truth_m = env.truth_metrics()
    assert truth_m and env.received_metrics() == truth_m
    assert {k[3] for k in truth_m} == {d.isoformat() for d in DAYS}
    # Nothing reached Planhat for anonymous, unmatched or ambiguous visitors.
    assert all(r.dropped is False for r in env.sandbox.received.activities())

    # Days across the DST change landed on their own local dates.
    assert {k[2] for k in truth} == {d.isoformat() for d in DAYS}
    day_ms = dict(env.sql("SELECT DISTINCT day, day_ms FROM raw_feature_events"))
    assert day_ms[date(2026, 11, 1)] == 1_793_505_600_000  # 04:00Z: midnight EDT
    assert day_ms[date(2026, 11, 2)] == 1_793_595_600_000  # 05:00Z: midnight EST, 25 h later

    # Every unmatched visitor and account is in SQL with the right reason.
    unmatched = {
        (d.isoformat(), v, a): (reason, n)
        for d, v, a, reason, n in env.sql(
            "SELECT day, visitor_id, account_id, reason, num_events FROM unmatched_visitors"
        )
    }
    feature_ids = [f.id for f in env.config.features]
    assert unmatched == env.sandbox.dataset.truth_unmatched_visitors(
        days=DAYS, feature_ids=feature_ids
    )
    accounts = {
        (d.isoformat(), p, m, i): reason
        for d, p, m, i, reason in env.sql(
            "SELECT day, pipeline, model, id, reason FROM unmatched_accounts"
        )
    }
    truth_accounts = env.sandbox.dataset.truth_unmatched_accounts(
        days=DAYS, pipelines=env.pipelines()
    )
    assert (
        accounts == {tuple(str(x) for x in k): v for k, v in truth_accounts.items()}
        or accounts == truth_accounts
    )

    # A second run over the same range sends nothing at all.
    before = env.analytics_requests()
    again = env.sync()
    assert again.exit_code == 0
    assert env.analytics_requests() == before
    assert again.summary["activity_items_sent"] == 0 and again.summary["metric_items_sent"] == 0


def test_changed_pendo_data_sends_only_the_differences(env: Env) -> None:
    assert env.sync().exit_code == 0
    old_truth, old_metrics = env.truth_activities(), env.truth_metrics()
    for day in DAYS[-2:]:
        env.sandbox.dataset.revise_day(day, grow=True)
    new_truth, new_metrics = env.truth_activities(), env.truth_metrics()
    changed = {k for k in new_truth if new_truth[k] != old_truth.get(k)}
    changed_m = {k for k in new_metrics if new_metrics[k] != old_metrics.get(k)}
    assert changed and changed_m

    sent_before = len(env.sandbox.received.activities())
    outcome = env.sync()
    assert outcome.exit_code == 0
    new_items = env.sandbox.received.activities()[sent_before:]
    assert {(r.external_id, r.action, r.date) for r in new_items} == changed
    assert all(
        r.count
        == new_truth[(r.external_id, r.action, r.date)]
        - old_truth.get((r.external_id, r.action, r.date), 0)
        for r in new_items
    )
    assert env.sandbox.received.activity_totals() == new_truth
    assert env.received_metrics() == new_metrics
    assert outcome.summary["metric_items_sent"] == len(changed_m)


def test_an_end_user_added_later_receives_its_earlier_days(env: Env) -> None:
    assert env.sync(SHORT[0], SHORT[-1]).exit_code == 0
    before = env.truth_activities(SHORT)
    assert env.sandbox.dataset.add_late_endusers() > 0
    after = env.truth_activities(SHORT)
    late = {k for k in after if k not in before}
    assert late
    assert env.sync(SHORT[0], SHORT[-1]).exit_code == 0
    received = env.sandbox.received.activity_totals()
    assert received == after
    assert {k[2] for k in late} <= {d.isoformat() for d in SHORT}  # original dates, not today


def test_a_batch_applied_without_an_answer_is_never_sent_again(env: Env) -> None:
    env.sandbox.faults.add(
        service="planhat_analytics", kind="reset_after_apply", path="/analytics/bulk"
    )
    outcome = env.sync(SHORT[0], SHORT[-1])
    assert outcome.exit_code == 1
    assert "in doubt" in outcome.last_line
    doubt = env.sql("SELECT batch_id, kind, items FROM batches_in_doubt")
    assert [(k) for _, k, _ in doubt] == ["activities"]
    truth = env.truth_activities(SHORT)
    assert env.sandbox.received.activity_totals() == truth  # Planhat did apply it, once

    again = env.sync(SHORT[0], SHORT[-1])
    assert again.exit_code == 1  # still in doubt: the user decides
    assert env.sandbox.received.activity_totals() == truth  # never resent: no double count

    from pendo_assets.cli import main

    assert main(["batches", "resolve", str(doubt[0][0]), "--delivered"]) == 0
    assert main(["batches", "list"]) == 0
    final = env.sync(SHORT[0], SHORT[-1])
    assert final.exit_code == 0 and final.summary["activity_items_sent"] == 0
    assert env.sandbox.received.activity_totals() == truth


def test_a_run_killed_between_send_and_record_never_double_counts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Publisher._settle_delivered

    def killed(self: Publisher, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # the process dies after Planhat answered, before recording

    monkeypatch.setattr(Publisher, "_settle_delivered", killed)
    try:
        interrupted = env.sync(SHORT[0], SHORT[-1])
    except KeyboardInterrupt:
        pass
    else:
        assert interrupted.exit_code == 1
    monkeypatch.setattr(Publisher, "_settle_delivered", real)
    status = env.sql("SELECT status FROM outbox_batches")
    assert status == [("sending",)]

    outcome = env.sync(SHORT[0], SHORT[-1])
    assert outcome.exit_code == 1
    (kind, items) = env.sql("SELECT kind, items FROM batches_in_doubt")[0]
    assert kind == "activities" and items > 0
    totals = env.sandbox.received.activity_totals()
    truth = env.truth_activities(SHORT)
    assert all(totals[k] <= truth[k] for k in totals)  # nothing above truth, ever
    assert totals == truth  # the interrupted batch had arrived; everything else was sent once


def test_dry_run_sends_nothing_and_shows_what_would_be_sent(env: Env) -> None:
    outcome = env.sync(SHORT[0], SHORT[-1], dry_run=True)
    assert outcome.exit_code == 0
    assert env.analytics_requests() == 0
    truth = env.truth_activities(SHORT)
    planned = {
        (e, a, d.isoformat()): n
        for d, e, a, n in env.sql("SELECT day, external_id, action, count FROM planned_activities")
    }
    assert planned == truth
    assert env.sql("SELECT COUNT(*) FROM planned_metrics")[0][0] == len(env.truth_metrics(SHORT))
    assert env.sql("SELECT COUNT(*) FROM outbox_batches") == [(0,)]


def test_a_partition_range_runs_as_one_dagster_run_with_its_checks(env: Env) -> None:
    env.sync()
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) == 1
    assert runs[0].tags["dagster/asset_partition_range_start"] == START.isoformat()
    records = instance.fetch_materializations(dg.AssetKey("planhat_publish"), limit=100).records
    assert {r.partition_key for r in records} == {d.isoformat() for d in DAYS}
    checks = {
        e.dagster_event.asset_check_evaluation_data.check_name: e.dagster_event.asset_check_evaluation_data.passed
        for e in instance.all_logs(runs[0].run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks == {
        "rows_have_visitor_ids": True,
        "match_rate_above_threshold": True,
        "no_batches_in_doubt": True,
        "no_activity_drift": True,
        "metric_drift": True,
    }
