"""``Dataset.truth_feature_metrics``: what `as: metric` features must send, recomputed here from
the served featureEvents rows and the Planhat tenant's objects."""

from __future__ import annotations

from collections import Counter
from datetime import date

import polars as pl

from pendo_assets.sandbox import Dataset, SandboxSpec

DAYS = [date(2026, 11, 1), date(2026, 11, 2)]


def test_truth_feature_metrics_sums_each_ids_events_and_matches_one_object() -> None:
    ds = Dataset(SandboxSpec(seed=5, n_visitors=300, n_accounts=40, rows_per_day=900))
    f_user, f_account = ds.features()[0]["id"], ds.features()[1]["id"]
    metrics = {f_user: ("uses", "EndUser"), f_account: ("account_uses", "Company")}

    values, unmatched = ds.truth_feature_metrics(days=DAYS, metrics=metrics)

    owners = {
        model: Counter(o.get("externalId") for o in ds.planhat.page(model, offset=0, limit=10**6))
        for model in ("EndUser", "Company")
    }
    want_values, want_unmatched = {}, {}
    for day in DAYS:
        rows = ds.feature_events(day).with_columns(pl.col("accountId").fill_null(""))
        for fid, (dimension, model) in metrics.items():
            column = "visitorId" if model == "EndUser" else "accountId"
            sums = (
                rows.filter(pl.col("featureId") == fid)
                .group_by(column)
                .agg(pl.col("numEvents").sum())
            )
            for ident, n in sums.iter_rows():
                found = owners[model][ident] if ident else 0
                if found == 1:
                    want_values[(dimension, model, ident, day.isoformat())] = float(n)
                else:
                    reason = "ambiguous" if found > 1 else "no_object"
                    want_unmatched[(day.isoformat(), f"feature:{fid}", ident)] = reason
    assert values == want_values and unmatched == want_unmatched
    assert {m for _, m, _, _ in values} == {"EndUser", "Company"}
    assert set(unmatched.values()) == {"no_object", "ambiguous"}
