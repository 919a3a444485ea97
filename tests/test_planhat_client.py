"""PlanhatClient: snapshot paging and analytics writes (one call, one request)."""

from __future__ import annotations

from datetime import date
from typing import Any

import httpx
import polars as pl
import pytest

from pendo_assets.clients import PlanhatClient, RetryPolicy
from pendo_assets.clients.planhat import API_QUOTA
from pendo_assets.errors import (
    ApiStatusError,
    BatchError,
    ConfigError,
    DeliveryUnknownError,
    PagingLimitError,
    PayloadShapeError,
    PayloadTooLargeError,
)
from pendo_assets.models import SNAPSHOT_SCHEMAS, DimensionDataResult, MetricPoint

from .test_http import Recorder, Sleeps

TOKEN = "ph-api-token"
TENANT = "ph-tenant-uuid"


def planhat(recorder: Recorder, **kwargs: Any) -> PlanhatClient:
    kwargs.setdefault("retry", RetryPolicy(jitter=False))
    kwargs.setdefault("sleep", Sleeps())
    return PlanhatClient(
        api_token=TOKEN, tenant_token=TENANT, transport=recorder.transport, **kwargs
    )


def planhat_enduser(**overrides: Any) -> dict[str, Any]:
    """One End User as ``GET /endusers`` returns it; a value of ``...`` drops the key."""
    item: dict[str, Any] = {
        "_id": "eu-1",
        "externalId": "visitor-1",
        "email": "ann@example.com",
        "companyId": "co-1",
        "name": "Ann",
    }
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


def planhat_company(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"_id": "co-1", "externalId": "acct-1", "name": "Acme"}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"api_token": ""},
        {"tenant_token": " "},
        {"api_url": "api.planhat.com"},
        {"max_body_bytes": 40_000_000},
        {"max_items": 0},
    ],
)
def test_planhat_client_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"api_token": TOKEN, "tenant_token": TENANT, **kwargs}
    with pytest.raises(ConfigError):
        PlanhatClient(**settings)


# ---------------------------------------------------------------------------------------------
# Offset pager
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "path", "limit"),
    [
        ("EndUser", "/endusers", 2000),
        ("Company", "/companies", 5000),
        ("Asset", "/assets", 2000),
        ("Project", "/projects", 2000),
    ],
)
def test_iter_pages_uses_the_documented_maximum_limit(model: Any, path: str, limit: int) -> None:
    recorder = Recorder(httpx.Response(200, json=[{"_id": "x"}]))
    pages = list(planhat(recorder).iter_pages(model, select=["_id", "externalId"]))
    assert pages == [[{"_id": "x"}]]
    request = recorder.requests[0]
    assert request.url.host == "api.planhat.com"
    assert request.url.path == path
    assert dict(request.url.params) == {
        "select": "_id,externalId",
        "sort": "_id",
        "limit": str(limit),
        "offset": "0",
    }
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        ("Company", {"page_size": 5001}),
        ("EndUser", {"page_size": 2001}),
        ("Asset", {"page_size": 0}),
        ("Project", {"max_pages": 0}),
        ("License", {}),
    ],
)
def test_iter_pages_rejects_a_config_without_a_stop_rule(model: Any, kwargs: Any) -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError):
        list(planhat(recorder).iter_pages(model, select=["_id"], **kwargs))
    assert recorder.requests == []


def test_iter_pages_checks_its_arguments_when_called() -> None:
    with pytest.raises(ConfigError, match="between 1 and 5000"):
        planhat(Recorder()).iter_pages("Company", select=["_id"], page_size=6000)


def _ids(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"_id": f"id-{i:05d}"} for i in range(start, start + n)]


def test_iter_pages_stops_on_a_short_page() -> None:
    recorder = Recorder(httpx.Response(200, json=_ids(3)), httpx.Response(200, json=_ids(2, 3)))
    pages = list(planhat(recorder).iter_pages("Asset", select=["_id"], page_size=3))
    assert [len(p) for p in pages] == [3, 2]
    assert [r.url.params["offset"] for r in recorder.requests] == ["0", "3"]


def test_iter_pages_stops_on_an_empty_page_after_an_exact_limit_page() -> None:
    recorder = Recorder(httpx.Response(200, json=_ids(3)), httpx.Response(200, json=[]))
    pages = list(planhat(recorder).iter_pages("Asset", select=["_id"], page_size=3))
    assert [len(p) for p in pages] == [3, 0]
    assert len(recorder.requests) == 2


def test_iter_pages_raises_at_max_pages() -> None:
    recorder = Recorder(httpx.Response(200, json=_ids(2)))
    with pytest.raises(PagingLimitError, match="3 full pages"):
        list(planhat(recorder).iter_pages("Asset", select=["_id"], page_size=2, max_pages=3))
    assert len(recorder.requests) == 3


class FakeClock:
    """A clock that only ``sleep`` moves, and that ``sleep`` itself."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_iter_pages_keeps_under_the_api_quota_without_a_429() -> None:
    clock = FakeClock()
    items = _ids(7)
    recorder = Recorder(
        lambda request: httpx.Response(200, json=items[int(request.url.params["offset"]) :][:1])
    )
    client = planhat(recorder, api_quota=(3, 10.0), clock=clock, sleep=clock.sleep)
    pages = list(client.iter_pages("Asset", select=["_id"], page_size=1))
    assert len(pages) == 8 and len(recorder.requests) == 8
    # Three calls at t=0, three at t=10, two at t=20: never four within 10 s.
    assert clock.sleeps == [10.0, 10.0]


def test_the_api_quota_spares_the_analytics_host() -> None:
    clock = FakeClock()
    recorder = Recorder(httpx.Response(200, json={}))
    client = planhat(recorder, api_quota=(1, 60.0), clock=clock, sleep=clock.sleep)
    for _ in range(3):
        client.post_activities(BODY, items=1)
    assert clock.sleeps == [] and len(recorder.requests) == 3


def test_the_default_api_quota_is_planhats_documented_one() -> None:
    assert planhat(Recorder())._quota == API_QUOTA == (200, 60.0)
    with pytest.raises(ConfigError, match="api_quota"):
        planhat(Recorder(), api_quota=(0, 60.0))


def test_iter_pages_honours_retry_after_on_429() -> None:
    sleeps = Sleeps()
    recorder = Recorder(
        httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, json=[])
    )
    list(planhat(recorder, sleep=sleeps).iter_pages("Company", select=["_id"]))
    assert sleeps == [3.0]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_names_the_variable_to_check(status: int) -> None:
    recorder = Recorder(httpx.Response(status, json={"message": "Unauthorized"}))
    with pytest.raises(ApiStatusError) as caught:
        list(planhat(recorder).iter_pages("Company", select=["_id"]))
    message = str(caught.value)
    assert f"Planhat GET /companies answered {status}" in message
    assert "check PLANHAT_API_TOKEN" in message and TOKEN not in message
    assert len(recorder.requests) == 1  # a refusal is not retried


def test_other_refusals_carry_no_token_hint() -> None:
    recorder = Recorder(httpx.Response(400, json={"message": "bad select"}))
    with pytest.raises(ApiStatusError) as caught:
        list(planhat(recorder).iter_pages("Company", select=["_id"]))
    assert "answered 400" in str(caught.value) and "PLANHAT_API_TOKEN" not in str(caught.value)


@pytest.mark.parametrize("payload", [{"data": []}, [1, 2], "text"])
def test_iter_pages_rejects_answers_that_are_not_arrays_of_objects(payload: Any) -> None:
    with pytest.raises(PayloadShapeError):
        list(
            planhat(Recorder(httpx.Response(200, json=payload))).iter_pages("Asset", select=["_id"])
        )


# ---------------------------------------------------------------------------------------------
# Snapshot
# ---------------------------------------------------------------------------------------------


class SnapshotApi:
    """Answers the four list endpoints from fixed item lists, honouring limit/offset."""

    def __init__(self, **items: list[dict[str, Any]]) -> None:
        self.items = items

    def __call__(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.strip("/")
        limit = int(request.url.params["limit"])
        offset = int(request.url.params["offset"])
        return httpx.Response(200, json=self.items.get(name, [])[offset : offset + limit])


def test_snapshot_reads_every_model_with_its_select() -> None:
    recorder = Recorder(SnapshotApi(endusers=[planhat_enduser()], companies=[planhat_company()]))
    snapshot = planhat(recorder).snapshot()
    selects = {r.url.path: r.url.params["select"] for r in recorder.requests}
    assert selects == {
        "/endusers": "_id,externalId,email,companyId,name,archived",
        "/companies": "_id,externalId,name",
        "/assets": "_id,externalId,companyId,name",
        "/projects": "_id,externalId,companyId,name",
    }
    assert snapshot.endusers.schema == SNAPSHOT_SCHEMAS["EndUser"]
    assert snapshot.companies.schema == SNAPSHOT_SCHEMAS["Company"]
    assert snapshot.assets.schema == SNAPSHOT_SCHEMAS["Asset"]
    assert snapshot.projects.height == 0
    assert snapshot.endusers.row(0, named=True) == {
        "_id": "eu-1",
        "externalId": "visitor-1",
        "email": "ann@example.com",
        "companyId": "co-1",
        "name": "Ann",
        "archived": None,
    }


def test_snapshot_keeps_missing_external_ids_null_and_empty_ones_empty() -> None:
    endusers = [
        planhat_enduser(_id="a", externalId=...),
        planhat_enduser(_id="b", externalId=None),
        planhat_enduser(_id="c", externalId=""),
        planhat_enduser(_id="d", externalId=42, archived=True),
        planhat_enduser(_id="e", externalId={"odd": 1}),
    ]
    snapshot = planhat(Recorder(SnapshotApi(endusers=endusers))).snapshot()
    assert snapshot.endusers["externalId"].to_list() == [None, None, "", "42", None]
    assert snapshot.endusers["archived"].to_list() == [None, None, None, True, None]


def test_snapshot_deduplicates_by_id_across_pages() -> None:
    # 2,000 companies would not fill a page (limit 5,000), so repeat across End User pages.
    first = [planhat_enduser(_id=f"eu-{i:04d}") for i in range(2000)]
    second = [planhat_enduser(_id="eu-1999", externalId="later"), planhat_enduser(_id="eu-new")]
    snapshot = planhat(Recorder(SnapshotApi(endusers=first + second))).snapshot()
    ids = snapshot.endusers["_id"].to_list()
    assert len(ids) == 2001 == len(set(ids))
    assert ids[-1] == "eu-new"
    assert snapshot.endusers.filter(pl.col("_id") == "eu-1999")["externalId"].item() == "visitor-1"


def test_snapshot_requires_an_id_on_every_object() -> None:
    with pytest.raises(PayloadShapeError, match="_id"):
        planhat(Recorder(SnapshotApi(companies=[planhat_company(_id=...)]))).snapshot()


# ---------------------------------------------------------------------------------------------
# Analytics writes
# ---------------------------------------------------------------------------------------------

BODY = b'[{"externalId":"v1","action":"Used export","date":"2026-11-28","count":2}]'


def test_post_activities_sends_exactly_one_request_to_the_tenant_url() -> None:
    recorder = Recorder(httpx.Response(200, text="OK"))
    planhat(recorder).post_activities(BODY, items=1)
    [request] = recorder.requests
    assert (request.method, str(request.url)) == (
        "POST",
        f"https://analytics.planhat.com/analytics/bulk/{TENANT}",
    )
    assert request.content == BODY
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers


def test_post_dimension_data_sends_bearer_and_parses_errors() -> None:
    answer = {
        "processed": 1,
        "errors": [
            {"item": {"value": 1, "externalId": "x", "model": "Company"}, "error": "bad"},
            "odd entry",
        ],
    }
    recorder = Recorder(httpx.Response(200, json=answer))
    result = planhat(recorder).post_dimension_data(b"[{},{}]", items=2)
    [request] = recorder.requests
    assert str(request.url) == f"https://analytics.planhat.com/dimensiondata/{TENANT}"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert result == DimensionDataResult(
        processed=1,
        errors=[
            {"item": {"value": 1, "externalId": "x", "model": "Company"}, "error": "bad"},
            {"item": {}, "error": "odd entry"},
        ],
    )


@pytest.mark.parametrize("content", [b"", b"{}", b"<html>ok</html>", b"[1]"])
def test_post_dimension_data_never_raises_after_a_200(content: bytes) -> None:
    result = planhat(Recorder(httpx.Response(200, content=content))).post_dimension_data(
        b"[{}]", items=1
    )
    assert result == DimensionDataResult(processed=None, errors=[])


@pytest.mark.parametrize(
    ("body", "items", "message"),
    [
        (b"[]", 1, "empty JSON array"),
        (b"[{}]", 0, "empty batch"),
        (b"[{},{}]", 1, "holds 2 items"),
        (b"{}", 1, "not a JSON array"),
        (b"[" + b"{}," * 60 + b"{}]", 61, "over max_body_bytes"),
        (b"[{},{},{}]", 3, "over max_items"),
    ],
)
def test_analytics_writes_refuse_bad_batches_before_sending(
    body: bytes, items: int, message: str
) -> None:
    recorder = Recorder()
    client = planhat(recorder, max_body_bytes=100, max_items=2)
    with pytest.raises(BatchError, match=message):
        client.post_activities(body, items=items)
    with pytest.raises(BatchError, match=message):
        client.post_dimension_data(body, items=items)
    assert recorder.requests == []


def test_analytics_writes_retry_5xx_and_connect_errors() -> None:
    recorder = Recorder(
        httpx.Response(502), httpx.ConnectError("refused"), httpx.Response(200, json={})
    )
    planhat(recorder).post_activities(BODY, items=1)
    assert len(recorder.requests) == 3


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("Server disconnected")]
)
def test_analytics_writes_raise_delivery_unknown_after_one_request(error: Exception) -> None:
    recorder = Recorder(error)
    client = planhat(recorder)
    with pytest.raises(DeliveryUnknownError):
        client.post_activities(BODY, items=1)
    with pytest.raises(DeliveryUnknownError):
        client.post_dimension_data(b"[{}]", items=1)
    assert len(recorder.requests) == 2  # one per call, none retried


def test_analytics_writes_do_not_retry_413() -> None:
    recorder = Recorder(httpx.Response(413, text="Payload Too Large"), httpx.Response(200))
    with pytest.raises(PayloadTooLargeError, match="answered 413"):
        planhat(recorder).post_activities(BODY, items=1)
    assert len(recorder.requests) == 1


# ---------------------------------------------------------------------------------------------
# Reading metrics back
# ---------------------------------------------------------------------------------------------


def dimension_point(**overrides: Any) -> dict[str, Any]:
    """One item of ``GET /dimensiondata``, with Planhat's field names."""
    item: dict[str, Any] = {
        "_id": "pt-1",
        "dimensionId": "pendo_clicks",
        "time": "2026-11-02T00:00:00.000Z",
        "value": 5,
        "model": "Company",
        "parentId": "co-1",
        "companyId": "co-1",
        "companyName": "Acme",
    }
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


def test_get_dimension_data_pages_with_limit_and_offset_until_a_short_page() -> None:
    full = [dimension_point(_id=f"pt-{i}", value=i) for i in range(3)]
    recorder = Recorder(
        httpx.Response(200, json=full),
        httpx.Response(200, json=full),
        httpx.Response(200, json=full[:1]),
    )
    client = planhat(recorder)
    pages = client.get_dimension_data(
        dimension_id="pendo_clicks", start=date(2026, 11, 1), end=date(2026, 11, 2), page_size=3
    )
    assert recorder.requests == []  # lazy: nothing is read before the first page is asked for
    got = list(pages)
    assert [len(p) for p in got] == [3, 3, 1]
    assert got[0][2] == MetricPoint(
        dimension_id="pendo_clicks",
        day=date(2026, 11, 2),
        value=2.0,
        model="Company",
        parent_id="co-1",
    )
    assert [dict(r.url.params) for r in recorder.requests] == [
        {"dimid": "pendo_clicks", "from": "20758", "to": "20759", "limit": "3", "offset": str(o)}
        for o in (0, 3, 6)
    ]
    assert all(r.url.path == "/dimensiondata" for r in recorder.requests)
    assert recorder.requests[0].url.host == "api.planhat.com"
    assert recorder.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_get_dimension_data_stops_on_an_empty_page_and_narrows_to_a_company() -> None:
    recorder = Recorder(
        httpx.Response(200, json=[dimension_point()] * 2), httpx.Response(200, json=[])
    )
    pages = planhat(recorder).get_dimension_data(
        dimension_id="d",
        start=date(2026, 11, 2),
        end=date(2026, 11, 2),
        company_id="co-9",
        page_size=2,
    )
    assert [len(p) for p in pages] == [2, 0]
    assert [r.url.params["cId"] for r in recorder.requests] == ["co-9", "co-9"]


def test_get_dimension_data_reads_either_shape_of_time_and_skips_null_values() -> None:
    items = [
        dimension_point(time="2026-11-02"),
        dimension_point(time=20759),  # days since 1970-01-01
        dimension_point(time=1_793_577_600_000),  # epoch ms: 2026-11-02T00:00Z
        dimension_point(value=None),
        dimension_point(model=...),
    ]
    recorder = Recorder(httpx.Response(200, json=items))
    (page,) = planhat(recorder).get_dimension_data(
        dimension_id="d", start=date(2026, 11, 2), end=date(2026, 11, 2)
    )
    assert [p.day for p in page] == [date(2026, 11, 2)] * 4
    assert page[-1].model == "Company"


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        (dimension_point(parentId=...), "no parentId"),
        (dimension_point(dimensionId=""), "no dimensionId"),
        (dimension_point(time="yesterday"), "not a date"),
        (dimension_point(value="5"), "not a number"),
    ],
)
def test_get_dimension_data_rejects_unusable_items(item: dict[str, Any], problem: str) -> None:
    recorder = Recorder(httpx.Response(200, json=[item]))
    pages = planhat(recorder).get_dimension_data(
        dimension_id="d", start=date(2026, 11, 2), end=date(2026, 11, 2)
    )
    with pytest.raises(PayloadShapeError, match=problem):
        list(pages)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": date(2026, 11, 3), "end": date(2026, 11, 2)},
        {"page_size": 0},
        {"page_size": 10_001},
        {"max_pages": 0},
    ],
)
def test_get_dimension_data_refuses_bad_arguments_when_called(kwargs: dict[str, Any]) -> None:
    recorder = Recorder()
    arguments: dict[str, Any] = {
        "dimension_id": "d",
        "start": date(2026, 11, 1),
        "end": date(2026, 11, 2),
        **kwargs,
    }
    with pytest.raises(ConfigError):
        planhat(recorder).get_dimension_data(**arguments)
    assert recorder.requests == []


def test_get_dimension_data_refuses_to_stop_short_at_max_pages() -> None:
    recorder = Recorder(httpx.Response(200, json=[dimension_point()]))
    pages = planhat(recorder).get_dimension_data(
        dimension_id="d", start=date(2026, 11, 2), end=date(2026, 11, 2), page_size=1, max_pages=2
    )
    with pytest.raises(PagingLimitError):
        list(pages)
    assert len(recorder.requests) == 2
