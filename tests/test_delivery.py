"""The exactly-once protocol against a real DuckDB file and a scripted in-memory Planhat."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import duckdb
import polars as pl
import pytest

from pendo_assets.delivery import Publisher, PublishSettings, pack_batches, resolve_batch
from pendo_assets.errors import (
    ApiStatusError,
    ApiTransportError,
    DeliveryError,
    DeliveryUnknownError,
)
from pendo_assets.models import MATCHED_ACTIVITY_SCHEMA, MATCHED_METRIC_SCHEMA
from pendo_assets.queries import insert_frame, replace_days

D1 = date(2026, 11, 1)
D2 = date(2026, 11, 2)


@dataclass
class Outcome:
    errors: list[dict[str, object]] = field(default_factory=list)


class FakePlanhat:
    """Applies what it accepts; `script` lists what to do with the next requests."""

    def __init__(self) -> None:
        self.activities: Counter[tuple[str, str, str]] = Counter()
        self.metrics: dict[tuple[str, str, str, str], list[float]] = {}
        self.script: list[str] = []
        self.requests = 0

    def _next(self) -> str:
        return self.script.pop(0) if self.script else "ok"

    def _handle(self, body: bytes, apply) -> Outcome:
        self.requests += 1
        action = self._next()
        items = json.loads(body)
        if action == "413":
            raise ApiStatusError(
                "too large", service="planhat", method="POST", url="/x", status_code=413
            )
        if action == "503":
            raise ApiStatusError(
                "down", service="planhat", method="POST", url="/x", status_code=503
            )
        if action == "refused":
            raise ApiTransportError("refused", service="planhat", method="POST", url="/x")
        if action == "lost":  # applied, but the answer never arrived
            apply(items)
            raise DeliveryUnknownError("reset", service="planhat", method="POST", url="/x")
        if action == "lost_unapplied":
            raise DeliveryUnknownError("reset", service="planhat", method="POST", url="/x")
        if action.startswith("reject:"):
            bad = int(action.split(":")[1])
            apply([it for i, it in enumerate(items) if i != bad])
            return Outcome(errors=[{"item": items[bad], "error": "value must be a number"}])
        apply(items)
        return Outcome()

    def post_activities(self, body: bytes, *, items: int, hooks: Any = None) -> None:
        def apply(rows):
            for it in rows:
                self.activities[(it["externalId"], it["action"], it["date"])] += it["count"]

        self._handle(body, apply)

    def post_dimension_data(self, body: bytes, *, items: int, hooks: Any = None) -> Outcome:
        def apply(rows):
            for it in rows:
                key = (it["dimensionId"], it["model"], it["externalId"], it["date"])
                self.metrics.setdefault(key, []).append(it["value"])

        return self._handle(body, apply)


def _set_activities(
    conn, rows: list[tuple[date, str, str, int]], company: str | None = "acme"
) -> None:
    frame = pl.DataFrame(
        [
            (d, e, a, c, 1.0, company, "f1", f"id-{e}", None, "externalId", None, None)
            for d, e, a, c in rows
        ],
        schema=MATCHED_ACTIVITY_SCHEMA,
        orient="row",
    )
    replace_days(conn, days=sorted({r[0] for r in rows}), frames={"matched_activities": [frame]})


def _set_metrics(conn, rows: list[tuple[date, str, str, float, str]]) -> None:
    frame = pl.DataFrame(
        [(d, "p", "Company", e, dim, v, agg) for d, e, dim, v, agg in rows],
        schema=MATCHED_METRIC_SCHEMA,
        orient="row",
    )
    replace_days(conn, days=sorted({r[0] for r in rows}), frames={"matched_metrics": [frame]})


def _publisher(conn, planhat, **settings) -> Publisher:
    return Publisher(conn=conn, sender=planhat, run_id="r1", settings=PublishSettings(**settings))


def test_pack_batches_respects_both_limits_and_keeps_order():
    assert pack_batches([10, 10, 10, 10, 10], max_items=2, max_bytes=1000) == [
        (0, 2),
        (2, 4),
        (4, 5),
    ]
    # 2 brackets + 10 + 1 comma + 10 = 23 bytes fits 23, not 22
    assert pack_batches([10, 10, 10], max_items=100, max_bytes=23) == [(0, 2), (2, 3)]
    assert pack_batches([], max_items=1, max_bytes=10) == []
    with pytest.raises(DeliveryError):
        pack_batches([100], max_items=1, max_bytes=50)


def test_publish_sends_deltas_once_and_a_rerun_sends_nothing(conn):
    planhat = FakePlanhat()
    _set_activities(
        conn, [(D1, "u1", "Export", 5), (D1, "u2", "Export", 2), (D2, "u1", "Export", 1)]
    )
    _set_metrics(
        conn,
        [
            (D1, "a1", "clicks", 3.0, "last"),
            (D1, "a1", "mins", 2.0, "sum"),
            (D1, "a2", "clicks", 0.0, "last"),
        ],
    )
    report = _publisher(conn, planhat, max_items=2).publish([D1, D2])
    assert report.activity_items_sent == 3 and report.activity_units_sent == 8
    assert report.metric_items_sent == 3
    assert planhat.activities == {
        ("u1", "Export", "2026-11-01"): 5,
        ("u2", "Export", "2026-11-01"): 2,
        ("u1", "Export", "2026-11-02"): 1,
    }
    assert planhat.metrics[("clicks", "Company", "a2", "2026-11-01")] == [0.0]

    again = _publisher(conn, planhat).publish([D1, D2])
    assert again.requests == 0 and again.activity_items_sent == 0 and again.metric_items_sent == 0

    # Pendo's numbers change: only the differences go out, sums end equal to the new values.
    _set_activities(
        conn, [(D1, "u1", "Export", 8), (D1, "u2", "Export", 1), (D2, "u1", "Export", 1)]
    )
    _set_metrics(
        conn,
        [
            (D1, "a1", "clicks", 4.0, "last"),
            (D1, "a1", "mins", 5.0, "sum"),
            (D1, "a2", "clicks", 0.0, "last"),
        ],
    )
    third = _publisher(conn, planhat).publish([D1, D2])
    assert planhat.activities[("u1", "Export", "2026-11-01")] == 8
    assert planhat.activities[("u2", "Export", "2026-11-01")] == 2  # cannot be retracted ...
    assert third.drift_keys == 1  # ... so it is recorded as drift
    assert (
        conn.execute("SELECT external_id, sent, source FROM activity_drift").fetchall() == []
    )  # no raw rows landed
    assert planhat.metrics[("clicks", "Company", "a1", "2026-11-01")] == [3.0, 4.0]
    assert sum(planhat.metrics[("mins", "Company", "a1", "2026-11-01")]) == 5.0
    sent = dict(
        conn.execute(
            "SELECT external_id || '/' || dimension_id, value FROM sent_metrics"
        ).fetchall()
    )
    assert sent == {"a1/clicks": 4.0, "a1/mins": 5.0, "a2/clicks": 0.0}


def test_unknown_outcome_holds_only_its_own_keys_and_is_never_resent(conn):
    planhat = FakePlanhat()
    _set_activities(conn, [(D1, f"u{i}", "Export", 1) for i in range(6)])
    planhat.script = ["ok", "lost", "ok"]
    report = _publisher(conn, planhat, max_items=2).publish([D1])
    assert report.batches_in_doubt_new == 1 and report.batches_in_doubt_total == 1
    assert sum(planhat.activities.values()) == 6  # the lost batch was applied by Planhat
    doubt = conn.execute("SELECT batch_id, kind, items FROM batches_in_doubt").fetchall()
    assert [(k, n) for _, k, n in doubt] == [("activities", 2)]

    # Rerun: nothing is resent, the held keys are not touched.
    rerun = _publisher(conn, planhat).publish([D1])
    assert rerun.requests == 0 and rerun.held_activity_keys == 2
    assert max(planhat.activities.values()) == 1

    # The user checks Planhat and confirms delivery: the keys join the ledger.
    resolve_batch(conn, batch_id=doubt[0][0], outcome="delivered")
    assert _publisher(conn, planhat).publish([D1]).requests == 0
    assert conn.execute("SELECT SUM(count) FROM sent_activities").fetchone()[0] == 6


def test_resolving_a_batch_as_resend_sends_its_keys_again(conn):
    planhat = FakePlanhat()
    _set_activities(conn, [(D1, "u1", "Export", 4)])
    planhat.script = ["lost_unapplied"]
    _publisher(conn, planhat).publish([D1])
    (batch_id,) = conn.execute("SELECT batch_id FROM batches_in_doubt").fetchone()
    resolve_batch(conn, batch_id=batch_id, outcome="resend")
    _publisher(conn, planhat).publish([D1])
    assert planhat.activities == {("u1", "Export", "2026-11-01"): 4}
    with pytest.raises(Exception, match="not in doubt"):
        resolve_batch(conn, batch_id=batch_id, outcome="resend")


def test_a_lost_last_metric_batch_is_resent_but_a_lost_sum_batch_is_held(conn):
    planhat = FakePlanhat()
    _set_metrics(conn, [(D1, "a1", "clicks", 3.0, "last"), (D1, "a1", "mins", 2.0, "sum")])
    planhat.script = ["lost", "ok", "lost"]  # last: lost then resent; sum: lost
    report = _publisher(conn, planhat).publish([D1])
    assert planhat.metrics[("clicks", "Company", "a1", "2026-11-01")] == [3.0, 3.0]  # harmless
    assert planhat.metrics[("mins", "Company", "a1", "2026-11-01")] == [2.0]
    assert report.batches_in_doubt_new == 1
    assert conn.execute("SELECT kind, aggregation FROM batches_in_doubt").fetchall() == [
        ("metrics", "sum")
    ]


def test_interrupted_run_is_recovered_without_double_counting(conn):
    planhat = FakePlanhat()
    _set_activities(conn, [(D1, "u1", "Export", 4), (D1, "u2", "Export", 1)])
    _set_metrics(conn, [(D1, "a1", "clicks", 3.0, "last")])
    pub = _publisher(conn, planhat, max_items=1)
    plan = pub.plan([D1])
    # Simulate a crash: one activity batch written and flipped to sending (maybe sent), one
    # only prepared (never sent), one last-metric batch sending.
    ids = []
    for frame, kind, agg in (
        (plan.activities[:1], "activities", None),
        (plan.activities[1:], "activities", None),
        (plan.metrics, "metrics", "last"),
    ):
        ids.append(pub._prepare(kind, agg, frame, 10))
    pub._mark(ids[0], "sending", sent=True)
    pub._mark(ids[2], "sending", sent=True)
    planhat.activities[("u1", "Export", "2026-11-01")] += 4  # it did reach Planhat

    report = _publisher(conn, planhat).publish([D1])
    assert report.recovery.discarded_prepared == 1
    assert report.recovery.new_in_doubt == 1
    assert report.recovery.resent_last == 1
    assert planhat.activities == {
        ("u1", "Export", "2026-11-01"): 4,
        ("u2", "Export", "2026-11-01"): 1,
    }
    assert planhat.metrics == {("clicks", "Company", "a1", "2026-11-01"): [3.0]}
    assert conn.execute("SELECT batch_id FROM batches_in_doubt").fetchall() == [(ids[0],)]


def test_413_splits_the_batch_and_refusals_stop_without_recording(conn):
    planhat = FakePlanhat()
    _set_activities(conn, [(D1, f"u{i}", "Export", 1) for i in range(4)])
    planhat.script = ["413"]
    report = _publisher(conn, planhat).publish([D1])
    assert report.batches_split == 1 and report.batches_delivered == 2
    assert sum(planhat.activities.values()) == 4

    _set_activities(conn, [(D1, f"u{i}", "Export", 2) for i in range(4)])
    planhat.script = ["503"]
    with pytest.raises(DeliveryError, match="did not accept"):
        _publisher(conn, planhat).publish([D1])
    planhat.script = ["refused"]
    with pytest.raises(DeliveryError):
        _publisher(conn, planhat).publish([D1])
    _publisher(conn, planhat).publish([D1])
    assert set(planhat.activities.values()) == {2}


def test_items_planhat_rejects_are_kept_for_the_next_run(conn):
    planhat = FakePlanhat()
    _set_metrics(conn, [(D1, "a1", "mins", 2.0, "sum"), (D1, "a2", "mins", 3.0, "sum")])
    planhat.script = ["reject:1"]
    report = _publisher(conn, planhat).publish([D1])
    assert report.metric_items_rejected == 1 and report.metric_items_sent == 1
    _publisher(conn, planhat).publish([D1])
    assert {k[2]: sum(v) for k, v in planhat.metrics.items()} == {"a1": 2.0, "a2": 3.0}


def test_dry_run_sends_nothing_and_stores_the_plan(conn):
    planhat = FakePlanhat()
    _set_activities(conn, [(D1, "u1", "Export", 5)], company=None)
    report = _publisher(conn, planhat).publish([D1], dry_run=True)
    assert planhat.requests == 0 and report.activity_items_planned == 1
    assert conn.execute("SELECT external_id, count FROM planned_activities").fetchall() == [
        ("u1", 5)
    ]
    assert conn.execute("SELECT COUNT(*) FROM outbox_batches").fetchone()[0] == 0


def test_activity_items_omit_company_when_none(conn):
    captured = []

    class Capture(FakePlanhat):
        def post_activities(self, body, *, items, hooks=None):
            captured.extend(json.loads(body))
            super().post_activities(body, items=items, hooks=hooks)

    _set_activities(conn, [(D1, 'we"ird\\id', "Export", 5)], company=None)
    _set_activities(conn, [(D2, "u2", "Export", 1)], company="acme")
    _publisher(conn, Capture()).publish([D1, D2])
    assert captured == [
        {
            "externalId": 'we"ird\\id',
            "action": "Export",
            "date": "2026-11-01",
            "count": 5,
            "weight": 1.0,
            "info": {"featureId": "f1", "source": "pendo"},
        },
        {
            "externalId": "u2",
            "action": "Export",
            "date": "2026-11-02",
            "count": 1,
            "weight": 1.0,
            "info": {"featureId": "f1", "source": "pendo"},
            "companyExternalId": "acme",
        },
    ]


def test_insert_frame_and_replace_days_roll_back_on_error(conn):
    _set_activities(conn, [(D1, "u1", "Export", 5)])
    bad = pl.DataFrame(
        {"day": [D1], "external_id": [None]}, schema={"day": pl.Date, "external_id": pl.String}
    )
    with pytest.raises(duckdb.ConstraintException):
        replace_days(conn, days=[D1], frames={"matched_activities": [bad]})
    assert conn.execute("SELECT count FROM matched_activities").fetchall() == [(5,)]
    assert insert_frame(conn, "matched_activities", bad.head(0)) == 0


def test_a_run_stopped_while_waiting_out_a_429_leaves_nothing_in_doubt(conn):
    import httpx

    from pendo_assets.clients import PlanhatClient, RetryPolicy

    answers = [httpx.Response(429, headers={"Retry-After": "30"}), httpx.Response(200, json={})]
    received = []

    def planhat(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer.status_code == 200:
            received.extend(json.loads(request.content))
        return answer

    def stopped(seconds: float) -> None:
        raise KeyboardInterrupt  # Ctrl-C (or a kill) while the client waits to retry

    def client(sleep) -> PlanhatClient:
        return PlanhatClient(
            api_token="t",
            tenant_token="tenant",
            transport=httpx.MockTransport(planhat),
            retry=RetryPolicy(jitter=False),
            sleep=sleep,
        )

    _set_activities(conn, [(D1, "u1", "Export", 4)])
    with pytest.raises(KeyboardInterrupt):
        Publisher(conn=conn, sender=client(stopped)).publish([D1])
    assert conn.execute("SELECT status FROM outbox_batches").fetchall() == [("prepared",)]

    report = Publisher(conn=conn, sender=client(lambda seconds: None)).publish([D1])
    assert report.recovery.discarded_prepared == 1 and report.batches_in_doubt_total == 0
    assert [(i["externalId"], i["count"]) for i in received] == [("u1", 4)]
