"""The sandbox over real loopback HTTP: wire formats, auth, limits, recording, ground truth."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from pendo_assets.sandbox import Sandbox, SandboxSpec

NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)
DAY = date(2026, 11, 2)
ROW_SORT = ["visitorId", "accountId", "featureId", "remoteIp", "userAgent", "server"]


@pytest.fixture(scope="module")
def sb():
    with Sandbox(now=NOW) as sandbox:
        yield sandbox


@pytest.fixture
def client():
    with httpx.Client(timeout=30) as c:
        yield c


def pendo(sb, client, pipeline, **kw):
    body = {
        "response": {"mimeType": "application/json"},
        "request": {"requestId": "t", "pipeline": pipeline},
    }
    return client.post(
        f"{sb.pendo_url}/api/v1/aggregation",
        json=body,
        headers={"x-pendo-integration-key": sb.pendo_key},
        **kw,
    )


def planhat_get(sb, client, path, **params):
    return client.get(
        f"{sb.planhat_api_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {sb.api_token}"},
    )


def source(sb, day=DAY, **params):
    return {
        "source": {
            "featureEvents": params or {"appId": 'expandAppIds("*")'},
            "timeSeries": {"period": "dayRange", "first": sb.dataset.day_start_ms(day), "count": 1},
        }
    }


def all_rows(sb, client, stages, page=1000):
    rows, skip = [], 0
    while True:
        r = pendo(sb, client, [*stages, {"skip": skip}, {"limit": page}])
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        rows.extend(results)
        if len(results) < page:
            return rows
        skip += page


def all_records(sb, client, collection, page=500, **params):
    records, offset = [], 0
    while True:
        r = planhat_get(sb, client, f"/{collection}", limit=page, offset=offset, **params)
        assert r.status_code == 200, r.text
        batch = r.json()
        records.extend(batch)
        if len(batch) < page:
            return records
        offset += page


# ------------------------------------------------------------------ Pendo


def test_pendo_rejects_a_missing_or_wrong_key_with_an_empty_403(sb, client):
    for headers in ({}, {"x-pendo-integration-key": "nope"}):
        r = client.get(f"{sb.pendo_url}/api/v1/token/verify", headers=headers)
        assert r.status_code == 403 and r.content == b"" and r.headers["content-length"] == "0"
    r = client.get(
        f"{sb.pendo_url}/api/v1/token/verify", headers={"X-PENDO-INTEGRATION-KEY": sb.pendo_key}
    )
    assert r.status_code == 200 and r.json() == {"valid": True, "writeAccess": False}
    assert r.headers["date"] == "Tue, 03 Nov 2026 12:00:00 GMT"


def test_feature_list_is_default_app_unless_expanded(sb, client):
    headers = {"x-pendo-integration-key": sb.pendo_key}
    default = client.get(f"{sb.pendo_url}/api/v1/feature", headers=headers).json()
    everything = client.get(
        f"{sb.pendo_url}/api/v1/feature", params={"expand": "*"}, headers=headers
    ).json()
    assert isinstance(everything, list) and len(everything) == sb.spec.n_features
    assert {f["appId"] for f in default} == {-323232} and len(default) < len(everything)
    assert {"id", "name", "kind", "appId", "createdAt", "lastUpdatedAt"} <= set(everything[0])
    assert all(len(f["id"]) == 27 and f["kind"] == "Feature" for f in everything)


def test_aggregation_envelope_and_paging_reproduce_the_full_result(sb, client):
    fids = [f["id"] for f in sb.dataset.features()][:3]
    filt = " || ".join(f'featureId == "{f}"' for f in fids)
    stages = [source(sb), {"filter": filt}, {"sort": ROW_SORT}]
    full = pendo(sb, client, stages).json()
    assert set(full) == {"startTime", "results"} and full["startTime"] == sb.dataset.day_start_ms(
        DAY
    )
    paged = all_rows(sb, client, stages, page=700)
    assert paged == full["results"] and len(paged) > 1400
    assert {r["featureId"] for r in paged} == set(fids)
    assert set(paged[0]) == {
        "accountId",
        "appId",
        "day",
        "featureId",
        "numEvents",
        "numMinutes",
        "remoteIp",
        "server",
        "userAgent",
        "visitorId",
    }


def test_aggregation_errors_are_plain_text_400(sb, client):
    r = pendo(sb, client, [source(sb), {"filter": 'visitorId == "unterminated'}])
    assert (r.status_code, r.text, r.headers["content-type"]) == (
        400,
        "Cannot parse filter expression",
        "text/plain; charset=utf-8",
    )
    r = pendo(sb, client, [source(sb), {"bulkExpand": {}}])
    assert r.status_code == 400 and r.text == "Unknown pipeline operator: bulkExpand"
    r = client.post(
        f"{sb.pendo_url}/api/v1/aggregation",
        content=b"{nope",
        headers={"x-pendo-integration-key": sb.pendo_key},
    )
    assert r.status_code == 400


def test_filter_escapes_find_the_visitor_with_quotes_and_backslashes(sb, client):
    rows = sb.dataset.feature_events(DAY)
    weird = next(v for v in rows["visitorId"].unique() if '"' in v and "\\" in v)
    literal = '"' + weird.replace("\\", "\\\\").replace('"', '\\"') + '"'
    found = pendo(sb, client, [source(sb), {"filter": f"visitorId == {literal}"}]).json()["results"]
    assert found and {r["visitorId"] for r in found} == {weird}


# ------------------------------------------------------------------ ground truth vs served data


def test_truth_helpers_agree_with_a_naive_recomputation_from_served_rows(sb, client):
    config = sb.dataset.demo_config(start_date=DAY)
    names = {f["id"]: f["name"] for f in sb.dataset.features()}
    actions = {f["id"]: f.get("action", names[f["id"]]) for f in config["features"]}
    filt = " || ".join(f'featureId == "{f}"' for f in actions)
    rows = all_rows(sb, client, [source(sb), {"filter": filt}, {"sort": ROW_SORT}], page=2000)
    users = Counter(
        u.get("externalId") for u in all_records(sb, client, "endusers", select="externalId")
    )
    activities: Counter[tuple[str, str, str]] = Counter()
    unmatched: dict[tuple[str, str, str | None], list] = {}
    for row in rows:
        vid, n = row["visitorId"], row["numEvents"]
        if vid.startswith("_PENDO_T_"):
            reason = "anonymous"
        elif users[vid] == 1:
            activities[(vid, actions[row["featureId"]], DAY.isoformat())] += n
            continue
        else:
            reason = "no_enduser" if users[vid] == 0 else "ambiguous"
        entry = unmatched.setdefault((DAY.isoformat(), vid, row["accountId"]), [reason, 0])
        entry[1] += n
    assert dict(activities) == sb.dataset.truth_activities(days=[DAY], actions=actions)
    assert {k: tuple(v) for k, v in unmatched.items()} == sb.dataset.truth_unmatched_visitors(
        days=[DAY], feature_ids=list(actions)
    )

    objects = {
        model: Counter(
            o.get("externalId") for o in all_records(sb, client, coll, select="externalId")
        )
        for model, coll in (("Company", "companies"), ("Asset", "assets"), ("Project", "projects"))
    }
    metrics = {}
    for p in config["pipelines"]:
        results = pendo(sb, client, [source(sb), *p["pipeline"][1:]]).json()["results"]
        for row in results:
            ext = row[p["id_field"]]
            if objects[p["model"]][ext] == 1:
                for field, dim in p["metrics"].items():
                    metrics[(dim, p["model"], ext, DAY.isoformat())] = float(row[field])
    assert metrics == sb.dataset.truth_metrics(days=[DAY], pipelines=config["pipelines"])


# ------------------------------------------------------------------ Planhat main API


def test_planhat_api_needs_the_bearer_token(sb, client):
    assert client.get(f"{sb.planhat_api_url}/companies").status_code == 401
    assert (
        client.get(
            f"{sb.planhat_api_url}/companies", headers={"Authorization": "Bearer wrong"}
        ).status_code
        == 401
    )
    assert client.get(f"{sb.planhat_api_url}/companies", auth=(sb.api_token, "")).status_code == 200


def test_planhat_lists_page_select_sort_and_cap_limits(sb, client):
    assert planhat_get(sb, client, "/companies", limit=5000).status_code == 200
    for coll, limit in (
        ("companies", 5001),
        ("endusers", 2001),
        ("assets", 2001),
        ("projects", 2001),
    ):
        r = planhat_get(sb, client, f"/{coll}", limit=limit)
        assert r.status_code == 400 and "at most" in r.json()["error"]
    total = len(sb.dataset.planhat.records("EndUser"))
    pages = [
        planhat_get(sb, client, "/endusers", limit=1000, offset=o, sort="_id").json()
        for o in range(0, total + 1, 1000)
    ]
    assert [len(p) for p in pages] == [1000] * (total // 1000) + [total % 1000]  # short last page
    ids = [u["_id"] for p in pages for u in p]
    assert len(set(ids)) == total and ids == sorted(ids)
    picked = planhat_get(sb, client, "/endusers", limit=3, select="externalId,email").json()
    assert all(set(u) <= {"_id", "externalId", "email"} and "_id" in u for u in picked)
    desc = planhat_get(sb, client, "/companies", limit=5, sort="-_id").json()
    assert [c["_id"] for c in desc] == sorted((c["_id"] for c in desc), reverse=True)
    matched = next(a for a, c in sb.dataset.account_categories().items() if c == "matched")
    one = planhat_get(sb, client, f"/companies/extid-{matched}").json()
    assert one["externalId"] == matched and len(one["_id"]) == 24


def test_planhat_rate_limit_answers_429_with_retry_after(client):
    with Sandbox(planhat_rate_limit=(3, 30)) as limited:
        statuses = [
            planhat_get(limited, client, "/companies", limit=1).status_code for _ in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        r = planhat_get(limited, client, "/companies", limit=1)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30
        assert len(limited.received.requests(service="planhat_api", status=429)) == 3
        limited.planhat_rate_limit = None
        assert planhat_get(limited, client, "/companies").status_code == 200


def test_bulk_upsert_creates_updates_and_rejects(client):
    with Sandbox() as fresh:
        url, headers = (
            f"{fresh.planhat_api_url}/endusers",
            {"Authorization": f"Bearer {fresh.api_token}"},
        )
        company = fresh.dataset.planhat.records("Company")[0]
        missing = next(v for v, c in fresh.dataset.visitor_categories().items() if c == "missing")
        existing = fresh.dataset.planhat.records("EndUser")[0]
        items = [
            {"externalId": missing, "email": "new@example.com", "companyId": company["_id"]},
            {"externalId": existing["externalId"], "lastName": "Renamed"},
            {"_id": existing["_id"], "lastName": "Renamed"},
            {"externalId": "nobody-at-all"},
        ]
        r = client.put(url, json=items, headers=headers)
        report = r.json()
        assert r.status_code == 206
        assert (
            report["created"],
            report["updated"],
            report["nonupdates"],
            len(report["createdErrors"]),
        ) == (1, 1, 1, 1)
        assert set(report) == {
            "created",
            "createdErrors",
            "insertsKeys",
            "updated",
            "updatedErrors",
            "updatesKeys",
            "nonupdates",
            "modified",
            "upsertedIds",
            "permissionErrors",
        }
        assert len(report["upsertedIds"][0]) == 24 and report["modified"] == [existing["_id"]]
        assert len(fresh.received.upserts()) == 4
        # the new End User now matches its visitor's activities
        r = client.post(
            f"{fresh.planhat_analytics_url}/analytics/bulk/{fresh.tenant_token}",
            json=[{"externalId": missing, "action": "a", "date": "2026-11-02", "count": 1}],
        )
        assert r.status_code == 200 and fresh.received.activities()[-1].dropped is False
        assert (
            client.put(url, json=[{"externalId": "x"}] * 5001, headers=headers).status_code == 400
        )
        # changing a keyable moves the record in every lookup
        r = client.put(
            url, json=[{"_id": existing["_id"], "externalId": "renamed"}], headers=headers
        )
        assert r.json()["updated"] == 1
        assert (
            fresh.dataset.planhat.match_external("EndUser", "renamed")[0]["_id"] == existing["_id"]
        )
        assert not fresh.dataset.planhat.match_external("EndUser", existing["externalId"])


# ------------------------------------------------------------------ Planhat analytics


def test_activities_always_200_and_unmatched_items_are_recorded_as_dropped(client):
    with Sandbox() as fresh:
        matched = next(v for v, c in fresh.dataset.visitor_categories().items() if c == "matched")
        case_variant = next(
            v for v, c in fresh.dataset.visitor_categories().items() if c == "case_variant"
        )
        items = [
            {
                "externalId": matched,
                "action": "Exported",
                "date": "2026-11-02",
                "count": 3,
                "weight": 1,
                "info": {"featureId": "f"},
            },
            {"externalId": case_variant, "action": "Exported", "date": "2026-11-02", "count": 2},
            {"externalId": matched, "action": "Exported", "date": "2026-11-02", "count": 4},
        ]
        r = client.post(
            f"{fresh.planhat_analytics_url}/analytics/bulk/{fresh.tenant_token}", json=items
        )
        assert r.status_code == 200
        r = client.post(
            f"{fresh.planhat_analytics_url}/analytics/{fresh.tenant_token}",
            json={"externalId": matched, "action": "Single", "date": "2026-11-02"},
        )
        assert r.status_code == 200
        r = client.post(
            f"{fresh.planhat_analytics_url}/analytics/bulk/not-the-tenant", json=items[:1]
        )
        assert r.status_code == 200
        assert [a.dropped for a in fresh.received.activities()] == [False, True, False, False, True]
        assert fresh.received.activity_totals() == {
            (matched, "Exported", "2026-11-02"): 3 + 4 + 3,
            (case_variant, "Exported", "2026-11-02"): 2,
            (matched, "Single", "2026-11-02"): 1,
        }
        assert (
            fresh.received.activity_totals(include_dropped=False)[
                (matched, "Exported", "2026-11-02")
            ]
            == 7
        )
        bulk = fresh.received.requests(service="planhat_analytics", path_prefix="/analytics/bulk")
        assert [q.items for q in bulk] == [3, 1] and all(
            q.status == 200 and q.body_bytes > 0 for q in bulk
        )


def test_dimensiondata_reports_errors_drops_unmatched_and_stores_points(client):
    with Sandbox() as fresh:
        accounts = fresh.dataset.account_categories()
        matched = next(a for a, c in accounts.items() if c == "matched")
        missing = next(a for a, c in accounts.items() if c == "missing")
        items = [
            {
                "dimensionId": "pendo_events",
                "value": 5,
                "externalId": matched,
                "model": "Company",
                "date": "2026-11-02",
            },
            {
                "dimensionId": "pendo_events",
                "value": 0,
                "externalId": missing,
                "model": "Company",
                "date": "2026-11-02",
            },
            {"value": 1, "externalId": matched},
            {"dimensionId": "pendo_events", "value": "12", "externalId": matched},
            {"dimensionId": "pendo_events", "value": 1},
            {
                "dimensionId": "pendo_events",
                "value": 2.5,
                "externalId": matched,
                "date": "2026-11-02",
            },
        ]
        r = client.post(
            f"{fresh.planhat_analytics_url}/dimensiondata/{fresh.tenant_token}", json=items
        )
        body = r.json()
        assert r.status_code == 200 and body["processed"] == 3
        assert [e["error"] for e in body["errors"]] == [
            "dimensionId must be specified",
            "value must be a number",
            "externalId must be specified",
        ]
        assert body["errors"][0]["item"] == items[2]
        points = fresh.received.metric_points()
        assert points == {
            ("pendo_events", "Company", matched, "2026-11-02"): [5.0, 2.5],
            ("pendo_events", "Company", missing, "2026-11-02"): [0.0],
        }
        assert (
            "pendo_events",
            "Company",
            missing,
            "2026-11-02",
        ) not in fresh.received.metric_points(include_dropped=False)
        company = fresh.dataset.planhat.match_external("Company", matched)[0]
        day_no = (date(2026, 11, 2) - date(1970, 1, 1)).days
        stored = planhat_get(
            fresh,
            client,
            "/dimensiondata",
            cId=company["_id"],
            dimid="pendo_events",
            **{"from": day_no, "to": day_no},
        ).json()
        assert [p["value"] for p in stored] == [5.0, 2.5]
        assert set(stored[0]) == {
            "_id",
            "dimensionId",
            "time",
            "value",
            "model",
            "parentId",
            "companyId",
            "companyName",
        }


def test_dimensiondata_reads_back_in_pages_and_a_test_can_change_or_delete_a_day(client):
    with Sandbox() as fresh:
        accounts = fresh.dataset.account_categories()
        a, b = [acct for acct, c in accounts.items() if c == "matched"][:2]
        items = [
            {"dimensionId": "m", "value": v, "externalId": ext, "date": day}
            for ext in (a, b)
            for day in ("2026-11-01", "2026-11-02")
            for v in (1, 2)
        ]
        r = client.post(
            f"{fresh.planhat_analytics_url}/dimensiondata/{fresh.tenant_token}", json=items
        )
        assert r.json()["processed"] == 8
        first, last = ((date(2026, 11, d) - date(1970, 1, 1)).days for d in (1, 2))
        pages, offset = [], 0
        while True:
            page = planhat_get(
                fresh,
                client,
                "/dimensiondata",
                dimid="m",
                limit=3,
                offset=offset,
                **{"from": first, "to": last},
            ).json()
            pages.append(page)
            if len(page) < 3:
                break
            offset += 3
        assert [len(p) for p in pages] == [3, 3, 2]
        got = [(p["time"][:10], p["value"]) for page in pages for p in page]
        assert got == [(i["date"], float(i["value"])) for i in items]  # in the order received
        assert (
            planhat_get(fresh, client, "/dimensiondata", dimid="m", limit=10_001).status_code == 400
        )
        company = fresh.dataset.planhat.match_external("Company", a)[0]
        for spelling in ("cId", "cid"):
            one = planhat_get(
                fresh, client, "/dimensiondata", dimid="m", **{spelling: company["_id"]}
            )
            assert {p["parentId"] for p in one.json()} == {company["_id"]}

        # Changed: the day's points become one point; deleted: none. The recording stays.
        assert (
            fresh.dataset.planhat.set_metric_day(
                dimension_id="m", model="Company", external_id=a, day="2026-11-01", value=7
            )
            == 2
        )
        r = client.post(
            f"{fresh.planhat_api_url}/_sandbox/set_metric_day",
            json={
                "dimensionId": "m",
                "model": "Company",
                "externalId": b,
                "day": "2026-11-02",
                "value": None,
            },
        )
        assert r.status_code == 200 and r.json() == {"removed": 2}
        left = planhat_get(fresh, client, "/dimensiondata", dimid="m").json()
        by_day = Counter((p["parentId"], p["time"][:10], p["value"]) for p in left)
        b_id = fresh.dataset.planhat.match_external("Company", b)[0]["_id"]
        assert by_day == Counter(
            {
                (company["_id"], "2026-11-02", 1.0): 1,
                (company["_id"], "2026-11-02", 2.0): 1,
                (b_id, "2026-11-01", 1.0): 1,
                (b_id, "2026-11-01", 2.0): 1,
                (company["_id"], "2026-11-01", 7.0): 1,
            }
        )
        assert len(fresh.received.metrics()) == 8
        missing = client.post(
            f"{fresh.planhat_api_url}/_sandbox/set_metric_day",
            json={"dimensionId": "m", "externalId": "nobody", "day": "2026-11-02", "value": 1},
        )
        assert missing.status_code == 404


def test_bodies_over_32_mb_get_413_and_nothing_is_applied(sb, client):
    sb.received.clear()
    item = {"externalId": "x" * 1000, "action": "a", "date": "2026-11-02", "count": 1}
    big = json.dumps([item] * (32 * 1024 * 1024 // 1050 + 10)).encode()
    assert len(big) > 32 * 1024 * 1024
    r = client.post(
        f"{sb.planhat_analytics_url}/analytics/bulk/{sb.tenant_token}",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert sb.received.activities() == [] and sb.received.requests()[-1].status == 413
    r = client.post(
        f"{sb.planhat_analytics_url}/dimensiondata/{sb.tenant_token}",
        json=[{"dimensionId": "d", "value": 1, "externalId": "e"}],
    )
    assert r.status_code == 200  # the connection is still usable


def test_keep_alive_serves_several_requests_on_one_connection(sb):
    conn = http.client.HTTPConnection("127.0.0.1", sb.ports[0], timeout=10)
    try:
        socks = []
        for _ in range(3):
            conn.request(
                "GET", "/api/v1/token/verify", headers={"x-pendo-integration-key": sb.pendo_key}
            )
            r = conn.getresponse()
            assert r.status == 200 and int(r.getheader("content-length")) == len(r.read())
            socks.append(conn.sock)
        assert socks[0] is not None and socks.count(socks[0]) == 3
    finally:
        conn.close()


# ------------------------------------------------------------------ the Sandbox object


def test_sandbox_binds_loopback_only_and_exposes_env_and_config(sb, tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        Sandbox(host="0.0.0.0")
    env = sb.env()
    assert set(env) == {
        "PENDO_INTEGRATION_KEY",
        "PENDO_BASE_URL",
        "PLANHAT_API_TOKEN",
        "PLANHAT_TENANT_TOKEN",
        "PLANHAT_API_URL",
        "PLANHAT_ANALYTICS_URL",
    }
    assert all(
        env[k].startswith("http://127.0.0.1:")
        for k in ("PENDO_BASE_URL", "PLANHAT_API_URL", "PLANHAT_ANALYTICS_URL")
    )
    assert len(set(sb.ports)) == 3
    path = sb.write_config(
        tmp_path / "cfg" / "pendo_planhat.yaml",
        start_date="2026-09-01",
        pendo={"app_ids": [-323232]},
    )
    text = path.read_text()
    assert "start_date: 2026-09-01\n" in text
    loaded = yaml.safe_load(text)
    assert (
        loaded["pendo"]["app_ids"] == [-323232]
        and loaded["pendo"]["timezone"] == "America/New_York"
    )
    assert loaded["features"] == sb.dataset.demo_config(start_date="2026-09-01")["features"]


def test_sandbox_runs_as_a_process_and_writes_a_port_file(tmp_path):
    port_file = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pendo_assets.sandbox",
            "--rows-per-day",
            "2000",
            "--port-file",
            str(port_file),
            "--quiet",
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(port_file.read_text())
        assert set(info) == {"pendo_url", "planhat_api_url", "planhat_analytics_url", "env"}
        r = httpx.get(
            f"{info['pendo_url']}/api/v1/token/verify",
            headers={"x-pendo-integration-key": info["env"]["PENDO_INTEGRATION_KEY"]},
        )
        assert r.json() == {"valid": True, "writeAccess": False}
        env, base = info["env"], info["planhat_analytics_url"]
        item = {"externalId": "user-000100", "action": "a", "date": "2026-11-02", "count": 2}
        httpx.post(f"{base}/analytics/bulk/{env['PLANHAT_TENANT_TOKEN']}", json=[item, item])
        assert httpx.get(f"{base}/_sandbox/activity_totals").json() == [
            ["user-000100", "a", "2026-11-02", 4]
        ]
        requests = httpx.get(
            f"{info['pendo_url']}/_sandbox/requests", params={"service": "planhat_analytics"}
        ).json()
        assert [(q["items"], q["status"]) for q in requests] == [(2, 200)] and requests[0][
            "elapsed"
        ] > 0
        assert httpx.post(
            f"{base}/_sandbox/revise_day", json={"day": "2026-11-02", "grow": False}
        ).json() == {"revision": 1}
        spec = httpx.get(f"{base}/_sandbox/spec").json()
        assert spec["revisions"] == {"2026-11-02": [False]} and spec["spec"]["rows_per_day"] == 2000
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_spec_is_exposed(sb):
    assert sb.spec == SandboxSpec()


def test_chunked_uploads_and_unknown_tenants(client):
    with Sandbox() as fresh:
        account = next(a for a, c in fresh.dataset.account_categories().items() if c == "matched")
        payload = json.dumps(
            [{"dimensionId": "d", "value": 3, "externalId": account, "date": "2026-11-02"}]
        ).encode()

        def chunks():
            yield payload[:10]
            yield payload[10:]

        r = client.post(
            f"{fresh.planhat_analytics_url}/dimensiondata/{fresh.tenant_token}", content=chunks()
        )
        assert r.json() == {"processed": 1, "errors": []}
        r = client.post(
            f"{fresh.planhat_analytics_url}/dimensiondata/wrong-tenant", content=payload
        )
        assert r.status_code == 200 and r.json() == {"processed": 1, "errors": []}
        assert [m.dropped for m in fresh.received.metrics()] == [False, True]
        assert fresh.received.metric_points(include_dropped=False) == {
            ("d", "Company", account, "2026-11-02"): [3.0]
        }
