"""End to end on the sandbox: Pendo pages and track events as User Activities, and `as: metric`
features as daily Custom Metrics (DESIGN.md section 5, *More Pendo sources and per-feature
choice*), against the generator's ground truth."""

from __future__ import annotations

from datetime import date

import pytest

from pendo_assets.config import parse_config
from pendo_assets.landing import resolve_actions
from pendo_assets.models import EVENT_SOURCES, Feature
from pendo_assets.sandbox import SandboxSpec

from .conftest import SHORT, MakeEnv

KEYS = ["externalId", "email"]
SPEC = SandboxSpec(seed=11, n_visitors=400, n_accounts=60, rows_per_day=1200, identity=True)
DAYS: list[date] = SHORT[:2]


@pytest.mark.parametrize("backend", ["file"])
def test_pages_and_track_events_reach_ground_truth_and_a_second_run_sends_nothing(
    make_env: MakeEnv,
) -> None:
    env = make_env(spec=SPEC)
    data = env.sandbox.dataset
    sources = data.identity_config()  # matching (both keys, creation on), every page and type
    # One page and one track type without an action: named as in Pendo.
    del sources["pages"][0]["action"], sources["track_events"][0]["action"]
    env.reconfigure(**sources)
    names = {i["id"]: i["name"] for i in [*data.pages(), *data.track_types()]}
    pages = {p["id"]: p.get("action", names[p["id"]]) for p in sources["pages"]}
    tracks = {t["id"]: t.get("action", names[t["id"]]) for t in sources["track_events"]}
    truth = data.truth_activities_by_key(
        days=DAYS,
        features=env.actions(),
        pages=pages,
        track_events=tracks,
        end_user_keys=KEYS,
        create_end_users=True,
    )
    created = data.truth_created_end_users(
        end_user_keys=KEYS, days=DAYS, features=env.actions(), pages=pages, track_events=tracks
    )

    outcome = env.sync(DAYS[0], DAYS[-1])
    assert outcome.success, outcome.last_line

    received = env.sandbox.received
    assert received.activity_totals_by_key() == truth
    assert {a for _, a, _ in truth} >= set(pages.values()) | set(tracks.values())
    assert sorted(item["externalId"] for item in received.created("EndUser")) == sorted(created)
    # Each item's info names the ids behind its action (a track type named as in Pendo shares
    # "Invited teammate" with a feature: its items name either or both).
    allowed: dict[str, set[str]] = {}
    for key, actions in [("featureId", env.actions()), ("pageId", pages), ("trackTypeId", tracks)]:
        for action in actions.values():
            allowed.setdefault(action, set()).add(key)
    for item in received.activities():
        ids = set(item.info) - {"source"}
        assert ids and ids <= allowed[item.action], item.raw
    infos = {r.action: r.info for r in received.activities()}
    page_id, action = next(iter(pages.items()))
    assert infos[action] == {"pageId": page_id, "source": "pendo"}
    track_id, action = list(tracks.items())[-1]
    assert infos[action] == {"trackTypeId": track_id, "source": "pendo"}
    assert any(set(i.info) == {"featureId", "trackTypeId", "source"} for i in received.activities())
    # Landed with Pendo's row grain, one landed day per source and day.
    for source, table in [("page_events", "raw_page_events"), ("track_events", "raw_track_events")]:
        ((rows,),) = env.sql(f"SELECT COUNT(*) FROM {table}")
        landed = env.sql(
            "SELECT day, rows FROM landed_days WHERE source = ? ORDER BY day", [source]
        )
        assert [d for d, _ in landed] == DAYS and sum(n for _, n in landed) == rows > 0
    assert env.sql("SELECT COUNT(*) FROM activity_drift") == [(0,)]
    assert (
        env.sql(
            "SELECT COUNT(*) FROM item_lineage WHERE source IN ('raw_page_events', 'raw_track_events')"
        )[0][0]
        > 0
    )

    requests, upserts = env.analytics_requests(), len(received.upserts())
    again = env.sync(DAYS[0], DAYS[-1])
    assert again.success, again.last_line
    assert env.analytics_requests() == requests
    assert len(received.upserts()) == upserts
    assert received.activity_totals_by_key() == truth


@pytest.mark.parametrize("backend", ["file"])
def test_metric_features_send_their_daily_counts_and_no_activities(make_env: MakeEnv) -> None:
    env = make_env(spec=SandboxSpec(seed=11, n_visitors=400, n_accounts=60, rows_per_day=1200))
    features = [
        dict(f) for f in env.sandbox.dataset.demo_config(start_date="2026-10-01")["features"]
    ]
    metrics = {
        features[0]["id"]: ("feature_uses", "EndUser"),
        features[1]["id"]: ("feature_account_uses", "Company"),
    }
    for f in features[:2]:
        dimension, model = metrics[f["id"]]
        f.update({"as": "metric", "metric": {"dimension_id": dimension, "model": model}})
    env.reconfigure(features=features)
    values, unmatched = env.sandbox.dataset.truth_feature_metrics(days=DAYS, metrics=metrics)
    activities = {
        f.id: a
        for f, (_, a) in zip(env.config.features, env.actions().items(), strict=True)
        if not f.is_metric
    }

    outcome = env.sync(DAYS[0], DAYS[-1])
    assert outcome.success, outcome.last_line

    received = env.sandbox.received
    points = {
        key: sum(v)
        for key, v in received.metric_points(include_dropped=False).items()
        if key[0] in {"feature_uses", "feature_account_uses"}
    }
    assert points == values and values
    assert {a for _, a, _ in received.activity_totals_by_key()} == set(activities.values())
    got = {
        (d.isoformat(), p, i): r
        for d, p, i, r in env.sql(
            "SELECT day, pipeline, id, reason FROM unmatched_accounts WHERE pipeline LIKE 'feature:%'"
        )
    }
    assert got == unmatched
    ((sent,),) = env.sql(
        "SELECT COUNT(*) FROM sent_metrics WHERE aggregation = 'sum' AND dimension_id = 'feature_uses'"
    )
    assert sent == sum(1 for k in values if k[0] == "feature_uses")

    requests = env.analytics_requests()
    again = env.sync(DAYS[0], DAYS[-1])
    assert again.success, again.last_line
    assert env.analytics_requests() == requests


def test_actions_of_pages_and_track_types_named_weighted_and_recorded(conn) -> None:
    config = parse_config(
        "pendo: {timezone: UTC, start_date: 2026-09-01}\n"
        "features:\n"
        "  - {id: f1, action: Billing, weight: 2}\n"
        "  - {id: f2, as: metric, metric: {dimension_id: uses, model: Company}}\n"
        "pages:\n  - {id: p1, action: Billing, weight: 5}\n  - {id: p2}\n  - {id: p3}\n"
    )
    listed = [Feature(id="p2", name="Settings", app_id=None, kind="Page")]

    pages, warnings = resolve_actions(
        conn, config=config, source=EVENT_SOURCES["page_events"], pendo_items=listed
    )
    resolve_actions(conn, config=config, source=EVENT_SOURCES["feature_events"], pendo_items=[])

    assert sorted(pages.rows()) == [
        ("p1", "Billing", 2.0),
        ("p2", "Settings", 1.0),
        ("p3", "p3", 1.0),
    ]
    assert warnings == [
        "page p3 is not listed by Pendo and has no action in the config; its id is used as the "
        "activity name for now"
    ]
    assert sorted(
        conn.execute("SELECT feature_id, event_source, source FROM feature_actions").fetchall()
    ) == [
        ("f1", "feature_events", "config"),
        ("p1", "page_events", "config"),
        ("p2", "page_events", "pendo"),
        ("p3", "page_events", "fallback"),
    ]


def test_page_and_track_event_assets_exist_only_when_configured(monkeypatch, tmp_path) -> None:
    from pendo_assets.build import build_definitions

    monkeypatch.setenv("PENDO_PLANHAT_WAREHOUSE", str(tmp_path / "w.duckdb"))
    head = "pendo: {timezone: UTC, start_date: 2026-09-01}\nfeatures: [{id: f1}]\n"

    def raw_assets(text: str) -> set[str]:
        defs = build_definitions(parse_config(text))
        keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
        return {k for k in keys if k.endswith("_events")}

    assert raw_assets(head) == {"pendo_feature_events"}
    assert raw_assets(head + "pages: [{id: p1}]\n") == {"pendo_feature_events", "pendo_page_events"}
    assert raw_assets(head + "track_events: [{id: t1}]\n") == {
        "pendo_feature_events",
        "pendo_track_events",
    }
