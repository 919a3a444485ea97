from __future__ import annotations

import math
from datetime import date

import polars as pl
import pytest

from pendo_assets.models import MATCHED_ACTIVITY_SCHEMA
from pendo_assets.transforms import (
    MetricFieldSpec,
    activity_deltas,
    daily_usage,
    extract_metric_values,
    match_activities,
    match_metrics,
    metric_deltas,
)

D1 = date(2026, 11, 1)
D2 = date(2026, 11, 2)


def _events(rows: list[tuple[date, str, str | None, str, int]]) -> pl.LazyFrame:
    return pl.DataFrame(
        rows,
        schema={
            "day": pl.Date,
            "visitor_id": pl.String,
            "account_id": pl.String,
            "feature_id": pl.String,
            "num_events": pl.Int64,
        },
        orient="row",
    ).lazy()


def _objects(rows: list[tuple[str, str, str | None, str | None]]) -> pl.LazyFrame:
    return pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "object_id": pl.String,
            "external_id": pl.String,
            "company_external_id": pl.String,
        },
        orient="row",
    ).lazy()


FEATURES = pl.DataFrame(
    {
        "feature_id": ["f1", "f2", "f3"],
        "action": ["Export", "Export", "Share"],
        "weight": [1.0, 1.0, 2.0],
    }
).lazy()


def test_daily_usage_sums_pendo_row_splits():
    events = _events(
        [
            (D1, "u1", "a1", "f1", 5),  # same key split by IP / agent / server
            (D1, "u1", "a1", "f1", 1),
            (D1, "u1", "a1", "f1", 1),
            (D1, "u1", "a2", "f1", 2),  # another account: its own row
        ]
    )
    out = daily_usage(events).collect().sort("account_id")
    assert out["num_events"].to_list() == [7, 2]


def test_match_activities_labels_every_unmatched_reason_and_folds_actions():
    usage = _events(
        [
            (D1, "u1", "a1", "f1", 3),
            (D1, "u1", "a1", "f2", 4),  # same action as f1
            (D1, "u1", "a1", "f3", 1),
            (D1, "_PENDO_T_abc", "a1", "f1", 9),
            (D1, "VISITOR-UNIQUE-ID", None, "f1", 2),
            (D1, "ghost", "a2", "f1", 5),
            (D1, "Dup", "a2", "f1", 6),
            (D1, "U1", "a1", "f1", 7),  # case variant of u1: no match
            (D1, "u1", "a1", "f9", 8),  # feature not configured: ignored
        ]
    )
    objects = _objects(
        [
            ("EndUser", "e1", "u1", "acme"),
            ("EndUser", "e2", "Dup", None),
            ("EndUser", "e3", "Dup", None),
            ("EndUser", "e4", None, None),
            ("EndUser", "e5", "", None),
            ("Company", "c1", "ghost", None),  # other models never match visitors
        ]
    )
    matched, unmatched = match_activities(daily_usage(usage), objects, FEATURES)
    m = matched.collect().sort("action")
    assert m.select(
        "external_id", "action", "count", "weight", "company_external_id", "feature_ids"
    ).rows() == [
        ("u1", "Export", 7, 1.0, "acme", "f1,f2"),
        ("u1", "Share", 1, 2.0, "acme", "f3"),
    ]
    u = {(r["visitor_id"], r["reason"]): r["num_events"] for r in unmatched.collect().to_dicts()}
    assert u == {
        ("_PENDO_T_abc", "anonymous"): 9,
        ("VISITOR-UNIQUE-ID", "anonymous"): 2,
        ("ghost", "no_enduser"): 5,
        ("Dup", "ambiguous"): 6,
        ("U1", "no_enduser"): 7,
    }


def test_extract_metric_values_rejects_what_json_cannot_carry():
    spec = MetricFieldSpec(
        pipeline="p",
        model="Company",
        id_field="accountId",
        metrics={"n": "clicks"},
        aggregation="last",
    )
    rows = [
        {"accountId": "a1", "n": 3},
        {"accountId": "a2", "n": 0},
        {"accountId": 42, "n": 1.5},
        {"accountId": "a3", "n": "12"},
        {"accountId": "a4", "n": math.nan},
        {"accountId": "a5", "n": math.inf},
        {"accountId": "a6", "n": None},
        {"accountId": "a7"},
        {"accountId": "", "n": 1},
        {"n": 1},
        {"accountId": "a8", "n": True},
        {"accountId": "dup", "n": 1},
        {"accountId": "dup", "n": 2},
    ]
    values, rejects = extract_metric_values(rows, day=D1, spec=spec)
    assert values.select("id", "value").rows() == [("a1", 3.0), ("a2", 0.0), ("42", 1.5)]
    reasons = [r.reason for r in rejects]
    assert len(rejects) == 10
    assert "n is a string: '12'" in reasons
    assert "n is not finite: nan" in reasons and "n is not finite: inf" in reasons
    assert "n is null" in reasons and "n is missing" in reasons and "n is a boolean" in reasons
    assert reasons.count("accountId is missing or empty") == 2
    assert reasons.count("accountId appears more than once: 'dup' (2 rows)") == 2
    # The kind of a problem never carries a value from Pendo.
    assert sorted({r.kind for r in rejects}) == [
        "accountId appears more than once",
        "accountId is missing or empty",
        "n is a boolean",
        "n is a string",
        "n is missing",
        "n is not finite",
        "n is null",
    ]


def test_match_metrics_uses_the_pipeline_model_namespace():
    values = pl.DataFrame(
        {
            "day": [D1, D1, D1, D1],
            "pipeline": ["p"] * 4,
            "model": ["Company", "Company", "Company", "Asset"],
            "id": ["a1", "dup", "none", "a1"],
            "dimension_id": ["d"] * 4,
            "value": [1.0, 2.0, 3.0, 4.0],
            "aggregation": ["last"] * 4,
        }
    ).lazy()
    objects = _objects(
        [
            ("Company", "c1", "a1", None),
            ("Company", "c2", "dup", None),
            ("Company", "c3", "dup", None),
            ("Project", "p1", "none", None),
        ]
    )
    matched, unmatched = match_metrics(values, objects)
    assert matched.collect().select("model", "external_id", "value").rows() == [
        ("Company", "a1", 1.0)
    ]
    assert sorted(unmatched.collect().select("model", "id", "reason").rows()) == [
        ("Asset", "a1", "no_object"),
        ("Company", "dup", "ambiguous"),
        ("Company", "none", "no_object"),
    ]


def _current(rows: list[tuple[date, str, str, int]]) -> pl.LazyFrame:
    return pl.DataFrame(
        [(*r, 1.0, None, "f1", f"e-{r[1]}", None, "externalId", None, None) for r in rows],
        schema=MATCHED_ACTIVITY_SCHEMA,
        orient="row",
    ).lazy()


def _keys(rows: list[tuple], extra: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Ledger keys: the End User's _id stands for the address (``e-`` + it)."""
    schema = {"day": pl.Date, "enduser_id": pl.String, "action": pl.String, **extra}
    rows = [(r[0], f"e-{r[1]}", *r[2:]) for r in rows]
    return pl.DataFrame(rows, schema=schema, orient="row").lazy()


def test_activity_deltas_send_only_growth_record_drift_and_hold_keys_in_doubt():
    current = _current(
        [
            (D1, "u1", "A", 10),
            (D1, "u2", "A", 3),
            (D1, "u3", "A", 5),
            (D2, "u4", "A", 2),
            (D2, "u5", "A", 4),
        ]
    )
    sent = _keys([(D1, "u1", "A", 6), (D1, "u2", "A", 5), (D1, "u3", "A", 5)], {"sent": pl.Int64})
    held = _keys([(D2, "u5", "A")], {})
    to_send, drift = activity_deltas(current, sent, held)
    assert sorted(to_send.collect().select("external_id", "count").rows()) == [("u1", 4), ("u4", 2)]
    assert drift.collect().select("external_id", "sent", "source").rows() == [("u2", 5, 3)]


def _metric_current(rows: list[tuple[str, float, str]]) -> pl.LazyFrame:
    return pl.DataFrame(
        [(D1, "Company", ext, "d", value, agg) for ext, value, agg in rows],
        schema={
            "day": pl.Date,
            "model": pl.String,
            "external_id": pl.String,
            "dimension_id": pl.String,
            "value": pl.Float64,
            "aggregation": pl.String,
        },
        orient="row",
    ).lazy()


def test_metric_deltas_last_resends_changes_and_sum_sends_differences():
    current = _metric_current(
        [
            ("new", 0.0, "last"),  # never sent: sent in full, zero included
            ("same", 5.0, "last"),
            ("changed", 7.0, "last"),
            ("snew", 3.0, "sum"),
            ("ssame", 0.3, "sum"),  # 0.1 + 0.2 already sent: float noise is not a delta
            ("sless", 2.0, "sum"),
            ("held", 9.0, "last"),
        ]
    )
    sent = pl.DataFrame(
        [
            (D1, "Company", "same", "d", 5.0, 5.0),
            (D1, "Company", "changed", "d", 4.0, 4.0),
            (D1, "Company", "ssame", "d", 0.2, 0.1 + 0.2),
            (D1, "Company", "sless", "d", 5.0, 5.0),
        ],
        schema={
            "day": pl.Date,
            "model": pl.String,
            "external_id": pl.String,
            "dimension_id": pl.String,
            "last_value": pl.Float64,
            "sum_value": pl.Float64,
        },
        orient="row",
    ).lazy()
    held = pl.DataFrame(
        [(D1, "Company", "held", "d")],
        schema={
            "day": pl.Date,
            "model": pl.String,
            "external_id": pl.String,
            "dimension_id": pl.String,
        },
        orient="row",
    ).lazy()
    out = dict(metric_deltas(current, sent, held).collect().select("external_id", "value").rows())
    assert out == {"new": 0.0, "changed": 7.0, "snew": 3.0, "sless": -3.0}


@pytest.mark.parametrize("n", [0, 1, 5])
def test_daily_usage_handles_small_and_empty_days(n):
    rows = [(D1, f"u{i}", "a", "f1", 1) for i in range(n)]
    assert daily_usage(_events(rows)).collect().height == n
