"""Publishing deltas to Planhat, exactly once (see `pendo_assets.delivery`)."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
import dagster as dg

from ..delivery import Publisher
from ..errors import ApiError, DeliveryError
from ..queries import export_views, sent_per_day
from ..readback import read_back_metrics
from ..resources import PlanhatResource, WarehouseResource
from ._common import add_day_metadata, daily_asset, open_warehouse, run_days, window


class PublishConfig(dg.Config):
    dry_run: bool = False
    """Compute and store what would be sent (planned_activities, planned_metrics); send nothing."""


def build_publish_asset(
    partitions: dg.DailyPartitionsDefinition,
    *,
    activities: dg.AssetsDefinition,
    metrics: dg.AssetsDefinition,
) -> dg.AssetsDefinition:
    @daily_asset(
        partitions,
        name="planhat_publish",
        group_name="publish",
        kinds={"planhat", "duckdb"},
        deps=[activities, metrics],
        description=(
            "Sends Planhat only what it lacks. Grain: one activity item per (End User, action, "
            "day) delta and one metric item per changed (object, dimensionId, day), through a "
            "crash-safe outbox (outbox_batches). What Planhat holds: sent_activities, "
            "sent_metrics; batches whose outcome is unknown: batches_in_doubt. Then reads back "
            "from Planhat the metric days of the range the ledger says were sent "
            "(planhat_metric_readback); keys where Planhat disagrees: metric_drift. Per "
            "partition: items and events sent that day. If it fails: batches sent before the "
            "failure are recorded and the next run sends the rest (nothing twice); a 401/403: "
            "check PLANHAT_API_TOKEN and PLANHAT_TENANT_TOKEN. If no_batches_in_doubt fails, run "
            "`pendo-planhat batches list` and resolve each batch; if metric_drift fails, see the "
            "README's Metric drift."
        ),
    )
    def planhat_publish(
        context: dg.AssetExecutionContext,
        config: PublishConfig,
        planhat: PlanhatResource,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        days = run_days(context)
        # One publisher at a time, also across deployments sharing a DuckLake warehouse: the
        # warehouse's own lock (a Postgres advisory lock; the DuckDB file's writer lock), held
        # from recovering the outbox to the last batch. The pool only covers this instance.
        with (
            warehouse.get_warehouse().publish_lock(),
            planhat.get_client() as client,
            open_warehouse(warehouse) as conn,
        ):
            publisher = Publisher(
                conn=conn, sender=None if config.dry_run else client, run_id=context.run.run_id
            )
            try:
                report = publisher.publish(days, dry_run=config.dry_run)
            except DeliveryError as exc:
                export_views(conn, warehouse.exports_dir)
                raise dg.Failure(
                    description=f"publish stopped for {window(days)}: {exc}. Batches sent before it "
                    "are recorded; the rest is sent by the next run.",
                ) from exc
            readback = None
            if not config.dry_run:
                try:
                    readback = read_back_metrics(
                        conn, reader=client, days=days, run_id=context.run.run_id
                    )
                except ApiError as exc:
                    export_views(conn, warehouse.exports_dir)
                    raise dg.Failure(
                        description=f"reading metrics back failed for {window(days)}: {exc}. "
                        "Everything sent is recorded; metric_drift keeps the previous read-back "
                        "of these days, and the next run reads them again.",
                    ) from exc
            exported = export_views(conn, warehouse.exports_dir)
            sent = sent_per_day(conn, run_id=context.run.run_id)
        nothing = {"activity_items_sent": 0, "activity_units_sent": 0, "metric_items_sent": 0}
        add_day_metadata(context, {day: {**nothing, **sent.get(day, {})} for day in days})
        verb = "would send" if config.dry_run else "sent"
        context.log.info(
            f"{window(days)}: {verb} {report.activity_items_planned} activity and "
            f"{report.metric_items_planned} metric items in {report.requests} request(s); "
            f"{report.batches_in_doubt_total} batch(es) in doubt, {report.drift_keys} drift key(s)"
        )
        if report.metric_items_rejected:
            context.log.error(
                f"Planhat rejected {report.metric_items_rejected} metric item(s) in its answer; "
                "they are not counted as sent and the next run sends them again (the reasons are "
                "in outbox_metric_items.error)"
            )
        if report.batches_in_doubt_total:
            context.log.error(
                f"{report.batches_in_doubt_total} batch(es) have an unknown outcome: see the "
                "batches_in_doubt view and resolve them with `pendo-planhat batches resolve`"
            )
        if readback is not None:
            context.log.info(
                f"{window(days)}: read back {readback.points} metric point(s) of "
                f"{readback.metric_days} metric day(s) over {readback.dimensions} dimension(s) in "
                f"{readback.pages} request(s): {readback.keys} key(s); "
                f"{readback.drift_keys} key(s) in metric_drift"
            )
            if readback.drift_keys:
                context.log.error(
                    f"Planhat disagrees with the ledger on {readback.drift_keys} metric key(s): "
                    "see the metric_drift view and the metric_drift check"
                )
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                **report.as_metadata(),
                **(readback.as_metadata() if readback is not None else {}),
                **{f"exported: {view}": n for view, n in exported.items()},
            }
        )

    return planhat_publish
