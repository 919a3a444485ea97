"""Matching benchmark: usage keys against a Planhat End User snapshot, Polars vs DuckDB SQL.

Both engines get the same synthetic, deterministic inputs (built before the clock starts):
``events`` (day, visitor_id, account_id, feature_id, num_events), the Planhat ``objects``
snapshot (End Users and Companies, as the ``matched_activities`` asset reads it) and the
``feature_actions``. ``polars`` runs `transforms.daily_usage` + `transforms.match_activities`
(lazy, collected together); ``duckdb`` runs one SQL query computing the same two outputs, as it
is best written (``list_distinct`` for the feature ids is twice as fast as ``string_agg(DISTINCT
... ORDER BY ...)``).
Only the work of each engine is timed: Polars planning and collecting both outputs, DuckDB
running the query into an Arrow table (splitting it into the two outputs is not timed). Each
engine reports a checksum of its output, so run.py can check they agree.
"""

from __future__ import annotations

import argparse
import time

import duckdb
import numpy as np
import polars as pl
from _harness import write_result

from pendo_assets.models import MATCHED_ACTIVITY_SCHEMA, UNMATCHED_VISITOR_SCHEMA
from pendo_assets.transforms import daily_usage, match_activities

N_FEATURES = 24
N_DAYS = 10


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pl.Series:
    """``prefix`` + zero-padded numbers, built in Polars (millions of strings in milliseconds)."""
    return pl.select(
        pl.concat_str(pl.lit(prefix), pl.Series(numbers).cast(pl.String).str.zfill(width))
    ).to_series()


def build_inputs(
    keys: int, endusers: int, seed: int = 42
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Usage keys, the object snapshot and the feature actions (deterministic)."""
    rng = np.random.default_rng(seed)
    # End Users: ids 0..endusers-1; 2% have no externalId, 1% share theirs with another one.
    eu = np.arange(endusers)
    external = _ids("visitor-", eu, 8)
    no_id = rng.random(endusers) < 0.02
    shared = rng.random(endusers) < 0.01
    twin = _ids("visitor-", rng.integers(0, endusers, endusers), 8)
    external = (
        pl.DataFrame({"e": external, "twin": twin, "no_id": no_id, "shared": shared})
        .select(
            pl.when("no_id")
            .then(pl.lit(None, pl.String))
            .when("shared")
            .then("twin")
            .otherwise("e")
        )
        .to_series()
    )
    n_companies = max(1, endusers // 10)
    company = _ids("acct-", rng.integers(0, n_companies, endusers), 7)
    company = pl.select(
        pl.when(pl.Series(rng.random(endusers) < 0.05)).then(None).otherwise(company)
    ).to_series()
    users = pl.DataFrame(
        {
            "model": pl.Series(["EndUser"]).gather(np.zeros(endusers, dtype=np.int64)),
            "object_id": _ids("eu", eu, 8),
            "external_id": external,
            "company_external_id": company,
        }
    )
    companies = pl.DataFrame(
        {
            "model": pl.Series(["Company"]).gather(np.zeros(n_companies, dtype=np.int64)),
            "object_id": _ids("co", np.arange(n_companies), 7),
            "external_id": _ids("acct-", np.arange(n_companies), 7),
            "company_external_id": _ids("acct-", np.arange(n_companies), 7),
        }
    )
    objects = pl.concat([users, companies])

    # Usage keys: visitors drawn from 1.2x the End Users (the rest have none), 6% anonymous.
    visitor = rng.integers(0, int(endusers * 1.2), keys)
    anonymous = rng.random(keys) < 0.06
    visitor_id = pl.select(
        pl.when(pl.Series(anonymous))
        .then(_ids("_PENDO_T_", visitor, 8))
        .otherwise(_ids("visitor-", visitor, 8))
    ).to_series()
    account = pl.select(
        pl.when(pl.Series(rng.random(keys) < 0.03))
        .then(None)
        .otherwise(_ids("acct-", visitor // 10, 7))
    ).to_series()
    feature_ids = [f"feat{k:02d}-{'x' * 14}" for k in range(N_FEATURES)]
    events = pl.DataFrame(
        {
            "day": pl.Series(np.datetime64("2026-11-01") + rng.integers(0, N_DAYS, keys)).cast(
                pl.Date
            ),
            "visitor_id": visitor_id,
            "account_id": account,
            "feature_id": pl.Series(feature_ids).gather(rng.integers(0, N_FEATURES, keys)),
            "num_events": pl.Series(rng.geometric(0.3, keys).astype(np.int64)),
        }
    )
    # 20 of the 24 features are configured, folded into 8 actions.
    actions = pl.DataFrame(
        {
            "feature_id": feature_ids[:20],
            "action": [f"Action {k % 8}" for k in range(20)],
            "weight": [float(1 + (k % 8 == 3)) for k in range(20)],
        }
    )
    return events, objects, actions


def run_polars(
    events: pl.DataFrame, objects: pl.DataFrame, actions: pl.DataFrame
) -> tuple[float, pl.DataFrame, pl.DataFrame]:
    """Seconds to plan and collect both outputs, and the outputs."""
    started = time.perf_counter()
    matched, unmatched = match_activities(
        daily_usage(events.lazy()), objects.lazy(), actions.lazy()
    )
    m, u = pl.collect_all([matched, unmatched])
    return time.perf_counter() - started, m, u


SQL = """
WITH usage AS (
    SELECT day, visitor_id, account_id, feature_id, SUM(num_events)::BIGINT AS num_events
    FROM events
    WHERE feature_id IN (SELECT feature_id FROM actions)
    GROUP BY ALL
),
endusers AS (
    SELECT external_id AS visitor_id, COUNT(*) AS n_objects, FIRST(object_id) AS enduser_id,
           FIRST(company_external_id) AS company_external_id
    FROM objects
    WHERE model = 'EndUser' AND external_id IS NOT NULL AND external_id <> ''
    GROUP BY external_id
),
labelled AS (
    SELECT u.*, e.company_external_id, e.enduser_id,
           CASE WHEN starts_with(u.visitor_id, '_PENDO_T_') OR u.visitor_id = 'VISITOR-UNIQUE-ID'
                     THEN 'anonymous'
                WHEN e.n_objects IS NULL THEN 'no_enduser'
                WHEN e.n_objects > 1 THEN 'ambiguous'
           END AS reason
    FROM usage AS u LEFT JOIN endusers AS e USING (visitor_id)
)
SELECT 'matched' AS kind, l.day, l.visitor_id AS id, a.action, NULL::VARCHAR AS account_id,
       NULL::VARCHAR AS reason, SUM(l.num_events)::BIGINT AS count, FIRST(a.weight) AS weight,
       FIRST(l.company_external_id) AS company_external_id,
       array_to_string(list_sort(list_distinct(list(l.feature_id))), ',') AS feature_ids,
       FIRST(l.enduser_id) AS enduser_id
FROM labelled AS l JOIN actions AS a USING (feature_id)
WHERE l.reason IS NULL
GROUP BY l.day, l.visitor_id, a.action
UNION ALL
SELECT 'unmatched', day, visitor_id, NULL, account_id, reason, SUM(num_events)::BIGINT,
       NULL, NULL, NULL, NULL
FROM labelled
WHERE reason IS NOT NULL
GROUP BY day, visitor_id, account_id, reason
"""


def run_duckdb(
    events: pl.DataFrame, objects: pl.DataFrame, actions: pl.DataFrame
) -> tuple[float, pl.DataFrame, pl.DataFrame]:
    """Seconds to run the query into an Arrow table (inputs registered before), and the outputs."""
    conn = duckdb.connect()
    for name, frame in (("events", events), ("objects", objects), ("actions", actions)):
        conn.register(name, frame.to_arrow())
    started = time.perf_counter()
    result = conn.execute(SQL).to_arrow_table()
    elapsed = time.perf_counter() - started
    out = pl.from_arrow(result)
    assert isinstance(out, pl.DataFrame)
    m = out.filter(pl.col("kind") == "matched").select(
        "day",
        pl.col("id").alias("external_id"),
        "action",
        "count",
        "weight",
        "company_external_id",
        "feature_ids",
        "enduser_id",
        pl.lit(None, pl.String).alias("email"),
        pl.lit("externalId").alias("matched_by"),
        pl.lit(None, pl.String).alias("page_ids"),
        pl.lit(None, pl.String).alias("track_type_ids"),
    )
    u = out.filter(pl.col("kind") == "unmatched").select(
        "day",
        pl.col("id").alias("visitor_id"),
        "account_id",
        "reason",
        pl.col("count").alias("num_events"),
    )
    return elapsed, m, u


def checksum(frame: pl.DataFrame, schema: pl.Schema) -> dict[str, int]:
    """Order-independent summary of a frame (rows, sum of counts, sum of row hashes mod p)."""
    cast = frame.select(*(pl.col(name).cast(dtype) for name, dtype in schema.items()))
    hashes = cast.hash_rows(seed=0) % 1_000_000_007
    numeric = "count" if "count" in schema else "num_events"
    return {
        "rows": cast.height,
        "total": int(cast[numeric].sum()),
        "hash": int(hashes.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=["polars", "duckdb"], required=True)
    parser.add_argument("--keys", type=int, default=5_000_000)
    parser.add_argument("--endusers", type=int, default=1_000_000)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    events, objects, actions = build_inputs(args.keys, args.endusers)
    run = run_polars if args.engine == "polars" else run_duckdb
    elapsed, matched, unmatched = run(events, objects, actions)
    write_result(
        args.result,
        {
            "engine": args.engine,
            "keys": events.height,
            "endusers": args.endusers,
            "seconds": round(elapsed, 3),
            "matched": checksum(matched, MATCHED_ACTIVITY_SCHEMA),
            "unmatched": checksum(unmatched, UNMATCHED_VISITOR_SCHEMA),
        },
    )


if __name__ == "__main__":
    main()
