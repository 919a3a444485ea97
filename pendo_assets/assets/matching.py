"""Matching Pendo usage to Planhat objects, per day, with every unmatched id kept and explained."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
from collections import Counter

import dagster as dg
import polars as pl

from .. import queries
from ..config import Config
from ..queries import replace_days
from ..resources import WarehouseResource
from ..transforms import daily_usage, match_activities, match_metrics
from ._common import daily_asset, open_warehouse, run_days, window

VISITOR_REASONS = ("anonymous", "no_enduser", "ambiguous")


def build_matching_assets(
    config: Config,
    partitions: dg.DailyPartitionsDefinition,
    *,
    feature_events: dg.AssetsDefinition,
    pipeline_results: dg.AssetsDefinition,
    snapshot: dg.AssetsDefinition,
) -> list[dg.AssetsDefinition]:
    feature_ids = [f.id for f in config.features]

    @daily_asset(
        partitions,
        name="matched_activities",
        group_name="matching",
        kinds={"polars", "duckdb"},
        deps=[feature_events, snapshot],
        description=(
            "One row per End User x Planhat action x day (Pendo row splits summed, features "
            "folded into actions) in matched_activities; every visitor that cannot be matched "
            "(anonymous, no_enduser, ambiguous) in unmatched_visitors, per day and account."
        ),
    )
    def matched_activities(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        events_by_reason: Counter[str] = Counter()
        visitors_by_reason: Counter[str] = Counter()
        matched_keys = matched_events = 0
        with open_warehouse(warehouse) as conn:
            objects = queries.select_planhat_objects(conn)
            actions = queries.select_feature_actions(conn, feature_ids=feature_ids)
            for day in days:
                events = queries.select_feature_events(conn, day=day)
                matched, unmatched = match_activities(
                    daily_usage(events.lazy()), objects.lazy(), actions.lazy()
                )
                m, u = pl.collect_all([matched, unmatched])
                tables = {"matched_activities": [m], "unmatched_visitor_rows": [u]}
                replace_days(conn, days=[day], frames=tables)
                matched_keys += m.height
                matched_events += int(m["count"].sum() or 0)
                for reason, n_events, n_visitors in (
                    u.group_by("reason")
                    .agg(pl.col("num_events").sum(), pl.col("visitor_id").n_unique())
                    .rows()
                ):
                    events_by_reason[reason] += int(n_events)
                    visitors_by_reason[reason] += int(n_visitors)
        identified = matched_events + events_by_reason["no_enduser"] + events_by_reason["ambiguous"]
        match_rate = matched_events / identified if identified else 1.0
        context.log.info(
            f"{window(days)}: {matched_keys} activity keys matched ({matched_events} events), "
            f"match rate {match_rate:.1%}; unmatched events "
            + ", ".join(f"{r} {n}" for r, n in sorted(events_by_reason.items()))
        )
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                "matched_keys": matched_keys,
                "matched_events": matched_events,
                "match_rate": round(match_rate, 4),
                **{f"unmatched_events: {r}": events_by_reason[r] for r in VISITOR_REASONS},
                **{f"unmatched_visitors: {r}": visitors_by_reason[r] for r in VISITOR_REASONS},
            }
        )

    @daily_asset(
        partitions,
        name="matched_metrics",
        group_name="matching",
        kinds={"polars", "duckdb"},
        deps=[pipeline_results, snapshot],
        description=(
            "One row per Planhat object x dimensionId x day in matched_metrics; every pipeline "
            "id with no object (no_object) or shared by two objects (ambiguous) in "
            "unmatched_accounts."
        ),
    )
    def matched_metrics(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        pipelines = [p.name for p in config.pipelines]
        with open_warehouse(warehouse) as conn:
            objects = queries.select_planhat_objects(conn)
            values = queries.select_pipeline_values(conn, days=days, pipelines=pipelines)
            matched, unmatched = match_metrics(values.lazy(), objects.lazy())
            m, u = pl.collect_all([matched, unmatched])
            tables = {"matched_metrics": [m], "unmatched_account_rows": [u]}
            replace_days(conn, days=days, frames=tables)
        by_reason = dict(u.group_by("reason").len().rows())
        ids = m.select("day", "pipeline", "external_id").n_unique() if m.height else 0
        total_ids = ids + u.height
        rate = ids / total_ids if total_ids else 1.0
        context.log.info(
            f"{window(days)}: {m.height} metric values matched; unmatched ids: {by_reason or 'none'}"
        )
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                "matched_values": m.height,
                "match_rate": round(rate, 4),
                **{f"unmatched_ids: {r}": by_reason.get(r, 0) for r in ("no_object", "ambiguous")},
            }
        )

    return [matched_activities, matched_metrics]
