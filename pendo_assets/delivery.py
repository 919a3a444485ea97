"""Exactly-once delivery to Planhat: deltas against a ledger, through a crash-safe outbox.

Planhat has no idempotency key and no delete: an activity sent twice is counted twice, and a
metric day sent twice is summed when the metric aggregates with SUM (DESIGN.md section 6). So:

1. The ledger is what Planhat holds: the items of every batch Planhat accepted
   (``ledger_activities`` / ``ledger_metrics`` views over the outbox).
2. A run sends only the difference between the current numbers and the ledger.
3. Each batch is written to the outbox as ``prepared`` and flipped to ``sending`` (two commits)
   before its one HTTP request; it becomes ``delivered`` once Planhat answers 200.
4. At the next start a ``prepared`` batch was certainly never sent (discarded); a ``sending``
   batch may or may not have reached Planhat. It is resent only where that is harmless
   (``last`` metrics); otherwise it is ``in_doubt``: its keys are held back, it shows in
   ``batches_in_doubt``, and a user decides with ``pendo-planhat batches resolve``.

Batch statuses: prepared, sending, delivered, failed (Planhat did not accept it), discarded (never
sent, or a ``last`` batch to be resent), in_doubt, resolved_delivered, resolved_resend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Literal, Protocol

import duckdb
import numpy as np
import numpy.typing as npt
import polars as pl

from . import queries
from .clients import AttemptHooks
from .errors import (
    ApiError,
    ApiStatusError,
    BatchStateError,
    DeliveryError,
    DeliveryUnknownError,
    ItemTooLargeError,
)
from .models import DimensionDataResult
from .queries import replace_days, transaction
from .transforms import ACTIVITY_KEY, METRIC_KEY, activity_deltas, metric_deltas
from .types import BatchKind

__all__ = [
    "Plan",
    "PublishReport",
    "PublishSettings",
    "Publisher",
    "RecoveryReport",
    "Sender",
    "encode_activity_items",
    "encode_metric_items",
    "pack_batches",
    "resolve_batch",
]

log = logging.getLogger(__name__)
_PLANNED = ("planned_activities", "planned_metrics")  # what a dry run would send


class Sender(Protocol):
    """The two Planhat analytics calls; `PlanhatClient` implements it.

    ``hooks`` (optional to honour) let the outbox record "not sent" while a refused attempt
    waits to be retried, so a process stopped during that wait leaves no batch in doubt.
    """

    def post_activities(
        self, body: bytes, *, items: int, hooks: AttemptHooks | None = None
    ) -> None: ...

    def post_dimension_data(
        self, body: bytes, *, items: int, hooks: AttemptHooks | None = None
    ) -> DimensionDataResult: ...


@dataclass
class _OutboxHooks:
    """Flips a batch between sending and prepared around the client's retry waits."""

    publisher: Publisher
    batch_id: int
    waiting: bool = False

    def before_send(self) -> None:
        if self.waiting:
            self.publisher._mark(self.batch_id, "sending", sent=True)
            self.waiting = False

    def refused(self) -> None:
        self.publisher._mark(
            self.batch_id, "prepared", note="refused by Planhat; waiting to retry (not sent)"
        )
        self.waiting = True


@dataclass(frozen=True)
class PublishSettings:
    """Batch limits. Planhat takes at most 32 MB per body, "about 150,000 items": 30 MB and
    140,000 items keep a 6 % margin on both (a 1M-item publish is 8 requests). A sender with
    lower limits of its own (``max_body_bytes``, ``max_items``) lowers them."""

    max_items: int = 140_000
    max_bytes: int = 30_000_000
    last_resend_attempts: int = 3


@dataclass
class RecoveryReport:
    """What was found in the outbox at the start of a run."""

    discarded_prepared: int = 0
    resent_last: int = 0
    new_in_doubt: int = 0


@dataclass
class Plan:
    """What a publish would send now."""

    activities: pl.DataFrame
    metrics: pl.DataFrame
    drift: pl.DataFrame
    held_activity_keys: int
    held_metric_keys: int


@dataclass
class PublishReport:
    """Counts of one publish, for logs and run metadata."""

    dry_run: bool = False
    activity_items_planned: int = 0
    metric_items_planned: int = 0
    activity_items_sent: int = 0
    metric_items_sent: int = 0
    activity_units_sent: int = 0
    requests: int = 0
    bytes_sent: int = 0
    batches_delivered: int = 0
    batches_split: int = 0
    batches_in_doubt_new: int = 0
    batches_in_doubt_total: int = 0
    metric_items_rejected: int = 0
    drift_keys: int = 0
    held_activity_keys: int = 0
    held_metric_keys: int = 0
    recovery: RecoveryReport = field(default_factory=RecoveryReport)

    def as_metadata(self) -> dict[str, int | bool]:
        """Flat numeric fields, ready for Dagster metadata."""
        out: dict[str, int | bool] = {k: v for k, v in vars(self).items() if k != "recovery"}
        return out | {f"recovery_{k}": v for k, v in asdict(self.recovery).items()}


def pack_batches(
    lengths: Sequence[int] | npt.NDArray[np.int64], *, max_items: int, max_bytes: int
) -> list[tuple[int, int]]:
    """Greedy ``[start, stop)`` ranges of consecutive items under both limits.

    Args:
        lengths: Encoded size of each item in bytes (a sequence or an integer array).
        max_items: Most items in one batch.
        max_bytes: Most bytes in one JSON array body (brackets and commas included).

    Returns:
        Ranges covering every item once, in order; never an empty range.

    Raises:
        DeliveryError: One item alone is larger than ``max_bytes``.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    if sizes.size == 0:
        return []
    too_big = np.flatnonzero(sizes + 2 > max_bytes)
    if too_big.size:
        raise ItemTooLargeError(item_bytes=int(sizes[too_big[0]]), max_bytes=max_bytes)
    # ends[k]: bytes of items [0, k) with one comma each; a body [s, e) is 1 + ends[e] - ends[s].
    ends = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes + 1, out=ends[1:])
    ranges: list[tuple[int, int]] = []
    start, count = 0, int(sizes.size)
    while start < count:
        fits = int(np.searchsorted(ends, max_bytes - 1 + ends[start], side="right")) - 1
        stop = max(start + 1, min(fits, start + max_items, count))
        ranges.append((start, stop))
        start = stop
    return ranges


def encode_activity_items(frame: pl.DataFrame) -> pl.Series:
    """One JSON object per activity item, as Planhat's bulk endpoint takes it.

    An End User is addressed by its ``externalId``, or by its ``email`` when it has none (the
    ``email`` column is then set). ``companyExternalId`` is left out when its Company has none.
    ``info`` carries ``featureId``, ``pageId`` and ``trackTypeId`` (comma-separated ids), each
    only when the action counts such items.
    """
    ids = {"featureId": "feature_ids", "pageId": "page_ids", "trackTypeId": "track_type_ids"}
    info = pl.struct(
        *(
            (pl.col(c) if c in frame.columns else pl.lit(None, pl.String)).alias(key)
            for key, c in ids.items()
        ),
        pl.lit("pendo").alias("source"),
    )
    rest = [
        pl.col("action"),
        pl.col("day").cast(pl.String).alias("date"),
        pl.col("count"),
        pl.col("weight"),
        info.alias("info"),
    ]
    company = pl.col("company_external_id").alias("companyExternalId")
    email = pl.col("email") if "email" in frame.columns else pl.lit(None, pl.String)
    by_email = email.is_not_null()
    no_company = pl.col("company_external_id").is_null() | (pl.col("company_external_id") == "")
    shapes = {
        (False, False): [pl.col("external_id").alias("externalId"), *rest, company],
        (False, True): [pl.col("external_id").alias("externalId"), *rest],
        (True, False): [email.alias("email"), *rest, company],
        (True, True): [email.alias("email"), *rest],
    }
    encoded = {k: pl.struct(v).struct.json_encode() for k, v in shapes.items()}
    # A source without ids is left out of `info` (keys and ids are JSON-escaped, so the pattern
    # matches only a key with an empty or null value).
    empty = r'"(?:featureId|pageId|trackTypeId)":(?:""|null),'
    return frame.select(
        pl.when(~by_email & ~no_company)
        .then(encoded[(False, False)])
        .when(~by_email)
        .then(encoded[(False, True)])
        .when(~no_company)
        .then(encoded[(True, False)])
        .otherwise(encoded[(True, True)])
        .str.replace_all(empty, "")
        .alias("json")
    ).to_series()


def encode_metric_items(frame: pl.DataFrame) -> pl.Series:
    """One JSON object per dimension-data item."""
    return frame.select(
        pl.struct(
            dimensionId=pl.col("dimension_id"),
            value=pl.col("value"),
            externalId=pl.col("external_id"),
            model=pl.col("model"),
            date=pl.col("day").cast(pl.String),
        )
        .struct.json_encode()
        .alias("json")
    ).to_series()


def resolve_batch(
    conn: duckdb.DuckDBPyConnection, *, batch_id: int, outcome: Literal["delivered", "resend"]
) -> str:
    """Settle a batch in doubt after a user checked Planhat.

    Args:
        conn: An open read-write warehouse connection.
        batch_id: The batch, as listed in ``batches_in_doubt``.
        outcome: ``delivered``: Planhat holds it, count it in the ledger. ``resend``: it did not
            arrive; its keys are sent again by the next run.

    Returns:
        The new status.

    Raises:
        BatchStateError: The batch does not exist or is not in doubt.
    """
    status = queries.select_batch_status(conn, batch_id=batch_id)
    if status != "in_doubt":  # None: no such batch
        raise BatchStateError(batch_id=batch_id, status=status)
    new: queries.BatchStatus = "resolved_delivered" if outcome == "delivered" else "resolved_resend"
    queries.resolve_batch_status(
        conn, batch_id=batch_id, status=new, note=f"resolved by user as {outcome}"
    )
    return new


class Publisher:
    """Plans and sends deltas for a set of days; one instance per publish step.

    Args:
        conn: An open read-write warehouse connection, held for the whole publish so no other
            process can change the outbox under it.
        sender: The Planhat analytics client; not needed for a dry run.
        run_id: Recorded on each batch so it can be traced to its Dagster run.
        settings: Batch limits.
    """

    def __init__(
        self,
        *,
        conn: duckdb.DuckDBPyConnection,
        sender: Sender | None,
        run_id: str | None = None,
        settings: PublishSettings | None = None,
    ) -> None:
        self.conn = conn
        self.sender = sender
        self.run_id = run_id
        self.settings = settings or PublishSettings()

    def recover(self) -> RecoveryReport:
        """Settle what an interrupted run left in the outbox (see the module docstring)."""
        report = RecoveryReport()
        c = self.conn
        with transaction(c):
            report.discarded_prepared = queries.settle_interrupted_batches(
                c,
                status="prepared",
                to="discarded",
                note="never sent: the run stopped before sending",
            )
            report.resent_last = queries.settle_interrupted_batches(
                c,
                status="sending",
                kind="metrics",
                aggregation="last",
                to="discarded",
                note="outcome unknown after an interruption; resent (harmless for a last metric)",
            )
            report.new_in_doubt = queries.settle_interrupted_batches(
                c,
                status="sending",
                to="in_doubt",
                note="outcome unknown: the run stopped after sending, before Planhat's answer "
                "was recorded",
            )
        if report.new_in_doubt:
            log.warning(
                "%d batch(es) have an unknown outcome and are held back", report.new_in_doubt
            )
        return report

    def plan(self, days: Sequence[date]) -> Plan:
        """Compute the deltas for ``days`` against the ledger, holding back keys in doubt.

        Day by day: what Pendo says and what Planhat holds for a day are held in memory, so a
        scheduled window of mostly unchanged days never holds them for every day at once.
        """
        plans = [self._plan_days([day]) for day in sorted(days)] or [self._plan_days([])]
        return Plan(
            # Each day's items are sorted and the days in order: already in ACTIVITY_KEY order.
            activities=pl.concat([p.activities for p in plans]),
            metrics=pl.concat([p.metrics for p in plans]).sort(["aggregation", *METRIC_KEY]),
            drift=pl.concat([p.drift for p in plans]),
            held_activity_keys=sum(p.held_activity_keys for p in plans),
            held_metric_keys=sum(p.held_metric_keys for p in plans),
        )

    def _plan_days(self, days: Sequence[date]) -> Plan:
        c = self.conn
        current_a = queries.select_current_activities(c, days=days)
        sent_a = queries.select_ledger_activities(c, days=days)
        held_a = queries.select_held_activity_keys(c, days=days)
        to_send_a, drift = activity_deltas(current_a.lazy(), sent_a.lazy(), held_a.lazy())
        current_m = queries.select_current_metrics(c, days=days)
        sent_m = queries.select_ledger_metrics(c, days=days)
        held_m = queries.select_held_metric_keys(c, days=days)
        to_send_m = metric_deltas(current_m.lazy(), sent_m.lazy(), held_m.lazy())
        return Plan(
            activities=to_send_a.sort(ACTIVITY_KEY).collect(),
            metrics=to_send_m.collect(),
            drift=drift.collect(),
            held_activity_keys=held_a.height,
            held_metric_keys=held_m.height,
        )

    def publish(self, days: Sequence[date], *, dry_run: bool = False) -> PublishReport:
        """Send what Planhat lacks for ``days`` (or, for a dry run, store it as a plan).

        Raises:
            DeliveryError: Planhat refused a batch after retries; batches sent before it stay
                recorded, and the rest is sent by the next run.
        """
        report = PublishReport(dry_run=dry_run)
        if not dry_run:
            report.recovery = self.recover()
        plan = self.plan(days)
        report.activity_items_planned = plan.activities.height
        report.metric_items_planned = plan.metrics.height
        report.drift_keys = plan.drift.height
        report.held_activity_keys = plan.held_activity_keys
        report.held_metric_keys = plan.held_metric_keys
        if dry_run:
            now = pl.lit(datetime.now(UTC).replace(tzinfo=None), dtype=pl.Datetime("us"))
            planned = zip(_PLANNED, (plan.activities, plan.metrics), strict=True)
            frames = {t: [f.with_columns(now.alias("planned_at"))] for t, f in planned}
            replace_days(self.conn, days=days, frames=frames)
        else:
            if self.sender is None:
                raise DeliveryError("no Planhat client: cannot publish")
            # An earlier dry run's plan for these days is out of date once they are published.
            replace_days(self.conn, days=days, frames=dict.fromkeys(_PLANNED, ()))
            self._send_all("activities", plan.activities, report)
            for aggregation in ("last", "sum"):
                part = plan.metrics.filter(pl.col("aggregation") == aggregation)
                self._send_all("metrics", part, report)
        report.batches_in_doubt_total = queries.count_batches_in_doubt(self.conn)
        return report

    def send_repairs(self, items: pl.DataFrame) -> PublishReport:
        """Send metric repair items (`pendo_assets.readback.plan_metric_repairs`) through the
        outbox, after settling what an interrupted run left there.

        Raises:
            DeliveryError: As for `publish`.
        """
        report = PublishReport(metric_items_planned=items.height)
        report.recovery = self.recover()
        if self.sender is None:
            raise DeliveryError("no Planhat client: cannot send")
        for aggregation in ("last", "sum"):
            self._send_all("metrics", items.filter(pl.col("aggregation") == aggregation), report)
        report.batches_in_doubt_total = queries.count_batches_in_doubt(self.conn)
        return report

    def _send_all(self, kind: BatchKind, items: pl.DataFrame, report: PublishReport) -> None:
        if items.height == 0:
            return
        encoded = (
            encode_activity_items(items) if kind == "activities" else encode_metric_items(items)
        )
        # The settings, lowered to the sender's own limits.
        max_items, max_bytes = self.settings.max_items, self.settings.max_bytes
        sender_items = getattr(self.sender, "max_items", None)
        sender_bytes = getattr(self.sender, "max_body_bytes", None)
        if isinstance(sender_items, int) and sender_items > 0:
            max_items = min(max_items, sender_items)
        if isinstance(sender_bytes, int) and sender_bytes > 2:
            max_bytes = min(max_bytes, sender_bytes)
        lengths = encoded.str.len_bytes().cast(pl.Int64).to_numpy()
        for start, stop in pack_batches(lengths, max_items=max_items, max_bytes=max_bytes):
            self._send_batch(kind, items[start:stop], encoded[start:stop], report)

    def _send_batch(
        self,
        kind: BatchKind,
        items: pl.DataFrame,
        encoded: pl.Series,
        report: PublishReport,
        *,
        attempt: int = 1,
    ) -> None:
        assert self.sender is not None
        aggregation = items["aggregation"][0] if kind == "metrics" else None
        # Joined in Polars: no Python string per item.
        body: bytes = b"[" + encoded.str.join(",").cast(pl.Binary).item() + b"]"
        batch_id = self._prepare(kind, aggregation, items, len(body))
        self._mark(batch_id, "sending", sent=True)
        report.requests += 1
        report.bytes_sent += len(body)
        hooks = _OutboxHooks(self, batch_id)
        try:
            if kind == "activities":
                self.sender.post_activities(body, items=items.height, hooks=hooks)
                errors: Sequence[dict[str, object]] = ()
            else:
                errors = self.sender.post_dimension_data(
                    body, items=items.height, hooks=hooks
                ).errors
        except DeliveryUnknownError as exc:
            if aggregation == "last" and attempt < self.settings.last_resend_attempts:
                note = f"no answer ({exc}); resent: harmless for a last metric"
                self._mark(batch_id, "discarded", note=note)
                self._send_batch(kind, items, encoded, report, attempt=attempt + 1)
                return
            self._mark(batch_id, "in_doubt", note=f"no answer from Planhat: {exc}")
            report.batches_in_doubt_new += 1
            log.error(
                "batch %d (%s, %d items) has an unknown outcome and is held back",
                batch_id,
                kind,
                items.height,
            )
            return
        except ApiError as exc:
            if isinstance(exc, ApiStatusError) and exc.status_code == 413 and items.height > 1:
                self._mark(batch_id, "failed", note="413 body too large: split in two and resent")
                report.batches_split += 1
                half = items.height // 2
                self._send_batch(kind, items[:half], encoded[:half], report)
                self._send_batch(kind, items[half:], encoded[half:], report)
                return
            self._mark(batch_id, "failed", note=str(exc))
            raise DeliveryError(
                f"Planhat did not accept batch {batch_id} ({kind}, {items.height} items): {exc}",
                batch_id=batch_id,
                kind=kind,
                items=items.height,
                status_code=exc.status_code if isinstance(exc, ApiStatusError) else None,
            ) from exc
        self._settle_delivered(batch_id, kind, items, errors, report)

    def _prepare(
        self, kind: BatchKind, aggregation: str | None, items: pl.DataFrame, body_bytes: int
    ) -> int:
        return queries.insert_batch(
            self.conn,
            kind=kind,
            aggregation=aggregation,
            items=items,
            body_bytes=body_bytes,
            run_id=self.run_id,
        )

    def _mark(
        self,
        batch_id: int,
        status: queries.BatchStatus,
        *,
        note: str | None = None,
        sent: bool = False,
    ) -> None:
        queries.mark_batch(self.conn, batch_id=batch_id, status=status, note=note, sent=sent)

    def _settle_delivered(
        self,
        batch_id: int,
        kind: BatchKind,
        items: pl.DataFrame,
        errors: Sequence[dict[str, object]],
        report: PublishReport,
    ) -> None:
        rejected = _map_item_errors(items, errors)
        if rejected is None:
            self._mark(
                batch_id,
                "in_doubt",
                note=f"Planhat reported {len(errors)} errors that name no item of the batch",
            )
            report.batches_in_doubt_new += 1
            return
        c = self.conn
        with transaction(c):
            if rejected:
                schema = {"k": pl.String, "error": pl.String}
                frame = pl.DataFrame(list(rejected.items()), schema=schema, orient="row")
                queries.record_item_errors(c, batch_id=batch_id, errors=frame)
            note = f"Planhat rejected {len(rejected)} item(s); they are sent again next run"
            self._mark(batch_id, "delivered", note=note if rejected else None)
        report.batches_delivered += 1
        report.metric_items_rejected += len(rejected)
        if kind == "activities":
            report.activity_items_sent += items.height
            report.activity_units_sent += int(items["count"].sum())
        else:
            report.metric_items_sent += items.height - len(rejected)


def _map_item_errors(
    items: pl.DataFrame, errors: Sequence[dict[str, object]]
) -> dict[str, str] | None:
    """Map Planhat's ``{"item", "error"}`` entries to batch items; None if any names no item."""
    if not errors:
        return {}  # (activity items have no dimension_id to key them by)
    keys = set(
        items.select(
            pl.concat_str(
                ["dimension_id", "external_id", "model", pl.col("day").cast(pl.String)],
                separator="\x1f",
            )
        ).to_series()
    )
    out: dict[str, str] = {}
    for entry in errors:
        item = entry.get("item")
        if not isinstance(item, dict):
            return None
        key = "\x1f".join(
            str(item.get(k, "")) for k in ("dimensionId", "externalId", "model", "date")
        )
        if key not in keys:
            return None
        out[key] = str(entry.get("error", "rejected"))[:300]
    return out
