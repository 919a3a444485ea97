"""The sandbox's identity data (issue 10): visitor emails, End Users matched by email,
``pageEvents`` / ``trackEvents``, ``PUT /endusers`` creation, and their ground truth."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, date, datetime

import httpx
import polars as pl
import pytest

from pendo_assets.sandbox import (
    DEFAULT_APP_ID,
    PAGE_EVENTS,
    VISITORS,
    Dataset,
    Sandbox,
    SandboxSpec,
    malformed_feature_rows,
    malformed_visitor_rows,
)
from pendo_assets.sandbox.pipeline import SourceSpec

NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)
DAY = date(2026, 11, 2)
DAYS = [date(2026, 11, 1), DAY]
BOTH = ("externalId", "email")
EVENT_COLUMNS = ["accountId", "appId", "day", "numEvents", "numMinutes", "remoteIp", "server"]


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxSpec(identity=True), now=NOW) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def base() -> Dataset:
    return Dataset(SandboxSpec(), now=NOW)


@pytest.fixture
def client():
    with httpx.Client(timeout=30) as c:
        yield c


def _bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ndjson(buf)
    return buf.getvalue()


def pendo(sb, client, pipeline):
    body = {"response": {"mimeType": "application/json"}, "request": {"pipeline": pipeline}}
    r = client.post(
        f"{sb.pendo_url}/api/v1/aggregation",
        json=body,
        headers={"x-pendo-integration-key": sb.pendo_key},
    )
    assert r.status_code == 200, r.text
    return r.json()["results"]


def api(sb):
    return {"Authorization": f"Bearer {sb.api_token}"}


def norm(email):
    return email.strip().lower() if isinstance(email, str) and email.strip() else None


def configured(ds):
    features = {f["id"]: f["name"] for f in ds.features()[:6]}
    pages = {p["id"]: f"Viewed {p['name']}" for p in ds.pages()}
    tracks = {t["id"]: f"{t['name']} (track event)" for t in ds.track_types()}
    return features, pages, tracks


# ------------------------------------------------------------------ off by default, determinism


def test_identity_is_off_by_default_and_leaves_todays_data_and_truth_alone(sb, base):
    ds = sb.dataset
    assert SandboxSpec().identity is False
    assert _bytes(ds.feature_events(DAY)) == _bytes(base.feature_events(DAY))
    assert ds.planhat.records("Company") == base.planhat.records("Company")
    old = base.planhat.records("EndUser")
    assert ds.planhat.records("EndUser")[: len(old)] == old  # identity only appends
    assert ds.visitor_categories() == base.visitor_categories()
    features, _, _ = configured(ds)
    truth = base.truth_activities(days=DAYS, actions=features)
    assert ds.truth_activities(days=DAYS, actions=features) == truth
    assert ds.truth_activities_by_key(days=DAYS, features=features) == truth
    assert base.truth_activities_by_key(days=DAYS, features=features) == truth
    unmatched = base.truth_unmatched_visitors(days=DAYS, feature_ids=list(features))
    assert ds.truth_unmatched_by_key(days=DAYS, features=list(features)) == unmatched
    assert set(base.visitor_emails().values()) == {None}
    # the default data set's visitors carry no email field at all
    assert base.identity_categories() == base.visitor_categories()
    visitors = base.source_frame(SourceSpec(kind="visitors"))
    assert visitors["metadata"].struct.field("agent").struct.fields == ["language"]


def test_identity_data_is_deterministic_for_a_seed(sb):
    again = Dataset(SandboxSpec(identity=True), now=NOW)
    other = Dataset(SandboxSpec(identity=True, seed=8), now=NOW)
    ds = sb.dataset
    assert ds.visitor_emails() == again.visitor_emails()
    assert ds.identity_categories() == again.identity_categories()
    assert ds.planhat.records("EndUser") == again.planhat.records("EndUser")
    assert _bytes(ds.page_events(DAY)) == _bytes(again.page_events(DAY))
    assert _bytes(ds.track_events(DAY, hourly=True)) == _bytes(again.track_events(DAY, hourly=True))
    assert ds.pages() == again.pages() and ds.track_types() == again.track_types()
    assert ds.visitor_emails() != other.visitor_emails()
    assert _bytes(ds.page_events(DAY)) != _bytes(other.page_events(DAY))


# ------------------------------------------------------------------ visitors and End Users


def test_visitors_source_serves_emails_and_account_ids_with_paging(sb, client):
    stages = [
        {"source": {"visitors": None}},
        {"identified": "visitorId"},
        {
            "select": {
                "visitorId": "visitorId",
                "email": "metadata.agent.email",
                "accountids": "metadata.auto.accountids",
            }
        },
        {"sort": ["visitorId"]},
    ]
    rows, last = [], None
    while True:
        page = [*stages[:3], *([{"filter": f"visitorId > {_quote(last)}"}] if last else [])]
        got = pendo(sb, client, [*page, stages[3], {"limit": 500}])
        rows.extend(got)
        if len(got) < 500:
            break
        last = got[-1]["visitorId"]
    ds = sb.dataset
    emails = ds.visitor_emails()
    assert len(rows) == len(emails) == ds.spec.n_visitors
    assert {r["visitorId"]: r["email"] for r in rows} == emails
    accounts = ds.visitor_accounts()
    assert all(tuple(r["accountids"]) == accounts[r["visitorId"]] for r in rows)
    values = [e for e in emails.values() if e]
    assert any(e is None for e in emails.values()) and "" in emails.values()
    assert any(e != e.strip() for e in values)  # surrounding spaces
    assert any(e.strip() != e.strip().lower() for e in values)  # other case
    anonymous = pendo(
        sb, client, [{"source": {"visitors": None}}, {"identified": "!visitorId"}, {"limit": 5}]
    )
    assert anonymous and all(r["metadata"]["agent"]["email"] is None for r in anonymous)


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_identity_categories_shape_the_planhat_tenant(sb):
    ds = sb.dataset
    cats = ds.identity_categories()
    counts = Counter(cats.values())
    for cat in (
        "email_only",
        "email_shared",
        "email_ambiguous",
        "create",
        "no_company",
        "no_email",
    ):
        assert counts[cat] >= 1, cat
    emails = ds.visitor_emails()
    eus = ds.planhat.records("EndUser")
    by_email: dict[str, list[dict]] = {}
    for r in eus:
        by_email.setdefault(norm(r["email"]), []).append(r)
    company_ext = {c["_id"]: c.get("externalId") for c in ds.planhat.records("Company")}
    ext_counts = ds.planhat.external_counts("Company")
    accounts = ds.visitor_accounts()
    for vid, cat in cats.items():
        email = norm(emails.get(vid))
        holders = by_email.get(email, []) if email else []
        account = accounts[vid][0]
        if cat in ("email_only", "email_shared", "email_ambiguous", "create", "no_company"):
            assert accounts[vid] == (account,)  # single-account visitors only
        if cat == "email_only":
            assert len(holders) == 1 and not holders[0].get("externalId")
        elif cat == "email_shared":
            assert len(holders) == 2
            assert len({h["companyId"] for h in holders}) == 2
            assert [company_ext[h["companyId"]] == account for h in holders].count(True) == 1
        elif cat == "email_ambiguous":
            assert len(holders) == 2 and len({h["companyId"] for h in holders}) == 2
            assert all(company_ext[h["companyId"]] != account for h in holders)
        elif cat == "create":
            assert email and not holders and ext_counts.get(account) == 1
            assert not ds.planhat.match_external("EndUser", vid)
        elif cat == "no_company":
            assert email and not holders and ext_counts.get(account, 0) != 1
        elif cat in ("no_email", "ambiguous", "late", "anonymous"):
            assert email is None
        elif cat in ("matched", "case_variant") and email:
            assert len(holders) == 1
    # email-only End Users lack externalId in all three ways Planhat shows it
    email_only = [by_email[norm(emails[v])][0] for v, c in cats.items() if c == "email_only"]
    shapes = {("externalId" in r, r.get("externalId")) for r in email_only}
    assert shapes == {(False, None), (True, None), (True, "")}


def test_truth_identity_resolves_every_pair(sb):
    ds = sb.dataset
    cats = ds.identity_categories()
    only_ext = ds.truth_identity(end_user_keys=("externalId",))
    both = ds.truth_identity(end_user_keys=BOTH)
    create = ds.truth_identity(end_user_keys=BOTH, create_end_users=True)
    expected_ext = {"matched": "externalId"}
    for (vid, _acc), m in only_ext.items():
        assert m.matched_by == expected_ext.get(cats[vid]), (vid, cats[vid])
    for (vid, acc), m in both.items():
        cat = cats[vid]
        if cat == "matched":
            assert (m.matched_by, m.key) == ("externalId", vid)
        elif cat in ("email_only", "email_shared", "case_variant"):
            assert m.matched_by == "email", (vid, cat)
            holder = ds.planhat.match_email(m.key) or ds.planhat.match_external("EndUser", m.key)
            assert holder and norm(holder[0]["email"]) == norm(ds.visitor_emails()[vid])
        elif cat == "email_ambiguous":
            assert m.reason == "ambiguous_email"
        elif cat == "anonymous":
            assert m.reason == "anonymous"
        elif cat == "ambiguous":
            assert m.reason == "ambiguous"
        else:
            assert m.reason == "no_enduser", (vid, cat)
        created = create[(vid, acc)]
        if cat == "create":
            assert (created.matched_by, created.key) == ("created", vid)
        else:
            assert created == m
    created = ds.truth_created_end_users()
    assert set(created) == {v for v, c in cats.items() if c == "create"}
    for vid, item in created.items():
        assert item["externalId"] == vid and item["email"] == ds.visitor_emails()[vid].strip()
        company = ds.planhat.match_external("Company", item["companyExternalId"])
        assert [c["_id"] for c in company] == [item["companyId"]]
    seen = ds.truth_created_end_users(days=[DAY], features=list(configured(ds)[0]))
    assert seen and set(seen) < set(created)


def test_truth_by_key_conserves_events_and_reaches_more_with_email_and_creation(sb):
    ds = sb.dataset
    features, pages, tracks = configured(ds)
    kw = {"days": DAYS, "features": features, "pages": pages, "track_events": tracks}
    ids = {"features": list(features), "pages": list(pages), "track_events": list(tracks)}
    total = sum(
        int(frame.filter(pl.col(col).is_in(list(wanted)))["numEvents"].sum())
        for d in DAYS
        for frame, col, wanted in (
            (ds.feature_events(d), "featureId", features),
            (ds.page_events(d), "pageId", pages),
            (ds.track_events(d), "trackTypeId", tracks),
        )
    )
    reached = {}
    for keys, create in ((("externalId",), False), (BOTH, False), (BOTH, True)):
        sent = ds.truth_activities_by_key(**kw, end_user_keys=keys, create_end_users=create)
        left = ds.truth_unmatched_by_key(
            days=DAYS, **ids, end_user_keys=keys, create_end_users=create
        )
        assert sum(sent.values()) + sum(n for _, n in left.values()) == total
        reached[(keys, create)] = sum(sent.values())
        reasons = {r for r, _ in left.values()}
        if keys == BOTH:
            assert "ambiguous_email" in reasons
    assert reached[(("externalId",), False)] < reached[(BOTH, False)] < reached[(BOTH, True)]
    actions = {a for _, a, _ in ds.truth_activities_by_key(**kw)}
    assert {"Viewed Billing", "Invited teammate (track event)"} <= actions


# ------------------------------------------------------------------ pageEvents / trackEvents


def test_page_and_track_events_have_pendos_fields_and_grain(sb, client):
    ds = sb.dataset
    pages = ds.page_events(DAY)
    assert pages.columns == [
        *EVENT_COLUMNS[:5],
        "pageId",
        "parameters",
        *EVENT_COLUMNS[5:],
        "userAgent",
        "visitorId",
    ]
    tracks = ds.track_events(DAY)
    assert tracks.columns == [*EVENT_COLUMNS, "trackTypeId", "userAgent", "visitorId"]
    for frame, col in ((pages, "pageId"), (tracks, "trackTypeId")):
        grain = ["visitorId", "accountId", col, "remoteIp", "userAgent", "server"]
        assert frame.select(grain).n_unique() == frame.height > 0
        hourly = (
            ds.page_events(DAY, hourly=True)
            if col == "pageId"
            else ds.track_events(DAY, hourly=True)
        )
        key = ["visitorId", "accountId", col, "remoteIp", "userAgent", "server"]
        daily = frame.group_by(key).agg(pl.col("numEvents").sum()).sort(key)
        summed = hourly.group_by(key).agg(pl.col("numEvents").sum()).sort(key)
        assert daily.equals(summed)
    params = pages["parameters"].to_list()
    assert None in params and {"tab": "overview"} in params
    assert 0.4 * 5000 < pages.height < 0.6 * 5000 and 0.1 * 5000 < tracks.height < 0.3 * 5000
    page = ds.pages()[1]
    first = ds.day_start_ms(DAY)
    rows = pendo(
        sb,
        client,
        [
            {
                "source": {
                    "pageEvents": {"pageId": page["id"]},
                    "timeSeries": {"period": "dayRange", "first": first, "count": 1},
                }
            }
        ],
    )
    assert rows == pages.filter(pl.col("pageId") == page["id"]).to_dicts()
    track = ds.track_types()[0]
    rows = pendo(
        sb,
        client,
        [
            {
                "source": {
                    "trackEvents": {"trackTypeId": track["id"], "appId": 'expandAppIds("*")'},
                    "timeSeries": {"period": "dayRange", "first": first, "count": 1},
                }
            },
            {"sort": ["visitorId"]},
            {"limit": 3},
        ],
    )
    assert len(rows) == 3 and {r["trackTypeId"] for r in rows} == {track["id"]}
    default_only = pendo(
        sb,
        client,
        [
            {
                "source": {
                    "pageEvents": None,
                    "timeSeries": {"period": "dayRange", "first": first, "count": 1},
                }
            },
            {"count": None},
        ],
    )
    assert default_only == [{"count": pages.filter(pl.col("appId") == DEFAULT_APP_ID).height}]


def test_pages_list_and_track_types_source(sb, client):
    ds = sb.dataset
    key = {"x-pendo-integration-key": sb.pendo_key}
    every = client.get(f"{sb.pendo_url}/api/v1/page", params={"expand": "*"}, headers=key).json()
    assert every == ds.pages() and len(every) == ds.spec.n_pages
    assert {"id", "name", "appId", "kind", "createdAt", "lastUpdatedAt"} <= set(every[0])
    default = client.get(f"{sb.pendo_url}/api/v1/page", headers=key).json()
    assert default == [p for p in every if p["appId"] == DEFAULT_APP_ID] != every
    one = client.get(f"{sb.pendo_url}/api/v1/page/{every[1]['id']}", headers=key)
    assert one.json() == every[1]
    assert client.get(f"{sb.pendo_url}/api/v1/page/nope", headers=key).status_code == 404
    rows = pendo(
        sb,
        client,
        [
            {"source": {"trackTypes": {"appId": 'expandAppIds("*")'}}},
            {"select": {"id": "id", "name": "name", "lastUpdatedAt": "lastUpdatedAt"}},
        ],
    )
    assert [r["id"] for r in rows] == [t["id"] for t in ds.track_types()]
    assert len(rows) == ds.spec.n_track_types


# ------------------------------------------------------------------ PUT /endusers and activities


def test_put_endusers_limits_required_fields_and_idempotent_creation(client):
    with Sandbox(SandboxSpec(identity=True), now=NOW) as fresh:
        url, headers = f"{fresh.planhat_api_url}/endusers", api(fresh)
        too_many = client.put(
            url, json=[{"externalId": f"x{i}"} for i in range(5001)], headers=headers
        )
        assert too_many.status_code == 400
        assert too_many.json() == {"error": "at most 5000 items per request, got 5001"}
        assert not fresh.received.upserts()
        company = fresh.dataset.planhat.records("Company")[0]
        no_company = client.put(
            url, json=[{"externalId": "v-1", "email": "a@b.c"}], headers=headers
        )
        assert no_company.status_code == 206
        assert no_company.json()["createdErrors"][0]["error"].startswith("missing required")
        full = [
            {"externalId": f"v-{i}", "email": f"v{i}@b.c", "companyId": company["_id"]}
            for i in range(5000)
        ]
        first = client.put(url, json=full, headers=headers)
        assert first.status_code == 200 and first.json()["created"] == 5000
        again = client.put(url, json=full, headers=headers).json()
        assert (again["created"], again["updated"], again["nonupdates"]) == (0, 0, 5000)
        assert len(fresh.received.created("EndUser")) == 5000
        outcomes = Counter(u.outcome for u in fresh.received.upserts())
        assert outcomes == {"created": 5000, "unchanged": 5000, "error": 1}
        got = client.get(url, params={"email": "v7@b.c"}, headers=headers).json()
        assert [(r["externalId"], r["companyId"]) for r in got] == [("v-7", company["_id"])]
        one = client.get(f"{url}/extid-v-7", headers=headers).json()
        assert one["email"] == "v7@b.c" and one["companyName"] == company["name"]


def test_a_perfect_sync_lands_exactly_the_truth(client):
    """Create the truth's End Users, post the truth's activities: Planhat holds the truth."""
    with Sandbox(SandboxSpec(identity=True), now=NOW) as fresh:
        ds = fresh.dataset
        features, pages, tracks = configured(ds)
        kw = {"days": DAYS, "features": features, "pages": pages, "track_events": tracks}
        truth = ds.truth_activities_by_key(**kw, end_user_keys=BOTH, create_end_users=True)
        matches = ds.truth_identity(end_user_keys=BOTH, create_end_users=True)
        company_of = {m.key: acc for (_, acc), m in matches.items() if m.key}
        items = [
            {k: v for k, v in item.items() if k != "companyExternalId"}
            for item in ds.truth_created_end_users(**kw).values()
        ]
        r = client.put(f"{fresh.planhat_api_url}/endusers", json=items, headers=api(fresh))
        assert r.status_code == 200 and r.json()["created"] == len(items) > 0
        activities = [
            {
                (
                    "email"
                    if "@" in key and not ds.planhat.match_external("EndUser", key)
                    else "externalId"
                ): key,
                "companyExternalId": company_of[key],
                "action": action,
                "date": day,
                "count": n,
            }
            for (key, action, day), n in truth.items()
        ]
        url = f"{fresh.planhat_analytics_url}/analytics/bulk/{fresh.tenant_token}"
        assert client.post(url, json=activities).status_code == 200
        landed = fresh.received.activities()
        assert all(not a.dropped and a.enduser_id for a in landed)
        assert fresh.received.activity_totals_by_key() == truth
        control = f"{fresh.planhat_api_url}/_sandbox"
        by_key = client.get(f"{control}/activity_totals_by_key").json()
        assert {(k, a, d): n for k, a, d, n in by_key} == truth
        assert client.get(f"{control}/created").json() == items
        # after creation, the same truth needs no creation: every created End User now matches
        assert ds.truth_activities_by_key(**kw, end_user_keys=BOTH) == truth
        assert ds.truth_created_end_users(**kw) == {}


def test_email_activity_lands_on_the_end_user_of_its_company(client):
    with Sandbox(SandboxSpec(identity=True), now=NOW) as fresh:
        ds = fresh.dataset
        shared = next(v for v, c in ds.identity_categories().items() if c == "email_shared")
        email = norm(ds.visitor_emails()[shared])
        holders = ds.planhat.match_email(email)
        assert len(holders) == 2
        (account,) = ds.visitor_accounts()[shared]
        home = next(h for h in holders if ds.planhat.company_external_id(h["companyId"]) == account)
        url = f"{fresh.planhat_analytics_url}/analytics/bulk/{fresh.tenant_token}"
        base = {"email": email, "action": "a", "date": "2026-11-02"}
        client.post(
            url,
            json=[
                {**base, "companyExternalId": account},
                base,
                {**base, "email": "nobody@nowhere.example"},
            ],
        )
        picked, random_pick, unknown = fresh.received.activities()
        assert (picked.enduser_id, picked.dropped) == (home["_id"], False)
        assert (random_pick.enduser_id, random_pick.dropped) == (None, False)
        assert (unknown.enduser_id, unknown.dropped) == (None, True)
        assert fresh.received.activity_totals_by_key() == {(email, "a", "2026-11-02"): 2}


# ------------------------------------------------------------------ bad input


def test_malformed_visitor_and_page_rows_can_be_injected(client):
    with Sandbox(SandboxSpec(identity=True), now=NOW) as fresh:
        bad_visitors = malformed_visitor_rows()
        assert {reason for reason, _ in bad_visitors} >= {
            "visitorId is missing",
            "metadata.agent.email is not a string",
            "row is not a JSON object",
        }
        fresh.pendo_rows.add(match=VISITORS, rows=[text for _, text in bad_visitors])
        stages = [{"source": {"visitors": None}}, {"sort": ["visitorId"]}]
        real = len(fresh.dataset.visitor_categories())  # identified and anonymous
        served = []
        for skip in range(0, real + len(bad_visitors), 1000):
            served.extend(pendo(fresh, client, [*stages, {"skip": skip}, {"limit": 1000}]))
        assert len(served) == real + len(bad_visitors)
        assert served[real:] == [json.loads(text) for _, text in bad_visitors]
        with pytest.raises(ValueError, match="give the day"):
            fresh.pendo_rows.add(match=PAGE_EVENTS, rows=["{}"])
        page = fresh.dataset.pages()[0]["id"]
        day_ms = fresh.dataset.day_start_ms(DAY)
        bad_pages = malformed_feature_rows(day_ms=day_ms, feature_id=page, id_field="pageId")
        assert {"pageId is missing", "pageId is null"} <= {reason for reason, _ in bad_pages}
        assert "featureId" not in bad_pages[0][1] and page in bad_pages[0][1]
        fresh.pendo_rows.add(day=DAY, match=PAGE_EVENTS, rows=[t for _, t in bad_pages])
        source = {
            "pageEvents": None,
            "timeSeries": {"period": "dayRange", "first": day_ms, "count": 1},
        }
        rows = pendo(fresh, client, [{"source": source}])
        assert len(rows) == fresh.dataset.page_events(DAY).filter(
            pl.col("appId") == DEFAULT_APP_ID
        ).height + len(bad_pages)
        tracks = {"trackEvents": None, "timeSeries": source["timeSeries"]}
        assert (
            len(pendo(fresh, client, [{"source": tracks}]))
            == fresh.dataset.track_events(DAY).filter(pl.col("appId") == DEFAULT_APP_ID).height
        )
