"""Decoding Pendo featureEvents, pageEvents and trackEvents pages into Arrow tables, every
unusable row kept with why.

A page is decoded with msgspec into a strict row struct (the fast path); when that fails, the
page is decoded permissively and classified row by row, so every row is either in the page's
table or in its ``rejects`` with a reason (for people) and its kinds (stable labels). The three
sources share one row shape, keyed by ``featureId``, ``pageId`` or ``trackTypeId``: each has a
`RowFormat` (its structs and decoders), built once.

Reference: /work/shared/reference/pendo_api.md (sections 2, 3, 8).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from operator import attrgetter
from typing import Annotated, Any, Final, cast

import msgspec
import polars as pl
import pyarrow as pa

from ..errors import PayloadShapeError
from ..models import FEATURE_EVENTS, EventSource, FeatureEventPage, RejectedRow
from ..types import JSONDict

__all__ = [
    "AGGREGATION_PATH",
    "MAX_VISITOR_ID_LENGTH",
    "RowFormat",
    "decode_events",
    "decode_feature_events",
    "row_format",
]

AGGREGATION_PATH: Final = "/api/v1/aggregation"
MAX_VISITOR_ID_LENGTH: Final = 1024
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_Int64 = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]
_UNSET: Final = msgspec.UNSET


class RowFormat:
    """How the rows of one event source are decoded: its strict row struct (the fast path),
    its permissive one (every field any JSON value or absent, classified afterwards), their
    decoders and the fields in the Arrow schema's column order."""

    def __init__(self, source: EventSource) -> None:
        self.source = source
        #: Source fields in the order of ``source.schema``'s columns.
        self.fields: tuple[str, ...] = (
            "visitorId",
            "accountId",
            source.id_field,
            "appId",
            "day",
            "numEvents",
            "numMinutes",
            "remoteIp",
            "userAgent",
            "server",
        )
        # gc=False: millions of rows are allocated per day; these structs never form reference
        # cycles, and keeping them out of the cyclic GC makes decoding several times faster.
        required: list[tuple[str, Any]] = [
            ("visitorId", str),
            (source.id_field, str),
            ("day", _Int64),
            ("numEvents", _Int64),
            ("numMinutes", _Int64),
        ]
        optional = [
            (name, _Int64 | None if name == "appId" else str | None, None)
            for name in self.fields
            if name not in dict(required)
        ]
        suffix = source.id_field
        self.row_type: Any = msgspec.defstruct(
            f"_StrictRow_{suffix}", [*required, *optional], gc=False
        )
        results: Any = list[self.row_type]  # type: ignore[name-defined]
        envelope = msgspec.defstruct(f"_StrictEnvelope_{suffix}", [("results", results)], gc=False)
        loose = msgspec.defstruct(
            f"_LooseRow_{suffix}", [(name, Any, _UNSET) for name in self.fields], gc=False
        )
        self.strict: msgspec.json.Decoder[Any] = msgspec.json.Decoder(envelope)
        self.strict_row: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.row_type)
        self.loose_row: msgspec.json.Decoder[Any] = msgspec.json.Decoder(loose)
        self.get_all = attrgetter(*self.fields)
        self.getters = tuple(attrgetter(name) for name in self.fields)
        self.polars_types = tuple(
            pl.String if f.type == pa.string() else pl.Int64 for f in source.schema
        )


@cache
def row_format(source: EventSource) -> RowFormat:
    """The (cached) `RowFormat` of ``source``."""
    return RowFormat(source)


class _RawEnvelope(msgspec.Struct, gc=False):
    results: list[msgspec.Raw]


_PIPELINE_DECODER: Final = msgspec.json.Decoder(
    msgspec.defstruct("_PipelineEnvelope", [("results", list[dict[str, Any]])])
)
_FEATURES: Final = row_format(FEATURE_EVENTS)
_STRICT_DECODER: Final = _FEATURES.strict  # (the benchmark's typed decoder)
_RAW_DECODER: Final = msgspec.json.Decoder(_RawEnvelope)


def decode_feature_events(
    body: bytes, *, day_ms: int, feature_ids: Sequence[str]
) -> FeatureEventPage:
    """Decode one aggregation response of featureEvents rows (`decode_events` of features)."""
    return decode_events(body, source=FEATURE_EVENTS, day_ms=day_ms, item_ids=feature_ids)


def decode_events(
    body: bytes, *, source: EventSource, day_ms: int, item_ids: Sequence[str]
) -> FeatureEventPage:
    """Decode one aggregation response of ``source``'s rows into a `FeatureEventPage`.

    The whole body is decoded into strict structs and checked vectorised; when some row does not
    fit (a null, a string number, a float), only the rows that do not fit are classified one by
    one. A body with ``NaN`` or ``Infinity`` tokens is read with Python's ``json``.

    Args:
        body: The response body, ``{"results": [...]}``.
        source: Which rows: feature, page or track events.
        day_ms: The requested local midnight; rows of another ``day`` are rejected.
        item_ids: The requested feature (page, track type) ids; rows of others are rejected.

    Returns:
        The page; ``table.num_rows + len(rejects) == row_count`` == rows in the body, and the
        table keeps the body's row order.

    Raises:
        PayloadShapeError: The body is not JSON or has no ``results`` array.
    """
    fmt = row_format(source)
    prepared = _prepare_events(fmt, body)
    return _finish_events(fmt, prepared, day_ms=day_ms, item_ids=item_ids, page_index=0)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A body read as far as paging needs: its strict rows (None: read it permissively), its row
    count (None: unreadable, decoding reports why) and its edge rows' keys (see `_row_key`)."""

    body: bytes
    rows: list[Any] | None  # strict rows (a `RowFormat`'s row_type) or dicts
    count: int | None
    first: str | None
    last: str | None


def _prepare_events(fmt: RowFormat, body: bytes) -> _Prepared:
    try:
        rows = fmt.strict.decode(body).results
    except msgspec.DecodeError:
        try:
            results = _results(body)
        except PayloadShapeError:
            return _Prepared(body, None, None, None, None)
        keys = [
            _row_key(values) if (values := _loose(fmt, item)) is not None else _text(item)
            for item in _edges(results)
        ]
        first, last = keys if keys else (None, None)
        return _Prepared(body, None, len(results), first, last)
    keys = [_row_key(fmt.get_all(row)) for row in _edges(rows)]
    first, last = keys if keys else (None, None)
    return _Prepared(body, rows, len(rows), first, last)


def _finish_events(
    fmt: RowFormat, prepared: _Prepared, *, day_ms: int, item_ids: Sequence[str], page_index: int
) -> FeatureEventPage:
    wanted = frozenset(item_ids)
    if prepared.rows is None:
        table, rejects, count = _decode_permissive(fmt, prepared.body, day_ms, wanted)
    else:
        rows = prepared.rows
        table, rejects = _checked_table(fmt, rows, None, day_ms, wanted, _texts(prepared.body))
        count = len(rows)
    return FeatureEventPage(
        table=table,
        rejects=rejects,
        page_index=page_index,
        row_count=count,
        body_bytes=len(prepared.body),
    )


def _results(body: bytes, decoder: msgspec.json.Decoder[Any] = _RAW_DECODER) -> list[Any]:
    """The body's ``results`` by ``decoder``, or by Python's ``json`` for NaN/Infinity tokens."""
    try:
        return cast(list[Any], decoder.decode(body).results)
    except msgspec.ValidationError as exc:
        raise _shape_error(f"the answer has no results array ({exc})") from None
    except msgspec.DecodeError:
        pass
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _shape_error(f"the answer is not JSON ({exc})") from None
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list):
        raise _shape_error("the answer has no results array")
    return results


# Pipeline result rows: any JSON objects, read as dicts.


def _pipeline_rows(body: bytes) -> list[JSONDict]:
    rows = _results(body, _PIPELINE_DECODER)
    if not all(isinstance(row, dict) for row in rows):  # read by Python's json (NaN, Infinity)
        raise _shape_error("expected results: a list of objects")
    return rows


def _prepare_pipeline(body: bytes) -> _Prepared:
    try:
        rows = _pipeline_rows(body)
    except PayloadShapeError:
        return _Prepared(body, None, None, None, None)  # `_finish_pipeline` raises it
    keys = [json.dumps(row, sort_keys=True, default=repr) for row in _edges(rows)]
    first, last = keys if keys else (None, None)
    return _Prepared(body, rows, len(rows), first, last)


def _finish_pipeline(
    prepared: _Prepared, page_index: int, skip_first: bool
) -> tuple[list[JSONDict], int]:
    rows = prepared.rows if prepared.rows is not None else _pipeline_rows(prepared.body)
    rows = cast(list[JSONDict], rows)[1 if skip_first else 0 :]
    return rows, len(rows)


def _shape_error(problem: str) -> PayloadShapeError:
    return PayloadShapeError(problem, service="pendo", method="POST", url=AGGREGATION_PATH)


def _row_key(values: Sequence[Any]) -> str:
    """A row's identity for the page-overlap check: the values of all its known fields.

    A field that is absent and one that is null are the same here (both are null once landed);
    NaN equals NaN (``json.dumps`` writes both as ``NaN``).
    """
    return json.dumps(
        [None if value is _UNSET else value for value in values], sort_keys=True, default=repr
    )


def _loose(fmt: RowFormat, item: Any) -> tuple[Any, ...] | None:
    """A raw or parsed row's fields in ``fmt.fields`` order (UNSET when absent), or None when
    the row is not a JSON object."""
    if isinstance(item, msgspec.Raw):
        try:
            return fmt.get_all(fmt.loose_row.decode(item))
        except msgspec.DecodeError:
            return None
    return tuple(item.get(name, _UNSET) for name in fmt.fields) if isinstance(item, dict) else None


def _text(item: Any) -> str:
    """A raw or parsed row's JSON text; a parsed one keeps NaN/Infinity visible as sent."""
    if isinstance(item, msgspec.Raw):
        return bytes(item).decode("utf-8", errors="replace")
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def _edges(items: list[Any]) -> list[Any]:
    return items[:1] + items[-1:] if items else []


def _without_first_row(page: FeatureEventPage) -> FeatureEventPage:
    """The page minus its first row (the overlap row already read with the previous page)."""
    if page.row_count == 0:
        return page
    first_rejected = any(r.index == 0 for r in page.rejects)
    return replace(
        page,
        table=page.table if first_rejected else page.table.slice(1),
        rejects=[replace(r, index=r.index - 1) for r in page.rejects if r.index != 0],
        row_count=page.row_count - 1,
    )


def _texts(body: bytes) -> Callable[[int], str]:
    """Row index -> the row's JSON text, reading the body again only if a row is rejected."""
    cache: list[Any] = []

    def text_of(index: int) -> str:
        if not cache:
            cache.extend(_results(body))
        return _text(cache[index])

    return text_of


def _checked_table(
    fmt: RowFormat,
    rows: list[Any],
    body_index: list[int] | None,
    day_ms: int,
    wanted: frozenset[str],
    text_of: Callable[[int], str],
) -> tuple[pa.Table, list[RejectedRow]]:
    """Build the table from strict rows and move rows failing the vectorised checks to rejects."""
    # Polars builds a column from Python values faster than pa.array does, and runs the checks
    # on every core; the page is handed over as Arrow in the source's schema.
    schema = fmt.source.schema
    frame = pl.DataFrame(
        [
            pl.Series(field.name, list(map(get, rows)), dtype=dtype)
            for get, field, dtype in zip(fmt.getters, schema, fmt.polars_types, strict=True)
        ]
    )
    rejects: list[RejectedRow] = []
    if frame.height:
        visitor = pl.col("visitor_id")
        bad = frame.select(
            (
                visitor.eq("")
                | (visitor.str.len_chars() > MAX_VISITOR_ID_LENGTH)
                | visitor.str.contains(_CONTROL_CHARS.pattern)
                | ~pl.col(fmt.source.id_column).is_in(list(wanted))
                | pl.col("day_ms").ne(day_ms)
                | pl.col("num_events").lt(0)
                | pl.col("num_minutes").lt(0)
            ).alias("bad")
        ).to_series()
        if bad.any():
            for position in bad.arg_true().to_list():
                index = position if body_index is None else body_index[position]
                _, problems = _classify(fmt, fmt.get_all(rows[position]), day_ms, wanted)
                rejects.append(_rejected(index, problems, text_of(index)))
            frame = frame.filter(~bad)
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(schema)
    return table, rejects


def _decode_permissive(
    fmt: RowFormat, body: bytes, day_ms: int, wanted: frozenset[str]
) -> tuple[pa.Table, list[RejectedRow], int]:
    """The table, rejects and row count of a body that does not decode strictly."""
    results = _results(body)

    def text_of(index: int) -> str:
        return _text(results[index])

    rows: list[Any] = []
    body_index: list[int] = []
    rejects: list[RejectedRow] = []
    for index, item in enumerate(results):
        row = _strict(fmt, item)
        if row is None:
            values = _loose(fmt, item)
            if values is None:
                problems = [("row is not a JSON object", "row is not a JSON object")]
            else:
                clean, problems = _classify(fmt, values, day_ms, wanted)
                if clean is not None:
                    row = fmt.row_type(**dict(zip(fmt.fields, clean, strict=True)))
            if row is None:
                rejects.append(_rejected(index, problems, text_of(index)))
                continue
        rows.append(row)
        body_index.append(index)
    table, more = _checked_table(fmt, rows, body_index, day_ms, wanted, text_of)
    return table, sorted(rejects + more, key=attrgetter("index")), len(results)


def _strict(fmt: RowFormat, item: Any) -> Any:
    """A raw or parsed row as a strict row, or None when it does not fit the strict types."""
    try:
        if isinstance(item, msgspec.Raw):
            return fmt.strict_row.decode(item)
        return msgspec.convert(item, fmt.row_type) if isinstance(item, dict) else None
    except msgspec.DecodeError:  # ValidationError included
        return None


#: A row's problem: its kind (a stable label, no value from Pendo) and its text for people.
_Problem = tuple[str, str]


def _rejected(index: int, problems: list[_Problem], raw: str) -> RejectedRow:
    kinds = tuple(kind for kind, _ in problems)
    return RejectedRow(index, "; ".join(text for _, text in problems), raw, kinds)


def _add(problems: list[_Problem], kind: str, detail: str | None = None) -> None:
    """Record a problem: ``kind``, and ``kind: detail`` as its text when there is a detail."""
    problems.append((kind, kind if detail is None else f"{kind}: {detail}"))


def _show(value: Any) -> str:
    if isinstance(value, str | float):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _classify(
    fmt: RowFormat, values: tuple[Any, ...], day_ms: int, wanted: frozenset[str]
) -> tuple[tuple[Any, ...] | None, list[_Problem]]:
    """Check one row (values in ``fmt.fields`` order); return clean values or the problems."""
    visitor, account, feature, app, day, events, minutes, remote_ip, user_agent, server = values
    id_field, noun = fmt.source.id_field, fmt.source.noun
    reasons: list[_Problem] = []

    visitor = visitor_id(visitor, reasons, numeric=True)
    account = _string("accountId", account, reasons, numeric=True)
    feature = _string(id_field, feature, reasons, required=True)
    if isinstance(feature, str) and feature not in wanted:
        kind = f"{id_field} is not one of the requested {noun}s"
        reasons.append((kind, f"{id_field} {feature!r} is not one of the requested {noun}s"))
    app = _integer("appId", app, reasons, optional=True, negative=True)
    day = _integer("day", day, reasons, negative=True)
    if isinstance(day, int) and day != day_ms:
        text = f"day {day} is not the requested local midnight {day_ms}"
        reasons.append(("day is not the requested local midnight", text))
    events = _integer("numEvents", events, reasons)
    minutes = _integer("numMinutes", minutes, reasons)
    remote_ip = _string("remoteIp", remote_ip, reasons)
    user_agent = _string("userAgent", user_agent, reasons)
    server = _string("server", server, reasons)
    if reasons:
        return None, reasons
    return (visitor, account, feature, app, day, events, minutes, remote_ip, user_agent, server), []


def visitor_id(value: Any, reasons: list[_Problem], *, numeric: bool) -> Any:
    """A visitorId: return it, or record why it is unusable (missing, not a string, empty, too
    long, control characters) and return None or the bad value. ``numeric``: a JSON number
    counts as its decimal string."""
    visitor = _string("visitorId", value, reasons, required=True, numeric=numeric)
    if isinstance(visitor, str):
        if visitor == "":
            _add(reasons, "visitorId is empty")
        elif len(visitor) > MAX_VISITOR_ID_LENGTH:
            kind = f"visitorId is longer than {MAX_VISITOR_ID_LENGTH} characters"
            reasons.append((kind, f"{kind} ({len(visitor)})"))
        elif _CONTROL_CHARS.search(visitor):
            _add(reasons, "visitorId contains control characters")
    return visitor


def _string(
    name: str, value: Any, reasons: list[_Problem], *, required: bool = False, numeric: bool = False
) -> Any:
    """A string field: return it, or record why it is unusable and return None."""
    if value is _UNSET or value is None:
        if required:
            _add(reasons, f"{name} is {'missing' if value is _UNSET else 'null'}")
        return None
    if isinstance(value, str):
        return value
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        # Defensive cast: all documented ids are strings, but a numeric id sent as a JSON number
        # means the same visitor/account as its decimal string (pendo_api.md section 8).
        return str(value)
    _add(reasons, f"{name} is not a string", _show(value))
    return None


def _integer(
    name: str,
    value: Any,
    reasons: list[_Problem],
    *,
    optional: bool = False,
    negative: bool = False,
) -> Any:
    """An integer field: return the int, or record why it is unusable and return None."""
    problem: tuple[str, str | None] | None = None
    if value is _UNSET or value is None:
        if optional:
            return None
        problem = ("is missing" if value is _UNSET else "is null", None)
    elif isinstance(value, str):
        problem = ("is a string", _show(value))
    elif isinstance(value, bool) or not isinstance(value, int | float):
        problem = ("is not a number", _show(value))
    elif isinstance(value, float) and math.isnan(value):
        problem = ("is NaN", None)
    elif isinstance(value, float) and math.isinf(value):
        problem = ("is infinite", None)
    elif isinstance(value, float) and not value.is_integer():
        problem = ("is not an integer", _show(value))
    elif not _INT64_MIN <= value <= _INT64_MAX:
        problem = ("is out of range", str(int(value)))
    elif value < 0 and not negative:
        problem = ("is negative", str(int(value)))
    if problem is not None:
        _add(reasons, f"{name} {problem[0]}", problem[1])
        return None
    return int(value)
