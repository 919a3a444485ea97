"""Small helpers shared by the asset modules."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import date
from typing import Any, TypeVar

import dagster as dg
import duckdb

from ..clients import RetryPolicy
from ..errors import DayRejectedError, PayloadShapeError, WarehouseError
from ..resources import WarehouseResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"

# One pool for everything that opens the warehouse: DuckDB has one writer per file.
WAREHOUSE_POOL = "warehouse"

#: After this many days (or pipeline days) in a row fail on the API, the rest of the step's days
#: are not tried: an API that is down or refuses the key would fail them all the same, each after
#: its full retry budget. They keep their previous data and the next run tries them again.
GIVE_UP_AFTER = 3

T = TypeVar("T")
log = logging.getLogger(__name__)


def daily_asset(
    partitions: dg.DailyPartitionsDefinition, **kwargs: Any
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``@dg.asset`` for a daily-partitioned asset of the sync: a range of days runs as one run
    (single-run backfill policy) and the step holds the warehouse pool."""
    return dg.asset(  # type: ignore[no-any-return]
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        **kwargs,
    )


def run_days(context: dg.AssetExecutionContext) -> list[date]:
    """The partition days this step covers (one day, or a single-run range)."""
    return [date.fromisoformat(k) for k in context.partition_keys]


def tag_days(tags: Mapping[str, str], partitions: dg.DailyPartitionsDefinition) -> list[date]:
    """Partition days of a run, from its tags (for checks, which see the run, not partitions)."""
    if RANGE_START in tags and RANGE_END in tags:
        keys = partitions.get_partition_keys_in_range(
            dg.PartitionKeyRange(tags[RANGE_START], tags[RANGE_END])
        )
    else:
        keys = [tags[PARTITION]] if PARTITION in tags else []
    return [date.fromisoformat(k) for k in keys]


def add_day_metadata(
    context: dg.AssetExecutionContext,
    by_day: Mapping[date, Mapping[str, int | float | bool | str]],
) -> None:
    """Give each day's partition its own numbers, so the UI plots them over partitions.

    In a single-run backfill Dagster records one materialization per partition, each with the
    step's metadata (the whole range's totals); these per-day values override them. A key some
    day lacks is 0 on that day, and ``partition_window`` is the day itself.
    """
    keys = {key for values in by_day.values() for key in values}
    for day, values in by_day.items():
        context.add_asset_metadata(
            {**dict.fromkeys(keys, 0), **values, "partition_window": day.isoformat()},
            partition_key=day.isoformat(),
        )


def window(days: list[date]) -> str:
    """``first..last`` for metadata."""
    if not days:
        return "(no days)"
    return days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"


@contextmanager
def open_warehouse(warehouse: WarehouseResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """The step's warehouse connection.

    When the file cannot be opened (another process holds DuckDB's lock), the step fails with
    `WarehouseLockedError`'s message as its whole description: what to close, and where to query
    meanwhile. Nothing was written.
    """
    with ExitStack() as stack:
        try:
            conn = stack.enter_context(warehouse.get_warehouse().connect())
        except WarehouseError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        yield conn


def reread(
    read: Callable[[], T],
    *,
    retry: RetryPolicy,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``read`` again when the service answered 2xx with a malformed body.

    A read is harmless to repeat, and a garbage or cut-off body from a proxy is usually gone on
    the next request; the HTTP layer retries statuses and transport errors, this retries bodies.
    Up to ``retry.attempts`` reads, waiting like the HTTP retries do (the same policy).

    Raises:
        PayloadShapeError: Every read was malformed; the message names the endpoint, says it
            answered 200, and how many times it was read.
    """
    attempts = retry.attempts
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except PayloadShapeError as exc:
            if attempt >= attempts:
                times = f"{attempts} times" if attempts > 1 else "once"
                problem = f"answered 200 with an unusable body ({times}): {exc.problem}"
                raise PayloadShapeError(
                    problem, service=exc.service, method=exc.method, url=exc.url, sep=" "
                ) from None
            delay = retry.delay(attempt=attempt, retry_after=None)
            log.warning("%s: %s; reading it again in %.1f s", what, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def day_error(day: date, exc: BaseException, label: str = "") -> str:
    """``2026-11-03[ label]: problem`` on one line."""
    text = exc.problem if isinstance(exc, DayRejectedError) else str(exc)
    return f"{day.isoformat()}{label}: {' '.join(text.split())}"


def failure_description(failures: Sequence[str], *, count: int, summary: str) -> str:
    """The first failure, how many more of ``count`` there are and ``summary`` on the first line
    (``pendo-planhat sync`` prints it in its last line), then one line per failure."""
    more = f" (+{count - 1} more)" if count > 1 else ""
    return "\n".join([f"{failures[0].rstrip('.')}{more}; {summary}", *failures])
