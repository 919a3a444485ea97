"""Pure Polars transforms: matching Pendo usage to Planhat objects and computing publish deltas.

No I/O, no clock, no Dagster: every function takes frames and returns frames, so each rule can
be tested with small literal frames.

Matching is exact and case-sensitive on ``externalId`` (DESIGN.md section 4). An id shared by
two Planhat objects of the same model is ambiguous and never guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple

import polars as pl

from .identity import resolve_visitors
from .models import (
    MATCHED_ACTIVITY_SCHEMA,
    MATCHED_METRIC_SCHEMA,
    PIPELINE_VALUE_SCHEMA,
    UNMATCHED_VISITOR_SCHEMA,
)

__all__ = [
    "ACTIVITY_KEY",
    "METRIC_KEY",
    "MetricFieldSpec",
    "ValueReject",
    "activity_deltas",
    "daily_usage",
    "extract_metric_values",
    "feature_metric_values",
    "match_activities",
    "match_metrics",
    "metric_deltas",
    "object_index",
]


# An activity's ledger key: the End User (its Planhat _id), never the address it is sent to.
ACTIVITY_KEY = ["day", "enduser_id", "action"]
METRIC_KEY = ["day", "model", "external_id", "dimension_id"]

# Relative tolerance under which a `sum` metric delta counts as zero (float noise of sums).
_SUM_EPSILON = 1e-9


def daily_usage(events: pl.LazyFrame) -> pl.LazyFrame:
    """Sum Pendo's row splits (IP, user agent, server) to one row per visitor, account, feature, day.

    Args:
        events: Raw rows with ``day, visitor_id, account_id, feature_id, num_events``.

    Returns:
        The same columns, with one row per key.
    """
    return events.group_by(["day", "visitor_id", "account_id", "feature_id"]).agg(
        pl.col("num_events").sum().cast(pl.Int64)
    )


def object_index(objects: pl.LazyFrame) -> pl.LazyFrame:
    """Index Planhat objects by (model, externalId) with how many objects carry each id.

    Objects without an externalId (missing, null or empty) can never match and are left out.

    Args:
        objects: ``model, object_id, external_id, company_external_id``.

    Returns:
        ``model, external_id, n_objects, company_external_id`` (the company of the object when
        exactly one object carries the id).
    """
    return (
        objects.filter(pl.col("external_id").is_not_null() & (pl.col("external_id") != ""))
        .group_by(["model", "external_id"])
        .agg(pl.len().alias("n_objects"), pl.col("company_external_id").first())
    )


def _unmatched_reason(missing: str) -> pl.Expr:
    """``missing`` when no object carries the id, ``ambiguous`` when several do, else null."""
    return (
        pl.when(pl.col("n_objects").is_null())
        .then(pl.lit(missing))
        .when(pl.col("n_objects") > 1)
        .then(pl.lit("ambiguous"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def match_activities(
    usage: pl.LazyFrame,
    objects: pl.LazyFrame,
    feature_actions: pl.LazyFrame,
    *,
    resolved: pl.LazyFrame | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Match daily usage to End Users and fold features into Planhat actions.

    Args:
        usage: Output of `daily_usage`.
        objects: The Planhat snapshot (all models); only ``EndUser`` rows are used.
        feature_actions: ``feature_id, action, weight`` for the configured features.
        resolved: The End User of each (visitor, account) of ``usage``, from
            `identity.resolve_visitors`; by default resolved by externalId alone.

    Returns:
        ``(matched, unmatched)``. ``matched`` has one row per (day, End User, action) with
        ``enduser_id, external_id`` (the address: externalId, else email), ``email`` (set when
        addressed by email), ``count, weight, company_external_id, feature_ids, matched_by``.
        ``unmatched`` has one row per (day, visitor_id, account_id) with ``reason``
        (``anonymous``, ``no_enduser``, ``ambiguous`` or ``ambiguous_email``) and ``num_events``.
    """
    if resolved is None:
        resolved = resolve_visitors(usage, objects)
    labelled = usage.join(feature_actions.select("feature_id"), on="feature_id", how="semi").join(
        resolved, on=["visitor_id", "account_id"], how="left", nulls_equal=True
    )
    numbered = _feature_bits(feature_actions)
    bits = pl.LazyFrame(
        [row[:3] for row in numbered],
        schema={"feature_id": pl.String, "_word": pl.Int64, "_bit": pl.Int64},
        orient="row",
    )
    words = [f"_w{w}" for w in range(max(1, -(-len(numbered) // _BITS_PER_WORD)))]
    grouped = (
        labelled.filter(pl.col("reason").is_null())
        .join(feature_actions, on="feature_id", how="inner")
        .join(bits, on="feature_id", how="left")
        .group_by(["day", "enduser_id", "action"])
        .agg(
            pl.col("num_events").sum().cast(pl.Int64).alias("count"),
            pl.col("weight").first(),
            pl.col("company_external_id").first(),
            pl.col("external_id").first(),
            pl.col("email").first(),
            pl.col("matched_by").min(),  # one End User found by two visitors, two ways
            *(
                pl.col("_bit").filter(pl.col("_word") == w).bitwise_or().fill_null(0).alias(c)
                for w, c in enumerate(words)
            ),
        )
    )
    # Each distinct set of features (pages, track types) with their ids, sorted and
    # comma-separated per source: feature_ids ("" for none), page_ids, track_type_ids (null).
    names = (
        grouped.select(words)
        .unique()
        .with_columns(
            pl.concat_str(
                [
                    pl.when((pl.col(f"_w{word}") & bit) != 0).then(pl.lit(feature_id))
                    for feature_id, word, bit, of in numbered
                    if of == source
                ]
                or [pl.lit(None, pl.String)],
                separator=",",
                ignore_nulls=True,
            ).alias(column)
            for column, source in _ID_COLUMNS.items()
        )
        .with_columns(
            pl.when(pl.col(c) != "").then(c).alias(c) for c in ("page_ids", "track_type_ids")
        )
    )
    matched = (
        grouped.join(names, on=words)
        .with_columns(pl.col("external_id").fill_null(pl.col("email")))
        .select(*MATCHED_ACTIVITY_SCHEMA)
    )
    unmatched = (
        labelled.filter(pl.col("reason").is_not_null())
        .group_by(["day", "visitor_id", "account_id", "reason"])
        .agg(pl.col("num_events").sum().cast(pl.Int64))
        .select(*UNMATCHED_VISITOR_SCHEMA)
    )
    return matched, unmatched


# Features per bit word of a feature set (Int64 bit masks, sign bit unused).
_BITS_PER_WORD = 62
# The matched activity's column listing the ids of each event source (its `info`).
_ID_COLUMNS = {
    "feature_ids": "feature_events",
    "page_ids": "page_events",
    "track_type_ids": "track_events",
}


def _feature_bits(feature_actions: pl.LazyFrame) -> list[tuple[str, int, int, str]]:
    """``(feature_id, word, bit, event_source)`` of each configured feature (page, track
    type), numbered in sorted order; ``event_source`` is ``feature_events`` when the frame has
    no such column.

    The set of features behind an activity is then a bitwise OR per group (a few integer words)
    instead of a list of strings per group, which is many times slower on millions of groups.
    """
    if "event_source" not in feature_actions.collect_schema():
        feature_actions = feature_actions.with_columns(event_source=pl.lit("feature_events"))
    ids = feature_actions.select("feature_id", "event_source").unique().collect().sort("feature_id")
    return [
        (f, i // _BITS_PER_WORD, 1 << (i % _BITS_PER_WORD), of)
        for i, (f, of) in enumerate(ids.iter_rows())
    ]


@dataclass(frozen=True)
class MetricFieldSpec:
    """How one pipeline's result rows become metric values."""

    pipeline: str
    model: str
    id_field: str
    metrics: Mapping[str, str]  # result field -> dimensionId
    aggregation: str


class ValueReject(NamedTuple):
    """A pipeline result value that cannot be sent: ``kind`` (no value from Pendo, for counts),
    the value at fault if any, and the row as Pendo sent it."""

    kind: str
    value: str | None
    row: Mapping[str, Any]

    @property
    def reason(self) -> str:
        """``kind: value``, for people (the quarantine's ``reason``)."""
        return self.kind if self.value is None else f"{self.kind}: {self.value}"


def _lookup(row: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    if "." not in path and isinstance(row, Mapping):  # the common case: a top-level field
        return (True, row[path]) if path in row else (False, None)
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def extract_metric_values(
    rows: Sequence[Mapping[str, Any]], *, day: date, spec: MetricFieldSpec
) -> tuple[pl.DataFrame, list[ValueReject]]:
    """Read the id and metric fields of a pipeline's result rows for one day.

    A value is kept only when JSON can carry it to Planhat as a number: booleans, strings,
    nulls, NaN and infinities are rejected with a reason, never sent and never dropped silently.

    Args:
        rows: Result rows as Pendo returned them.
        day: The partition day.
        spec: The pipeline's id field, metric fields and target model.

    Returns:
        ``(values, rejects)``: values with ``day, pipeline, model, id, dimension_id, value,
        aggregation``; a `ValueReject` per value that cannot be sent.
    """
    out: dict[str, list[Any]] = {k: [] for k in ("id", "dimension_id", "value")}
    rejects: list[ValueReject] = []
    ids = [_lookup(row, spec.id_field) for row in rows]
    seen = Counter(
        str(v) for found, v in ids if found and isinstance(v, str | int) and not isinstance(v, bool)
    )
    for row, (found, raw_id) in zip(rows, ids, strict=True):
        if not found or raw_id is None or raw_id == "":
            rejects.append(ValueReject(f"{spec.id_field} is missing or empty", None, row))
            continue
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            rejects.append(ValueReject(f"{spec.id_field} is not a string", repr(raw_id)[:160], row))
            continue
        ident = str(raw_id)
        if seen[ident] > 1:
            # Two result rows for one object and day: which one Planhat should hold is unknowable.
            kind = f"{spec.id_field} appears more than once"
            rejects.append(ValueReject(kind, f"{ident[:80]!r} ({seen[ident]} rows)", row))
            continue
        for field, dimension in spec.metrics.items():
            found, value = _lookup(row, field)
            bad = _bad_number(found, value)
            if bad:
                rejects.append(ValueReject(f"{field} {bad[0]}", bad[1], row))
                continue
            out["id"].append(ident)
            out["dimension_id"].append(dimension)
            out["value"].append(float(value))
    same = {
        "day": day,
        "pipeline": spec.pipeline,
        "model": spec.model,
        "aggregation": spec.aggregation,
    }
    columns = {k: out[k] if k in out else [same[k]] * len(out["id"]) for k in PIPELINE_VALUE_SCHEMA}
    return pl.DataFrame(columns, schema=PIPELINE_VALUE_SCHEMA), rejects


def _bad_number(found: bool, value: Any) -> tuple[str, str | None] | None:
    """(what is wrong, the value at fault) when JSON cannot carry ``value`` as a number."""
    if not found or value is None:
        return ("is missing" if not found else "is null"), None
    if isinstance(value, bool):
        return "is a boolean", None
    if isinstance(value, str):
        return "is a string", repr(value[:40])
    if not isinstance(value, int | float):
        return "is not a number", None
    if isinstance(value, float) and not math.isfinite(value):
        return "is not finite", str(value)
    if isinstance(value, int) and abs(value) > 2**53:
        return "is too large to send exactly", str(value)
    return None


def match_metrics(values: pl.LazyFrame, objects: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Match metric values to Planhat objects of the pipeline's model by externalId.

    Args:
        values: ``day, pipeline, model, id, dimension_id, value, aggregation``.
        objects: The Planhat snapshot (all models).

    Returns:
        ``(matched, unmatched)``: matched values keyed by ``day, pipeline, model, external_id,
        dimension_id`` with ``value, aggregation``; unmatched rows ``day, pipeline, model, id,
        reason`` (``no_object`` or ``ambiguous``), one per (day, pipeline, id).
    """
    index = object_index(objects).select("model", pl.col("external_id").alias("id"), "n_objects")
    labelled = values.join(index, on=["model", "id"], how="left").with_columns(
        _unmatched_reason("no_object").alias("reason")
    )
    matched = (
        labelled.filter(pl.col("reason").is_null())
        .rename({"id": "external_id"})
        .select(*MATCHED_METRIC_SCHEMA)
    )
    unmatched = (
        labelled.filter(pl.col("reason").is_not_null())
        .select("day", "pipeline", "model", "id", "reason")
        .unique()
    )
    return matched, unmatched


def activity_deltas(
    current: pl.LazyFrame, sent: pl.LazyFrame, held: pl.LazyFrame
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """What to send so Planhat's activity counts reach Pendo's, and where they cannot.

    Args:
        current: Matched activities (`MATCHED_ACTIVITY_SCHEMA`).
        sent: The ledger: ``day, enduser_id, action, sent``.
        held: Keys in batches whose outcome is unknown: never touched until resolved.

    Returns:
        ``(to_send, drift)``: ``to_send`` has the columns of ``current`` with ``count`` the
        positive difference; ``drift`` has ``day, enduser_id, action, external_id, sent, source`` for keys
        whose Pendo count fell below what was already sent (it cannot be retracted).
    """
    joined = (
        current.join(sent.select(*ACTIVITY_KEY, "sent"), on=ACTIVITY_KEY, how="left")
        .join(held.select(ACTIVITY_KEY), on=ACTIVITY_KEY, how="anti")
        .with_columns(pl.col("sent").fill_null(0))
    )
    to_send = (
        joined.filter(pl.col("count") > pl.col("sent"))
        .with_columns((pl.col("count") - pl.col("sent")).alias("count"))
        .drop("sent")
    )
    drift = joined.filter(pl.col("count") < pl.col("sent")).select(
        *ACTIVITY_KEY, "external_id", "sent", pl.col("count").alias("source")
    )
    return to_send, drift


def metric_deltas(current: pl.LazyFrame, sent: pl.LazyFrame, held: pl.LazyFrame) -> pl.LazyFrame:
    """What to send so Planhat's metric values reach the current ones.

    ``last`` metrics send the full value when it differs from the last value sent; ``sum``
    metrics send ``value - sum(sent)`` when that is not zero. A key Planhat never received is
    sent in full (a value of 0 included).

    Args:
        current: ``day, model, external_id, dimension_id, value, aggregation``.
        sent: The ledger: ``day, model, external_id, dimension_id, last_value, sum_value``.
        held: Keys in batches whose outcome is unknown.

    Returns:
        The items to send: the columns of ``current`` with ``value`` the amount to send.
    """
    joined = current.join(sent, on=METRIC_KEY, how="left").join(held, on=METRIC_KEY, how="anti")
    is_sum = pl.col("aggregation") == "sum"
    never = pl.col("last_value").is_null()
    sum_delta = pl.col("value") - pl.col("sum_value").fill_null(0.0)
    tolerance = pl.max_horizontal(pl.col("value").abs(), pl.lit(1.0)) * _SUM_EPSILON
    send_value = pl.when(is_sum & ~never).then(sum_delta).otherwise(pl.col("value"))
    keep = never | pl.when(is_sum).then(sum_delta.abs() > tolerance).otherwise(
        pl.col("value") != pl.col("last_value")
    )
    return (
        joined.filter(keep)
        .with_columns(send_value.alias("value"))
        .select(*METRIC_KEY, "value", "aggregation")
    )


def feature_metric_values(usage: pl.LazyFrame, metrics: pl.LazyFrame) -> pl.LazyFrame:
    """The daily counts of ``as: metric`` features, as pipeline metric values (``sum``).

    Args:
        usage: Output of `daily_usage` (rows of other features are left out).
        metrics: ``feature_id, dimension_id, model`` (``EndUser``: per visitorId, ``Company``:
            per accountId) of the metric features.

    Returns:
        The columns of ``pipeline_values``, one row per (day, feature, id): ``pipeline`` is
        ``feature:<id>``, ``value`` the summed numEvents. A null accountId is the id ``""``,
        which matches no object.
    """
    ident = pl.when(pl.col("model") == "EndUser").then("visitor_id").otherwise("account_id")
    return (
        usage.join(metrics, on="feature_id", how="inner")
        .with_columns(ident.fill_null("").alias("id"))
        .group_by(["day", "feature_id", "model", "id", "dimension_id"])
        .agg(pl.col("num_events").sum().cast(pl.Float64).alias("value"))
        .with_columns(
            (pl.lit("feature:") + pl.col("feature_id")).alias("pipeline"),
            pl.lit("sum").alias("aggregation"),
        )
        .select(*PIPELINE_VALUE_SCHEMA)
    )
