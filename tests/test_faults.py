"""The real sync against the sandbox with faults armed: what users meet on flaky networks.

Each test runs `run_sync` (a Dagster run through every asset) with one fault switched on in the
sandbox and checks the outcome against the generator's ground truth:

* a fault that clears within the retry budget is retried (the sandbox counts the requests) and
  Planhat ends up holding exactly the truth, nothing twice;
* a fault that persists fails the run with a last line naming the day, the endpoint and the
  status, and the day's previously landed data is left exactly as it was;
* Planhat's analytics endpoints: an answer that says "not accepted" is resent, one that may have
  been applied is never resent blindly, a 413 splits the batch, and items Planhat lists as
  failed inside a 200 are sent again by the next run.

Retries use millisecond waits (``FAST_RETRIES``); a Retry-After of 1 s is honoured in full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import dagster as dg
import pytest

from pendo_assets.cli import main
from pendo_assets.sandbox import SandboxSpec

from .conftest import FAST_RETRIES, Env, MakeEnv

SPEC = SandboxSpec(seed=11, n_visitors=300, n_accounts=40, rows_per_day=300)
DAY = date(2026, 11, 3)
DAYS = [date(2026, 11, 2), DAY]
AGGREGATION = "/api/v1/aggregation"
ATTEMPTS = FAST_RETRIES["retry_attempts"]
# One synced day asks Pendo for its feature list, the day's feature events, and each of the four
# configured pipelines.
REQUESTS_PER_DAY = 6
HTML_503 = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
    "<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>"
)
HTML_502 = "<html><body><h1>502 Bad Gateway</h1><p>The upstream server &amp; proxy failed.</p></body></html>"
HTML_500 = (
    "<!DOCTYPE html><html><head><title>Internal Server Error</title></head><body>oops</body></html>"
)
# The product's feature-event reads carry this request id; configured pipelines group rows.
FEATURE_READ = '"requestId":"pendo-planhat-feature-events-'
PIPELINE_READ = '"group"'


@pytest.fixture
def fenv(make_env: MakeEnv) -> Env:
    return make_env(spec=SPEC, sync=FAST_RETRIES)


def assert_exact(env: Env, days: list[date]) -> None:
    """Planhat holds exactly the truth for ``days``: every key, every count, once."""
    truth = env.truth_activities(days)
    assert truth and env.sandbox.received.activity_totals() == truth
    truth_m = env.truth_metrics(days)
    assert truth_m and env.received_metrics() == truth_m


def pendo_reads(env: Env) -> list[Any]:
    return env.sandbox.received.requests(service="pendo", path_prefix=AGGREGATION)


def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gap_after(records: list[Any], faulted: Any) -> float:
    """Seconds between the faulted answer and the start of the next request to the same host."""
    later = [r for r in records if r.seq > faulted.seq]
    assert later, "the request was never retried"
    nxt = min(later, key=lambda r: r.seq)
    return (nxt.at - nxt.elapsed) - faulted.at


def failure_descriptions(run_id: str | None) -> dict[str, str]:
    """Step key -> the description of its failure, as the Dagster UI shows it."""
    instance = dg.DagsterInstance.get()
    out = {}
    for entry in instance.all_logs(run_id or ""):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data.user_failure_data is not None:
                out[event.step_key or ""] = data.user_failure_data.description or ""
    return out


def day_rows(env: Env, day: date) -> dict[str, list[tuple[Any, ...]]]:
    """Everything landed for ``day``, row for row (timestamps included)."""
    tables = {
        "raw_feature_events": "SELECT * FROM raw_feature_events WHERE day = ? ORDER BY ALL",
        "quarantine_feature_events": "SELECT * FROM quarantine_feature_events WHERE day = ? ORDER BY ALL",
        "raw_pipeline_results": "SELECT * FROM raw_pipeline_results WHERE day = ? ORDER BY ALL",
        "pipeline_values": "SELECT * FROM pipeline_values WHERE day = ? ORDER BY ALL",
        "landed_days": "SELECT * FROM landed_days WHERE day = ? ORDER BY ALL",
    }
    return {name: env.sql(query, [day]) for name, query in tables.items()}


# --------------------------------------------------------------------------------------------
# Pendo: transient faults are retried and the numbers are exact
# --------------------------------------------------------------------------------------------

# Each request of a synced day gets up to two faults here (three attempts), so one run exercises
# several faults, each on its own request, each with its own count.
READS: dict[str, tuple[str, str | tuple[()]]] = {
    "feature list": ("/api/v1/feature", ()),
    "feature events": (AGGREGATION, FEATURE_READ),
    "pipeline account_usage": (AGGREGATION, '"totalMinutes"'),
    "pipeline account_key_feature_clicks": (AGGREGATION, '"keyClicks"'),
    "pipeline asset_usage": (AGGREGATION, '"assetId"'),
    "pipeline project_active_visitors": (AGGREGATION, '"activeVisitors"'),
}
TRANSIENT: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "statuses": [
        (
            "429 without Retry-After",
            "feature events",
            dict(kind="status", status=429, body="Too Many Requests"),
        ),
        ("503 with an HTML page", "feature events", dict(kind="status", status=503, body=HTML_503)),
        (
            "500 with an HTML page",
            "pipeline account_usage",
            dict(kind="status", status=500, times=2, body=HTML_500),
        ),
        (
            "502 with an HTML page",
            "pipeline account_key_feature_clicks",
            dict(kind="status", status=502, times=2, body=HTML_502),
        ),
        (
            "429 with Retry-After: 1",
            "pipeline asset_usage",
            dict(kind="status", status=429, headers={"Retry-After": "1"}),
        ),
        (
            "503 with an HTML page",
            "pipeline project_active_visitors",
            dict(kind="status", status=503, body=HTML_503),
        ),
    ],
    "connections": [
        ("a connection reset", "feature events", dict(kind="reset", times=2)),
        ("JSON cut off mid-body", "pipeline account_usage", dict(kind="truncate", fraction=0.4)),
        (
            "an answer slower than the client timeout",
            "pipeline account_key_feature_clicks",
            dict(kind="delay", seconds=1.6),
        ),
        ("a connection reset", "pipeline asset_usage", dict(kind="reset")),
        ("JSON cut off mid-body", "pipeline asset_usage", dict(kind="truncate", fraction=0.9)),
    ],
    "bodies": [
        ("a 200 with garbage for a body", "feature events", dict(kind="invalid_json")),
        (
            "a 200 with JSON cut short (its Content-Length complete)",
            "feature events",
            dict(
                kind="invalid_json", body=b'{"startTime":1,"results":[{"visitorId":"user-0001","acc'
            ),
        ),
        (
            "a 200 with garbage for a body",
            "pipeline account_usage",
            dict(kind="invalid_json", times=2),
        ),
        ("a 200 with garbage for a body", "feature list", dict(kind="invalid_json")),
    ],
}


@pytest.mark.parametrize("group", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_pendo_faults_are_retried_and_the_numbers_are_exact(
    fenv: Env, group: list[tuple[str, str, dict[str, Any]]]
) -> None:
    armed = [
        (
            name,
            fenv.sandbox.faults.add(
                service="pendo", path=READS[read][0], body_contains=READS[read][1], **params
            ),
        )
        for name, read, params in group
    ]

    outcome = fenv.sync(DAY, DAY)

    assert outcome.exit_code == 0, outcome.last_line
    for name, fault in armed:
        assert fault.fired == fault.times, name
    # Bounded: each fault cost exactly one more request, and nothing was read twice otherwise.
    # (A delayed answer is recorded when the sandbox stops sleeping: wait for it.)
    fired = sum(fault.fired for _, fault in armed)
    requests = fenv.sandbox.received.requests
    assert eventually(lambda: len(requests(service="pendo")) == REQUESTS_PER_DAY + fired)
    assert_exact(fenv, [DAY])
    # A Retry-After is waited out in full (without one, the backoff is milliseconds here).
    records = pendo_reads(fenv)
    waits = sorted(gap_after(records, r) for r in records if r.status == 429)
    if any("Retry-After" in str(params.get("headers")) for _, _, params in group):
        assert waits[-1] >= 0.95, waits


# --------------------------------------------------------------------------------------------
# Pendo: days that keep failing keep their previous data, and the run names them
# --------------------------------------------------------------------------------------------

PERSISTENT_DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(4)]
GOOD, A, B, C = PERSISTENT_DAYS
PERSISTENT: dict[date, tuple[dict[str, Any], str]] = {
    A: (
        dict(kind="status", status=503, body=HTML_503),
        f"answered 503 after {ATTEMPTS} attempts: 503 Service Temporarily Unavailable",
    ),
    B: (
        dict(kind="reset"),
        f"failed after {ATTEMPTS} attempts (",
    ),  # ReadError, RemoteProtocolError
    C: (dict(kind="invalid_json"), f"answered 200 with an unusable body ({ATTEMPTS} times)"),
}


def test_pendo_days_that_keep_failing_keep_their_data_and_the_run_names_them(fenv: Env) -> None:
    assert fenv.sync(GOOD, C).exit_code == 0
    before = {day: day_rows(fenv, day) for day in PERSISTENT}
    assert all(rows["raw_feature_events"] and rows["pipeline_values"] for rows in before.values())
    sent = fenv.sandbox.received.activity_totals()
    armed = {}
    for day, (fault, _) in PERSISTENT.items():
        fenv.sandbox.dataset.revise_day(day, grow=True)  # Pendo now says something else
        armed[day] = fenv.sandbox.faults.add(
            service="pendo",
            path=AGGREGATION,
            times=None,
            body_contains=fenv.sandbox.day_marker(day),
            **fault,
        )

    outcome = fenv.sync(GOOD, C)

    assert outcome.exit_code == 1
    line = outcome.last_line
    assert "\n" not in line and "<html" not in line
    assert line.startswith(
        f"sync failed for {GOOD}..{C}: pendo_feature_events: {A}: Pendo POST {AGGREGATION} "
        f"{PERSISTENT[A][1]} (+2 more); feature events of 3 of 4 day(s) not landed, their "
        "previous data is unchanged; pendo_pipeline_results: "
    )
    # The Dagster UI says the same, with one line per failed day.
    described = failure_descriptions(outcome.run_id)
    for day, (_, says) in PERSISTENT.items():
        assert f"\n{day}: Pendo POST {AGGREGATION} {says}" in described["pendo_feature_events"]
    pipelines = described["pendo_pipeline_results"].splitlines()
    assert pipelines[1:4] == [
        f"{A} pipeline '{name}': Pendo POST {AGGREGATION} {PERSISTENT[A][1]}"
        for name in ("account_usage", "account_key_feature_clicks", "asset_usage")
    ]
    assert pipelines[4].startswith(f"{A}..{C}: not tried after 3 pipeline day(s) in a row failed")
    # 4 days x 4 pipelines: GOOD's 4 landed, A's first 3 failed, the 9 after them not tried.
    assert "(9 pipeline day(s) not tried; the next run tries them again)" in pipelines[4]
    assert "(+11 more); 12 of 16 pipeline day(s) not landed" in pipelines[0]
    # Each failed day's data is exactly what it was; nothing new reached Planhat.
    assert {day: day_rows(fenv, day) for day in PERSISTENT} == before
    assert fenv.sandbox.received.activity_totals() == sent
    # Bounded: A's feature read and three pipelines ATTEMPTS times each, then its last pipeline
    # and the later days' pipelines were not tried; B and C: their feature read only.
    assert {day: fault.fired for day, fault in armed.items()} == {
        A: 4 * ATTEMPTS,
        B: ATTEMPTS,
        C: ATTEMPTS,
    }

    fenv.sandbox.faults.clear()
    again = fenv.sync(GOOD, C)
    assert again.exit_code == 0, again.last_line
    assert_exact(fenv, PERSISTENT_DAYS)  # the revised days, each key once
    assert all(day_rows(fenv, day) != before[day] for day in PERSISTENT)


# --------------------------------------------------------------------------------------------
# Planhat main API (the snapshot)
# --------------------------------------------------------------------------------------------


def test_planhat_429_retry_after_and_5xx_are_retried(fenv: Env) -> None:
    faults = fenv.sandbox.faults
    limited = faults.add(
        service="planhat_api",
        path="/endusers",
        kind="status",
        status=429,
        headers={"Retry-After": "1"},
        body='{"error": "Too Many Requests"}',
    )
    down = faults.add(
        service="planhat_api", path="/companies", kind="status", status=503, times=2, body=HTML_503
    )
    bad = faults.add(service="planhat_api", path="/assets", kind="status", status=500, body="oops")

    assert fenv.sync(DAY, DAY).exit_code == 0
    assert (limited.fired, down.fired, bad.fired) == (1, 2, 1)
    records = fenv.sandbox.received.requests(service="planhat_api")
    (faulted,) = [r for r in records if r.status == 429]
    assert gap_after(records, faulted) >= 0.95
    assert_exact(fenv, [DAY])


def test_a_planhat_snapshot_that_keeps_failing_keeps_the_previous_one(fenv: Env) -> None:
    assert fenv.sync(DAY, DAY).exit_code == 0
    objects = fenv.sql("SELECT * FROM planhat_objects ORDER BY ALL")
    requests = fenv.analytics_requests()
    stamps = fenv.export_stamps()
    assert fenv.sandbox.dataset.add_late_endusers() > 0  # the next snapshot would differ
    armed = fenv.sandbox.faults.add(
        service="planhat_api",
        path="/endusers",
        kind="status",
        status=502,
        times=None,
        body=HTML_502,
    )

    outcome = fenv.sync(DAY, DAY)

    assert outcome.exit_code == 1
    assert outcome.last_line == (
        f"sync failed for {DAY}..{DAY}: planhat_snapshot: Planhat snapshot failed: Planhat GET "
        f"/endusers answered 502 after {ATTEMPTS} attempts: 502 Bad Gateway The upstream server & "
        "proxy failed.; the previous snapshot is kept and nothing was matched or published"
    )
    assert armed.fired == ATTEMPTS
    assert fenv.sql("SELECT * FROM planhat_objects ORDER BY ALL") == objects
    assert fenv.analytics_requests() == requests
    # Publish never ran, yet data/exports/ was refreshed after the run, and matches SQL.
    assert all(fenv.export_stamps()[v] > stamps[v] for v in stamps)
    assert fenv.exported() == fenv.views()


# --------------------------------------------------------------------------------------------
# Planhat analytics: not accepted -> resent; maybe applied -> never resent blindly
# --------------------------------------------------------------------------------------------


def test_analytics_refusals_are_resent_and_nothing_is_counted_twice(fenv: Env) -> None:
    faults = fenv.sandbox.faults
    # A reset on a `last` metrics batch: the outcome is unknown, but resending is harmless.
    reset = faults.add(service="planhat_analytics", path="/dimensiondata", kind="reset")
    bulk = faults.add(
        service="planhat_analytics",
        path="/analytics/bulk",
        kind="status",
        status=503,
        times=2,
        body=HTML_503,
    )
    metrics_500 = faults.add(
        service="planhat_analytics", path="/dimensiondata", kind="status", status=500
    )
    metrics_429 = faults.add(
        service="planhat_analytics",
        path="/dimensiondata",
        kind="status",
        status=429,
        headers={"Retry-After": "1"},
    )

    outcome = fenv.sync(DAY, DAY)

    assert outcome.exit_code == 0, outcome.last_line
    assert (reset.fired, bulk.fired, metrics_500.fired, metrics_429.fired) == (1, 2, 1, 1)
    records = fenv.sandbox.received.requests(service="planhat_analytics")
    assert [r.applied for r in records if r.fault in ("status", "reset")] == [False] * 5
    (limited,) = [r for r in records if r.status == 429]
    assert gap_after(records, limited) >= 0.95  # Retry-After: 1, waited in full
    notes = fenv.sql("SELECT aggregation, note FROM outbox_batches WHERE status = 'discarded'")
    assert [agg for agg, _ in notes] == ["last"] and "no answer" in notes[0][1]
    assert_exact(fenv, [DAY])
    assert fenv.sql("SELECT COUNT(*) FROM batches_in_doubt") == [(0,)]


def test_analytics_that_keep_failing_stop_the_publish_and_the_next_run_sends_once(
    fenv: Env,
) -> None:
    armed = fenv.sandbox.faults.add(
        service="planhat_analytics",
        path="/analytics/bulk",
        kind="status",
        status=500,
        times=None,
        body="Internal Server Error",
    )

    outcome = fenv.sync(DAY, DAY)

    assert outcome.exit_code == 1
    assert outcome.last_line.startswith(
        f"sync failed for {DAY}..{DAY}: planhat_publish: publish stopped for {DAY}: Planhat did "
        "not accept batch"
    )
    assert (
        f"Planhat POST /analytics/bulk/*** answered 500 after {ATTEMPTS} attempts"
        in outcome.last_line
    )
    assert fenv.sandbox.tenant_token not in outcome.last_line
    assert armed.fired == ATTEMPTS
    assert fenv.sandbox.received.activity_totals() == {}
    assert fenv.sql("SELECT status, COUNT(*) FROM outbox_batches GROUP BY ALL") == [("failed", 1)]
    assert fenv.sql("SELECT COUNT(*) FROM sent_activities") == [(0,)]

    fenv.sandbox.faults.clear()
    assert fenv.sync(DAY, DAY).exit_code == 0
    assert_exact(fenv, [DAY])


def test_413_on_an_oversize_body_splits_the_batch_until_it_fits(make_env: MakeEnv) -> None:
    limit = 12_000
    env = make_env(spec=SPEC, sync=FAST_RETRIES, max_analytics_body=limit)

    outcome = env.sync(DAY, DAY)

    assert outcome.exit_code == 0, outcome.last_line
    records = env.sandbox.received.requests(service="planhat_analytics")
    too_large = [r for r in records if r.status == 413]
    applied = [r for r in records if r.applied]
    assert too_large and all(r.body_bytes > limit for r in too_large)
    assert applied and all(r.body_bytes <= limit for r in applied)
    assert not [r for r in records if r.status == 413 and r.applied]
    split = env.sql(
        "SELECT COUNT(*) FROM outbox_batches WHERE status = 'failed' AND note LIKE '413%'"
    )
    assert split == [(len(too_large),)]
    assert_exact(env, [DAY])
    instance = dg.DagsterInstance.get()
    record = instance.fetch_materializations(dg.AssetKey("planhat_publish"), limit=1).records[0]
    metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
    assert metadata["batches_split"].value == len(too_large)


def test_a_reset_on_activities_is_held_and_items_planhat_rejects_are_sent_again(
    fenv: Env,
) -> None:
    reset = fenv.sandbox.faults.add(
        service="planhat_analytics", path="/analytics/bulk", kind="reset"
    )
    rejects = fenv.sandbox.faults.add(
        service="planhat_analytics",
        path="/dimensiondata",
        kind="row_errors",
        indexes=[0, 2],
        error="dimensionId is locked",
    )

    outcome = fenv.sync(DAY, DAY)

    assert (reset.fired, rejects.fired) == (1, 1)
    assert outcome.exit_code == 1
    assert outcome.last_line == (
        f"sync finished for {DAY}..{DAY}, but 1 batch(es) are in doubt: see `pendo-planhat "
        "batches list`; and Planhat rejected 2 metric item(s) (first: dimensionId is locked); "
        "they are not counted as sent and the next run sends them again (see "
        "outbox_metric_items.error)"
    )
    # The reset: the client cannot know whether Planhat applied the batch, so it is held back
    # (never resent blindly) until the user says. (The sandbox did not apply it.)
    assert fenv.sandbox.received.activity_totals() == {}
    ((batch_id, kind),) = fenv.sql("SELECT batch_id, kind FROM batches_in_doubt")
    assert kind == "activities"
    # The rejected items: not applied, and not marked sent; everything else is exact.
    rejected = {
        (m.dimension_id, m.model, m.external_id, m.date)
        for m in fenv.sandbox.received.metrics(include_errors=True)
        if m.error
    }
    assert len(rejected) == 2
    truth_m = fenv.truth_metrics([DAY])
    assert fenv.received_metrics() == {k: v for k, v in truth_m.items() if k not in rejected}
    ledger = {
        (d, m, e, str(day))
        for day, m, e, d in fenv.sql(
            "SELECT day, model, external_id, dimension_id FROM sent_metrics"
        )
    }
    assert ledger and not ledger & rejected

    assert main(["batches", "resolve", str(batch_id), "--resend"]) == 0
    again = fenv.sync(DAY, DAY)
    assert again.exit_code == 0, again.last_line
    assert again.summary["metric_items_sent"] == 2  # exactly the two, once
    assert_exact(fenv, [DAY])
