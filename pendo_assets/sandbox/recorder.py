"""What the sandbox received: every request, and every activity, metric and upsert item.

Thread-safe. Tests compare these records against the generator's ground truth, e.g.
``sandbox.received.activity_totals() == dataset.truth_activities(...)`` restricted to the keys
Planhat kept.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pendo_assets.types import JSONDict

__all__ = [
    "ActivityRecord",
    "MetricRecord",
    "Recorder",
    "RequestRecord",
    "UpsertRecord",
]


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as the sandbox saw it.

    ``status`` is None when no response was sent (a ``reset`` or ``reset_after_apply`` fault);
    ``applied`` says whether the request took effect; ``items`` counts the items of a write body
    (or the rows/records of a read answer); ``elapsed`` is the server time in seconds from the
    request line to the answer being ready (reading the body included, writing it excluded).
    """

    seq: int
    service: str
    method: str
    path: str
    query: str
    status: int | None
    items: int
    body_bytes: int
    fault: str | None
    applied: bool
    at: float
    elapsed: float = 0.0


@dataclass(frozen=True)
class ActivityRecord:
    """One received User Activity item; ``dropped`` when Planhat would silently discard it.

    ``enduser_id`` is the ``_id`` of the End User it landed on; None when dropped, or when its
    email is on several End Users and ``companyExternalId`` picks none of them (Planhat would
    then pick one at random).
    """

    request_seq: int
    tenant_ok: bool
    external_id: Any
    email: Any
    action: Any
    date: Any
    count: Any
    weight: Any
    company_external_id: Any
    info: Any
    dropped: bool
    raw: Any
    enduser_id: Any = None


@dataclass(frozen=True)
class MetricRecord:
    """One received dimension-data item; ``error`` set when it was rejected in ``errors``."""

    request_seq: int
    tenant_ok: bool
    dimension_id: Any
    model: Any
    external_id: Any
    date: Any
    value: Any
    dropped: bool
    error: str | None
    raw: Any


@dataclass(frozen=True)
class UpsertRecord:
    """One bulk-upsert item (``PUT /endusers`` etc.) and what it did: ``outcome`` is
    ``created``, ``updated``, ``unchanged`` or ``error`` (None if not applied)."""

    request_seq: int
    model: str
    item: Any
    outcome: str | None = None


class Recorder:
    """Thread-safe log of what the sandbox received, with query helpers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._requests: list[RequestRecord] = []
        self._activities: list[ActivityRecord] = []
        self._metrics: list[MetricRecord] = []
        self._upserts: list[UpsertRecord] = []

    def next_seq(self) -> int:
        """A fresh request sequence number."""
        return next(self._seq)

    def add_request(
        self,
        *,
        seq: int,
        service: str,
        method: str,
        path: str,
        query: str,
        status: int | None,
        items: int,
        body_bytes: int,
        fault: str | None,
        applied: bool,
        elapsed: float = 0.0,
    ) -> RequestRecord:
        """Record one request."""
        record = RequestRecord(
            seq,
            service,
            method,
            path,
            query,
            status,
            items,
            body_bytes,
            fault,
            applied,
            time.time(),
            elapsed,
        )
        with self._lock:
            self._requests.append(record)
        return record

    def add_activities(self, records: list[ActivityRecord]) -> None:
        """Record received activity items."""
        with self._lock:
            self._activities.extend(records)

    def add_metrics(self, records: list[MetricRecord]) -> None:
        """Record received metric items."""
        with self._lock:
            self._metrics.extend(records)

    def add_upserts(self, records: list[UpsertRecord]) -> None:
        """Record received upsert items."""
        with self._lock:
            self._upserts.extend(records)

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._requests.clear()
            self._activities.clear()
            self._metrics.clear()
            self._upserts.clear()

    def requests(
        self,
        *,
        service: str | None = None,
        path_prefix: str | None = None,
        method: str | None = None,
        status: int | None = None,
    ) -> list[RequestRecord]:
        """Recorded requests, oldest first, optionally filtered.

        Args:
            service: ``pendo``, ``planhat_api`` or ``planhat_analytics``.
            path_prefix: keep paths starting with this.
            method: keep this HTTP method.
            status: keep this response status.

        Returns:
            The matching records.
        """
        with self._lock:
            records = list(self._requests)
        return [
            r
            for r in records
            if (service is None or r.service == service)
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (method is None or r.method == method.upper())
            and (status is None or r.status == status)
        ]

    def activities(self, *, include_dropped: bool = True) -> list[ActivityRecord]:
        """Received activity items in arrival order."""
        with self._lock:
            records = list(self._activities)
        return [r for r in records if include_dropped or not r.dropped]

    def activity_totals(self, *, include_dropped: bool = True) -> dict[tuple[Any, Any, Any], int]:
        """Sum of ``count`` per ``(externalId, action, date)`` over received activity items.

        Args:
            include_dropped: also count items Planhat dropped (no End User, unknown tenant).

        Returns:
            The totals; an item without ``count`` counts 1, a non-numeric count 0.
        """
        totals: dict[tuple[Any, Any, Any], int] = defaultdict(int)
        for r in self.activities(include_dropped=include_dropped):
            count = (
                r.count if isinstance(r.count, int | float) and not isinstance(r.count, bool) else 0
            )
            totals[(r.external_id, r.action, r.date)] += int(count)
        return dict(totals)

    def activity_totals_by_key(
        self, *, include_dropped: bool = False
    ) -> dict[tuple[Any, Any, Any], int]:
        """Sum of ``count`` per ``(End User key, action, date)``, the key being the item's
        ``externalId``, else its ``email`` (compare with ``Dataset.truth_activities_by_key``).

        Args:
            include_dropped: also count items Planhat dropped.

        Returns:
            The totals (counted as in :meth:`activity_totals`).
        """
        totals: dict[tuple[Any, Any, Any], int] = defaultdict(int)
        for r in self.activities(include_dropped=include_dropped):
            count = (
                r.count if isinstance(r.count, int | float) and not isinstance(r.count, bool) else 0
            )
            key = r.external_id if r.external_id else r.email
            totals[(key, r.action, r.date)] += int(count)
        return dict(totals)

    def created(self, model: str = "EndUser") -> list[Any]:
        """Items of ``model`` whose bulk upsert created a record, in arrival order."""
        return [u.item for u in self.upserts() if u.model == model and u.outcome == "created"]

    def metrics(
        self, *, include_dropped: bool = True, include_errors: bool = False
    ) -> list[MetricRecord]:
        """Received metric items in arrival order."""
        with self._lock:
            records = list(self._metrics)
        return [
            r
            for r in records
            if (include_dropped or not r.dropped) and (include_errors or r.error is None)
        ]

    def metric_points(
        self, *, include_dropped: bool = True
    ) -> dict[tuple[Any, Any, Any, Any], list[float]]:
        """Accepted metric values per ``(dimensionId, model, externalId, date)``, in arrival order.

        Items reported in ``errors`` are left out; ``model`` defaults to ``Company`` as in Planhat.
        """
        points: dict[tuple[Any, Any, Any, Any], list[float]] = defaultdict(list)
        for r in self.metrics(include_dropped=include_dropped):
            points[(r.dimension_id, r.model, r.external_id, r.date)].append(float(r.value))
        return dict(points)

    def upserts(self) -> list[UpsertRecord]:
        """Received bulk-upsert items in arrival order."""
        with self._lock:
            return list(self._upserts)

    def as_dict(self) -> JSONDict:
        """Counts, for printing."""
        with self._lock:
            return {
                "requests": len(self._requests),
                "activities": len(self._activities),
                "metrics": len(self._metrics),
                "upserts": len(self._upserts),
            }
