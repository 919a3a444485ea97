"""Reading metrics back from Planhat (the sandbox), ``metric_drift`` and its fix, end to end.

A metric day is changed or deleted on the Planhat side, as a Planhat user could; the next sync
reads it back and lists exactly those keys; ``pendo-planhat resend-metrics`` makes Planhat agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import dagster as dg
import duckdb
import polars as pl

from pendo_assets import queries
from pendo_assets.cli import main
from pendo_assets.models import MetricPoint
from pendo_assets.readback import read_back_metrics
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
    first_day = min(k[0] for k in (changed_last, deleted_last, deleted_sum, raised_sum))
    assert f"--start {first_day} --end " in description

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


# Read-back on a warehouse, with a scripted reader


@dataclass
class Reader:
    """Planhat's points, read back in the order given."""

    points: list[MetricPoint] = field(default_factory=list)
    reads: list[tuple[str, date, date]] = field(default_factory=list)

    def get_dimension_data(
        self, *, dimension_id: str, start: date, end: date
    ) -> Iterator[list[MetricPoint]]:
        self.reads.append((dimension_id, start, end))
        yield [p for p in self.points if p.dimension_id == dimension_id and start <= p.day <= end]


D = date(2026, 11, 2)


def deliver(conn: duckdb.DuckDBPyConnection, dimension: str, value: float, agg: str) -> None:
    items = pl.DataFrame(
        {"day": [D], "model": ["Company"], "external_id": ["acct-1"], "dimension_id": [dimension]}
    ).with_columns(pl.lit(value).alias("value"), pl.lit(agg).alias("aggregation"))
    batch = queries.insert_batch(
        conn, kind="metrics", aggregation=agg, items=items, body_bytes=1, run_id="r"
    )
    queries.mark_batch(conn, batch_id=batch, status="sending", sent=True)
    queries.mark_batch(conn, batch_id=batch, status="delivered")


def point(dimension: str, value: float, parent: str = "co-1", day: date = D) -> MetricPoint:
    return MetricPoint(dimension, day, value, "Company", parent)


def test_read_back_compares_the_latest_point_of_last_and_the_sum_of_sum(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    snapshot = {"model": "Company", "object_id": "co-1", "external_id": "acct-1", "name": "Acme"}
    objects = pl.DataFrame([snapshot | {"snapshot_at": datetime(2026, 11, 3)}])
    queries.replace_planhat_objects(conn, objects)
    deliver(conn, "l", 5.0, "last")
    deliver(conn, "s", 7.0, "sum")
    reader = Reader(
        [
            point("l", 9.0),
            point("l", 5.0),  # the latest: what the day shows
            point("s", 3.0),
            point("s", 4.0),
            point("s", 1.0, parent="co-unknown"),  # not in the snapshot: left out
            point("s", 2.0, day=D + timedelta(days=1)),  # a day never sent: not read
        ]
    )
    report = read_back_metrics(conn, reader=reader, days=[D, D + timedelta(days=1)], run_id="r")
    assert sorted(reader.reads) == [("l", D, D), ("s", D, D)]
    assert (report.dimensions, report.metric_days, report.points) == (2, 2, 5)
    assert (report.keys, report.points_unknown_objects, report.drift_keys) == (2, 1, 0)
    rows = conn.execute(
        "SELECT dimension_id, points, sum_value, last_value, run_id FROM planhat_metric_readback "
        "ORDER BY ALL"
    ).fetchall()
    assert rows == [("l", 2, 14.0, 5.0, "r"), ("s", 2, 7.0, 4.0, "r")]

    reader.points += [point("l", 6.0), point("s", 2.0)]  # changed in Planhat
    read_back_metrics(conn, reader=reader, days=[D], run_id="r2")
    drift = conn.execute("SELECT dimension_id, sent, planhat FROM metric_drift ORDER BY ALL")
    assert drift.fetchall() == [("l", 5.0, 6.0), ("s", 7.0, 9.0)]

    deliver(conn, "l", 6.0, "last")  # sent after the read-back: waits for the next one
    assert queries.count_metric_drift(conn) == 1
    reader.points.clear()  # Planhat lost everything
    read_back_metrics(conn, reader=reader, days=[D], run_id="r3")
    drift = conn.execute("SELECT dimension_id, sent, planhat FROM metric_drift ORDER BY ALL")
    assert drift.fetchall() == [("l", 6.0, None), ("s", 7.0, None)]
