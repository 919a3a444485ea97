"""PendoClient for pageEvents and trackEvents: request shapes, catalogues and the decoder's
reasons, which name the source's id field."""

from __future__ import annotations

import json

import httpx

from pendo_assets.clients.pendo import decode_events
from pendo_assets.models import EVENT_SOURCES

from .test_http import Recorder
from .test_pendo_client import DAY, DAY_MS, TZ, client, envelope, pendo_event, results

PAGES = EVENT_SOURCES["page_events"]
TRACKS = EVENT_SOURCES["track_events"]


def page_row(**overrides: object) -> dict[str, object]:
    row = pendo_event(featureId=..., pageId="page-a", parameters={"tab": "x"})
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not ...}


def test_event_pages_of_pages_read_page_events_filtered_and_sorted_by_page_id() -> None:
    recorder = Recorder(results([page_row(), page_row(visitorId="visitor-2")]))

    (page,) = client(recorder, page_size=10).event_pages(
        source=PAGES, day=DAY, timezone=TZ, item_ids=["page-a", "page-b"]
    )

    stages = json.loads(recorder.requests[0].content)["request"]["pipeline"]
    assert stages[0]["source"]["pageEvents"] == {"appId": 'expandAppIds("*")'}
    assert stages[1] == {"filter": 'pageId == "page-a" || pageId == "page-b"'}
    assert stages[2]["sort"][2] == "pageId"
    assert page.table.schema.names[2] == "page_id"
    assert page.table.column("page_id").to_pylist() == ["page-a", "page-a"]
    assert page.rejects == []


def test_decode_events_names_the_sources_id_field_in_its_reasons() -> None:
    rows = [
        {**pendo_event(featureId=...), "trackTypeId": "other"},
        pendo_event(featureId=...),
    ]

    page = decode_events(envelope(rows), source=TRACKS, day_ms=DAY_MS, item_ids=["track-a"])

    assert page.table.num_rows == 0
    assert [r.reason for r in page.rejects] == [
        "trackTypeId 'other' is not one of the requested track types",
        "trackTypeId is missing",
    ]


def test_list_pages_and_track_types() -> None:
    recorder = Recorder(
        httpx.Response(200, json=[{"id": "page-a", "name": "Billing", "kind": "Page"}]),
        results([{"id": "track-a", "name": "Invited teammate", "appId": -323232}]),
    )
    pendo = client(recorder)

    assert [(p.id, p.name) for p in pendo.list_items(PAGES)] == [("page-a", "Billing")]
    assert [(t.id, t.name) for t in pendo.list_items(TRACKS)] == [("track-a", "Invited teammate")]
    assert recorder.paths == ["/api/v1/page", "/api/v1/aggregation"]
    assert recorder.requests[0].url.params["expand"] == "*"
    stages = json.loads(recorder.requests[1].content)["request"]["pipeline"]
    assert stages == [{"source": {"trackTypes": {"appId": 'expandAppIds("*")'}}}]
