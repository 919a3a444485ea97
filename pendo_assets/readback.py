"""Reading metrics back from Planhat, and repairing the keys where Planhat disagrees.

After publishing, every sync reads back (``GET /dimensiondata``, per dimension, paged) the
metric days of its range that the ledger says were sent, whether or not this run sent them, and
records what Planhat holds in ``planhat_metric_readback``. The ``metric_drift`` view lists the
keys where that differs from the ledger (DESIGN.md section 5, *Read-back*).

Planhat keeps one data point per item it received: a day shows the sum of its points (``sum``
metrics) or its latest point (``last``). Points are addressed by ``parentId``, the Planhat
``_id`` of their object; the snapshot (``planhat_objects``) maps it back to the ``externalId``
the ledger is keyed by.

`resend_metrics` (``pendo-planhat resend-metrics``) makes Planhat agree again, through the
outbox like any publish: a ``last`` key gets the last value sent once more (harmless: the day
shows its latest point); a ``sum`` key gets the difference ``sent - planhat`` as one more point
(negative when Planhat holds more, as a publish sends a negative ``sum`` delta). These repair
items are marked ``repair`` in the outbox and do not add to the ledger's sum.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Protocol

import duckdb
import polars as pl

from . import queries
from .delivery import Publisher, PublishReport, Sender
from .models import MetricPoint
from .transforms import METRIC_KEY

__all__ = [
    "MetricReader",
    "ReadbackReport",
    "RepairReport",
    "RepairSender",
    "plan_metric_repairs",
    "read_back_metrics",
    "resend_metrics",
]

log = logging.getLogger(__name__)

_POINT_SCHEMA = pl.Schema(
    {"day": pl.Date, "model": pl.String, "object_id": pl.String, "value": pl.Float64}
)
_READBACK_SCHEMA = pl.Schema(
    {
        "day": pl.Date,
        "model": pl.String,
        "external_id": pl.String,
        "dimension_id": pl.String,
        "points": pl.Int64,
        "sum_value": pl.Float64,
        "last_value": pl.Float64,
    }
)


class MetricReader(Protocol):
    """Reads a metric's points back; `PlanhatClient` implements it."""

    def get_dimension_data(
        self, *, dimension_id: str, start: date, end: date
    ) -> Iterator[list[MetricPoint]]: ...


class RepairSender(MetricReader, Sender, Protocol):
    """What `resend_metrics` needs: reading back and the analytics writes."""


@dataclass
class ReadbackReport:
    """Counts of one read-back, for logs and run metadata."""

    dimensions: int = 0
    metric_days: int = 0  # (dimension, day) pairs read back
    pages: int = 0
    points: int = 0
    keys: int = 0  # keys Planhat holds in those days
    points_unknown_objects: int = 0  # on objects the snapshot does not hold
    drift_keys: int = 0  # rows of metric_drift afterwards (all days)

    def as_metadata(self) -> dict[str, int]:
        """Flat fields, ``readback_``-prefixed, for Dagster metadata."""
        return {f"readback_{k}": v for k, v in asdict(self).items()} | {
            "metric_drift_keys": self.drift_keys
        }


@dataclass
class RepairReport:
    """What `resend_metrics` found and did."""

    drift_before: int = 0
    last_resent: int = 0
    sum_differences_sent: int = 0
    held: int = 0  # keys in a batch in doubt: resolve the batch first
    drift_after: int = 0
    publish: PublishReport = field(default_factory=PublishReport)
    readback: ReadbackReport = field(default_factory=ReadbackReport)


def read_back_metrics(
    conn: duckdb.DuckDBPyConnection,
    *,
    reader: MetricReader,
    days: Sequence[date],
    run_id: str | None,
    dimension_id: str | None = None,
) -> ReadbackReport:
    """Read back from Planhat the metric days of ``days`` that the ledger says were sent.

    One paged ``GET /dimensiondata`` per dimension over its first to last such day; what
    Planhat holds replaces the earlier read-back of those days, in one transaction at the end
    (a failed read leaves the earlier one as it was).

    Args:
        conn: An open read-write warehouse connection.
        reader: The Planhat client.
        days: The run's days.
        run_id: Recorded with the read-back.
        dimension_id: Read this dimension only.

    Returns:
        Counts, and the keys in ``metric_drift`` afterwards.

    Raises:
        ApiError: From the requests.
    """
    report = ReadbackReport()
    scope = queries.select_sent_metric_days(conn, days=days, dimension_id=dimension_id)
    objects = (
        queries.select_planhat_objects(conn)
        .select("model", pl.col("object_id"), "external_id")
        .filter(pl.col("external_id").is_not_null())
    )
    read: list[pl.DataFrame] = []
    for (dimension,), part in scope.group_by("dimension_id", maintain_order=True):
        wanted = part.select("day")
        first, last = wanted["day"].min(), wanted["day"].max()
        assert isinstance(first, date) and isinstance(last, date)
        report.dimensions += 1
        report.metric_days += part.height
        columns: dict[str, list[object]] = {name: [] for name in _POINT_SCHEMA}
        for page in reader.get_dimension_data(dimension_id=str(dimension), start=first, end=last):
            report.pages += 1
            for point in page:
                if point.dimension_id != dimension:
                    continue  # defensive: Planhat filtered by dimid
                columns["day"].append(point.day)
                columns["model"].append(point.model)
                columns["object_id"].append(point.parent_id)
                columns["value"].append(point.value)
        points = pl.DataFrame(columns, schema=_POINT_SCHEMA).join(wanted, on="day", how="semi")
        report.points += points.height
        # A day shows the sum of its points or its latest one: Planhat lists them in order.
        per_object = points.group_by(["day", "model", "object_id"], maintain_order=True).agg(
            pl.len().alias("points"),
            pl.col("value").sum().alias("sum_value"),
            pl.col("value").last().alias("last_value"),
        )
        keyed = per_object.join(objects, on=["model", "object_id"], how="left")
        unknown = keyed.filter(pl.col("external_id").is_null())
        report.points_unknown_objects += int(unknown["points"].sum() or 0)
        read.append(
            keyed.filter(pl.col("external_id").is_not_null())
            .group_by(["day", "model", "external_id"], maintain_order=True)
            .agg(
                pl.col("points").sum(),
                pl.col("sum_value").sum(),
                pl.col("last_value").last(),
            )
            .with_columns(pl.lit(dimension, dtype=pl.String).alias("dimension_id"))
            .select(list(_READBACK_SCHEMA))
        )
    values = pl.concat(read) if read else pl.DataFrame(schema=_READBACK_SCHEMA)
    report.keys = values.height
    queries.replace_metric_readback(conn, scope=scope, values=values, run_id=run_id)
    report.drift_keys = queries.count_metric_drift(conn)
    if report.points_unknown_objects:
        log.warning(
            "%d metric point(s) read back sit on Planhat objects the snapshot does not hold; "
            "left out",
            report.points_unknown_objects,
        )
    return report


def plan_metric_repairs(
    conn: duckdb.DuckDBPyConnection, *, days: Sequence[date], dimension_id: str | None = None
) -> tuple[pl.DataFrame, int]:
    """The repair items for the ``metric_drift`` keys of ``days``, and how many keys a batch
    in doubt holds (left out: resolve the batch first).

    Returns:
        Items with the columns a publish sends (``day, model, external_id, dimension_id,
        value, aggregation``) plus ``repair`` (true): the last value sent for ``last`` keys,
        ``sent - planhat`` for ``sum`` keys.
    """
    drift = queries.select_metric_drift(conn, days=days, dimension_id=dimension_id)
    held = int(drift["held"].sum() or 0)
    is_sum = pl.col("aggregation") == "sum"
    difference = pl.col("sent") - pl.col("planhat").fill_null(0.0)
    items = drift.filter(~pl.col("held")).select(
        *METRIC_KEY,
        pl.when(is_sum).then(difference).otherwise(pl.col("sent")).alias("value"),
        "aggregation",
        pl.lit(True).alias("repair"),
    )
    return items, held


def resend_metrics(
    conn: duckdb.DuckDBPyConnection,
    *,
    client: RepairSender,
    days: Sequence[date],
    dimension_id: str | None = None,
    run_id: str | None = None,
) -> RepairReport:
    """Read back ``days``, send the repairs of the keys in ``metric_drift`` through the
    outbox, and read back again to confirm (see the module docstring).

    Raises:
        DeliveryError: Planhat refused a repair batch after retries.
        ApiError: From the read-backs.
    """
    report = RepairReport()
    read_back_metrics(conn, reader=client, days=days, run_id=run_id, dimension_id=dimension_id)
    items, report.held = plan_metric_repairs(conn, days=days, dimension_id=dimension_id)
    report.drift_before = items.height + report.held
    report.last_resent = items.filter(pl.col("aggregation") == "last").height
    report.sum_differences_sent = items.height - report.last_resent
    publisher = Publisher(conn=conn, sender=client, run_id=run_id)
    report.publish = publisher.send_repairs(items)
    report.readback = read_back_metrics(
        conn, reader=client, days=days, run_id=run_id, dimension_id=dimension_id
    )
    drift = queries.select_metric_drift(conn, days=days, dimension_id=dimension_id)
    report.drift_after = drift.height
    return report
