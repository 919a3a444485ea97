"""Reading metrics back from Planhat (the sandbox), ``metric_drift`` and its fix, end to end.

A metric day is changed or deleted on the Planhat side, as a Planhat user could; the next sync
reads it back and lists exactly those keys; ``pendo-planhat resend-metrics`` makes Planhat agree.
"""

from __future__ import annotations

from datetime import date

import dagster as dg

from pendo_assets.cli import main
from pendo_assets.types import Model

from .conftest import SHORT, Env

Key = tuple[date, str, str, str]  # day, model, external_id, dimension_id


def check_results(run_id: str) -> dict[str, tuple[bool, str | None]]:
    """Asset-check name -> (passed, description) of one run."""
    out = {}
    for record in dg.DagsterInstance.get().all_logs(run_id):
        event = record.dagster_event
        if event and event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.asset_check_evaluation_data
            out[data.check_name] = (data.passed, data.description)
    return out


def shown(env: Env, key: Key, aggregation: str) -> float | None:
    """The value Planhat's chart shows for a key: the sum of the day's points or the latest."""
    day, model, external_id, dimension_id = key
    store = env.sandbox.dataset.planhat
    parent = store.match_external(model, external_id)[0]["_id"]  # type: ignore[arg-type]
    values = [
        p["value"]
        for p in store.metric_points(dimension_id=dimension_id, limit=10**9)
        if p["parentId"] == parent and p["time"][:10] == day.isoformat()
    ]
    if not values:
        return None
    return float(sum(values)) if aggregation == "sum" else float(values[-1])


def set_day(env: Env, key: Key, value: float | None) -> None:
    day, model, external_id, dimension_id = key
    model_name: Model = model  # type: ignore[assignment]
    env.sandbox.dataset.planhat.set_metric_day(
        dimension_id=dimension_id, model=model_name, external_id=external_id, day=day, value=value
    )


def drift(env: Env) -> dict[Key, tuple[float, float | None]]:
    rows = env.sql("SELECT day, model, external_id, dimension_id, sent, planhat FROM metric_drift")
    return {(d, m, e, k): (s, p) for d, m, e, k, s, p in rows}


def test_metric_drift_lists_exactly_the_keys_changed_in_planhat_until_resend_metrics(
    env: Env,
) -> None:
    first = env.sync(SHORT[0], SHORT[-1])
    assert first.exit_code == 0, first.last_line
    assert first.run_id is not None
    sent: dict[Key, tuple[float, str]] = {
        (d, m, e, k): (v, a)
        for d, m, e, k, v, a in env.sql(
            "SELECT day, model, external_id, dimension_id, value, aggregation FROM sent_metrics"
        )
    }
    assert {a for _, a in sent.values()} == {"last", "sum"}
    # Every key sent was read back, and Planhat holds what the ledger says.
    read = env.sql("SELECT COUNT(*) FROM planhat_metric_readback")[0][0]
    assert read == len(sent) and drift(env) == {}
    assert check_results(first.run_id)["metric_drift"] == (True, None)

    lasts = sorted(k for k, (_, a) in sent.items() if a == "last")
    sums = sorted(k for k, (v, a) in sent.items() if a == "sum" and v > 0)
    changed_last, deleted_last, deleted_sum, raised_sum = lasts[0], lasts[-1], sums[0], sums[-1]
    set_day(env, changed_last, sent[changed_last][0] + 5)
    set_day(env, deleted_last, None)
    set_day(env, deleted_sum, None)
    set_day(env, raised_sum, sent[raised_sum][0] + 3)  # Planhat now holds more than was sent

    second = env.sync(SHORT[0], SHORT[-1])
    assert second.run_id is not None
    assert second.summary["metric_items_sent"] == 0  # Pendo did not change: nothing to send
    assert second.summary["metric_drift_keys"] == 4
    assert drift(env) == {
        changed_last: (sent[changed_last][0], sent[changed_last][0] + 5),
        deleted_last: (sent[deleted_last][0], None),
        deleted_sum: (sent[deleted_sum][0], None),
        raised_sum: (sent[raised_sum][0], sent[raised_sum][0] + 3),
    }
    passed, description = check_results(second.run_id)["metric_drift"]
    assert not passed and description is not None
    assert "on 4 metric key(s)" in description and "resend-metrics" in description
    assert str(changed_last[2]) in description or str(deleted_last[2]) in description

    # The documented fix: resend-metrics for the range.
    argv = ["resend-metrics", "--start", str(SHORT[0]), "--end", str(SHORT[-1])]
    assert main(argv) == 0
    assert drift(env) == {}
    for key in (changed_last, deleted_last, deleted_sum, raised_sum):
        assert shown(env, key, sent[key][1]) == sent[key][0]
    repairs = env.sql("SELECT COUNT(*) FROM outbox_metric_items WHERE repair")[0][0]
    assert repairs == 4
    assert main(argv) == 0  # nothing left to repair: nothing sent
    assert env.sql("SELECT COUNT(*) FROM outbox_metric_items WHERE repair")[0][0] == 4

    third = env.sync(SHORT[0], SHORT[-1])
    assert third.exit_code == 0 and third.run_id is not None
    assert third.summary["metric_items_sent"] == 0  # the repairs did not move the ledger
    assert check_results(third.run_id)["metric_drift"] == (True, None)
    # What the sandbox recorded, repairs included: a `sum` repair is one more point.
    repaired_sums = {(k[3], k[1], k[2], k[0].isoformat()) for k in (deleted_sum, raised_sum)}
    received, truth = env.received_metrics(), env.truth_metrics(SHORT)
    assert {k: v for k, v in received.items() if k not in repaired_sums} == {
        k: v for k, v in truth.items() if k not in repaired_sums
    }


def test_a_failed_read_back_fails_the_run_and_keeps_the_earlier_read_back(env: Env) -> None:
    assert env.sync(SHORT[0], SHORT[-1]).exit_code == 0
    before = env.sql("SELECT * FROM planhat_readback_days ORDER BY ALL")
    env.sandbox.faults.add(
        service="planhat_api", path="/dimensiondata", kind="status", status=500, times=100
    )
    outcome = env.sync(SHORT[0], SHORT[-1])
    assert outcome.exit_code == 1
    assert "reading metrics back failed" in outcome.last_line
    assert "answered 500" in outcome.last_line
    assert env.sql("SELECT * FROM planhat_readback_days ORDER BY ALL") == before
    env.sandbox.faults.clear()
    assert env.sync(SHORT[0], SHORT[-1]).exit_code == 0
