"""PendoClient: hosts, day windows, aggregation request shapes, paging, and the page decoder."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime
from typing import Any

import httpx
import msgspec
import pytest

from pendo_assets.clients import PendoClient, RetryPolicy, day_window
from pendo_assets.clients.pendo import decode_feature_events, feature_filter
from pendo_assets.errors import (
    ApiStatusError,
    ConfigError,
    PageDriftError,
    PagingLimitError,
    PayloadShapeError,
)
from pendo_assets.models import FEATURE_EVENT_SCHEMA, Feature

from .test_http import Recorder, Sleeps

KEY = "pendo-int-key"
DAY = date(2026, 11, 28)
TZ = "America/New_York"
DAY_MS = 1_795_842_000_000  # 2026-11-28T05:00Z, midnight EST
FEATURES = ["feat-a", "feat-b"]


def pendo_event(**overrides: Any) -> dict[str, Any]:
    """One featureEvents row as Pendo sends it; ``overrides`` with value ``...`` drop a key."""
    row: dict[str, Any] = {
        "accountId": "acct-1",
        "appId": -323232,
        "day": DAY_MS,
        "featureId": "feat-a",
        "numEvents": 3,
        "numMinutes": 1,
        "remoteIp": "204.16.137.218",
        "server": "www.example.com",
        "userAgent": "Mozilla/5.0",
        "visitorId": "visitor-1",
        "lastTime": DAY_MS + 1000,
    }
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not ...}


def envelope(rows: list[Any]) -> bytes:
    return json.dumps({"startTime": DAY_MS, "results": rows}).encode()


def results(rows: list[Any]) -> httpx.Response:
    return httpx.Response(200, content=envelope(rows))


def served(rows: list[Any]) -> Any:
    """An aggregation endpoint over ``rows`` that honours the request's skip and limit."""

    def answer(request: httpx.Request) -> httpx.Response:
        stages = json.loads(request.content)["request"]["pipeline"]
        skip = next(s["skip"] for s in stages if "skip" in s)
        limit = next(s["limit"] for s in stages if "limit" in s)
        return results(rows[skip : skip + limit])

    return answer


def client(recorder: Recorder, **kwargs: Any) -> PendoClient:
    kwargs.setdefault("retry", RetryPolicy(jitter=False))
    return PendoClient(integration_key=KEY, transport=recorder.transport, sleep=Sleeps(), **kwargs)


def pages(pendo: PendoClient, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("feature_ids", FEATURES)
    return list(pendo.feature_event_pages(day=DAY, timezone=TZ, **kwargs))


def decode(rows: list[Any], body: bytes | None = None) -> Any:
    return decode_feature_events(
        body if body is not None else envelope(rows), day_ms=DAY_MS, feature_ids=FEATURES
    )


# ---------------------------------------------------------------------------------------------
# Construction, hosts, plain calls
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("us", "app.pendo.io"),
        ("us1", "us1.app.pendo.io"),
        ("eu", "app.eu.pendo.io"),
        ("jpn", "app.jpn.pendo.io"),
        ("au", "app.au.pendo.io"),
    ],
)
def test_pendo_client_uses_the_regional_host(region: str, host: str) -> None:
    recorder = Recorder(httpx.Response(200, json={"valid": True}))
    client(recorder, region=region).verify_key()
    request = recorder.requests[0]
    assert (request.url.scheme, request.url.host, request.url.path) == (
        "https",
        host,
        "/api/v1/token/verify",
    )
    assert request.headers["x-pendo-integration-key"] == KEY


def test_pendo_client_base_url_overrides_the_region() -> None:
    recorder = Recorder(httpx.Response(200, json={"valid": True}))
    client(recorder, region="eu", base_url="http://127.0.0.1:8123/").verify_key()
    assert str(recorder.requests[0].url) == "http://127.0.0.1:8123/api/v1/token/verify"


def test_pendo_client_rejects_an_unknown_region_listing_valid_ones() -> None:
    with pytest.raises(ConfigError, match="us, us1, eu, jpn, au"):
        PendoClient(integration_key=KEY, region="us2")


def test_pendo_client_rejects_an_empty_key() -> None:
    with pytest.raises(ConfigError, match="PENDO_INTEGRATION_KEY"):
        PendoClient(integration_key=" ")


def test_verify_key_adds_the_region_hint_to_a_first_403() -> None:
    recorder = Recorder(httpx.Response(403))
    with pytest.raises(ApiStatusError) as caught:
        client(recorder).verify_key()
    assert "Pendo GET /api/v1/token/verify answered 403" in str(caught.value)
    assert "check PENDO_INTEGRATION_KEY and pendo.region" in str(caught.value)


def test_region_hint_is_dropped_once_the_key_has_worked() -> None:
    recorder = Recorder(
        httpx.Response(200, json={"valid": True}),
        httpx.Response(400, text="Cannot parse filter expression"),
    )
    pendo = client(recorder)
    pendo.verify_key()
    with pytest.raises(ApiStatusError) as caught:
        pages(pendo)
    assert "pendo.region" not in str(caught.value)


def test_verify_key_raises_when_pendo_says_invalid() -> None:
    with pytest.raises(ConfigError, match="not valid"):
        client(Recorder(httpx.Response(200, json={"valid": False}))).verify_key()


def test_list_features_parses_the_bare_array() -> None:
    recorder = Recorder(
        httpx.Response(
            200,
            json=[
                {"id": "f1", "name": "Export", "appId": -323232, "kind": "Feature", "group": None},
                {"id": "f2"},
            ],
        )
    )
    features = client(recorder).list_features()
    assert features == [
        Feature(id="f1", name="Export", app_id=-323232, kind="Feature"),
        Feature(id="f2", name=None, app_id=None, kind=None),
    ]
    assert recorder.requests[0].url.path == "/api/v1/feature"
    assert recorder.requests[0].url.params["expand"] == "*"


@pytest.mark.parametrize("payload", [{"not": "a list"}, [{"name": "no id"}], ["text"]])
def test_list_features_rejects_other_shapes(payload: Any) -> None:
    with pytest.raises(PayloadShapeError):
        client(Recorder(httpx.Response(200, json=payload))).list_features()


def test_pendo_client_closes_as_a_context_manager() -> None:
    with client(Recorder()) as pendo:
        pass
    assert pendo._http.is_closed


# ---------------------------------------------------------------------------------------------
# day_window
# ---------------------------------------------------------------------------------------------


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_day_window_is_local_midnight_to_local_midnight() -> None:
    start, end = day_window(DAY, TZ)
    assert start == DAY_MS
    assert _utc(start) == datetime(2026, 11, 28, 5, tzinfo=UTC)
    assert end - start == 24 * 3_600_000
    assert _utc(day_window(date(2026, 7, 1), TZ)[0]) == datetime(2026, 7, 1, 4, tzinfo=UTC)


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25)])
def test_day_window_follows_dst_in_new_york(day: date, hours: int) -> None:
    start, end = day_window(day, TZ)
    assert end - start == hours * 3_600_000
    assert day_window(day + (date(2026, 1, 2) - date(2026, 1, 1)), TZ)[0] == end


def test_day_window_in_tokyo_starts_the_previous_utc_date() -> None:
    start, end = day_window(date(2026, 11, 28), "Asia/Tokyo")
    assert _utc(start) == datetime(2026, 11, 27, 15, tzinfo=UTC)
    assert end - start == 24 * 3_600_000


def test_day_window_rejects_an_unknown_timezone() -> None:
    with pytest.raises(ConfigError, match="IANA"):
        day_window(DAY, "Mars/Olympus_Mons")


# ---------------------------------------------------------------------------------------------
# Feature event aggregation: request shape and paging
# ---------------------------------------------------------------------------------------------


def _pipeline(request: httpx.Request) -> list[dict[str, Any]]:
    body = json.loads(request.content)
    assert body["response"] == {"mimeType": "application/json"}
    pipeline: list[dict[str, Any]] = body["request"]["pipeline"]
    return pipeline


def test_feature_event_pages_sends_one_day_window_aggregation() -> None:
    recorder = Recorder(results([pendo_event()]))
    result = pages(client(recorder, page_size=10))
    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/v1/aggregation")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-pendo-integration-key"] == KEY
    assert _pipeline(request) == [
        {
            "source": {
                "featureEvents": {"appId": 'expandAppIds("*")'},
                "timeSeries": {"period": "dayRange", "first": DAY_MS, "count": 1},
            }
        },
        {"filter": 'featureId == "feat-a" || featureId == "feat-b"'},
        {
            "sort": [
                "visitorId",
                "accountId",
                "featureId",
                "appId",
                "remoteIp",
                "userAgent",
                "server",
                "numEvents",
                "numMinutes",
            ]
        },
        {"skip": 0},
        {"limit": 10},
    ]
    assert [page.row_count for page in result] == [1]


def test_feature_event_pages_sends_explicit_app_ids() -> None:
    recorder = Recorder(results([]))
    pages(client(recorder), app_ids=[-323232, 5])
    assert _pipeline(recorder.requests[0])[0]["source"]["featureEvents"] == {"appId": [-323232, 5]}


@pytest.mark.parametrize(
    "kwargs",
    [{"feature_ids": []}, {"feature_ids": "feat-a"}, {"app_ids": []}, {"app_ids": "some"}],
)
def test_feature_event_pages_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        pages(client(Recorder()), **kwargs)


def test_feature_event_pages_checks_arguments_when_called() -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match="timezone"):
        client(recorder).feature_event_pages(day=DAY, timezone="Nowhere", feature_ids=FEATURES)
    with pytest.raises(ConfigError, match="max_pages"):
        client(recorder).pipeline_pages(
            stages=PIPELINE, day=DAY, timezone=TZ, sort_field="a", max_pages=0
        )
    assert recorder.requests == []


def test_feature_filter_escapes_backslash_then_quote() -> None:
    ids = ['a"b', "c\\d", 'e\\"f']
    expected = r'featureId == "a\"b" || featureId == "c\\d" || featureId == "e\\\"f"'
    assert feature_filter(ids) == expected
    recorder = Recorder(results([]))
    pages(client(recorder), feature_ids=ids)
    assert _pipeline(recorder.requests[0])[1] == {"filter": expected}


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [pendo_event(visitorId=f"v{i:05d}") for i in range(start, start + n)]


def test_paging_stops_on_a_short_page_reading_one_overlap_row() -> None:
    recorder = Recorder(served(_rows(7)))
    result = pages(client(recorder, page_size=3))
    assert [p.row_count for p in result] == [3, 3, 1]
    assert [p.page_index for p in result] == [0, 1, 2]
    assert [_pipeline(r)[-2:] for r in recorder.requests] == [
        [{"skip": 0}, {"limit": 3}],
        [{"skip": 2}, {"limit": 4}],
        [{"skip": 5}, {"limit": 4}],
    ]
    visitors = [v for p in result for v in p.table["visitor_id"].to_pylist()]
    assert visitors == [f"v{i:05d}" for i in range(7)]


def test_paging_stops_on_an_empty_page_after_an_exact_limit_page() -> None:
    recorder = Recorder(served(_rows(3)))
    result = pages(client(recorder, page_size=3))
    assert [p.row_count for p in result] == [3, 0]
    assert len(recorder.requests) == 2


def test_paging_detects_rows_shifting_between_requests() -> None:
    rows = _rows(6)
    answer = served(rows)

    def shifting(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        rows.insert(0, pendo_event(visitorId="v-late"))  # data arrives while the day is read
        return response

    with pytest.raises(PageDriftError, match="changed between page 1 and page 2"):
        pages(client(Recorder(shifting), page_size=3))


def test_paging_drops_the_overlap_row_even_when_it_was_rejected() -> None:
    rows = [*_rows(2), pendo_event(visitorId=""), *_rows(2, 2)]
    result = pages(client(Recorder(served(rows)), page_size=3))
    assert [p.row_count for p in result] == [3, 2]
    assert [len(p.rejects) for p in result] == [1, 0]
    assert result[1].table["visitor_id"].to_pylist() == ["v00002", "v00003"]


def test_paging_on_an_empty_day_makes_one_request() -> None:
    recorder = Recorder(results([]))
    result = pages(client(recorder))
    assert len(result) == 1
    assert result[0].table.num_rows == 0
    assert result[0].table.schema == FEATURE_EVENT_SCHEMA


def test_paging_raises_at_max_pages_instead_of_stopping_short() -> None:
    recorder = Recorder(served(_rows(100)))
    with pytest.raises(PagingLimitError, match="3 full pages"):
        pages(client(recorder, page_size=2), max_pages=3)
    assert len(recorder.requests) == 3


def test_paging_counts_rejected_rows_toward_a_full_page() -> None:
    rows = [*_rows(1), pendo_event(visitorId=None)]
    recorder = Recorder(served(rows))
    result = pages(client(recorder, page_size=2))
    assert [p.row_count for p in result] == [2, 0]


def test_paging_retries_a_5xx_page() -> None:
    recorder = Recorder(httpx.Response(503), results(_rows(1)))
    result = pages(client(recorder, page_size=5))
    assert [p.row_count for p in result] == [1]
    assert len(recorder.requests) == 2


def test_paging_maps_a_non_json_body_to_payload_shape_error() -> None:
    with pytest.raises(PayloadShapeError, match="not JSON"):
        pages(client(Recorder(httpx.Response(200, text="<html>"))))
    with pytest.raises(PayloadShapeError, match="no results array"):
        pages(client(Recorder(httpx.Response(200, json={"rows": []}))))


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


def test_decoder_fast_path_builds_the_fixed_schema() -> None:
    page = decode([pendo_event(), pendo_event(visitorId="v2", accountId=None, server=None)])
    assert page.table.schema == FEATURE_EVENT_SCHEMA
    assert page.rejects == []
    assert page.row_count == 2
    assert page.table.to_pylist()[0] == {
        "visitor_id": "visitor-1",
        "account_id": "acct-1",
        "feature_id": "feat-a",
        "app_id": -323232,
        "day_ms": DAY_MS,
        "num_events": 3,
        "num_minutes": 1,
        "remote_ip": "204.16.137.218",
        "user_agent": "Mozilla/5.0",
        "server": "www.example.com",
    }
    second = page.table.to_pylist()[1]
    assert (second["account_id"], second["server"]) == (None, None)


def test_decoder_keeps_rows_with_optional_fields_missing() -> None:
    row = pendo_event(accountId=..., appId=..., remoteIp=..., userAgent=..., server=...)
    page = decode([row])
    assert page.rejects == []
    assert page.table.to_pylist()[0]["app_id"] is None


REJECTS: list[tuple[dict[str, Any], str]] = [
    ({"visitorId": ...}, "visitorId is missing"),
    ({"visitorId": None}, "visitorId is null"),
    ({"visitorId": ""}, "visitorId is empty"),
    ({"visitorId": "v" * 1025}, "visitorId is longer than 1024 characters (1025)"),
    ({"visitorId": "bad\nid"}, "visitorId contains control characters"),
    ({"visitorId": "bad\x85id"}, "visitorId contains control characters"),
    ({"visitorId": 1.5}, "visitorId is not a string: 1.5"),
    ({"visitorId": ["x"]}, 'visitorId is not a string: ["x"]'),
    ({"accountId": True}, "accountId is not a string: true"),
    ({"featureId": ...}, "featureId is missing"),
    ({"featureId": None}, "featureId is null"),
    ({"featureId": "feat-z"}, "featureId 'feat-z' is not one of the requested features"),
    ({"day": ...}, "day is missing"),
    ({"day": DAY_MS - 3_600_000}, f"day {DAY_MS - 3_600_000} is not the requested local midnight"),
    ({"day": "2026-11-28"}, "day is a string: '2026-11-28'"),
    ({"numEvents": ...}, "numEvents is missing"),
    ({"numEvents": None}, "numEvents is null"),
    ({"numEvents": "12"}, "numEvents is a string: '12'"),
    ({"numEvents": 1.5}, "numEvents is not an integer: 1.5"),
    ({"numEvents": -1}, "numEvents is negative: -1"),
    ({"numEvents": True}, "numEvents is not a number: true"),
    ({"numEvents": 2**64}, f"numEvents is out of range: {2**64}"),
    ({"numMinutes": ...}, "numMinutes is missing"),
    ({"numMinutes": None}, "numMinutes is null"),
    ({"numMinutes": "1"}, "numMinutes is a string: '1'"),
    ({"numMinutes": 0.25}, "numMinutes is not an integer: 0.25"),
    ({"numMinutes": -2}, "numMinutes is negative: -2"),
    ({"appId": "web"}, "appId is a string: 'web'"),
    ({"server": 7}, "server is not a string: 7"),
]


@pytest.mark.parametrize(("overrides", "reason"), REJECTS, ids=[r for _, r in REJECTS])
def test_decoder_rejects_a_bad_row_with_a_reason(overrides: dict[str, Any], reason: str) -> None:
    bad = pendo_event(**overrides)
    page = decode([pendo_event(), bad, pendo_event(visitorId="v3")])
    assert page.table.num_rows == 2
    assert page.table.column("visitor_id").to_pylist() == ["visitor-1", "v3"]
    assert len(page.rejects) == 1
    reject = page.rejects[0]
    assert reject.index == 1
    assert reject.reason.startswith(reason)
    assert json.loads(reject.raw) == bad
    assert page.row_count == 3


# The kind of each reason: a stable label holding no value from Pendo.
_VALUED = {
    "visitorId is longer than 1024 characters (1025)": "visitorId is longer than 1024 characters",
    "featureId 'feat-z' is not one of the requested features": (
        "featureId is not one of the requested features"
    ),
    f"day {DAY_MS - 3_600_000} is not the requested local midnight": (
        "day is not the requested local midnight"
    ),
}


@pytest.mark.parametrize(("overrides", "reason"), REJECTS, ids=[r for _, r in REJECTS])
def test_decoder_gives_each_rejected_row_its_kinds(overrides: dict[str, Any], reason: str) -> None:
    strict_bad = pendo_event(visitorId="")  # a second page shape: read permissively or not
    for rows in ([pendo_event(**overrides)], [pendo_event(**overrides), strict_bad]):
        reject = decode(rows).rejects[0]
        assert reject.kinds == (_VALUED.get(reason, reason.split(":")[0]),)
        assert reject.kind == reject.kinds[0]


def test_decoder_lists_every_problem_of_a_row() -> None:
    page = decode([pendo_event(visitorId=None, numEvents="12")])
    assert page.rejects[0].reason == "visitorId is null; numEvents is a string: '12'"
    assert page.rejects[0].kinds == ("visitorId is null", "numEvents is a string")
    assert page.rejects[0].kind == "visitorId is null; numEvents is a string"


def test_decoder_rejects_rows_that_are_not_objects() -> None:
    page = decode([pendo_event(), None, 3, "row"])
    assert {r.kinds for r in page.rejects} == {("row is not a JSON object",)}
    assert [(r.index, r.reason, r.raw) for r in page.rejects] == [
        (1, "row is not a JSON object", "null"),
        (2, "row is not a JSON object", "3"),
        (3, "row is not a JSON object", '"row"'),
    ]
    assert page.table.num_rows == 1


def test_decoder_casts_integer_ids_to_decimal_strings() -> None:
    page = decode([pendo_event(visitorId=4, accountId=70), pendo_event(visitorId="4")])
    assert page.rejects == []
    assert page.table.column("visitor_id").to_pylist() == ["4", "4"]
    assert page.table.column("account_id").to_pylist() == ["70", "acct-1"]


def test_decoder_accepts_integral_floats_as_counts() -> None:
    page = decode([pendo_event(numEvents=3.0, numMinutes=0.0)])
    assert page.rejects == []
    assert page.table.column("num_events").to_pylist() == [3]


def test_decoder_reads_nan_and_infinity_tokens() -> None:
    body = (
        b'{"results": ['
        + json.dumps(pendo_event()).encode()
        + b","
        + json.dumps(pendo_event(visitorId="v2"))
        .replace('"numEvents": 3', '"numEvents": NaN')
        .encode()
        + b","
        + json.dumps(pendo_event(visitorId="v3"))
        .replace('"numMinutes": 1', '"numMinutes": -Infinity')
        .encode()
        + b"]}"
    )
    page = decode([], body=body)
    assert page.table.column("visitor_id").to_pylist() == ["visitor-1"]
    assert [(r.index, r.reason) for r in page.rejects] == [
        (1, "numEvents is NaN"),
        (2, "numMinutes is infinite"),
    ]
    assert '"numEvents":NaN' in page.rejects[0].raw
    assert page.row_count == 3


def test_decoder_strict_path_rejects_keep_the_raw_row_text() -> None:
    body = envelope([pendo_event(), pendo_event(visitorId="")])
    body = body.replace(b'"visitorId": ""', b'"visitorId":   ""')
    page = decode([], body=body)
    assert page.rejects[0].reason == "visitorId is empty"
    assert '"visitorId":   ""' in page.rejects[0].raw


def test_decoder_conserves_rows_on_a_mixed_page() -> None:
    rows: list[Any] = []
    for i in range(400):
        overrides, _ = REJECTS[i % len(REJECTS)] if i % 3 == 0 else ({}, "")
        rows.append(pendo_event(**{"visitorId": f"v{i}", **overrides}))
    rows.append(pendo_event(visitorId=99))
    page = decode(rows)
    assert page.table.num_rows + len(page.rejects) == len(rows) == page.row_count
    rejected = {r.index for r in page.rejects}
    assert len(rejected) == len(page.rejects) > 100
    kept = [str(row["visitorId"]) for i, row in enumerate(rows) if i not in rejected]
    assert page.table.column("visitor_id").to_pylist() == kept
    assert kept[-1] == "99"


def test_decoder_rejects_non_json_and_envelopes_without_results() -> None:
    with pytest.raises(PayloadShapeError):
        decode([], body=b"<html>503</html>")
    with pytest.raises(PayloadShapeError):
        decode([], body=b'{"results": {"a": 1}}')
    with pytest.raises(PayloadShapeError):
        decode([], body=b"[]")


# ---------------------------------------------------------------------------------------------
# User pipelines
# ---------------------------------------------------------------------------------------------

PIPELINE: list[dict[str, Any]] = [
    {
        "source": {
            "featureEvents": None,
            "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
        }
    },
    {"identified": "accountId"},
    {"group": {"group": ["accountId"], "fields": {"totalEvents": {"sum": "numEvents"}}}},
]


def test_pipeline_pages_sets_the_day_window_and_pages() -> None:
    recorder = Recorder(
        served([{"accountId": "a", "totalEvents": 1}, {"accountId": "b", "totalEvents": 0}])
    )
    original = json.dumps(PIPELINE)
    result = list(
        client(recorder, page_size=2).pipeline_pages(
            stages=PIPELINE, day=DAY, timezone=TZ, sort_field="accountId"
        )
    )
    assert result == [
        [{"accountId": "a", "totalEvents": 1}, {"accountId": "b", "totalEvents": 0}],
        [],
    ]
    sent = _pipeline(recorder.requests[0])
    assert sent[0]["source"] == {
        "featureEvents": {"appId": 'expandAppIds("*")'},  # pendo.app_ids defaults to all
        "timeSeries": {"period": "dayRange", "first": DAY_MS, "count": 1},
    }
    assert sent[1:3] == PIPELINE[1:]
    assert sent[3:] == [{"sort": ["accountId"]}, {"skip": 0}, {"limit": 2}]
    assert _pipeline(recorder.requests[1])[-2:] == [{"skip": 1}, {"limit": 3}]
    assert json.dumps(PIPELINE) == original  # the caller's stages are not modified


def test_pipeline_pages_keeps_nan_values_for_the_caller() -> None:
    body = b'{"results": [{"accountId": "a", "v": NaN}, {"accountId": "b", "v": Infinity}]}'
    [rows] = list(
        client(Recorder(httpx.Response(200, content=body))).pipeline_pages(
            stages=PIPELINE, day=DAY, timezone=TZ, sort_field=["accountId"]
        )
    )
    assert rows[0]["v"] != rows[0]["v"]
    assert rows[1]["v"] == float("inf")


@pytest.mark.parametrize(
    "stages", [[], [{"identified": "accountId"}], [{"source": "featureEvents"}]]
)
def test_pipeline_pages_requires_a_source_first_stage(stages: list[Any]) -> None:
    with pytest.raises(ConfigError, match="source"):
        list(client(Recorder()).pipeline_pages(stages=stages, day=DAY, timezone=TZ, sort_field="a"))


def test_pipeline_pages_rejects_rows_that_are_not_objects() -> None:
    with pytest.raises(PayloadShapeError):
        list(
            client(Recorder(results([1, 2]))).pipeline_pages(
                stages=PIPELINE, day=DAY, timezone=TZ, sort_field="accountId"
            )
        )


# ---------------------------------------------------------------------------------------------
# Benchmark (run with: pytest -m bench -s tests/test_pendo_client.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.bench
def test_bench_decode_one_million_rows(request: pytest.FixtureRequest) -> None:
    if "bench" not in (request.config.getoption("markexpr") or "").replace("not bench", ""):
        pytest.skip("benchmark: select it with -m bench")
    page_size = 100_000
    ids = [f"feat-{i}" for i in range(20)]
    bodies = []
    for k in range(10):
        rows = [
            pendo_event(
                visitorId=f"visitor-{i}@example.com",
                accountId=f"acct-{i % 5000}",
                featureId=f"feat-{i % 20}",
                numEvents=i % 7 + 1,
                userAgent="Mozilla/5.0 (Macintosh; Intel Mac OS X 10_13_5) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/67.0.3396.99 Safari/537.36",
            )
            for i in range(k * page_size, (k + 1) * page_size)
        ]
        bodies.append(msgspec.json.encode({"startTime": DAY_MS, "results": rows}))
    fallback = bodies[0].replace(b'"numEvents":3,', b'"numEvents":"3",', 1)
    for label, batch in (("strict", bodies), ("one fallback page", [fallback, *bodies[1:]])):
        started = time.perf_counter()
        total = 0
        for body in batch:
            page = decode_feature_events(body, day_ms=DAY_MS, feature_ids=ids)
            total += page.table.num_rows + len(page.rejects)
        elapsed = time.perf_counter() - started
        size = sum(len(b) for b in batch) / 1e6
        print(f"\n1M rows / {size:.0f} MB, {label}: {elapsed:.2f} s (cpus={os.cpu_count()})")
        assert total == 1_000_000


# ---------------------------------------------------------------------------------------------
# Apps read by user pipelines (pendo.app_ids)
# ---------------------------------------------------------------------------------------------

_WINDOW = {"period": "dayRange", "first": "now()", "count": -1}


@pytest.mark.parametrize(
    ("row_source", "app_ids", "sent"),
    [
        (None, "all", {"appId": 'expandAppIds("*")'}),
        (None, [-323232, 5], {"appId": [-323232, 5]}),
        ({"featureId": "f1"}, "all", {"featureId": "f1", "appId": 'expandAppIds("*")'}),
        ({"appId": 7}, "all", {"appId": 7}),
    ],
)
def test_pipeline_pages_reads_the_configured_apps_unless_the_pipeline_names_them(
    row_source: Any, app_ids: Any, sent: Any
) -> None:
    stages = [{"source": {"featureEvents": row_source, "timeSeries": _WINDOW}}, *PIPELINE[1:]]
    recorder = Recorder(results([]))
    list(
        client(recorder).pipeline_pages(
            stages=stages, day=DAY, timezone=TZ, sort_field="accountId", app_ids=app_ids
        )
    )
    source = _pipeline(recorder.requests[0])[0]["source"]
    assert source == {
        "featureEvents": sent,
        "timeSeries": {"period": "dayRange", "first": DAY_MS, "count": 1},
    }
    assert stages[0]["source"]["featureEvents"] == row_source  # the caller's stages unchanged


def test_fetch_pipeline_day_reads_the_apps_of_the_config() -> None:
    from pendo_assets.config import parse_config
    from pendo_assets.landing import fetch_pipeline_day

    config = parse_config(
        f"""
pendo:
  timezone: {TZ}
  start_date: 2026-09-01
  app_ids: [-323232, 5]
pipelines:
  - name: clicks
    model: Company
    metrics: {{totalEvents: pendo_clicks}}
    pipeline:
      - source: {{featureEvents: null, timeSeries: {{period: dayRange, first: now(), count: -1}}}}
      - group: {{group: [accountId], fields: {{totalEvents: {{sum: numEvents}}}}}}
"""
    )
    recorder = Recorder(results([{"accountId": "a", "totalEvents": 2}]))
    day = fetch_pipeline_day(client(recorder), spec=config.pipelines[0], day=DAY, config=config)
    assert day.rows == [{"accountId": "a", "totalEvents": 2}]
    source = _pipeline(recorder.requests[0])[0]["source"]
    assert source["featureEvents"] == {"appId": [-323232, 5]}


def test_sandbox_config_pipelines_read_every_app_like_the_ground_truth() -> None:
    # The sandbox answers a row source without appId with the default app only, as Pendo does;
    # its config's pipelines name no app (as the README's), so only pendo.app_ids reads them all.
    import yaml

    from pendo_assets.config import parse_config
    from pendo_assets.landing import fetch_pipeline_day
    from pendo_assets.sandbox import Sandbox

    day = date(2026, 11, 2)
    with Sandbox(now=datetime(2026, 11, 3, 12, tzinfo=UTC)) as sb:
        assert sb.dataset.feature_events(day)["appId"].n_unique() > 1
        settings = sb.demo_config(start_date=day)
        config = parse_config(yaml.safe_dump(settings))
        [spec] = [p for p in config.pipelines if p.name == "account_usage"]
        with PendoClient(integration_key=sb.pendo_key, base_url=sb.pendo_url) as pendo:
            fetched = fetch_pipeline_day(pendo, spec=spec, day=day, config=config)
        [pipeline] = [p for p in settings["pipelines"] if p["name"] == "account_usage"]
        truth = sb.dataset.truth_metrics(days=[day], pipelines=[pipeline])
    values = {(r["dimension_id"], r["id"]): r["value"] for r in fetched.values.to_dicts()}
    assert truth
    assert {(dim, ext): values.get((dim, ext)) for dim, _, ext, _ in truth} == {
        (dim, ext): value for (dim, _, ext, _), value in truth.items()
    }
