"""The sync job and its daily schedule."""

from __future__ import annotations

import dagster as dg

from .config import Config
from .partitions import sync_window

SYNC_JOB = "sync_job"


def build_sync_job() -> dg.UnresolvedAssetJobDefinition:
    """Snapshot, land, match and publish; a partition range runs as one run."""
    return dg.define_asset_job(
        SYNC_JOB,
        selection=dg.AssetSelection.all(),
        description="Refresh the Planhat snapshot, land Pendo data, match, and publish deltas.",
    )


def build_daily_schedule(
    job: dg.UnresolvedAssetJobDefinition, config: Config
) -> dg.ScheduleDefinition:
    """Every day at 03:00 in the subscription's timezone, one run over the days Pendo may still
    change: the ``sync.lookback_days`` days ending yesterday (what ``pendo-planhat sync`` runs)."""

    @dg.schedule(
        job=job,
        cron_schedule="0 3 * * *",
        execution_timezone=config.pendo.timezone,
        name="daily_sync_schedule",
        description=f"Syncs the {config.sync.lookback_days} days ending yesterday (sync."
        "lookback_days), as one run, every day at 03:00 in the subscription's timezone: days "
        "Pendo changed send their differences, unchanged days send nothing.",
    )
    def daily_sync_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        start, end = sync_window(config, now=context.scheduled_execution_time)
        return dg.RunRequest(
            run_key=f"daily-{end.isoformat()}",
            tags={
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": end.isoformat(),
            },
        )

    return daily_sync_schedule
