"""Daily partitions in the Pendo subscription's timezone (DESIGN.md section 4)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from .config import Config

__all__ = ["daily_partitions", "last_complete_day"]


def daily_partitions(config: Config) -> dg.DailyPartitionsDefinition:
    """One partition per subscription-local day from ``pendo.start_date`` to yesterday.

    The partition key ``2026-11-28`` is the window [local midnight, next local midnight);
    today is left out until it is complete.
    """
    return dg.DailyPartitionsDefinition(
        start_date=config.pendo.start_date.isoformat(),
        timezone=config.pendo.timezone,
        end_offset=0,
    )


def last_complete_day(config: Config) -> date:
    """Yesterday in the subscription's timezone."""
    return datetime.now(ZoneInfo(config.pendo.timezone)).date() - timedelta(days=1)
