"""Matching Pendo usage to Planhat objects, per day, with every unmatched id kept and explained."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date

import dagster as dg
import polars as pl

from .. import queries
from ..config import Config
from ..identity import resolve_visitors
from ..landing import configured_items
from ..models import EVENT_SOURCES, FEATURE_EVENTS, EventSourceName
from ..queries import replace_days
from ..resources import WarehouseResource
from ..transforms import daily_usage, feature_metric_values, match_activities, match_metrics
from ._common import add_day_metadata, daily_asset, open_warehouse, run_days, window

VISITOR_REASONS = ("anonymous", "no_enduser", "ambiguous", "ambiguous_email")
MATCHED_BY = ("externalId", "email", "created")


def build_matching_assets(
    config: Config,
    partitions: dg.DailyPartitionsDefinition,
    *,
    events: Mapping[EventSourceName, dg.AssetsDefinition],
    pipeline_results: dg.AssetsDefinition,
    snapshot: dg.AssetsDefinition,
    identity: Sequence[dg.AssetsDefinition] = (),
) -> list[dg.AssetsDefinition]:
    # The ids whose events become activities, per event source (features, pages, track types).
    activity_ids = {
        source: [i.id for i in configured_items(config, source) if not i.is_metric]
        for source in EVENT_SOURCES.values()
    }
    activity_ids = {source: ids for source, ids in activity_ids.items() if ids}
    metric_features = pl.DataFrame(
        [(f.id, f.metric.dimension_id, f.metric.model) for f in config.features if f.metric],
        schema=["feature_id", "dimension_id", "model"],
        orient="row",
    )

    @daily_asset(
        partitions,
        name="matched_activities",
        group_name="matching",
        kinds={"polars", "duckdb"},
        deps=[*events.values(), snapshot, *identity],
        description=(
            "Grain: one row per End User x Planhat action x day (Pendo row splits summed, "
            "features folded into actions) in matched_activities, with how the End User was "
            "found (matched_by: externalId, email, created; per visitor in visitor_end_users); "
            "one row per (day, visitor, account) that cannot be matched (anonymous, no_enduser, "
            "ambiguous, ambiguous_email) in unmatched_visitors. Per partition: matched events by "
            "how, and unmatched events by reason. "
            "If it fails: it reads only the warehouse, so the message is a warehouse problem "
            "(another process holds the file: close it); materialize the days again. A low "
            "match rate is not a failure: see the match_rate_above_threshold check."
        ),
    )
    def matched_activities(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        events_by_reason: Counter[str] = Counter()
        visitors_by_reason: Counter[str] = Counter()
        events_by_match: Counter[str] = Counter()
        keys = config.matching.end_user_keys
        matched_keys = 0
        by_day: dict[date, dict[str, int | float]] = {}
        with open_warehouse(warehouse) as conn:
            objects = queries.select_planhat_objects(conn)
            all_ids = [i for ids in activity_ids.values() for i in ids]
            actions = queries.select_feature_actions(conn, feature_ids=all_ids)
            emails = (
                queries.select_visitor_emails(conn).lazy()
                if config.matching.needs_visitors
                else None
            )
            created = queries.select_created_end_user_ids(conn).lazy()
            for day in days:
                rows = pl.concat(
                    [
                        queries.select_events(conn, source=source, day=day, item_ids=ids)
                        for source, ids in activity_ids.items()
                    ]
                    or [queries.select_feature_events(conn, day=day)]
                )
                usage = daily_usage(rows.lazy())
                resolved = resolve_visitors(
                    usage, objects.lazy(), keys=keys, visitor_emails=emails, created=created
                ).collect()
                matched, unmatched = match_activities(
                    usage, objects.lazy(), actions.lazy(), resolved=resolved.lazy()
                )
                m, u = pl.collect_all([matched, unmatched])
                found = resolved.filter(pl.col("enduser_id").is_not_null()).select(
                    pl.lit(day).alias("day"),
                    "visitor_id",
                    "account_id",
                    "enduser_id",
                    pl.col("external_id").fill_null(pl.col("email")),
                    "matched_by",
                )
                tables = {
                    "matched_activities": [m],
                    "unmatched_visitor_rows": [u],
                    "visitor_end_users": [found],
                }
                replace_days(conn, days=[day], frames=tables)
                day_by_match = dict(m.group_by("matched_by").agg(pl.col("count").sum()).rows())
                events_by_match.update(day_by_match)
                matched_keys += m.height
                day_reasons = {
                    reason: (int(n_events), int(n_visitors))
                    for reason, n_events, n_visitors in u.group_by("reason")
                    .agg(pl.col("num_events").sum(), pl.col("visitor_id").n_unique())
                    .rows()
                }
                for reason, (n_events, n_visitors) in day_reasons.items():
                    events_by_reason[reason] += n_events
                    visitors_by_reason[reason] += n_visitors
                by_day[day] = _activity_metadata(m.height, day_by_match, day_reasons)
        totals = {r: (events_by_reason[r], visitors_by_reason[r]) for r in VISITOR_REASONS}
        metadata = _activity_metadata(matched_keys, events_by_match, totals)
        match_rate = metadata["match_rate"]
        context.log.info(
            f"{window(days)}: {matched_keys} activity keys matched "
            f"({metadata['matched_events']} events: "
            + ", ".join(f"by {how} {events_by_match[how]}" for how in MATCHED_BY)
            + f"), match rate {match_rate:.1%}; unmatched events "
            + ", ".join(f"{r} {n}" for r, n in sorted(events_by_reason.items()))
        )
        add_day_metadata(context, by_day)
        return dg.MaterializeResult(metadata={"partition_window": window(days), **metadata})

    @daily_asset(
        partitions,
        name="matched_metrics",
        group_name="matching",
        kinds={"polars", "duckdb"},
        deps=[pipeline_results, events["feature_events"], snapshot],
        description=(
            "Grain: one row per Planhat object x dimensionId x day in matched_metrics; one row "
            "per (day, pipeline, id) with no object (no_object) or shared by two objects "
            "(ambiguous) in unmatched_accounts. Per partition: values matched and unmatched ids "
            "by reason. If it fails: it reads only the warehouse (another process may hold the "
            "file: close it), then materialize the days again. Many no_object ids: the "
            "pipeline's id_field does not hold the objects' externalId."
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
            if metric_features.height:  # `as: metric` features: their daily counts, day by day
                ids = metric_features["feature_id"].to_list()
                counts = [
                    feature_metric_values(
                        daily_usage(
                            queries.select_events(
                                conn, source=FEATURE_EVENTS, day=day, item_ids=ids
                            ).lazy()
                        ),
                        metric_features.lazy(),
                    ).collect()
                    for day in days
                ]
                values = pl.concat([values, *counts])
            matched, unmatched = match_metrics(values.lazy(), objects.lazy())
            m, u = pl.collect_all([matched, unmatched])
            tables = {"matched_metrics": [m], "unmatched_account_rows": [u]}
            replace_days(conn, days=days, frames=tables)
        by_reason = dict(u.group_by("reason").len().rows())
        context.log.info(
            f"{window(days)}: {m.height} metric values matched; unmatched ids: {by_reason or 'none'}"
        )
        add_day_metadata(
            context,
            {
                day: _metric_metadata(
                    m.filter(pl.col("day") == day), u.filter(pl.col("day") == day)
                )
                for day in days
            },
        )
        return dg.MaterializeResult(
            metadata={"partition_window": window(days), **_metric_metadata(m, u)}
        )

    return [matched_activities, matched_metrics]


def _activity_metadata(
    keys: int, by_match: Mapping[str, int], unmatched: dict[str, tuple[int, int]]
) -> dict[str, int | float]:
    """Numbers of matched activities; ``by_match`` maps how End Users were found to events,
    ``unmatched`` a reason to (events, visitors)."""
    events = sum(by_match.values())
    identified = events + sum(
        unmatched.get(r, (0, 0))[0] for r in VISITOR_REASONS if r != "anonymous"
    )
    return {
        "matched_keys": keys,
        "matched_events": events,
        **{f"matched_events: by {how}": int(by_match.get(how, 0)) for how in MATCHED_BY},
        "match_rate": round(events / identified if identified else 1.0, 4),
        **{f"unmatched_events: {r}": unmatched.get(r, (0, 0))[0] for r in VISITOR_REASONS},
        **{f"unmatched_visitors: {r}": unmatched.get(r, (0, 0))[1] for r in VISITOR_REASONS},
    }


def _metric_metadata(matched: pl.DataFrame, unmatched: pl.DataFrame) -> dict[str, int | float]:
    """Numbers of matched metric values: values matched, share of ids matched, unmatched ids."""
    by_reason = dict(unmatched.group_by("reason").len().rows())
    ids = matched.select("day", "pipeline", "external_id").n_unique() if matched.height else 0
    total_ids = ids + unmatched.height
    return {
        "matched_values": matched.height,
        "match_rate": round(ids / total_ids if total_ids else 1.0, 4),
        **{f"unmatched_ids: {r}": by_reason.get(r, 0) for r in ("no_object", "ambiguous")},
    }
