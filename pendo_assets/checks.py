"""Asset checks that fail loudly where a user would want to know."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
import dagster as dg

from . import queries
from .assets._common import open_warehouse, tag_days, window
from .config import Config
from .resources import WarehouseResource

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def _result(
    problem: str | None, metadata: dict[str, int | str], severity: dg.AssetCheckSeverity = ERROR
) -> dg.AssetCheckResult:
    """Passed when there is no ``problem``, which is the description otherwise."""
    return dg.AssetCheckResult(
        passed=problem is None, severity=severity, description=problem, metadata=metadata
    )


def build_checks(
    config: Config,
    partitions: dg.DailyPartitionsDefinition,
    *,
    feature_events: dg.AssetsDefinition,
    activities: dg.AssetsDefinition,
    publish: dg.AssetsDefinition,
) -> list[dg.AssetChecksDefinition]:
    min_rate = config.sync.min_match_rate

    @dg.asset_check(
        asset=feature_events,
        name="rows_have_visitor_ids",
        description=(
            "Per run (its partition days): no Pendo row was quarantined for a missing or bad "
            "visitorId. WARN: the other rows landed and are published. If it fails: look at "
            "those rows in quarantine_feature_events; the Pendo install is sending events "
            "without a visitor (a snippet problem on Pendo's side), nothing to fix here."
        ),
    )
    def rows_have_visitor_ids(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        days = tag_days(context.run.tags, partitions)
        with open_warehouse(warehouse) as conn:
            rows = queries.quarantined_visitor_id_rows(conn, days=days)
        bad = sum(n for _, n in rows)
        on = ", ".join(f"{d} ({n})" for d, n in rows[:10])
        problem = f"{bad} row(s) without a usable visitorId, on {on}; see quarantine_feature_events"
        return _result(
            problem if bad else None,
            {"rows_without_visitor_id": bad, "partition_window": window(days)},
            WARN,
        )

    @dg.asset_check(
        asset=activities,
        name="match_rate_above_threshold",
        description=(
            f"Per run (its partition days): the share of identified visitors' events matched to "
            f"an End User is at least sync.min_match_rate ({min_rate:.0%}). ERROR: below it, "
            "much usage never reaches Planhat. If it fails: see unmatched_visitors by reason; "
            "no_enduser means no Planhat End User has the Pendo visitorId as its externalId; "
            "ambiguous means two End Users share it; anonymous visitors never count."
        ),
    )
    def match_rate_above_threshold(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        days = tag_days(context.run.tags, partitions)
        with open_warehouse(warehouse) as conn:
            matched, unmatched = queries.match_totals(conn, days=days)
        rate = matched / (matched + unmatched) if matched + unmatched else 1.0
        return dg.AssetCheckResult(
            passed=rate >= min_rate,
            severity=ERROR,
            description=f"match rate {rate:.1%} for {window(days)} (threshold {min_rate:.0%}); "
            "see unmatched_visitors",
            metadata={
                "match_rate": round(rate, 4),
                "matched_events": matched,
                "unmatched_events": unmatched,
            },
        )

    @dg.asset_check(
        asset=publish,
        name="no_batches_in_doubt",
        description=(
            "Whole warehouse: no batch sent to Planhat has an unknown outcome (batches_in_doubt). "
            "ERROR: their keys are held back until you decide. If it fails: run `pendo-planhat "
            "batches list`, check in Planhat whether each batch arrived, then `pendo-planhat "
            "batches resolve BATCH_ID --delivered` or `--resend` (README, Exactly once)."
        ),
    )
    def no_batches_in_doubt(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with open_warehouse(warehouse) as conn:
            rows = [(b, k, n) for b, k, _, n, _, _ in queries.select_batches_in_doubt(conn)]
        problem = (
            f"{len(rows)} batch(es) may or may not have reached Planhat; their keys are held "
            "back. Check Planhat, then run `pendo-planhat batches resolve BATCH_ID "
            "--delivered` or `--resend`. Batches: "
            + ", ".join(f"{b} ({k}, {n} items)" for b, k, n in rows[:20])
        )
        items = sum(n for _, _, n in rows)
        return _result(
            problem if rows else None, {"batches_in_doubt": len(rows), "items_in_doubt": items}
        )

    @dg.asset_check(
        asset=publish,
        name="no_activity_drift",
        description=(
            "Whole warehouse: no activity count in Pendo fell below what Planhat already holds "
            "(activity_drift). WARN: Planhat cannot retract activities, so nothing is sent. If it "
            "fails: nothing can be fixed here (Pendo reprocessed its history); the view lists "
            "the keys, should Planhat's totals be questioned."
        ),
    )
    def no_activity_drift(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with open_warehouse(warehouse) as conn:
            keys, excess = queries.activity_drift_totals(conn)
        problem = (
            f"{keys} activity key(s) hold {excess} more event(s) in Planhat than Pendo reports "
            "now (Pendo reprocessed history); activities cannot be retracted"
        )
        return _result(
            problem if keys else None, {"drift_keys": keys, "drift_events": excess}, WARN
        )

    @dg.asset_check(
        asset=publish,
        name="metric_drift",
        description=(
            "Whole warehouse: Planhat holds, for every metric day read back after it was last "
            "sent, what the ledger says it was sent (the metric_drift view is empty). ERROR: "
            "Planhat's charts show other numbers than Pendo's. If it fails: the result names the "
            "keys and the `pendo-planhat resend-metrics --start --end` that repairs them (README, "
            "Metric drift); a key you want to keep as Planhat has it stays listed."
        ),
    )
    def metric_drift(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with open_warehouse(warehouse) as conn:
            keys, first_day, last_day = queries.metric_drift_span(conn)
            first = queries.metric_drift_keys(conn, limit=5)
        shown = "; ".join(
            f"{day} {dimension} {model} {external_id}: sent {sent:g}, Planhat "
            + ("has no value" if planhat is None else f"{planhat:g}")
            for day, model, external_id, dimension, sent, planhat in first
        )
        problem = (
            f"Planhat disagrees with the ledger on {keys} metric key(s) (see the metric_drift "
            f"view), first: {shown}. A value was changed or deleted in Planhat, or Planhat "
            "dropped an item. To make Planhat agree, run `pendo-planhat resend-metrics "
            f"--start {first_day} --end {last_day}` (a `last` metric gets the last value sent "
            "again; a `sum` metric gets the difference as one more point); see the README, "
            "Metric drift."
        )
        span = f"{first_day}..{last_day}" if keys else ""
        return _result(problem if keys else None, {"metric_drift_keys": keys, "days": span})

    return [
        rows_have_visitor_ids,
        match_rate_above_threshold,
        no_batches_in_doubt,
        no_activity_drift,
        metric_drift,
    ]
