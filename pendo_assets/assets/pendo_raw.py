"""Raw Pendo data, one partition per subscription-local day."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
from collections import Counter

import dagster as dg

from ..config import Config
from ..errors import ApiError, PendoAssetsError
from ..landing import (
    fetch_feature_events,
    fetch_pipeline_day,
    land_feature_events,
    land_pipeline_day,
    resolve_feature_actions,
)
from ..resources import PendoResource, WarehouseResource
from ._common import WAREHOUSE_POOL, run_days, window


def build_pendo_raw_assets(
    config: Config, partitions: dg.DailyPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """The feature-events and pipeline-results assets for this configuration."""
    feature_ids = [f.id for f in config.features]

    @dg.asset(
        name="pendo_feature_events",
        group_name="pendo_raw",
        kinds={"pendo", "duckdb"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        description=(
            "One row per Pendo feature-event row (visitor x account x feature x day x IP x user "
            "agent x server) for the configured features, in table raw_feature_events; "
            "malformed rows go to quarantine_feature_events with the reason. "
            "Re-materializing a day replaces it in one transaction."
        ),
    )
    def pendo_feature_events(
        context: dg.AssetExecutionContext, pendo: PendoResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        wh = warehouse.get_warehouse()
        totals: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        failed: list[str] = []
        fetch_s = land_s = 0.0
        # One warehouse connection for the step: this run is the only writer, and reopening
        # the file per day costs a checkpoint each time.
        with pendo.get_client() as client, wh.connect() as conn:
            if feature_ids:
                pendo_features = client.list_features()
                _, warnings = resolve_feature_actions(conn, config=config, pendo_features=pendo_features)
                for warning in warnings:
                    context.log.warning(warning)
            for n, day in enumerate(days if feature_ids else [], start=1):
                try:
                    staged = fetch_feature_events(
                        client,
                        day=day,
                        config=config,
                        feature_ids=feature_ids,
                        staging_dir=warehouse.staging_dir,
                    )
                    land_feature_events(conn, staged)
                except (ApiError, PendoAssetsError) as exc:
                    failed.append(f"{day}: {exc}")
                    context.log.error(f"feature events for {day} not landed: {exc}")
                    continue
                totals.update(rows=staged.rows, quarantined=staged.quarantined, pages=staged.pages,
                              bytes=staged.body_bytes)
                reasons.update(staged.reasons)
                fetch_s += staged.fetch_seconds
                land_s += staged.land_seconds
                context.log.info(
                    f"[{n}/{len(days)}] {day}: {staged.rows} rows landed, {staged.quarantined} "
                    f"quarantined, {staged.pages} page(s), {staged.body_bytes / 1e6:.1f} MB"
                )
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {len(days)} day(s) of feature events failed; their "
                "previous data is unchanged:\n" + "\n".join(failed),
                metadata={"failed_days": len(failed), "days": len(days)},
            )
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                "days": len(days),
                "rows_landed": totals["rows"],
                "rows_quarantined": totals["quarantined"],
                "pages": totals["pages"],
                "response_mb": round(totals["bytes"] / 1e6, 2),
                "fetch_seconds": round(fetch_s, 2),
                "land_seconds": round(land_s, 2),
                **{f"quarantined: {r}"[:120]: n for r, n in reasons.most_common(10)},
            }
        )

    @dg.asset(
        name="pendo_pipeline_results",
        group_name="pendo_raw",
        kinds={"pendo", "duckdb"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        description=(
            "One row per result row of each configured Pendo pipeline and day, run with its "
            "timeSeries set to that day (raw_pipeline_results); the metric values read from them "
            "in pipeline_values; values that cannot be sent in quarantine_pipeline_results."
        ),
    )
    def pendo_pipeline_results(
        context: dg.AssetExecutionContext, pendo: PendoResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        wh = warehouse.get_warehouse()
        totals: Counter[str] = Counter()
        failed: list[str] = []
        with pendo.get_client() as client, wh.connect() as conn:
            for n, day in enumerate(days if config.pipelines else [], start=1):
                for spec in config.pipelines:
                    try:
                        result = fetch_pipeline_day(client, spec=spec, day=day, config=config)
                        land_pipeline_day(conn, result)
                    except (ApiError, PendoAssetsError) as exc:
                        failed.append(f"{day} pipeline {spec.name}: {exc}")
                        context.log.error(f"pipeline {spec.name} for {day} not landed: {exc}")
                        continue
                    totals.update(rows=len(result.rows), values=result.values.height,
                                  rejected=len(result.rejects))
                context.log.info(f"[{n}/{len(days)}] {day}: {len(config.pipelines)} pipeline(s) run")
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} pipeline day(s) failed; their previous data is "
                "unchanged:\n" + "\n".join(failed),
                metadata={"failed": len(failed)},
            )
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                "days": len(days),
                "pipelines": len(config.pipelines),
                "result_rows": totals["rows"],
                "metric_values": totals["values"],
                "values_quarantined": totals["rejected"],
            }
        )

    return [pendo_feature_events, pendo_pipeline_results]

