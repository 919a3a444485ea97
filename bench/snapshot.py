"""Snapshot benchmark: a large Planhat tenant read whole under the rate limit, then matched.

``snapshot``: what the ``planhat_snapshot`` asset runs, without Dagster's run around it: a
`PlanhatClient` built like `PlanhatResource` builds it reads every End User, Company, Asset and
Project (`PlanhatClient.snapshot`, 2,000 a request, 5,000 for Companies), `snapshot_objects`
shapes them and `queries.replace_planhat_objects` stores them in a fresh warehouse. The sandbox
serving them enforces Planhat's documented quota (started with ``--rate-limit``), answering 429
with ``Retry-After``. The client keeps under the same quota itself (``api_quota``); its waits,
before a request and after a 429, are counted through its injectable ``sleep``. Requests and their
statuses are counted by the sandbox itself.

``land``: one day of feature events landed into that warehouse (`landing.ingest_feature_events`);
not a figure of this section, only its input.

``match``: what the ``matched_activities`` asset runs for that day: read the snapshot's objects,
the feature actions and the day's events from the warehouse, `transforms.daily_usage` +
`transforms.match_activities`, and replace the day's matched and unmatched rows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from _harness import write_result

from pendo_assets import queries
from pendo_assets.clients import PendoClient, PlanhatClient, RetryPolicy
from pendo_assets.config import load_config
from pendo_assets.landing import ingest_feature_events, resolve_feature_actions
from pendo_assets.queries import replace_days
from pendo_assets.transforms import daily_usage, match_activities
from pendo_assets.warehouse import Warehouse


def api_requests(control_url: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(
        f"{control_url}/_sandbox/requests", params={"service": "planhat_api"}, timeout=600
    ).json()
    return records


class _Counting(httpx.BaseTransport):
    """A real transport that counts the bytes of every response body."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.bytes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        content = response.read()
        self.bytes += len(content)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    def close(self) -> None:
        self._inner.close()


def snapshot(info: dict[str, Any], workdir: Path) -> dict[str, Any]:
    # Imported here: the asset module brings Dagster with it, as in a real run.
    from pendo_assets.assets.planhat_snapshot import snapshot_objects

    env, control = info["env"], info["planhat_analytics_url"]
    waits: list[float] = []
    counting = _Counting()

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    client = PlanhatClient(  # as PlanhatResource.get_client() builds it (default sync settings)
        api_token=env["PLANHAT_API_TOKEN"],
        tenant_token=env["PLANHAT_TENANT_TOKEN"],
        api_url=env["PLANHAT_API_URL"],
        analytics_url=env["PLANHAT_ANALYTICS_URL"],
        timeout=httpx.Timeout(10.0, read=60.0),
        retry=RetryPolicy(),
        sleep=sleep,
        transport=counting,
    )
    before = max((r["seq"] for r in api_requests(control)), default=0)
    with client, Warehouse(workdir / "warehouse.duckdb").connect() as conn:
        started = time.perf_counter()
        read = client.snapshot()
        fetched = time.perf_counter()
        objects = snapshot_objects(read, taken_at=datetime.now(UTC).replace(tzinfo=None))
        queries.replace_planhat_objects(conn, objects)
        stored = time.perf_counter()
    sent = [r for r in api_requests(control) if r["seq"] > before]
    statuses = Counter(str(r["status"]) for r in sent)
    pages = Counter(r["path"].strip("/") for r in sent if r["status"] == 200)
    counts = {m: int(n) for m, n in objects.group_by("model").len().rows()}
    return {
        "endusers": counts.get("EndUser", 0),
        "companies": counts.get("Company", 0),
        "assets": counts.get("Asset", 0),
        "projects": counts.get("Project", 0),
        "objects": objects.height,
        "requests": len(sent),
        "requests_ok": statuses.get("200", 0),
        "requests_429": statuses.get("429", 0),
        "statuses": dict(statuses),
        "pages": dict(pages),
        "rate_limit_waits": len(waits),
        "rate_limit_wait_s": round(sum(waits), 2),
        "wall_s": round(stored - started, 3),
        "fetch_s": round(fetched - started, 3),
        "store_s": round(stored - fetched, 3),
        "sandbox_server_s": round(sum(float(r.get("elapsed", 0.0)) for r in sent), 3),
        "response_mb": round(counting.bytes / 1e6, 1),
    }


def land(info: dict[str, Any], config_path: Path, day: date, workdir: Path) -> dict[str, Any]:
    env = info["env"]
    config = load_config(config_path)
    with (
        PendoClient(
            integration_key=env["PENDO_INTEGRATION_KEY"],
            base_url=env["PENDO_BASE_URL"],
            page_size=config.sync.page_size,
            timeout=httpx.Timeout(10.0, read=600.0),
        ) as client,
        Warehouse(workdir / "warehouse.duckdb").connect() as conn,
    ):
        resolve_feature_actions(conn, config=config, pendo_features=client.list_features())
        started = time.perf_counter()
        staged = ingest_feature_events(
            client,
            conn,
            day=day,
            config=config,
            feature_ids=[f.id for f in config.features],
            staging_dir=workdir / "staging",
        )
    return {"rows": staged.rows, "wall_s": round(time.perf_counter() - started, 3)}


def match(config_path: Path, day: date, workdir: Path) -> dict[str, Any]:
    feature_ids = [f.id for f in load_config(config_path).features]
    with Warehouse(workdir / "warehouse.duckdb").connect() as conn:
        started = time.perf_counter()
        objects = queries.select_planhat_objects(conn)
        actions = queries.select_feature_actions(conn, feature_ids=feature_ids)
        events = queries.select_feature_events(conn, day=day)
        loaded = time.perf_counter()
        matched, unmatched = match_activities(
            daily_usage(events.lazy()), objects.lazy(), actions.lazy()
        )
        m, u = pl.collect_all([matched, unmatched])
        computed = time.perf_counter()
        replace_days(
            conn, days=[day], frames={"matched_activities": [m], "unmatched_visitor_rows": [u]}
        )
        written = time.perf_counter()
    by_reason = dict(u.group_by("reason").agg(pl.col("num_events").sum()).rows())
    matched_events = int(m["count"].sum() or 0)
    identified = matched_events + sum(v for k, v in by_reason.items() if k != "anonymous")
    return {
        "event_rows": events.height,
        "objects": objects.height,
        "endusers": objects.filter(pl.col("model") == "EndUser").height,
        "matched_keys": m.height,
        "unmatched_rows": u.height,
        "match_rate": round(matched_events / identified, 4) if identified else 1.0,
        "wall_s": round(written - started, 3),
        "load_s": round(loaded - started, 3),
        "match_s": round(computed - loaded, 3),
        "write_s": round(written - computed, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["snapshot", "land", "match"])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--day", type=date.fromisoformat)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    info = json.loads(Path(args.port_file).read_text(encoding="utf-8"))
    if args.mode == "snapshot":
        result = snapshot(info, args.workdir)
    elif args.config is None or args.day is None:
        parser.error(f"{args.mode} needs --config and --day")
    elif args.mode == "land":
        result = land(info, args.config, args.day, args.workdir)
    else:
        result = match(args.config, args.day, args.workdir)
    write_result(args.result, result)


if __name__ == "__main__":
    main()
