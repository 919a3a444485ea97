"""Building the Dagster `Definitions` of pendo-planhat from a config.

Secrets are only ever referenced as ``dg.EnvVar``: resolved when a run starts, never shown in
the UI. Optional, non-secret URLs are read from the environment when the code location loads.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from .assets.identity import build_identity_assets
from .assets.matching import build_matching_assets
from .assets.pendo_raw import build_pendo_raw_assets
from .assets.planhat_snapshot import build_planhat_snapshot_asset
from .assets.publish import build_publish_asset
from .checks import build_checks
from .config import Config
from .jobs import build_daily_schedule, build_sync_job
from .partitions import daily_partitions
from .resources import PendoResource, PlanhatResource, WarehouseResource
from .warehouse import warehouse_from_env

__all__ = ["build_definitions"]


def build_definitions(config: Config) -> dg.Definitions:
    """Assets, checks, the sync job, its schedule and resources for ``config``."""
    partitions = daily_partitions(config)
    events, pipeline_results = build_pendo_raw_assets(config, partitions)
    feature_events = events["feature_events"]
    snapshot = build_planhat_snapshot_asset()
    identity = build_identity_assets(
        config, partitions, events=list(events.values()), snapshot=snapshot
    )
    activities, metrics = build_matching_assets(
        config,
        partitions,
        events=events,
        pipeline_results=pipeline_results,
        snapshot=snapshot,
        identity=identity,
    )
    publish = build_publish_asset(partitions, activities=activities, metrics=metrics)
    checks = build_checks(
        config, partitions, feature_events=feature_events, activities=activities, publish=publish
    )
    job = build_sync_job()
    http: dict[str, Any] = {
        "timeout_seconds": config.sync.request_timeout_seconds,
        "retry_attempts": config.sync.retry_attempts,
        "retry_backoff_seconds": config.sync.retry_backoff_seconds,
        "retry_max_delay_seconds": config.sync.retry_max_delay_seconds,
    }
    return dg.Definitions(
        assets=[
            snapshot,
            *events.values(),
            pipeline_results,
            *identity,
            activities,
            metrics,
            publish,
        ],
        asset_checks=checks,
        jobs=[job],
        schedules=[build_daily_schedule(job, config)],
        resources={
            "pendo": PendoResource(
                integration_key=dg.EnvVar("PENDO_INTEGRATION_KEY"),
                region=config.pendo.region,
                base_url=os.environ.get("PENDO_BASE_URL") or None,
                page_size=config.sync.page_size,
                **http,
            ),
            "planhat": PlanhatResource(
                api_token=dg.EnvVar("PLANHAT_API_TOKEN"),
                tenant_token=dg.EnvVar("PLANHAT_TENANT_TOKEN"),
                api_url=os.environ.get("PLANHAT_API_URL") or "https://api.planhat.com",
                analytics_url=os.environ.get("PLANHAT_ANALYTICS_URL")
                or "https://analytics.planhat.com",
                **http,
            ),
            "warehouse": WarehouseResource.from_warehouse(warehouse_from_env()),
        },
        executor=dg.in_process_executor,
    )
