"""The fast paths: prefetched paging, streaming ingest, bit-set feature ids, vectorised packing.

Each test pins a behaviour the faster code must share with the straightforward one: the same
requests, the same rows landed, the same rollback on failure, the same batches.
"""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import httpx
import polars as pl
import pytest

from pendo_assets.clients import PendoClient, RetryPolicy
from pendo_assets.clients._http import Redactor, send_with_retries
from pendo_assets.config import Config, parse_config
from pendo_assets.delivery import Publisher, PublishSettings, pack_batches
from pendo_assets.errors import ApiStatusError, DayRejectedError, DeliveryError, PageDriftError
from pendo_assets.landing import _bulk_insert, ingest_feature_events
from pendo_assets.transforms import daily_usage, match_activities

from .test_http import Recorder, Sleeps
from .test_pendo_client import (
    DAY,
    DAY_MS,
    FEATURES,
    KEY,
    TZ,
    _pipeline,
    pendo_event,
    results,
    served,
)

CONFIG = f"""
pendo:
  timezone: {TZ}
  start_date: 2026-09-01
features:
  - id: feat-a
  - id: feat-b
sync:
  max_quarantine_share: 0.2
"""


def config() -> Config:
    return parse_config(CONFIG)


def client(answer: Any, **kwargs: Any) -> tuple[PendoClient, Recorder]:
    recorder = answer if isinstance(answer, Recorder) else Recorder(answer)
    pendo = PendoClient(
        integration_key=KEY,
        transport=recorder.transport,
        sleep=Sleeps(),
        retry=RetryPolicy(attempts=1, jitter=False),
        **kwargs,
    )
    return pendo, recorder


def rows(n: int, start: int = 0, **overrides: Any) -> list[dict[str, Any]]:
    return [pendo_event(visitorId=f"v{i:05d}", **overrides) for i in range(start, start + n)]


def landed(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    return {
        "raw": conn.execute(
            "SELECT * EXCLUDE (extracted_at) FROM raw_feature_events ORDER BY ALL"
        ).fetchall(),
        "quarantine": conn.execute(
            "SELECT day, reason, raw, page FROM quarantine_feature_events ORDER BY ALL"
        ).fetchall(),
        "landed": conn.execute(
            "SELECT source, day, rows, quarantined, pages FROM landed_days ORDER BY ALL"
        ).fetchall(),
    }


def pendo_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pendo-")]


def wait_for_no_pendo_threads() -> None:
    deadline = time.monotonic() + 5
    while pendo_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pendo_threads()


# ---------------------------------------------------------------------------------------------
# Prefetched paging
# ---------------------------------------------------------------------------------------------


def test_prefetching_makes_exactly_the_requests_of_reading_page_after_page() -> None:
    pendo, recorder = client(served(rows(8)), page_size=3)
    pages = list(pendo.feature_event_pages(day=DAY, timezone=TZ, feature_ids=FEATURES))
    assert [p.row_count for p in pages] == [3, 3, 2]
    assert [_pipeline(r)[-2:] for r in recorder.requests] == [
        [{"skip": 0}, {"limit": 3}],
        [{"skip": 2}, {"limit": 4}],
        [{"skip": 5}, {"limit": 4}],
    ]
    wait_for_no_pendo_threads()


def test_a_caller_that_stops_early_stops_the_prefetching() -> None:
    pendo, recorder = client(served(rows(30)), page_size=3)
    pages = pendo.feature_event_pages(day=DAY, timezone=TZ, feature_ids=FEATURES)
    first = next(pages)
    assert first.row_count == 3
    pages.close()
    wait_for_no_pendo_threads()
    assert len(recorder.requests) <= 2  # the first page and at most the one prefetched


def test_the_overlap_row_matches_across_a_strict_and_a_permissive_page() -> None:
    # Page 1 decodes strictly; page 2 holds a malformed row, so it is read permissively. The
    # overlap row (no optional fields) must still be recognised as the same row.
    bare = pendo_event(visitorId="v00002", accountId=..., appId=..., remoteIp=..., server=...)
    data = [*rows(2), bare, *rows(1, 3), pendo_event(visitorId="v00004", numEvents="7")]
    pendo, _ = client(served(data), page_size=3)
    pages = list(pendo.feature_event_pages(day=DAY, timezone=TZ, feature_ids=FEATURES))
    assert [p.row_count for p in pages] == [3, 2]
    assert [len(p.rejects) for p in pages] == [0, 1]
    assert pages[1].table["visitor_id"].to_pylist() == ["v00003"]


def test_a_changed_overlap_row_is_drift_even_when_only_a_count_changed() -> None:
    data = rows(6)

    def bumping(request: httpx.Request) -> httpx.Response:
        response = served(data)(request)
        data[2] = {**data[2], "numEvents": data[2]["numEvents"] + 1}
        return response

    pendo, _ = client(bumping, page_size=3)
    with pytest.raises(PageDriftError, match="changed between page 1 and page 2"):
        list(pendo.feature_event_pages(day=DAY, timezone=TZ, feature_ids=FEATURES))
    wait_for_no_pendo_threads()


def test_an_error_on_a_later_page_is_raised_after_the_pages_before_it() -> None:
    recorder = Recorder(
        results(rows(3)), httpx.Response(400, text="Cannot parse filter expression")
    )
    pendo, _ = client(recorder, page_size=3)
    pages = pendo.feature_event_pages(day=DAY, timezone=TZ, feature_ids=FEATURES)
    assert next(pages).row_count == 3
    with pytest.raises(ApiStatusError, match="400"):
        next(pages)
    wait_for_no_pendo_threads()


def test_a_dropped_response_is_freed_without_the_cyclic_collector() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"x" * 1000))
    with httpx.Client(transport=transport) as http:
        request = http.build_request("GET", "https://example.test/a")
        gc.disable()
        try:
            response = send_with_retries(
                request,
                client=http,
                service="pendo",
                redactor=Redactor([]),
                policy=RetryPolicy(attempts=1),
                idempotent=True,
            )
            assert response.content == b"x" * 1000
            ref = weakref.ref(response)
            del response
            assert ref() is None
        finally:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# Streaming ingest
# ---------------------------------------------------------------------------------------------


def test_ingest_lands_every_served_row_or_quarantines_it(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection
) -> None:
    data = [*rows(5), pendo_event(visitorId=""), *rows(4, 5), pendo_event(numEvents=-1)]
    pendo, _ = client(served(data), page_size=4)
    staging = tmp_path / "staging"
    day = ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=staging
    )
    assert (day.rows, day.quarantined, day.pages) == (9, 2, 3)
    got = landed(conn)
    assert [r[1] for r in got["raw"]] == [f"v{i:05d}" for i in range(9)]
    assert {r[3] for r in got["raw"]} == {"feat-a"} and {r[6] for r in got["raw"]} == {3}
    assert [r[1] for r in got["quarantine"]] == ["numEvents is negative: -1", "visitorId is empty"]
    assert got["landed"] == [("feature_events", DAY, 9, 2, 3)]
    assert not list(staging.iterdir())  # staging files are removed
    wait_for_no_pendo_threads()


def test_ingest_replaces_a_day_and_an_empty_day(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection
) -> None:
    pendo, _ = client(served(rows(7)), page_size=3)
    ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
    )
    pendo, _ = client(served(rows(2, 100)), page_size=3)
    ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
    )
    assert [r[1] for r in landed(conn)["raw"]] == ["v00100", "v00101"]
    pendo, _ = client(results([]))
    day = ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
    )
    assert (day.rows, day.pages) == (0, 1)
    assert landed(conn)["raw"] == []
    assert landed(conn)["landed"] == [("feature_events", DAY, 0, 0, 1)]


def test_ingest_failing_midway_leaves_the_previous_day(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection
) -> None:
    pendo, _ = client(served(rows(5)), page_size=3)
    ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
    )
    before = landed(conn)
    failing = Recorder(results(rows(3, 50)), httpx.Response(400, text="bad"))
    pendo, _ = client(failing, page_size=3)
    with pytest.raises(ApiStatusError):
        ingest_feature_events(
            pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
        )
    assert landed(conn) == before
    conn.execute("SELECT 1").fetchall()  # the connection is usable, not inside a transaction
    wait_for_no_pendo_threads()


def test_ingest_rejects_a_malformed_day_and_keeps_the_previous_one(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection
) -> None:
    pendo, _ = client(served(rows(5)))
    ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
    )
    before = landed(conn)
    bad = [*rows(3), *(pendo_event(visitorId=None) for _ in range(3))]
    pendo, _ = client(served(bad))
    with pytest.raises(DayRejectedError, match="3 of 6 Pendo rows are malformed"):
        ingest_feature_events(
            pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
        )
    assert landed(conn) == before


def test_ingest_reads_the_day_again_after_drift(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection
) -> None:
    data = rows(6)
    calls = {"n": 0}

    def shifting_once(request: httpx.Request) -> httpx.Response:
        response = served(data)(request)
        calls["n"] += 1
        if calls["n"] == 1:
            data.insert(0, pendo_event(visitorId="v-late"))
        return response

    pendo, _ = client(shifting_once, page_size=3)
    day = ingest_feature_events(
        pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
    )
    assert day.rows == 7
    assert sorted(r[1] for r in landed(conn)["raw"]) == sorted(r["visitorId"] for r in data)
    assert all(r[5] == DAY_MS for r in landed(conn)["raw"])


def test_bulk_insert_settings_are_restored(conn: duckdb.DuckDBPyConnection) -> None:
    def settings() -> list[Any]:
        return list(
            conn.execute(
                "SELECT current_setting('preserve_insertion_order'), "
                "current_setting('disabled_compression_methods'), "
                "current_setting('memory_limit'), current_setting('threads')"
            ).fetchone()
            or []
        )

    before = settings()
    with _bulk_insert(conn):
        during = settings()
        assert during[0] is False
        # The buffer pool is capped for the insert, with room for each thread's row group.
        assert during[2] != before[2]
        assert during[2].endswith(("MiB", "MB")), during[2]
    assert settings() == before
    # A limit set before is put back too (DuckDB shows it rounded to 0.1 MiB, so as shown).
    conn.execute("SET memory_limit = '1GB'")
    before = settings()
    with _bulk_insert(conn):
        assert settings()[2] != before[2]
    after = settings()
    assert after[:2] == before[:2] and after[2].startswith("953.") and after[2].endswith("MiB")


# ---------------------------------------------------------------------------------------------
# Matching with many features
# ---------------------------------------------------------------------------------------------


def test_feature_ids_are_sorted_and_complete_beyond_one_bit_word() -> None:
    ids = [f"f{k:03d}" for k in range(130)]  # three 62-bit words
    actions = pl.LazyFrame({"feature_id": ids, "action": ["A"] * 130, "weight": [1.0] * 130})
    used = ["f129", "f000", "f064", "f063", "f000"]
    events = pl.LazyFrame(
        {
            "day": [date(2026, 11, 1)] * 5,
            "visitor_id": ["u1"] * 5,
            "account_id": ["a1", "a1", "a1", "a1", "a2"],
            "feature_id": used,
            "num_events": [1, 2, 3, 4, 5],
        }
    )
    objects = pl.LazyFrame(
        {
            "model": ["EndUser"],
            "object_id": ["o1"],
            "external_id": ["u1"],
            "company_external_id": ["c1"],
        }
    )
    matched, _ = match_activities(daily_usage(events), objects, actions)
    assert matched.collect().select("count", "feature_ids").rows() == [(15, "f000,f063,f064,f129")]


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------


def _reference_pack(lengths: list[int], max_items: int, max_bytes: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    start, size = 0, 2
    for i, n in enumerate(lengths):
        if n + 2 > max_bytes:
            raise DeliveryError("too big")
        if i > start and (i - start >= max_items or size + n + 1 > max_bytes):
            ranges.append((start, i))
            start, size = i, 2
        size += n + (1 if i > start else 0)
    if start < len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


def test_pack_batches_matches_the_greedy_reference() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        lengths = [rng.randint(0, 30) for _ in range(rng.randint(0, 40))]
        max_items, max_bytes = rng.randint(1, 10), rng.randint(3, 120)
        try:
            expected: Any = _reference_pack(lengths, max_items, max_bytes)
        except DeliveryError:
            expected = DeliveryError
        try:
            got: Any = pack_batches(lengths, max_items=max_items, max_bytes=max_bytes)
        except DeliveryError:
            got = DeliveryError
        assert got == expected, (lengths, max_items, max_bytes)


class _SmallSender:
    max_items = 2
    max_body_bytes = 10_000

    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, int]] = []

    def post_activities(self, body: bytes, *, items: int, hooks: Any = None) -> None:
        self.bodies.append((body, items))

    def post_dimension_data(self, body: bytes, *, items: int, hooks: Any = None) -> Any:
        self.bodies.append((body, items))
        return type("Outcome", (), {"errors": []})()


def test_publisher_keeps_batches_within_the_senders_own_limits(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    conn.execute(
        "INSERT INTO matched_activities (day, external_id, action, count, weight, "
        "company_external_id, feature_ids) "
        "SELECT DATE '2026-11-01', 'u' || i, 'A', 1, 1.0, NULL, 'f' "
        "FROM range(5) AS t(i)"
    )
    sender = _SmallSender()
    report = Publisher(conn=conn, sender=sender, settings=PublishSettings()).publish(
        [date(2026, 11, 1)]
    )
    assert report.activity_items_sent == 5
    assert [items for _, items in sender.bodies] == [2, 2, 1]
    assert all(body.startswith(b"[{") and body.endswith(b"}]") for body, _ in sender.bodies)


def test_ingest_inside_an_open_transaction_fails_and_leaves_no_thread(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection
) -> None:
    pendo, _ = client(served(rows(7)), page_size=3)
    conn.execute("BEGIN TRANSACTION")
    try:
        with pytest.raises(duckdb.TransactionException):
            ingest_feature_events(
                pendo, conn, day=DAY, config=config(), feature_ids=FEATURES, staging_dir=tmp_path
            )
    finally:
        conn.execute("ROLLBACK")
    wait_for_no_pendo_threads()
