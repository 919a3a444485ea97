"""The sandbox's data generator: determinism, timezone days, row splits, categories, mutations."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from pendo_assets.sandbox import DEFAULT_APP_ID, SECOND_APP_ID, Dataset, SandboxSpec

DAY = date(2026, 11, 2)
KEY = ["visitorId", "accountId", "featureId"]
ROW = [*KEY, "remoteIp", "userAgent", "server"]


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return Dataset(SandboxSpec(), now=datetime(2026, 11, 3, 12, tzinfo=UTC))


def _bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ndjson(buf)
    return buf.getvalue()


def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds(ds):
    again = Dataset(SandboxSpec())
    other = Dataset(SandboxSpec(seed=8))
    assert _bytes(ds.feature_events(DAY)) == _bytes(again.feature_events(DAY))
    assert _bytes(ds.feature_events(DAY, hourly=True)) == _bytes(
        again.feature_events(DAY, hourly=True)
    )
    assert ds.planhat.records("EndUser") == again.planhat.records("EndUser")
    assert ds.features() == again.features()
    assert _bytes(ds.feature_events(DAY)) != _bytes(other.feature_events(DAY))
    assert ds.planhat.records("EndUser") != other.planhat.records("EndUser")


def test_day_is_local_midnight_and_dst_days_have_23_or_25_hours(ds):
    tz = ZoneInfo("America/New_York")
    for day, hours in [(date(2026, 11, 1), 25), (date(2026, 3, 8), 23), (DAY, 24)]:
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)
        assert ds.day_start_ms(day) == midnight
        assert len(ds.hour_starts_ms(day)) == hours
        daily = ds.feature_events(day)
        assert daily["day"].unique().to_list() == [midnight]
        hourly = ds.feature_events(day, hourly=True)
        assert set(hourly["hour"].unique().to_list()) <= set(ds.hour_starts_ms(day))
    assert ds.day_start_ms(date(2026, 11, 1)) == 1793505600000  # 04:00Z, still EDT
    assert ds.day_start_ms(date(2026, 11, 2)) == 1793595600000  # 05:00Z, EST
    # 25 distinct local hours are used on the long day
    assert ds.feature_events(date(2026, 11, 1), hourly=True)["hour"].n_unique() == 25


def test_tokyo_day_starts_at_15z_of_the_previous_utc_date():
    tokyo = Dataset(SandboxSpec(timezone="Asia/Tokyo", rows_per_day=500))
    start = datetime(2026, 11, 1, 15, tzinfo=UTC)
    assert tokyo.day_start_ms(date(2026, 11, 2)) == int(start.timestamp() * 1000)
    assert tokyo.feature_events(date(2026, 11, 2))["day"].unique().to_list() == [
        int(start.timestamp() * 1000)
    ]


def test_rows_have_pendo_fields_and_split_one_usage_into_one_to_four_distinct_rows(ds):
    rows = ds.feature_events(DAY)
    assert rows.columns == [
        "accountId", "appId", "day", "featureId", "numEvents", "numMinutes",
        "remoteIp", "server", "userAgent", "visitorId",
    ]  # fmt: skip
    assert rows.schema["appId"] == pl.Int64 and rows.schema["day"] == pl.Int64
    assert 0.9 * 5000 < rows.height < 1.1 * 5000
    per_key = rows.group_by(KEY).len()["len"]
    assert per_key.min() == 1 and per_key.max() == 4
    assert rows.select(ROW).n_unique() == rows.height  # rows differ by ip / agent / server
    assert rows["numEvents"].min() >= 1 and rows["numMinutes"].min() >= 0
    assert rows.filter(pl.col("remoteIp").str.contains(":")).height > 0  # IPv6 too
    assert set(rows["appId"].unique()) == {DEFAULT_APP_ID, SECOND_APP_ID}


def test_hourly_rows_sum_to_daily_rows(ds):
    daily = ds.feature_events(DAY).group_by(ROW).agg(pl.col("numEvents", "numMinutes").sum())
    hourly = ds.feature_events(DAY, hourly=True)
    assert "hour" in hourly.columns and hourly.height > daily.height
    summed = hourly.group_by(ROW).agg(pl.col("numEvents", "numMinutes").sum())
    joined = daily.join(summed, on=ROW, how="full", nulls_equal=True, suffix="_h")
    assert joined.height == daily.height
    assert (joined["numEvents"] == joined["numEvents_h"]).all()
    assert (joined["numMinutes"] == joined["numMinutes_h"]).all()


def test_every_visitor_and_account_category_and_awkward_id_is_present(ds):
    cats = ds.visitor_categories()
    assert set(Counter(cats.values())) == {
        "matched",
        "missing",
        "case_variant",
        "ambiguous",
        "late",
        "anonymous",
    }
    assert set(Counter(ds.account_categories().values())) == {
        "matched",
        "missing",
        "case_variant",
        "ambiguous",
    }
    ids = set(cats)
    long_ids = [v for v in ids if len(v) == 300]
    assert {"4", "ann.lee@example.com", "zoë-42", "用户-7", " padded-user "} <= ids and long_ids
    assert any('"' in v and "\\" in v for v in ids)
    assert any(v.startswith("_PENDO_T_") for v in ids)
    assert any(" " in a.strip() for a in ds.account_categories()) and any(
        not a.isascii() for a in ds.account_categories()
    )
    rows = ds.feature_events(DAY)
    seen = set(rows["visitorId"])
    assert {"4", " padded-user ", long_ids[0]} <= seen
    anon = rows.filter(pl.col("visitorId").str.starts_with("_PENDO_T_"))
    assert (
        anon.height > 0 and anon["accountId"].null_count() > 0 and (anon["accountId"] == "").any()
    )
    identified = rows.filter(~pl.col("visitorId").str.starts_with("_PENDO_T_"))
    two_accounts = identified.group_by("visitorId").agg(pl.col("accountId").n_unique().alias("n"))
    assert two_accounts["n"].max() >= 2


def test_planhat_tenant_matches_most_but_not_all_of_pendo(ds):
    cats = ds.visitor_categories()
    users = ds.planhat.records("EndUser")
    by_ext = Counter(u.get("externalId") for u in users)
    for vid, cat in cats.items():
        expected = {"matched": 1, "ambiguous": 2}.get(cat, 0)
        assert by_ext.get(vid, 0) == expected, (vid, cat)
        if cat == "case_variant":
            assert any(isinstance(k, str) and k != vid and k.lower() == vid.lower() for k in by_ext)
    assert any("externalId" not in u for u in users)
    assert any(u.get("externalId", 0) is None for u in users)
    assert any(u.get("externalId") == "" for u in users)
    assert any(str(u.get("externalId")).startswith("crm-user-") for u in users)
    companies = {c["_id"]: c for c in ds.planhat.records("Company")}
    assert all(u["companyId"] in companies for u in users)
    assert any(not companies[u["companyId"]].get("externalId") for u in users)
    for record in [*users, *companies.values()]:
        assert len(record["_id"]) == 24 and int(record["_id"], 16) >= 0
    accounts = ds.account_categories()
    c_ext = Counter(c.get("externalId") for c in companies.values())
    for aid, cat in accounts.items():
        assert c_ext.get(aid, 0) == {"matched": 1, "ambiguous": 2}.get(cat, 0)
    assets = ds.planhat.records("Asset")
    projects = ds.planhat.records("Project")
    assert 0.4 * len(accounts) < len(assets) < 0.6 * len(accounts) + 2
    assert 0.25 * len(accounts) < len(projects) < 0.4 * len(accounts)
    assert max(Counter(a["externalId"] for a in assets).values()) == 2


def test_revise_day_grow_only_grows_key_counts_and_shrink_drifts():
    ds = Dataset(SandboxSpec())
    before = ds.feature_events(DAY).group_by(KEY).agg(pl.col("numEvents").sum())
    assert ds.revise_day(DAY) == 1
    grown = ds.feature_events(DAY).group_by(KEY).agg(pl.col("numEvents").sum())
    joined = before.join(grown, on=KEY, how="full", nulls_equal=True, suffix="_after")
    assert joined["numEvents_after"].null_count() == 0  # no key vanished
    assert (joined["numEvents_after"] >= joined["numEvents"].fill_null(0)).all()
    assert (
        joined["numEvents_after"] > joined["numEvents"].fill_null(0)
    ).sum() > 0.1 * before.height
    assert joined["numEvents"].null_count() > 0  # new keys
    ds.revise_day(DAY, grow=False)
    shrunk = ds.feature_events(DAY).group_by(KEY).agg(pl.col("numEvents").sum())
    joined = grown.join(shrunk, on=KEY, how="left", nulls_equal=True, suffix="_after")
    assert (joined["numEvents_after"].fill_null(0) < joined["numEvents"]).sum() > 0
    # the same revisions on a fresh data set give the same rows
    twin = Dataset(SandboxSpec())
    twin.revise_day(DAY)
    twin.revise_day(DAY, grow=False)
    assert _bytes(twin.feature_events(DAY)) == _bytes(ds.feature_events(DAY))
    assert ds.revisions(DAY) == 2 and ds.revisions(DAY + timedelta(days=1)) == 0


def test_late_endusers_join_the_activity_truth_once(ds):
    fresh = Dataset(SandboxSpec())
    actions = {f["id"]: f["name"] for f in fresh.features()}
    late = {v for v, c in fresh.visitor_categories().items() if c == "late"}
    before = fresh.truth_activities(days=[DAY], actions=actions)
    assert not {k[0] for k in before} & late
    added = fresh.add_late_endusers()
    assert added == len(late)
    assert fresh.add_late_endusers() == 0
    after = fresh.truth_activities(days=[DAY], actions=actions)
    assert {k[0] for k in after} & late
    assert set(before) < set(after)


def test_truth_activities_sums_matched_visitors_only(ds):
    features = ds.features()
    actions = {features[0]["id"]: "Shared", features[1]["id"]: "Shared", features[2]["id"]: "Other"}
    truth = ds.truth_activities(days=[DAY], actions=actions)
    cats = ds.visitor_categories()
    assert truth and {cats[k[0]] for k in truth} == {"matched"}
    rows = ds.feature_events(DAY).filter(pl.col("featureId").is_in(list(actions)))
    rows = rows.with_columns(pl.col("featureId").replace_strict(actions).alias("action"))
    naive = {
        (v, a, DAY.isoformat()): n
        for v, a, n in rows.group_by("visitorId", "action")
        .agg(pl.col("numEvents").sum())
        .iter_rows()
        if cats[v] == "matched"
    }
    assert truth == naive


def test_truth_unmatched_visitors_gives_reasons(ds):
    fids = [f["id"] for f in ds.features()]
    unmatched = ds.truth_unmatched_visitors(days=[DAY], feature_ids=fids)
    reasons = Counter(r for r, _ in unmatched.values())
    assert set(reasons) == {"anonymous", "no_enduser", "ambiguous"}
    cats = ds.visitor_categories()
    for (_, vid, _), (reason, n) in unmatched.items():
        assert n >= 1
        assert reason == {"anonymous": "anonymous", "ambiguous": "ambiguous"}.get(
            cats[vid], "no_enduser"
        )
        assert cats[vid] in {"anonymous", "ambiguous", "missing", "case_variant", "late"}
    assert any(acc is None for (_, _, acc) in unmatched)


def test_demo_config_has_the_documented_shape(ds):
    config = ds.demo_config(start_date="2026-09-01")
    assert set(config) == {"pendo", "features", "pipelines"}
    assert config["pendo"] == {
        "region": "us",
        "timezone": "America/New_York",
        "start_date": "2026-09-01",
        "app_ids": "all",
    }
    features = config["features"]
    assert len(features) == 8
    apps = {f["id"]: f["appId"] for f in ds.features()}
    assert {apps[f["id"]] for f in features} == {DEFAULT_APP_ID, SECOND_APP_ID}
    with_action = [f for f in features if "action" in f]
    assert with_action and len(with_action) < len(features)
    assert max(Counter(f["action"] for f in with_action).values()) == 2
    pipelines = {p["name"]: p for p in config["pipelines"]}
    assert {(p["model"], p["aggregation"]) for p in pipelines.values()} >= {
        ("Company", "last"),
        ("Company", "sum"),
        ("Asset", "last"),
    }
    assert len({d for p in pipelines.values() for d in p["metrics"].values()}) == sum(
        len(p["metrics"]) for p in pipelines.values()
    )
    asset = next(p for p in pipelines.values() if p["model"] == "Asset")
    assert (
        asset["id_field"] == "assetId" and {"eval": {"assetId": "accountId"}} in asset["pipeline"]
    )
    for p in pipelines.values():
        assert set(p) == {"name", "model", "id_field", "metrics", "aggregation", "pipeline"}
        assert p["pipeline"][0] == {
            "source": {
                "featureEvents": None,
                "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
            }
        }


def test_truth_metrics_keeps_zero_and_only_unique_matches(ds):
    pipelines = ds.demo_config(start_date=DAY)["pipelines"]
    days = [DAY - timedelta(days=i) for i in range(5)]
    metrics = ds.truth_metrics(days=days, pipelines=pipelines)
    unmatched = ds.truth_unmatched_accounts(days=days, pipelines=pipelines)
    assert {k[1] for k in metrics} == {"Company", "Asset", "Project"}
    assert 0.0 in metrics.values()
    assert set(unmatched.values()) == {"no_object", "ambiguous"}
    companies = Counter(c.get("externalId") for c in ds.planhat.records("Company"))
    for (dim, model, ext, _), _value in metrics.items():
        if model == "Company":
            assert companies[ext] == 1, (dim, ext)
    assert any(k[2] == "Asset" and r == "ambiguous" for k, r in unmatched.items())


def test_spec_validates_and_scales():
    with pytest.raises(ValueError, match="visitors"):
        SandboxSpec(rows_per_day=4_000_000)
    with pytest.raises(ValueError, match="timezone"):
        SandboxSpec(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="between 0 and 1"):
        SandboxSpec(visitor_missing=1.5)
    big = SandboxSpec.for_rows(4_000_000)
    assert big.rows_per_day == 4_000_000 and big.n_visitors >= 500_000 and big.n_accounts >= 50_000
    assert SandboxSpec.for_rows(1000, seed=3).seed == 3


def test_spec_for_tenant_sizes_the_planhat_tenant():
    spec = SandboxSpec.for_tenant(endusers=20_000, companies=1_000, seed=3)
    store = Dataset(spec).planhat
    assert spec.seed == 3
    assert len(store.records("EndUser")) == 20_000
    assert len(store.records("Company")) == 1_000
