"""Every sandbox fault kind, observed from a real httpx client over loopback."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import httpx
import pytest

from pendo_assets.sandbox import Sandbox

NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def sb():
    with Sandbox(now=NOW) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def fresh(sb):
    sb.faults.clear()
    sb.received.clear()
    yield
    sb.faults.clear()


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def aggregation(sb, client, **kw):
    body = {
        "response": {"mimeType": "application/json"},
        "request": {
            "pipeline": [
                {
                    "source": {
                        "featureEvents": None,
                        "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
                    }
                },
                {"limit": 200},
            ]
        },
    }
    return client.post(
        f"{sb.pendo_url}/api/v1/aggregation",
        json=body,
        headers={"x-pendo-integration-key": sb.pendo_key},
        **kw,
    )


def activities(sb, client, n=2):
    matched = next(v for v, c in sb.dataset.visitor_categories().items() if c == "matched")
    items = [{"externalId": matched, "action": "a", "date": "2026-11-02", "count": 1}] * n
    return client.post(f"{sb.planhat_analytics_url}/analytics/bulk/{sb.tenant_token}", json=items)


def test_status_fault_with_retry_after_then_normal_answers(sb, client):
    fault = sb.faults.add(
        service="pendo",
        path="/api/v1/aggregation",
        kind="status",
        status=429,
        headers={"Retry-After": "2"},
        times=2,
    )
    for _ in range(2):
        r = aggregation(sb, client)
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert aggregation(sb, client).status_code == 200
    assert fault.fired == 2 and sb.faults.fired == 2 and not sb.faults.active
    recorded = sb.received.requests(service="pendo")
    assert [(q.status, q.fault) for q in recorded] == [
        (429, "status"),
        (429, "status"),
        (200, None),
    ]


def test_status_fault_without_retry_after_and_html_5xx(sb, client):
    sb.faults.add(service="planhat_api", path="/companies", kind="status", status=429)
    r = client.get(
        f"{sb.planhat_api_url}/companies", headers={"Authorization": f"Bearer {sb.api_token}"}
    )
    assert r.status_code == 429 and "retry-after" not in r.headers and r.content == b""
    html = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
    for status in (500, 502, 503):
        sb.faults.add(
            service="planhat_analytics", path="/analytics", kind="status", status=status, body=html
        )
        r = activities(sb, client)
        assert (
            r.status_code == status
            and r.text == html
            and r.headers["content-type"].startswith("text/html")
        )
    assert sb.received.activities() == []  # a status fault answers before anything is applied


def test_method_and_path_prefix_must_match(sb, client):
    sb.faults.add(
        service="pendo", path="/api/v1/aggregation", method="GET", kind="status", status=500
    )
    sb.faults.add(service="pendo", path="/api/v1/feature", kind="status", status=502)
    assert aggregation(sb, client).status_code == 200  # POST: not hit
    headers = {"x-pendo-integration-key": sb.pendo_key}
    assert client.get(f"{sb.pendo_url}/api/v1/token/verify", headers=headers).status_code == 200
    assert client.get(f"{sb.pendo_url}/api/v1/feature", headers=headers).status_code == 502
    with pytest.raises(ValueError, match="kind must be one of"):
        sb.faults.add(service="pendo", kind="explode")
    with pytest.raises(ValueError, match="needs status"):
        sb.faults.add(service="pendo", kind="status")


def test_delay_fault_times_out_a_short_client_then_answers(sb, client):
    sb.faults.add(service="pendo", path="/api/v1/aggregation", kind="delay", seconds=0.6)
    with pytest.raises(httpx.ReadTimeout):
        aggregation(sb, client, timeout=httpx.Timeout(5, read=0.2))
    sb.faults.add(service="pendo", path="/api/v1/aggregation", kind="delay", seconds=0.3)
    start = time.monotonic()
    assert aggregation(sb, client).status_code == 200
    assert time.monotonic() - start >= 0.3


def test_reset_fault_aborts_before_applying(sb, client):
    sb.faults.add(service="planhat_analytics", path="/analytics/bulk", kind="reset")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        activities(sb, client)
    assert sb.received.activities() == []
    (req,) = sb.received.requests(service="planhat_analytics")
    assert (req.status, req.fault, req.applied) == (None, "reset", False)
    assert activities(sb, client).status_code == 200  # the client reconnects
    sb.faults.add(service="pendo", path="/api/v1/aggregation", kind="reset")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        aggregation(sb, client)


def test_reset_after_apply_applies_and_records_but_never_answers(sb, client):
    sb.faults.add(service="planhat_analytics", path="/analytics/bulk", kind="reset_after_apply")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        activities(sb, client, n=3)
    assert len(sb.received.activities(include_dropped=False)) == 3
    (req,) = sb.received.requests(service="planhat_analytics")
    assert (req.status, req.fault, req.applied, req.items) == (None, "reset_after_apply", True, 3)
    sb.faults.add(service="planhat_analytics", path="/dimensiondata", kind="reset_after_apply")
    account = next(a for a, c in sb.dataset.account_categories().items() if c == "matched")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(
            f"{sb.planhat_analytics_url}/dimensiondata/{sb.tenant_token}",
            json=[{"dimensionId": "d", "value": 1, "externalId": account, "date": "2026-11-02"}],
        )
    assert sb.received.metric_points() == {("d", "Company", account, "2026-11-02"): [1.0]}


def test_truncate_fault_sends_a_short_body_under_a_full_content_length(sb, client):
    sb.faults.add(service="pendo", path="/api/v1/aggregation", kind="truncate", fraction=0.3)
    with pytest.raises(httpx.RemoteProtocolError):
        aggregation(sb, client)
    r = aggregation(sb, client)
    assert r.status_code == 200 and len(r.json()["results"]) == 200  # the next answer is whole
    sb.faults.add(service="planhat_analytics", path="/analytics/bulk", kind="truncate")
    with pytest.raises(httpx.RemoteProtocolError):
        activities(sb, client)
    assert len(sb.received.activities()) == 2  # applied: the answer was cut, not the request


def test_invalid_json_fault_answers_200_with_garbage(sb, client):
    sb.faults.add(service="pendo", path="/api/v1/aggregation", kind="invalid_json")
    r = aggregation(sb, client)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        r.json()
    sb.faults.add(
        service="planhat_api", path="/endusers", kind="invalid_json", body="<html>oops</html>"
    )
    r = client.get(
        f"{sb.planhat_api_url}/endusers", headers={"Authorization": f"Bearer {sb.api_token}"}
    )
    assert r.status_code == 200 and r.text == "<html>oops</html>"


def test_row_errors_fault_rejects_chosen_dimensiondata_items(sb, client):
    accounts = [a for a, c in sb.dataset.account_categories().items() if c == "matched"][:4]
    items = [
        {"dimensionId": "d", "value": i, "externalId": a, "model": "Company", "date": "2026-11-02"}
        for i, a in enumerate(accounts)
    ]
    fault = sb.faults.add(
        service="planhat_analytics",
        path="/dimensiondata",
        kind="row_errors",
        indexes=[1, 3],
        error="value out of range",
    )
    r = client.post(f"{sb.planhat_analytics_url}/dimensiondata/{sb.tenant_token}", json=items)
    body = r.json()
    assert r.status_code == 200 and body["processed"] == 2
    assert body["errors"] == [
        {"item": items[1], "error": "value out of range"},
        {"item": items[3], "error": "value out of range"},
    ]
    assert set(sb.received.metric_points()) == {
        ("d", "Company", accounts[0], "2026-11-02"),
        ("d", "Company", accounts[2], "2026-11-02"),
    }
    assert fault.fired == 1
    r = client.post(f"{sb.planhat_analytics_url}/dimensiondata/{sb.tenant_token}", json=items)
    assert r.json() == {"processed": 4, "errors": []}


def test_unlimited_fault_fires_until_cleared(sb, client):
    sb.faults.add(service="pendo", path="/", kind="status", status=503, times=None)
    assert [aggregation(sb, client).status_code for _ in range(3)] == [503, 503, 503]
    assert sb.faults.fired == 3
    sb.faults.clear()
    assert aggregation(sb, client).status_code == 200 and sb.faults.fired == 0


def test_reset_is_a_tcp_rst_on_the_wire(sb):
    sb.faults.add(service="pendo", path="/", kind="reset")
    with socket.create_connection(("127.0.0.1", sb.ports[0]), timeout=5) as raw:
        raw.sendall(b"GET /api/v1/token/verify HTTP/1.1\r\nHost: sandbox\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            raw.recv(1024)
