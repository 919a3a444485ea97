"""Typed records at the API boundary, and the Arrow / Polars schemas declared once.

Pendo side: `Feature`, a `FeatureEventPage` of decoded feature events (`FEATURE_EVENT_SCHEMA`)
with the `RejectedRow` list of rows that could not be used. Planhat side: the snapshot frames
(`ENDUSER_SCHEMA`, `COMPANY_SCHEMA`, `ASSET_SCHEMA`, `PROJECT_SCHEMA`) and
`DimensionDataResult`, and `MetricPoint` as ``GET /dimensiondata`` reads it back.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Literal, TypeAlias

import polars as pl
import pyarrow as pa

from .types import JSONDict, Model

__all__ = [
    "ASSET_SCHEMA",
    "COMPANY_SCHEMA",
    "ENDUSER_SCHEMA",
    "EVENT_SOURCES",
    "FEATURE_EVENTS",
    "FEATURE_EVENT_SCHEMA",
    "MATCHED_ACTIVITY_SCHEMA",
    "MATCHED_METRIC_SCHEMA",
    "PIPELINE_VALUE_SCHEMA",
    "PROJECT_SCHEMA",
    "SNAPSHOT_SCHEMAS",
    "UNMATCHED_VISITOR_SCHEMA",
    "DimensionDataResult",
    "EventSource",
    "EventSourceName",
    "Feature",
    "FeatureEventPage",
    "MetricPoint",
    "PlanhatSnapshot",
    "RejectedRow",
    "UpsertResult",
]

# Pendo

EventSourceName: TypeAlias = Literal["feature_events", "page_events", "track_events"]


@functools.cache
def _event_schema(id_column: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("visitor_id", pa.string(), nullable=False),
            pa.field("account_id", pa.string()),
            pa.field(id_column, pa.string(), nullable=False),
            pa.field("app_id", pa.int64()),
            pa.field("day_ms", pa.int64(), nullable=False),
            pa.field("num_events", pa.int64(), nullable=False),
            pa.field("num_minutes", pa.int64(), nullable=False),
            pa.field("remote_ip", pa.string()),
            pa.field("user_agent", pa.string()),
            pa.field("server", pa.string()),
        ]
    )


#: One row per Pendo featureEvents row: visitor x account x feature x app x day x IP x UA x server.
FEATURE_EVENT_SCHEMA: Final = _event_schema("feature_id")


@dataclass(frozen=True, slots=True)
class EventSource:
    """A Pendo event source landed with Pendo's row grain: featureEvents, pageEvents or
    trackEvents rows, keyed by the feature, page or track type they count.

    Attributes:
        name: ``landed_days.source`` and the tables' suffix (``raw_<name>``,
            ``quarantine_<name>``).
        row_source: Pendo's aggregation source, e.g. ``pageEvents``.
        id_field: The row field naming the item, e.g. ``pageId`` (also the activity's ``info``).
        noun: What the item is called in messages: ``feature``, ``page``, ``track type``.
        section: The config section listing the items.
    """

    name: EventSourceName
    row_source: str
    id_field: str
    noun: str
    section: Literal["features", "pages", "track_events"]

    @property
    def id_column(self) -> str:
        """The item's column: ``featureId`` -> ``feature_id``, ``trackTypeId`` ->
        ``track_type_id``."""
        return re.sub(r"(?=[A-Z])", "_", self.id_field).lower()

    @property
    def schema(self) -> pa.Schema:
        """The raw table's columns (``day`` and ``extracted_at`` aside)."""
        return _event_schema(self.id_column)

    @property
    def raw_table(self) -> str:
        """The table of landed rows."""
        return f"raw_{self.name}"

    @property
    def quarantine_table(self) -> str:
        """The table of rows that could not be landed, with why."""
        return f"quarantine_{self.name}"


#: The event sources, by name.
EVENT_SOURCES: Final[Mapping[EventSourceName, EventSource]] = {
    s.name: s
    for s in (
        EventSource("feature_events", "featureEvents", "featureId", "feature", "features"),
        EventSource("page_events", "pageEvents", "pageId", "page", "pages"),
        EventSource("track_events", "trackEvents", "trackTypeId", "track type", "track_events"),
    )
}
FEATURE_EVENTS: Final = EVENT_SOURCES["feature_events"]


@dataclass(frozen=True)
class UpsertResult:
    """Planhat's answer to a bulk upsert (``PUT /endusers``), by the items' externalId.

    Attributes:
        created: externalId -> ``_id`` of each record Planhat created.
        existed: externalId -> ``_id`` of each record it already had (updated or unchanged).
        errors: externalId (None when Planhat did not echo it) -> why it refused the item.
    """

    created: dict[str, str] = field(default_factory=dict)
    existed: dict[str, str] = field(default_factory=dict)
    errors: dict[str | None, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Feature:
    """A Pendo Feature (a tagged UI element) from ``GET /api/v1/feature``; also a Page from
    ``GET /api/v1/page`` or a track type from the ``trackTypes`` source (the same fields)."""

    id: str
    name: str | None
    app_id: int | None
    kind: str | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Feature:
        """Parse one item; ``id`` is required (KeyError / TypeError when absent or not a string)."""
        feature_id = data["id"]
        if not isinstance(feature_id, str) or not feature_id:
            raise TypeError(f"feature id must be a non-empty string, got {feature_id!r}")
        name = data.get("name")
        app_id = data.get("appId")
        kind = data.get("kind")
        return cls(
            id=feature_id,
            name=name if isinstance(name, str) else None,
            app_id=app_id if isinstance(app_id, int) and not isinstance(app_id, bool) else None,
            kind=kind if isinstance(kind, str) else None,
        )


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row of a Pendo page that was not used, with why and its JSON text for the quarantine.

    Attributes:
        index: The row's position in the response body.
        reason: Every problem of the row, for people, with the values at fault:
            ``visitorId is null; numEvents is a string: '12'``.
        raw: The row's JSON text as sent.
        kinds: One short stable label per problem, in the order of ``reason``, never holding a
            value from Pendo: ``("visitorId is null", "numEvents is a string")``.
    """

    index: int
    reason: str
    raw: str
    kinds: tuple[str, ...]

    @property
    def kind(self) -> str:
        """The row's kinds as one label (``"; "``-joined), e.g. for a quarantine column."""
        return "; ".join(self.kinds)


@dataclass(frozen=True, slots=True)
class FeatureEventPage:
    """One decoded page of feature events: every row is in ``table`` or in ``rejects``.

    Attributes:
        table: Usable rows, schema `FEATURE_EVENT_SCHEMA`.
        rejects: Unusable rows with a reason.
        page_index: 0 for the first page of a day.
        row_count: Rows in the response body (``table.num_rows + len(rejects)``).
        body_bytes: Size of the response body.
    """

    table: pa.Table = field(repr=False)
    rejects: list[RejectedRow]
    page_index: int
    row_count: int
    body_bytes: int


# Planhat

# Snapshot frames keep Planhat's own field names, so a column is the ``select`` field it holds.

#: One row per Planhat End User (``_id``); ``externalId`` null when Planhat has none.
ENDUSER_SCHEMA: Final = pl.Schema(
    {
        "_id": pl.String,
        "externalId": pl.String,
        "email": pl.String,
        "companyId": pl.String,
        "name": pl.String,
        "archived": pl.Boolean,
    }
)
#: One row per Planhat Company.
COMPANY_SCHEMA: Final = pl.Schema({"_id": pl.String, "externalId": pl.String, "name": pl.String})
#: One row per Planhat Asset.
ASSET_SCHEMA: Final = pl.Schema(
    {"_id": pl.String, "externalId": pl.String, "companyId": pl.String, "name": pl.String}
)
#: One row per Planhat Project.
PROJECT_SCHEMA: Final = pl.Schema(
    {"_id": pl.String, "externalId": pl.String, "companyId": pl.String, "name": pl.String}
)
#: Per model, the snapshot frame's schema; its column names are the ``select`` list.
SNAPSHOT_SCHEMAS: Final[Mapping[Model, pl.Schema]] = {
    "EndUser": ENDUSER_SCHEMA,
    "Company": COMPANY_SCHEMA,
    "Asset": ASSET_SCHEMA,
    "Project": PROJECT_SCHEMA,
}


@dataclass(frozen=True)
class PlanhatSnapshot:
    """End Users, Companies, Assets and Projects as read at one sync, de-duplicated by ``_id``.

    ``externalId`` is null when Planhat sent none (missing or null) and ``""`` when it sent ``""``.
    """

    endusers: pl.DataFrame
    companies: pl.DataFrame
    assets: pl.DataFrame
    projects: pl.DataFrame


@dataclass(frozen=True)
class DimensionDataResult:
    """Planhat's answer to a metrics post.

    Attributes:
        processed: Items Planhat says it processed; None when the answer did not say.
        errors: One ``{"item": {...}, "error": "..."}`` per item Planhat refused.
    """

    processed: int | None
    errors: list[JSONDict] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One data point Planhat holds for a Custom Metric (an item of ``GET /dimensiondata``).

    Planhat keeps one point per item it received; a day's value is the sum of its points
    (``sum`` metrics) or its latest point (``last``).

    Attributes:
        dimension_id: ``dimensionId``.
        day: The day of ``time``.
        value: ``value``.
        model: ``model`` (``Company`` when absent, as on the way in).
        parent_id: ``parentId``: the Planhat ``_id`` of the object holding the point.
    """

    dimension_id: str
    day: date
    value: float
    model: str
    parent_id: str


# Warehouse frames (the columns of the tables of the same name in sql/)

#: ``pipeline_values``: one row per (day, pipeline, id, dimensionId) read from pipeline results.
PIPELINE_VALUE_SCHEMA: Final = pl.Schema(
    {
        "day": pl.Date,
        "pipeline": pl.String,
        "model": pl.String,
        "id": pl.String,
        "dimension_id": pl.String,
        "value": pl.Float64,
        "aggregation": pl.String,
    }
)
#: ``matched_activities``: one row per End User x Planhat action x day.
MATCHED_ACTIVITY_SCHEMA: Final = pl.Schema(
    {
        "day": pl.Date,
        "external_id": pl.String,
        "action": pl.String,
        "count": pl.Int64,
        "weight": pl.Float64,
        "company_external_id": pl.String,
        "feature_ids": pl.String,
        "enduser_id": pl.String,
        "email": pl.String,
        "matched_by": pl.String,
        "page_ids": pl.String,
        "track_type_ids": pl.String,
    }
)
#: ``unmatched_visitor_rows``: one row per (day, visitor, account) not matched, with why.
UNMATCHED_VISITOR_SCHEMA: Final = pl.Schema(
    {
        "day": pl.Date,
        "visitor_id": pl.String,
        "account_id": pl.String,
        "reason": pl.String,
        "num_events": pl.Int64,
    }
)
#: ``matched_metrics``: one row per Planhat object x dimensionId x day (a value, its id matched).
MATCHED_METRIC_SCHEMA: Final = pl.Schema(
    {
        "external_id" if name == "id" else name: dtype
        for name, dtype in PIPELINE_VALUE_SCHEMA.items()
    }
)
