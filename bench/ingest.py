"""One ingest measurement, or the parse-only reference for the same response bytes.

``ingest``: fetch one day from the sandbox and land it in a fresh warehouse with
`pendo_assets.landing.ingest_feature_events`, the code the ``pendo_feature_events`` asset runs,
through a `PendoClient` built like `PendoResource` builds it. ``parse``: fetch the same pages
(same requests, same bytes) into memory, then time only decoding them with the fastest JSON
decoder the package ships (msgspec, into typed structs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import msgspec
from _harness import write_result

from pendo_assets.clients import PendoClient, RetryPolicy
from pendo_assets.clients import _pendo_rows as pendo_rows
from pendo_assets.config import Config, load_config
from pendo_assets.landing import ingest_feature_events, resolve_feature_actions
from pendo_assets.warehouse import Warehouse


def _client(env: dict[str, str], config: Config, **kwargs: Any) -> PendoClient:
    # As PendoResource.get_client() builds it, without importing Dagster into the measurement.
    return PendoClient(
        integration_key=env["PENDO_INTEGRATION_KEY"],
        region=config.pendo.region,
        base_url=env["PENDO_BASE_URL"],
        page_size=config.sync.page_size,
        timeout=httpx.Timeout(10.0, read=config.sync.request_timeout_seconds),
        retry=RetryPolicy(attempts=config.sync.retry_attempts),
        **kwargs,
    )


def ingest(env: dict[str, str], config: Config, day: date, workdir: Path) -> dict[str, Any]:
    warehouse = Warehouse(workdir / "warehouse.duckdb")
    feature_ids = [f.id for f in config.features]
    staging = workdir / "staging"
    with _client(env, config) as client, warehouse.connect() as conn:
        resolve_feature_actions(conn, config=config, pendo_features=client.list_features())
        started = time.perf_counter()
        staged = ingest_feature_events(
            client, conn, day=day, config=config, feature_ids=feature_ids, staging_dir=staging
        )
        fetched = started + staged.fetch_seconds
        landed = time.perf_counter()
        row = conn.execute("SELECT COUNT(*) FROM raw_feature_events").fetchone()
        in_table = int(row[0]) if row else 0
    closed = time.perf_counter()
    wall = landed - started
    if in_table != staged.rows:
        raise SystemExit(f"landed {in_table} rows, fetched {staged.rows}")
    return {
        "rows": staged.rows,
        "quarantined": staged.quarantined,
        "pages": staged.pages,
        "body_mb": round(staged.body_bytes / 1e6, 1),
        "fetch_s": round(fetched - started, 3),
        "land_s": round(landed - fetched, 3),
        "wall_s": round(wall, 3),
        "close_s": round(closed - landed, 3),
        "rows_per_s": round(staged.rows / wall),
        "mb_per_s": round(staged.body_bytes / 1e6 / wall, 1),
    }


class _Capture(httpx.BaseTransport):
    """A real transport that keeps every aggregation response body."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if not request.url.path.endswith("/aggregation"):
            return response
        content = response.read()
        self.bodies.append(content)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    def close(self) -> None:
        self._inner.close()


def parse_only(env: dict[str, str], config: Config, day: date, loops: int) -> dict[str, Any]:
    capture = _Capture()
    with _client(env, config, transport=capture) as client:
        for _ in client.feature_event_pages(
            day=day,
            timezone=config.pendo.timezone,
            feature_ids=[f.id for f in config.features],
            app_ids=config.pendo.app_ids,
        ):
            pass
    bodies = capture.bodies
    size = sum(len(b) for b in bodies)
    decoders = {
        # The decoder the client ships for the fast path: msgspec into typed, gc-free structs.
        "msgspec_typed": pendo_rows._STRICT_DECODER.decode,
        "msgspec_untyped": msgspec.json.decode,
    }
    rates: dict[str, float] = {}
    rows = 0
    for name, decode in decoders.items():
        times = []
        for _ in range(loops):
            started = time.perf_counter()
            rows = 0
            for body in bodies:
                document = decode(body)
                rows += len(document.results if name == "msgspec_typed" else document["results"])
                del document
            times.append(time.perf_counter() - started)
        rates[name] = rows / statistics.median(times)
    best = max(rates, key=rates.__getitem__)
    return {
        "rows": rows,
        "pages": len(bodies),
        "body_mb": round(size / 1e6, 1),
        "decoder": best,
        "parse_only_rows_per_s": round(rates[best]),
        "parse_only_mb_per_s": round(size / 1e6 / (rows / rates[best]), 1),
        **{f"{name}_rows_per_s": round(rate) for name, rate in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["ingest", "parse"])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--day", required=True, type=date.fromisoformat)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--loops", type=int, default=3)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    env = json.loads(Path(args.port_file).read_text(encoding="utf-8"))["env"]
    config = load_config(args.config)
    if args.mode == "ingest":
        if args.workdir is None:
            parser.error("ingest needs --workdir")
        result = ingest(env, config, args.day, args.workdir)
    else:
        result = parse_only(env, config, args.day, args.loops)
    write_result(args.result, result)


if __name__ == "__main__":
    main()
