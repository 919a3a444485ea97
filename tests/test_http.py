"""The shared HTTP policy: retries, Retry-After, idempotency rules, error mapping, redaction."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from pendo_assets import __version__
from pendo_assets.clients import (
    PendoClient,
    PlanhatClient,
    RetryPolicy,
    build_http_client,
    prefetch,
)
from pendo_assets.clients._http import Redactor, parse_retry_after, send_with_retries
from pendo_assets.errors import (
    MAX_ERROR_BODY,
    ApiStatusError,
    ApiTransportError,
    ConfigError,
    DeliveryUnknownError,
    PagingLimitError,
    PayloadShapeError,
    PayloadTooLargeError,
    RateLimitedError,
)

# ---------------------------------------------------------------------------------------------
# Fakes shared with the client tests
# ---------------------------------------------------------------------------------------------

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records every request and answers from a script.

    Answers are used in order; the last one repeats. An exception is raised as the transport
    error; a callable gets the request.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers) or [httpx.Response(200, json={})]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        return answer(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]


class Sleeps(list[float]):
    """An injected ``sleep`` that records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


NO_JITTER = RetryPolicy(jitter=False)
SECRET_KEY = "pendo-key-5ecret"
API_TOKEN = "planhat-api-t0ken"
TENANT = "tenant-0b1f-uuid"
SECRETS = (SECRET_KEY, API_TOKEN, TENANT)


def _send(
    recorder: Recorder,
    *,
    idempotent: bool = True,
    policy: RetryPolicy = NO_JITTER,
    sleeps: Sleeps | None = None,
    method: str = "POST",
    url: str = "https://app.pendo.io/api/v1/aggregation",
    service: Any = "pendo",
    hint: str | None = None,
) -> httpx.Response:
    client = build_http_client(transport=recorder.transport)
    request = client.build_request(method, url, content=b"[1]")
    return send_with_retries(
        request,
        client=client,
        service=service,
        redactor=Redactor([SECRET_KEY, TENANT]),
        policy=policy,
        idempotent=idempotent,
        sleep=sleeps if sleeps is not None else Sleeps(),
        hint=hint,
    )


# ---------------------------------------------------------------------------------------------
# RetryPolicy and Retry-After
# ---------------------------------------------------------------------------------------------


def test_retry_policy_defaults_match_house_style() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.backoff_factor, policy.max_delay, policy.jitter) == (
        5,
        1.0,
        300.0,
        True,
    )


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"backoff_factor": -1.0}, {"max_delay": float("inf")}]
)
def test_retry_policy_rejects_values_without_a_stop(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


def test_retry_policy_delay_doubles_and_is_capped() -> None:
    policy = RetryPolicy(jitter=False, max_delay=5.0)
    waits = [policy.delay(attempt=n, retry_after=None) for n in range(1, 6)]
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(attempt=10_000, retry_after=None) == 5.0


def test_retry_policy_jitter_stays_within_one_backoff_factor() -> None:
    policy = RetryPolicy(backoff_factor=2.0)
    for attempt in (1, 2, 3):
        base = 2.0 * 2 ** (attempt - 1)
        assert base <= policy.delay(attempt=attempt, retry_after=None) <= base + 2.0


def test_retry_policy_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(max_delay=60.0)
    assert policy.delay(attempt=1, retry_after=12.5) == 12.5
    assert policy.delay(attempt=1, retry_after=3600.0) == 60.0


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Sun, 29 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


# ---------------------------------------------------------------------------------------------
# Retries on status codes
# ---------------------------------------------------------------------------------------------


def test_send_waits_retry_after_seconds_on_429() -> None:
    recorder = Recorder(
        httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200, json={"ok": 1})
    )
    sleeps = Sleeps()
    response = _send(recorder, sleeps=sleeps)
    assert response.json() == {"ok": 1}
    assert sleeps == [7.0]
    assert len(recorder.requests) == 2


def test_send_backs_off_exponentially_on_429_without_retry_after() -> None:
    recorder = Recorder(httpx.Response(429), httpx.Response(429), httpx.Response(200))
    sleeps = Sleeps()
    _send(recorder, sleeps=sleeps)
    assert sleeps == [1.0, 2.0]


def test_send_honours_an_http_date_retry_after() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    recorder = Recorder(
        httpx.Response(429, headers={"Retry-After": format_datetime(when, usegmt=True)}),
        httpx.Response(200),
    )
    sleeps = Sleeps()
    _send(recorder, sleeps=sleeps)
    assert len(sleeps) == 1
    assert 27.0 <= sleeps[0] <= 30.0


def test_send_caps_retry_after_at_max_delay() -> None:
    recorder = Recorder(httpx.Response(503, headers={"Retry-After": "86400"}), httpx.Response(200))
    sleeps = Sleeps()
    _send(recorder, sleeps=sleeps, policy=RetryPolicy(max_delay=300.0))
    assert sleeps == [300.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_send_retries_5xx_then_succeeds(status: int) -> None:
    recorder = Recorder(httpx.Response(status, text="oops"), httpx.Response(200))
    assert _send(recorder).status_code == 200
    assert len(recorder.requests) == 2


def test_send_gives_up_after_attempts_naming_service_endpoint_and_status() -> None:
    recorder = Recorder(httpx.Response(503, text="<html>WAF</html>"))
    sleeps = Sleeps()
    with pytest.raises(ApiStatusError) as caught:
        _send(recorder, sleeps=sleeps)
    error = caught.value
    assert str(error).startswith("Pendo POST /api/v1/aggregation answered 503 after 5 attempts")
    assert (error.status_code, error.service, error.method) == (503, "pendo", "POST")
    assert error.body == "<html>WAF</html>"
    assert len(recorder.requests) == 5
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_send_raises_rate_limited_with_retry_after_when_429_persists() -> None:
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "2"}))
    with pytest.raises(RateLimitedError) as caught:
        _send(recorder, policy=RetryPolicy(attempts=3, jitter=False))
    assert caught.value.retry_after == 2.0
    assert caught.value.status_code == 429
    assert len(recorder.requests) == 3


def test_send_does_not_retry_a_400_and_shows_the_body() -> None:
    recorder = Recorder(httpx.Response(400, text="Cannot parse filter expression"))
    sleeps = Sleeps()
    with pytest.raises(ApiStatusError) as caught:
        _send(recorder, sleeps=sleeps)
    assert str(caught.value) == (
        "Pendo POST /api/v1/aggregation answered 400: Cannot parse filter expression"
    )
    assert len(recorder.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("idempotent", [True, False])
def test_send_never_retries_413(idempotent: bool) -> None:
    recorder = Recorder(httpx.Response(413), httpx.Response(200))
    with pytest.raises(PayloadTooLargeError) as caught:
        _send(recorder, idempotent=idempotent)
    assert caught.value.status_code == 413
    assert len(recorder.requests) == 1


def test_send_truncates_error_bodies() -> None:
    recorder = Recorder(httpx.Response(400, text="x" * 10_000))
    with pytest.raises(ApiStatusError) as caught:
        _send(recorder)
    assert len(caught.value.body) == MAX_ERROR_BODY
    assert len(str(caught.value)) < 400


# ---------------------------------------------------------------------------------------------
# Transport errors: idempotent vs non-idempotent
# ---------------------------------------------------------------------------------------------

MAYBE_SENT: list[Exception] = [
    httpx.ReadTimeout("timed out"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("[Errno 104] Connection reset by peer"),
    httpx.WriteError("[Errno 32] Broken pipe"),
    httpx.WriteTimeout("write timed out"),
    httpx.DecodingError("Error -3 while decompressing data"),
]
NOT_SENT: list[Exception] = [
    httpx.ConnectError("[Errno 111] Connection refused"),
    httpx.ConnectTimeout("connect timed out"),
    httpx.PoolTimeout("no connection available"),
]


@pytest.mark.parametrize("error", MAYBE_SENT + NOT_SENT, ids=lambda e: type(e).__name__)
def test_idempotent_requests_retry_every_transport_error(error: Exception) -> None:
    recorder = Recorder(error, httpx.Response(200))
    assert _send(recorder, idempotent=True).status_code == 200
    assert len(recorder.requests) == 2


@pytest.mark.parametrize("error", NOT_SENT, ids=lambda e: type(e).__name__)
def test_non_idempotent_writes_retry_errors_raised_before_sending(error: Exception) -> None:
    recorder = Recorder(error, httpx.Response(200))
    assert _send(recorder, idempotent=False).status_code == 200
    assert len(recorder.requests) == 2


@pytest.mark.parametrize("error", MAYBE_SENT, ids=lambda e: type(e).__name__)
def test_non_idempotent_writes_raise_delivery_unknown_after_a_maybe_sent_error(
    error: Exception,
) -> None:
    recorder = Recorder(error, httpx.Response(200))
    sleeps = Sleeps()
    with pytest.raises(DeliveryUnknownError) as caught:
        _send(recorder, idempotent=False, sleeps=sleeps)
    assert len(recorder.requests) == 1
    assert sleeps == []
    assert "unknown" in str(caught.value)
    assert type(error).__name__ in str(caught.value)
    assert isinstance(caught.value.__cause__, type(error))


@pytest.mark.parametrize("status", [429, 500, 503])
def test_non_idempotent_writes_retry_error_statuses(status: int) -> None:
    recorder = Recorder(httpx.Response(status), httpx.Response(200))
    assert _send(recorder, idempotent=False).status_code == 200
    assert len(recorder.requests) == 2


def test_transport_errors_give_up_after_attempts() -> None:
    recorder = Recorder(httpx.ConnectError("refused"))
    with pytest.raises(ApiTransportError) as caught:
        _send(recorder, method="GET", url="https://app.pendo.io/api/v1/feature")
    assert not isinstance(caught.value, DeliveryUnknownError)
    assert str(caught.value).startswith("Pendo GET /api/v1/feature failed after 5 attempts")
    assert len(recorder.requests) == 5


def test_unsupported_protocol_is_not_retried() -> None:
    client = build_http_client(transport=None)
    request = client.build_request("GET", "ftp://example.invalid/x")
    with pytest.raises(ApiTransportError):
        send_with_retries(
            request,
            client=client,
            service="pendo",
            redactor=Redactor([]),
            policy=NO_JITTER,
            idempotent=True,
            sleep=Sleeps(),
        )


def test_region_hint_is_added_to_400_and_403_only() -> None:
    hint = "check the region"
    with pytest.raises(ApiStatusError, match=r"answered 403 \(check the region\)"):
        _send(Recorder(httpx.Response(403)), hint=hint)
    with pytest.raises(ApiStatusError) as caught:
        _send(Recorder(httpx.Response(404)), hint=hint)
    assert hint not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def test_build_http_client_sets_timeout_user_agent_and_transport() -> None:
    recorder = Recorder(httpx.Response(200))
    client = build_http_client(transport=recorder.transport)
    assert client.timeout == httpx.Timeout(10.0, read=60.0)
    client.get("https://example.test/")
    assert recorder.requests[0].headers["User-Agent"] == f"pendo-assets/{__version__}"
    assert not client.follow_redirects


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------


def test_redactor_masks_secrets_in_paths_encodings_and_key_like_params() -> None:
    redactor = Redactor(["s3cr/t key"])
    url = "https://h.test/a/s3cr%2Ft%20key/b?api_key=abc&token=def&page=2&x=s3cr/t key"
    text = redactor.url(url)
    assert "s3cr" not in text
    assert "abc" not in text and "def" not in text
    assert "page=2" in text
    assert redactor.path("https://h.test/analytics/bulk/s3cr%2Ft%20key") == "/analytics/bulk/***"
    assert "s3cr" not in repr(redactor)


def test_redactor_body_masks_a_secret_across_the_truncation_point() -> None:
    redactor = Redactor([TENANT])
    body = ("y" * (MAX_ERROR_BODY - 5) + TENANT + "z" * 50).encode()
    cleaned = redactor.body(body)
    assert len(cleaned) == MAX_ERROR_BODY
    assert TENANT[:5] not in cleaned
    assert "y***z" in cleaned


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _all_text_of(error: BaseException) -> str:
    parts = [str(error), repr(error), repr(vars(error))]
    cause = error.__cause__
    if cause is not None:
        parts += [str(cause), repr(cause), repr(vars(cause))]
    if error.__context__ is not None and error.__context__ is not cause:
        parts.append(repr(error.__context__))
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture everything, with httpx and httpcore turned up to DEBUG as a user might."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_secrets_stay_out_of_status_errors_and_logs(debug_logs: pytest.LogCaptureFixture) -> None:
    echo = f"bad tenant {TENANT} with token Bearer {API_TOKEN}"
    recorder = Recorder(httpx.Response(500, text=echo))
    planhat = PlanhatClient(
        api_token=API_TOKEN, tenant_token=TENANT, transport=recorder.transport, sleep=Sleeps()
    )
    with pytest.raises(ApiStatusError) as caught:
        planhat.post_dimension_data(b'[{"dimensionId":"d"}]', items=1)
    assert TENANT in str(recorder.requests[0].url)  # it really was in the path
    assert str(caught.value).startswith(
        "Planhat POST /dimensiondata/*** answered 500 after 5 attempts"
    )
    assert _leaks(_all_text_of(caught.value)) == []
    assert _leaks(debug_logs.text) == []
    assert any(r.name == "httpx" for r in debug_logs.records)  # httpx did log, scrubbed
    assert any(r.name == "pendo_assets.clients" for r in debug_logs.records)


def test_secrets_stay_out_of_transport_errors(debug_logs: pytest.LogCaptureFixture) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(f"timed out reading {request.url}", request=request)

    planhat = PlanhatClient(
        api_token=API_TOKEN, tenant_token=TENANT, transport=httpx.MockTransport(fail)
    )
    with pytest.raises(DeliveryUnknownError) as caught:
        planhat.post_activities(b'[{"externalId":"v"}]', items=1)
    assert "/analytics/bulk/***" in str(caught.value)
    assert _leaks(_all_text_of(caught.value)) == []
    assert _leaks(debug_logs.text) == []


def test_pendo_key_stays_out_of_errors_logs_and_repr(debug_logs: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(httpx.Response(403, text=f"key {SECRET_KEY} refused"))
    pendo = PendoClient(integration_key=SECRET_KEY, transport=recorder.transport)
    with pytest.raises(ApiStatusError) as caught:
        pendo.verify_key()
    assert recorder.requests[0].headers["x-pendo-integration-key"] == SECRET_KEY
    assert _leaks(_all_text_of(caught.value)) == []
    assert _leaks(debug_logs.text) == []
    assert _leaks(repr(pendo)) == []
    planhat = PlanhatClient(api_token=API_TOKEN, tenant_token=TENANT)
    assert _leaks(repr(planhat)) == []


def test_library_loggers_are_quiet_by_default() -> None:
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.WARNING


# ---------------------------------------------------------------------------------------------
# Errors carry their parts as fields
# ---------------------------------------------------------------------------------------------


def test_status_errors_carry_endpoint_and_problem() -> None:
    recorder = Recorder(httpx.Response(400, text="Cannot parse filter expression"))
    with pytest.raises(ApiStatusError) as caught:
        _send(recorder)
    error = caught.value
    assert error.endpoint == "Pendo POST /api/v1/aggregation"
    assert error.problem == "answered 400: Cannot parse filter expression"
    assert str(error) == f"{error.endpoint} {error.problem}"


def test_transport_errors_carry_endpoint_and_problem() -> None:
    with pytest.raises(ApiTransportError) as caught:
        _send(Recorder(httpx.ConnectError("refused")), policy=RetryPolicy(attempts=1))
    assert caught.value.endpoint == "Pendo POST /api/v1/aggregation"
    assert caught.value.problem == "failed (ConnectError: refused)"
    with pytest.raises(DeliveryUnknownError) as unknown:
        _send(Recorder(httpx.ReadTimeout("slow")), idempotent=False)
    assert unknown.value.problem.startswith("the request may have been sent but no answer came")
    assert str(unknown.value) == f"{unknown.value.endpoint}: {unknown.value.problem}"


def test_shape_and_paging_errors_carry_endpoint_and_problem() -> None:
    pendo = PendoClient(
        integration_key=SECRET_KEY,
        transport=Recorder(httpx.Response(200, json={"not": "a list"})).transport,
    )
    with pytest.raises(PayloadShapeError) as caught:
        pendo.list_features()
    assert caught.value.endpoint == "Pendo GET /api/v1/feature"
    assert caught.value.problem == "expected a JSON array of features"
    assert str(caught.value) == f"{caught.value.endpoint}: {caught.value.problem}"
    planhat = PlanhatClient(
        api_token=API_TOKEN,
        tenant_token=TENANT,
        transport=Recorder(httpx.Response(200, json=[{"_id": "a"}])).transport,
    )
    with pytest.raises(PagingLimitError) as limit:
        list(planhat.iter_pages("Asset", select=["_id"], page_size=1, max_pages=2))
    assert limit.value.endpoint == "Planhat GET /assets"
    assert limit.value.problem.startswith("2 full pages of 1 and still more")


def test_errors_built_without_parts_derive_them() -> None:
    error = ApiTransportError("reset", service="planhat", method="POST", url="https://x.test/a?b=1")
    assert (error.endpoint, error.problem) == ("Planhat POST /a", "reset")


# ---------------------------------------------------------------------------------------------
# prefetch
# ---------------------------------------------------------------------------------------------


class Source:
    """A generator that records what it produced, and whether and where it was closed."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.produced: list[int] = []
        self.closed_in: str | None = None
        self.items = self._run(n, fail_at)

    def _run(self, n: int, fail_at: int | None) -> Iterator[int]:
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"item {i} failed")
                self.produced.append(i)
                yield i
        finally:
            self.closed_in = threading.current_thread().name


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-prefetch")]


@pytest.mark.parametrize("ahead", [1, 3])
def test_prefetch_yields_in_order_never_more_than_ahead_of_the_caller(ahead: int) -> None:
    source = Source(10)
    taken = []
    with prefetch(source.items, ahead=ahead, name="test-prefetch") as items:
        for item in items:
            assert len(source.produced) <= len(taken) + 1 + ahead
            taken.append(item)
    assert taken == list(range(10))
    assert prefetch_threads() == []


def test_prefetch_raises_an_error_after_the_items_before_it() -> None:
    source = Source(10, fail_at=2)
    items = prefetch(source.items, name="test-prefetch")
    assert [next(items), next(items)] == [0, 1]
    with pytest.raises(ValueError, match="item 2 failed"):
        next(items)
    assert list(items) == []
    assert prefetch_threads() == []


def test_closing_prefetch_early_closes_the_source_in_the_worker() -> None:
    source = Source(100)
    items = prefetch(source.items, ahead=2, name="test-prefetch")
    assert next(items) == 0
    items.close()
    assert source.closed_in is not None and source.closed_in.startswith("test-prefetch")
    assert len(source.produced) <= 3
    assert prefetch_threads() == []
    assert list(items) == []


def test_prefetch_refuses_no_look_ahead() -> None:
    with pytest.raises(ConfigError, match="ahead"):
        prefetch(iter([]), ahead=0)
