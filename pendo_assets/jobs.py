"""The sync job and its daily schedule."""

from __future__ import annotations

import dagster as dg

SYNC_JOB = "sync_job"


def build_sync_job() -> dg.UnresolvedAssetJobDefinition:
    """Snapshot, land, match and publish; a partition range runs as one run."""
    return dg.define_asset_job(
        SYNC_JOB,
        selection=dg.AssetSelection.all(),
        description="Refresh the Planhat snapshot, land Pendo data, match, and publish deltas.",
    )


def build_daily_schedule(
    job: dg.UnresolvedAssetJobDefinition,
) -> dg.ScheduleDefinition | dg.UnresolvedPartitionedAssetScheduleDefinition:
    """Every day at 03:00 in the subscription's timezone, sync yesterday."""
    return dg.build_schedule_from_partitioned_job(
        job, hour_of_day=3, minute_of_hour=0, name="daily_sync_schedule"
    )
