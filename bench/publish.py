"""Publish benchmark: activity deltas and metric values through the outbox to the sandbox.

A fresh warehouse gets ``--activities`` rows in ``matched_activities`` and ``--metrics`` rows in
``matched_metrics`` (synthetic, deterministic), then a `Publisher` with a real `PlanhatClient`
(built like `PlanhatResource` builds it) publishes those days to the sandbox process. The
analytics requests are counted by the sandbox itself (its control API). Then the same publish
runs again with nothing changed: it must send no item and make no analytics request.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from _harness import write_result

from pendo_assets.clients import PlanhatClient, RetryPolicy
from pendo_assets.delivery import Publisher
from pendo_assets.warehouse import Warehouse

FIRST_DAY = date(2026, 10, 1)
DAYS = 20


def fill(conn: Any, activities: int, metrics: int) -> list[date]:
    """Write the matched rows with SQL (deterministic); return the days they cover."""
    conn.execute(
        """
        INSERT INTO matched_activities BY NAME
        SELECT ?::DATE + (i % ?)::INTEGER AS day,
               'visitor-' || lpad(CAST(i // (? * 5) AS VARCHAR), 8, '0') AS external_id,
               'Action ' || CAST((i // ?) % 5 AS VARCHAR) AS action,
               1 + (hash(i) % 40)::BIGINT AS count,
               CASE WHEN (i // ?) % 5 = 3 THEN 2.0 ELSE 1.0 END AS weight,
               CASE WHEN i % 17 = 0 THEN NULL
                    ELSE 'acct-' || lpad(CAST(i // (? * 50) AS VARCHAR), 7, '0')
               END AS company_external_id,
               'feat00-xxxxxxxxxxxxxx,feat08-xxxxxxxxxxxxxx' AS feature_ids,
               'eu-' || lpad(CAST(i // (? * 5) AS VARCHAR), 8, '0') AS enduser_id
        FROM range(?) AS t(i)
        """,
        [FIRST_DAY, DAYS, DAYS, DAYS, DAYS, DAYS, DAYS, activities],
    )
    conn.execute(
        """
        INSERT INTO matched_metrics
        SELECT ?::DATE + (i % ?)::INTEGER AS day,
               'account_usage' AS pipeline,
               'Company' AS model,
               'acct-' || lpad(CAST(i // (? * 2) AS VARCHAR), 7, '0') AS external_id,
               CASE WHEN (i // ?) % 2 = 0 THEN 'pendo_feature_events' ELSE 'pendo_active_users' END,
               (hash(i) % 100000)::DOUBLE / 10 AS value,
               CASE WHEN (i // ?) % 2 = 0 THEN 'last' ELSE 'sum' END AS aggregation
        FROM range(?) AS t(i)
        """,
        [FIRST_DAY, DAYS, DAYS, DAYS, DAYS, metrics],
    )
    return [FIRST_DAY + timedelta(days=k) for k in range(DAYS)]


def analytics_requests(control_url: str, since: int) -> list[dict[str, Any]]:
    records = httpx.get(
        f"{control_url}/_sandbox/requests", params={"service": "planhat_analytics"}, timeout=600
    ).json()
    return [r for r in records if r["seq"] > since]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--activities", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, default=200_000)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    info = json.loads(Path(args.port_file).read_text(encoding="utf-8"))
    env = info["env"]
    control = info["planhat_analytics_url"]
    client = PlanhatClient(
        api_token=env["PLANHAT_API_TOKEN"],
        tenant_token=env["PLANHAT_TENANT_TOKEN"],
        api_url=env["PLANHAT_API_URL"],
        analytics_url=env["PLANHAT_ANALYTICS_URL"],
        timeout=httpx.Timeout(10.0, read=600.0),
        retry=RetryPolicy(),
    )
    before = max([r["seq"] for r in analytics_requests(control, -1)], default=0)
    with client, Warehouse(args.workdir / "warehouse.duckdb").connect() as conn:
        days = fill(conn, args.activities, args.metrics)
        started = time.perf_counter()
        first = Publisher(conn=conn, sender=client, run_id="bench-1").publish(days)
        first_s = time.perf_counter() - started
        sent = analytics_requests(control, before)
        mark = max([r["seq"] for r in sent], default=before)
        started = time.perf_counter()
        again = Publisher(conn=conn, sender=client, run_id="bench-2").publish(days)
        again_s = time.perf_counter() - started
        resent = analytics_requests(control, mark)
    items = first.activity_items_sent + first.metric_items_sent
    activity_requests = [r for r in sent if r["path"].startswith("/analytics")]
    metric_requests = [r for r in sent if r["path"].startswith("/dimensiondata")]
    server_s = sum(float(r.get("elapsed", 0.0)) for r in sent)
    write_result(
        args.result,
        {
            "activities": first.activity_items_sent,
            "metrics": first.metric_items_sent,
            "requests": len(sent),
            "activity_requests": len(activity_requests),
            "metric_requests": len(metric_requests),
            "items_received": sum(int(r["items"]) for r in sent),
            "wall_s": round(first_s, 3),
            "items_per_s": round(items / first_s),
            "sandbox_server_s": round(server_s, 3),
            "bytes_per_request": round(sum(int(r["body_bytes"]) for r in sent) / max(1, len(sent))),
            "max_body_bytes": max((int(r["body_bytes"]) for r in sent), default=0),
            "max_items_per_request": max((int(r["items"]) for r in sent), default=0),
            "rerun_items": again.activity_items_sent + again.metric_items_sent,
            "rerun_planned": again.activity_items_planned + again.metric_items_planned,
            "rerun_requests": len(resent),
            "rerun_wall_s": round(again_s, 3),
        },
    )


if __name__ == "__main__":
    main()
