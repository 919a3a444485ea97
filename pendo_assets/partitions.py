"""Daily partitions in the Pendo subscription's timezone (DESIGN.md section 4)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from .config import Config

__all__ = [
    "daily_partitions",
    "first_mutable_day",
    "last_complete_day",
    "sync_window",
    "yesterday_in",
]


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


def _now(tz: ZoneInfo) -> datetime:
    return datetime.now(tz)


def last_complete_day(config: Config, now: datetime | None = None) -> date:
    """Yesterday in the subscription's timezone (of ``now``, default the clock)."""
    return yesterday_in(config.pendo.timezone, now)


def yesterday_in(timezone: str, now: datetime | None = None) -> date:
    """Yesterday in ``timezone`` (of ``now``, default the clock)."""
    tz = ZoneInfo(timezone)
    return (now.astimezone(tz) if now else _now(tz)).date() - timedelta(days=1)


def sync_window(
    config: Config,
    *,
    start: date | None = None,
    end: date | None = None,
    now: datetime | None = None,
) -> tuple[date, date]:
    """The days a sync covers when ``start`` or ``end`` are not given (DESIGN.md section 5,
    *Steady state*): it ends yesterday and starts ``sync.lookback_days - 1`` days before its end,
    never before ``pendo.start_date``."""
    end = end or last_complete_day(config, now)
    if start is None:
        start = max(end - timedelta(days=config.sync.lookback_days - 1), config.pendo.start_date)
    return start, end


def first_mutable_day(config: Config, now: datetime | None = None) -> date:
    """The oldest day Pendo may still change, by ``sync.lookback_days``; older days are final:
    the daily sync no longer re-pulls them."""
    return last_complete_day(config, now) - timedelta(days=config.sync.lookback_days - 1)
