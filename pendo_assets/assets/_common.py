"""Small helpers shared by the asset modules."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import dagster as dg

from ..partitions import partition_days

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"

# One pool for everything that opens the warehouse: DuckDB has one writer per file.
WAREHOUSE_POOL = "warehouse"


def run_days(context: dg.AssetExecutionContext) -> list[date]:
    """The partition days this step covers (one day, or a single-run range)."""
    return partition_days(list(context.partition_keys))


def tag_days(tags: Mapping[str, str], partitions: dg.DailyPartitionsDefinition) -> list[date]:
    """Partition days of a run, from its tags (for checks, which see the run, not partitions)."""
    if RANGE_START in tags and RANGE_END in tags:
        keys = partitions.get_partition_keys_in_range(
            dg.PartitionKeyRange(tags[RANGE_START], tags[RANGE_END])
        )
        return partition_days(list(keys))
    if PARTITION in tags:
        return partition_days([tags[PARTITION]])
    return []


def window(days: list[date]) -> str:
    """``first..last`` for metadata."""
    if not days:
        return "(no days)"
    return days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"
