"""Subscription-timezone day and hour arithmetic shared by the sandbox modules.

Pendo's ``day`` is the subscription timezone's midnight as UTC epoch milliseconds, and ``hour`` the
start of a local hour. Everything here goes through ``zoneinfo``; nothing derives a day from a UTC
date, so DST days come out 23 or 25 hours long.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "HOUR_MS",
    "as_date",
    "day_start_ms",
    "floor_hour_ms",
    "hour_starts_ms",
    "local_date",
]

HOUR_MS = 3_600_000
_STEP_MS = 15 * 60 * 1000


def as_date(value: date | str) -> date:
    """Return ``value`` as a date, parsing ``YYYY-MM-DD`` strings.

    Args:
        value: a date (a datetime is cut to its date) or an ISO date string.

    Returns:
        The date.
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


@lru_cache(maxsize=8192)
def day_start_ms(day: date, tz: ZoneInfo) -> int:
    """Return local midnight of ``day`` in ``tz`` as UTC epoch milliseconds.

    Where a DST gap swallows midnight, this is the first instant of the local day.

    Args:
        day: the local calendar day.
        tz: the subscription timezone.

    Returns:
        Epoch milliseconds.
    """
    start = datetime.combine(day, time(0), tzinfo=tz)
    return int(start.timestamp()) * 1000


def local_date(ms: int, tz: ZoneInfo) -> date:
    """Return the local calendar day in ``tz`` that contains epoch millisecond ``ms``."""
    return datetime.fromtimestamp(ms / 1000, tz).date()


@lru_cache(maxsize=8192)
def hour_starts_ms(day: date, tz: ZoneInfo) -> tuple[int, ...]:
    """Return the starts of the local hours of ``day`` (23, 24 or 25 of them) as epoch ms.

    Args:
        day: the local calendar day.
        tz: the subscription timezone.

    Returns:
        Increasing epoch milliseconds, the first being ``day_start_ms(day, tz)``.
    """
    start = day_start_ms(day, tz)
    end = day_start_ms(day + timedelta(days=1), tz)
    starts: list[int] = []
    t = start
    while t < end:
        local = datetime.fromtimestamp(t / 1000, tz)
        if t == start or (local.minute == 0 and local.second == 0):
            starts.append(t)
        t += _STEP_MS
    return tuple(starts)


def floor_hour_ms(ms: int, tz: ZoneInfo) -> int:
    """Return the start of the local hour that contains epoch millisecond ``ms``."""
    starts = hour_starts_ms(local_date(ms, tz), tz)
    best = starts[0]
    for s in starts:
        if s <= ms:
            best = s
        else:
            break
    return best
