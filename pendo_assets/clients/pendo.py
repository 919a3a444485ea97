"""Pendo Engage v1 client: key check, feature catalogue, and paged day-window aggregations.

Feature events for one subscription-local day come back as pages of a fixed Arrow schema
(`FEATURE_EVENT_SCHEMA`). A page is decoded with msgspec into a strict row struct (the fast
path); when that fails, the page is decoded permissively and classified row by row, so every row
is either in the page's table or in its ``rejects`` with a reason. Nothing is silently dropped.

Pages are requested one ahead, in a background thread: while page k is decoded, page k+1 is
already on its way (see `PendoClient._paged`), so a day costs little more than decoding it.

Reference: /work/shared/reference/pendo_api.md (sections 1, 2, 3, 5).
"""

from __future__ import annotations

import copy
import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from operator import attrgetter
from typing import Annotated, Any, Final, Literal, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import msgspec
import polars as pl
import pyarrow as pa

from ..errors import ConfigError, PageDriftError, PagingLimitError, PayloadShapeError
from ..models import FEATURE_EVENT_SCHEMA, Feature, FeatureEventPage, RejectedRow
from ..types import JSONDict, Region
from ._http import (
    PooledClient,
    Redactor,
    RetryPolicy,
    Sleep,
    build_http_client,
    send_with_retries,
)

__all__ = [
    "AGGREGATION_PATH",
    "FEATURE_EVENT_SORT",
    "MAX_VISITOR_ID_LENGTH",
    "REGION_HOSTS",
    "PendoClient",
    "day_window",
    "decode_feature_events",
    "feature_filter",
]

REGION_HOSTS: Final[Mapping[Region, str]] = {
    "us": "https://app.pendo.io",
    "us1": "https://us1.app.pendo.io",
    "eu": "https://app.eu.pendo.io",
    "jpn": "https://app.jpn.pendo.io",
    "au": "https://app.au.pendo.io",
}
AGGREGATION_PATH: Final = "/api/v1/aggregation"
#: A total order over featureEvents rows, so skip/limit pages neither overlap nor leave gaps.
# Every field of a row, so the order is total: two rows equal on all of them are the same row.
FEATURE_EVENT_SORT: Final = (
    "visitorId",
    "accountId",
    "featureId",
    "appId",
    "remoteIp",
    "userAgent",
    "server",
    "numEvents",
    "numMinutes",
)
MAX_VISITOR_ID_LENGTH: Final = 1024
DEFAULT_MAX_PAGES: Final = 1_000

# A key is valid on one regional host only; a wrong host answers 400 or 403 like a wrong key
# (Estuary PR #4006; pendo_api.md section 1.2).
_REGION_HINT: Final = (
    "check PENDO_INTEGRATION_KEY and pendo.region (a key is valid on one regional host only)"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PageT = TypeVar("_PageT")
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_CHARS_RE2: Final = r"[\x00-\x1f\x7f-\x9f]"


def day_window(day: date, timezone: str) -> tuple[int, int]:
    """Return local midnight of ``day`` and of the next day in ``timezone``, as UTC epoch ms.

    Pendo's ``day`` field is the subscription timezone's midnight in epoch ms, so a day is never
    derived from a UTC date. DST days are 23 or 25 hours long. Where midnight does not exist (a
    zone that springs forward at 00:00) the window starts at the first instant of the day.

    Args:
        day: The calendar day in the subscription's timezone.
        timezone: An IANA zone name, e.g. ``America/New_York``.

    Returns:
        ``(start_ms, end_ms)``, the half-open window ``[start, end)``.

    Raises:
        ConfigError: ``timezone`` is not a known IANA zone.
    """
    zone = _zone(timezone)
    start = datetime.combine(day, dtime.min, tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), dtime.min, tzinfo=zone)
    one_ms = timedelta(milliseconds=1)
    return (start - _EPOCH) // one_ms, (end - _EPOCH) // one_ms


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"unknown timezone {timezone!r}: use an IANA zone name such as America/New_York, "
            "Europe/Paris or UTC"
        ) from exc


def feature_filter(feature_ids: Sequence[str]) -> str:
    """Build the aggregation ``filter`` expression selecting the given feature ids.

    Ids are double-quoted with ``\\`` escaped before ``"`` (an id holding a quote otherwise
    makes Pendo answer 400 "Cannot parse filter expression"; Estuary PR #4477).

    Args:
        feature_ids: Pendo feature ids.

    Returns:
        ``featureId == "a" || featureId == "b"``.
    """
    return " || ".join(f"featureId == {_quote(feature_id)}" for feature_id in feature_ids)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# Decoding feature-event pages
# --------------------------------------------------------------------------------------------

# gc=False: millions of rows are allocated per day; these structs never form reference cycles,
# and keeping them out of the cyclic GC makes decoding several times faster.


_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _StrictRow(msgspec.Struct, gc=False):
    visitorId: str
    featureId: str
    day: _Int64
    numEvents: _Int64
    numMinutes: _Int64
    accountId: str | None = None
    appId: _Int64 | None = None
    remoteIp: str | None = None
    userAgent: str | None = None
    server: str | None = None


class _StrictEnvelope(msgspec.Struct, gc=False):
    results: list[_StrictRow]


class _RawEnvelope(msgspec.Struct, gc=False):
    results: list[msgspec.Raw]


class _LooseRow(msgspec.Struct, gc=False):
    """Every field may hold any JSON value or be absent (UNSET): classified afterwards."""

    visitorId: Any = msgspec.UNSET
    accountId: Any = msgspec.UNSET
    featureId: Any = msgspec.UNSET
    appId: Any = msgspec.UNSET
    day: Any = msgspec.UNSET
    numEvents: Any = msgspec.UNSET
    numMinutes: Any = msgspec.UNSET
    remoteIp: Any = msgspec.UNSET
    userAgent: Any = msgspec.UNSET
    server: Any = msgspec.UNSET


class _PipelineEnvelope(msgspec.Struct):
    results: list[dict[str, Any]]


# Source field order matches FEATURE_EVENT_SCHEMA's column order.
_SOURCE_FIELDS: Final = (
    "visitorId",
    "accountId",
    "featureId",
    "appId",
    "day",
    "numEvents",
    "numMinutes",
    "remoteIp",
    "userAgent",
    "server",
)
_STRICT_DECODER: Final = msgspec.json.Decoder(_StrictEnvelope)
_STRICT_ROW_DECODER: Final = msgspec.json.Decoder(_StrictRow)
_RAW_DECODER: Final = msgspec.json.Decoder(_RawEnvelope)
_LOOSE_ROW_DECODER: Final = msgspec.json.Decoder(_LooseRow)
_PIPELINE_DECODER: Final = msgspec.json.Decoder(_PipelineEnvelope)
_UNSET: Final = msgspec.UNSET
_get_all_fields: Final = attrgetter(*_SOURCE_FIELDS)
_GETTERS: Final = tuple(attrgetter(name) for name in _SOURCE_FIELDS)
_POLARS_TYPES: Final = tuple(
    pl.String if field.type == pa.string() else pl.Int64 for field in FEATURE_EVENT_SCHEMA
)


def decode_feature_events(
    body: bytes,
    *,
    day_ms: int,
    feature_ids: Sequence[str],
    page_index: int = 0,
    url: str = AGGREGATION_PATH,
) -> FeatureEventPage:
    """Decode one aggregation response of featureEvents rows into a `FeatureEventPage`.

    The fast path decodes the whole body into strict structs in one call, builds the Arrow
    columns and runs the cheap checks vectorised. When the strict types do not fit some row (a
    null, a string number, an integer id, a float), the page is decoded permissively: each row
    is tried against the strict struct and only the rows that do not fit are classified one by
    one; a body with non-standard tokens (``NaN``, ``Infinity``) is read with Python's ``json``.

    Args:
        body: The response body, ``{"results": [...]}``.
        day_ms: The requested local midnight; rows of another ``day`` are rejected.
        feature_ids: The requested feature ids; rows of other features are rejected.
        page_index: Stored on the page.
        url: Named in a `PayloadShapeError`.

    Returns:
        The page; ``table.num_rows + len(rejects) == row_count`` == rows in the body, and the
        table keeps the body's row order.

    Raises:
        PayloadShapeError: The body is not JSON or has no ``results`` array.
    """
    return _finish_feature_events(
        _prepare_feature_events(body),
        day_ms=day_ms,
        feature_ids=feature_ids,
        page_index=page_index,
        url=url,
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A response body read as far as paging needs: its rows and its edge rows' keys.

    ``rows`` holds the strictly decoded rows (None when some row does not fit the strict types:
    the page decoder then reads it permissively). ``count`` is the number of rows in the body,
    None when it cannot be read at all (the page decoder reports why). ``first`` and ``last``
    identify the first and last rows by the values of all their fields.
    """

    body: bytes
    rows: list[_StrictRow] | list[JSONDict] | None
    count: int | None
    first: str | None
    last: str | None


def _prepare_feature_events(body: bytes) -> _Prepared:
    try:
        rows = _STRICT_DECODER.decode(body).results
    except msgspec.DecodeError:
        count, first, last = _outline(body)
        return _Prepared(body, None, count, first, last)
    if not rows:
        return _Prepared(body, rows, 0, None, None)
    first, last = (_row_key(_get_all_fields(row)) for row in (rows[0], rows[-1]))
    return _Prepared(body, rows, len(rows), first, last)


def _finish_feature_events(
    prepared: _Prepared,
    *,
    day_ms: int,
    feature_ids: Sequence[str],
    page_index: int,
    url: str,
) -> FeatureEventPage:
    wanted = frozenset(feature_ids)
    body = prepared.body
    if prepared.rows is None:
        return _decode_permissive(body, day_ms, wanted, page_index, url)
    rows = cast(list[_StrictRow], prepared.rows)
    table, rejects = _checked_table(rows, None, day_ms, wanted, _raw_texts(body))
    return FeatureEventPage(
        table=table,
        rejects=rejects,
        page_index=page_index,
        row_count=len(rows),
        body_bytes=len(body),
    )


def _row_key(values: Sequence[Any]) -> str:
    """A row's identity for the page-overlap check: the values of all its known fields.

    A field that is absent and one that is null are the same here (both are null once landed);
    NaN equals NaN (``json.dumps`` writes both as ``NaN``).
    """
    return json.dumps(
        [None if value is _UNSET else value for value in values], sort_keys=True, default=repr
    )


def _outline(body: bytes) -> tuple[int | None, str | None, str | None]:
    """Rows in a body that does not decode strictly, and its edge rows' keys (see `_row_key`)."""
    try:
        raws = _RAW_DECODER.decode(body).results
    except msgspec.DecodeError:
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            return None, None, None
        if not isinstance(results, list):
            return None, None, None
        keys = [
            _row_key([row.get(name, _UNSET) for name in _SOURCE_FIELDS])
            if isinstance(row, dict)
            else json.dumps(row, default=repr)
            for row in _edges(results)
        ]
        count = len(results)
    else:
        keys = [_raw_key(raw) for raw in _edges(raws)]
        count = len(raws)
    if not keys:
        return count, None, None
    return count, keys[0], keys[-1]


def _raw_key(raw: msgspec.Raw) -> str:
    try:
        return _row_key(_get_all_fields(_LOOSE_ROW_DECODER.decode(raw)))
    except msgspec.DecodeError:  # not an object: the row as sent
        return bytes(raw).decode("utf-8", errors="replace")


def _edges(items: list[Any]) -> list[Any]:
    return items[:1] + items[-1:] if items else []


def _without_first_row(page: FeatureEventPage) -> FeatureEventPage:
    """The page minus its first row (the overlap row already read with the previous page)."""
    if page.row_count == 0:
        return page
    first_rejected = any(r.index == 0 for r in page.rejects)
    table = page.table if first_rejected else page.table.slice(1)
    rejects = [RejectedRow(r.index - 1, r.reason, r.raw) for r in page.rejects if r.index != 0]
    return FeatureEventPage(
        table=table,
        rejects=rejects,
        page_index=page.page_index,
        row_count=page.row_count - 1,
        body_bytes=page.body_bytes,
    )


def _raw_texts(body: bytes) -> Callable[[int], str]:
    """Row index -> the row's JSON text, decoding the body again only if a row is rejected."""
    cache: list[msgspec.Raw] = []

    def text_of(index: int) -> str:
        if not cache:
            cache.extend(_RAW_DECODER.decode(body).results)
        return bytes(cache[index]).decode("utf-8", errors="replace")

    return text_of


def _checked_table(
    rows: list[_StrictRow],
    body_index: list[int] | None,
    day_ms: int,
    wanted: frozenset[str],
    text_of: Callable[[int], str],
) -> tuple[pa.Table, list[RejectedRow]]:
    """Build the table from strict rows and move rows failing the vectorised checks to rejects."""
    # Polars builds a column from Python values faster than pa.array does, and runs the checks
    # on every core; the page is handed over as Arrow in FEATURE_EVENT_SCHEMA.
    frame = pl.DataFrame(
        [
            pl.Series(field.name, list(map(get, rows)), dtype=dtype)
            for get, field, dtype in zip(_GETTERS, FEATURE_EVENT_SCHEMA, _POLARS_TYPES, strict=True)
        ]
    )
    rejects: list[RejectedRow] = []
    if frame.height:
        visitor = pl.col("visitor_id")
        bad = frame.select(
            (
                visitor.eq("")
                | (visitor.str.len_chars() > MAX_VISITOR_ID_LENGTH)
                | visitor.str.contains(_CONTROL_CHARS_RE2)
                | ~pl.col("feature_id").is_in(list(wanted))
                | pl.col("day_ms").ne(day_ms)
                | pl.col("num_events").lt(0)
                | pl.col("num_minutes").lt(0)
            ).alias("bad")
        ).to_series()
        if bad.any():
            for position in bad.arg_true().to_list():
                index = position if body_index is None else body_index[position]
                _, reasons = _classify(_get_all_fields(rows[position]), day_ms, wanted)
                rejects.append(RejectedRow(index, "; ".join(reasons), text_of(index)))
            frame = frame.filter(~bad)
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(FEATURE_EVENT_SCHEMA)
    return table, rejects


def _decode_permissive(
    body: bytes,
    day_ms: int,
    wanted: frozenset[str],
    page_index: int,
    url: str,
) -> FeatureEventPage:
    try:
        raws = _RAW_DECODER.decode(body).results
    except msgspec.ValidationError as exc:
        raise _shape_error(f"the answer has no results array ({exc})", url) from None
    except msgspec.DecodeError:
        # Not standard JSON (NaN, Infinity): Python's json module reads those tokens as floats.
        results = _nonstandard_results(body, url)
        candidates = _nonstandard_rows(results)

        def text_of(index: int) -> str:
            # json.loads keeps no row text; re-encoding keeps NaN/Infinity visible as sent.
            return json.dumps(results[index], ensure_ascii=False, separators=(",", ":"))

    else:
        candidates = _raw_rows(raws)

        def text_of(index: int) -> str:
            return bytes(raws[index]).decode("utf-8", errors="replace")

    rows: list[_StrictRow] = []
    body_index: list[int] = []
    rejects: list[RejectedRow] = []
    for index, row, values in candidates:
        if row is None:
            if values is None:
                reasons = ["row is not a JSON object"]
            else:
                clean, reasons = _classify(values, day_ms, wanted)
                if clean is not None:
                    row = _StrictRow(**dict(zip(_SOURCE_FIELDS, clean, strict=True)))
            if row is None:
                rejects.append(RejectedRow(index, "; ".join(reasons), text_of(index)))
                continue
        rows.append(row)
        body_index.append(index)
    count = len(rows) + len(rejects)
    table, more = _checked_table(rows, body_index, day_ms, wanted, text_of)
    if more:
        rejects = sorted(rejects + more, key=attrgetter("index"))
    return FeatureEventPage(
        table=table,
        rejects=rejects,
        page_index=page_index,
        row_count=count,
        body_bytes=len(body),
    )


_Candidate = tuple[int, "_StrictRow | None", "tuple[Any, ...] | None"]


def _raw_rows(raws: list[msgspec.Raw]) -> Iterator[_Candidate]:
    """Yield ``(index, strict row, None)`` for rows that fit, else ``(index, None, values)``.

    ``values`` are the row's fields in `_SOURCE_FIELDS` order (UNSET when absent), or None when
    the row is not a JSON object.
    """
    for index, raw in enumerate(raws):
        try:
            yield index, _STRICT_ROW_DECODER.decode(raw), None
        except msgspec.DecodeError:
            try:
                loose = _LOOSE_ROW_DECODER.decode(raw)
            except msgspec.DecodeError:
                yield index, None, None
            else:
                yield index, None, _get_all_fields(loose)


def _nonstandard_rows(results: list[Any]) -> Iterator[_Candidate]:
    """Like `_raw_rows`, for rows already parsed by Python's ``json``."""
    for index, row in enumerate(results):
        if not isinstance(row, dict):
            yield index, None, None
            continue
        try:
            yield index, msgspec.convert(row, _StrictRow), None
        except msgspec.ValidationError:
            yield index, None, tuple(row.get(name, _UNSET) for name in _SOURCE_FIELDS)


def _nonstandard_results(body: bytes, url: str) -> list[Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _shape_error(f"the answer is not JSON ({exc})", url) from None
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list):
        raise _shape_error("the answer has no results array", url)
    return results


def _shape_error(problem: str, url: str) -> PayloadShapeError:
    return PayloadShapeError(
        f"Pendo POST {AGGREGATION_PATH}: {problem}", service="pendo", method="POST", url=url
    )


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
    values: tuple[Any, ...], day_ms: int, wanted: frozenset[str]
) -> tuple[tuple[Any, ...] | None, list[str]]:
    """Check one row (values in `_SOURCE_FIELDS` order); return clean values or the reasons."""
    visitor, account, feature, app, day, events, minutes, remote_ip, user_agent, server = values
    reasons: list[str] = []

    visitor = _id_string("visitorId", visitor, reasons, required=True)
    if isinstance(visitor, str):
        if visitor == "":
            reasons.append("visitorId is empty")
        elif len(visitor) > MAX_VISITOR_ID_LENGTH:
            reasons.append(
                f"visitorId is longer than {MAX_VISITOR_ID_LENGTH} characters ({len(visitor)})"
            )
        elif _CONTROL_CHARS.search(visitor):
            reasons.append("visitorId contains control characters")
    account = _id_string("accountId", account, reasons, required=False)

    if feature is _UNSET:
        reasons.append("featureId is missing")
    elif feature is None:
        reasons.append("featureId is null")
    elif not isinstance(feature, str):
        reasons.append(f"featureId is not a string: {_show(feature)}")
    elif feature not in wanted:
        reasons.append(f"featureId {feature!r} is not one of the requested features")

    app = _optional_int("appId", app, reasons)
    day = _count("day", day, reasons, allow_negative=True)
    if isinstance(day, int) and day != day_ms:
        reasons.append(f"day {day} is not the requested local midnight {day_ms}")
    events = _count("numEvents", events, reasons)
    minutes = _count("numMinutes", minutes, reasons)
    remote_ip = _optional_string("remoteIp", remote_ip, reasons)
    user_agent = _optional_string("userAgent", user_agent, reasons)
    server = _optional_string("server", server, reasons)
    if reasons:
        return None, reasons
    return (visitor, account, feature, app, day, events, minutes, remote_ip, user_agent, server), []


def _id_string(name: str, value: Any, reasons: list[str], *, required: bool) -> Any:
    if value is _UNSET or value is None:
        if required:
            reasons.append(f"{name} is {'missing' if value is _UNSET else 'null'}")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # Defensive cast: all documented ids are strings, but a numeric id sent as a JSON number
        # means the same visitor/account as its decimal string (pendo_api.md section 8).
        return str(value)
    reasons.append(f"{name} is not a string: {_show(value)}")
    return None


def _optional_string(name: str, value: Any, reasons: list[str]) -> Any:
    if value is _UNSET or value is None:
        return None
    if isinstance(value, str):
        return value
    reasons.append(f"{name} is not a string: {_show(value)}")
    return None


def _optional_int(name: str, value: Any, reasons: list[str]) -> Any:
    if value is _UNSET or value is None:
        return None
    return _count(name, value, reasons, allow_negative=True)


def _count(name: str, value: Any, reasons: list[str], *, allow_negative: bool = False) -> Any:
    """An integer field: return the int, or record why it is unusable and return None."""
    if value is _UNSET:
        reasons.append(f"{name} is missing")
        return None
    if value is None:
        reasons.append(f"{name} is null")
        return None
    if isinstance(value, str):
        reasons.append(f"{name} is a string: {_show(value)}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        reasons.append(f"{name} is not a number: {_show(value)}")
        return None
    if isinstance(value, float):
        if math.isnan(value):
            reasons.append(f"{name} is NaN")
            return None
        if math.isinf(value):
            reasons.append(f"{name} is infinite")
            return None
        if not value.is_integer():
            reasons.append(f"{name} is not an integer: {_show(value)}")
            return None
        value = int(value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        reasons.append(f"{name} is out of range: {value}")
        return None
    if value < 0 and not allow_negative:
        reasons.append(f"{name} is negative: {value}")
        return None
    return value


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class PendoClient(PooledClient):
    """Pendo Engage v1 API client for one subscription (one integration key, one region).

    Usable on its own (REPL, scripts) and as a context manager; every request goes through the
    shared retry policy of ``clients._http``. Aggregations are read-only, so they are retried.

    Args:
        integration_key: The Pendo integration key (read-only is enough); never logged.
        region: ``us``, ``us1``, ``eu``, ``jpn`` or ``au``; picks the API host.
        base_url: Overrides the region's host (the sandbox, Pendo Adopt hosts).
        timeout: Defaults to 10 s connect and 60 s read.
        retry: Defaults to `RetryPolicy()`.
        transport: An ``httpx.MockTransport`` in tests.
        sleep: Called with each retry wait in seconds.
        page_size: Rows per aggregation page (Pendo's ``limit``).

    Raises:
        ConfigError: Unknown region, empty key or a page size below 1.
    """

    _service = "pendo"

    def __init__(
        self,
        *,
        integration_key: str,
        region: Region | str = "us",
        base_url: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        page_size: int = 100_000,
    ) -> None:
        if not isinstance(integration_key, str) or not integration_key.strip():
            raise ConfigError("the Pendo integration key is empty (set PENDO_INTEGRATION_KEY)")
        if region not in REGION_HOSTS:
            raise ConfigError(
                f"unknown Pendo region {region!r}; valid regions: {', '.join(REGION_HOSTS)}"
            )
        if page_size < 1:
            raise ConfigError(f"page_size must be 1 or more, got {page_size}")
        self.region: str = region
        self.base_url: str = (base_url or REGION_HOSTS[cast(Region, region)]).rstrip("/")
        self.page_size = page_size
        self._key_header = {"x-pendo-integration-key": integration_key}
        self._redactor = Redactor([integration_key])
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = build_http_client(timeout=timeout, transport=transport)
        self._answered = False  # True after the first 2xx: the key and host are known good

    @property
    def _shape_base_url(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"PendoClient(region={self.region!r}, base_url={self.base_url!r})"

    # -- plain calls ---------------------------------------------------------------------------

    def verify_key(self) -> None:
        """Check the integration key against the configured host (``GET /api/v1/token/verify``).

        Raises:
            ApiStatusError: Pendo refused the key (403, or 400 from a wrong regional host).
            ConfigError: Pendo answered that the key is not valid.
        """
        response = self._send("GET", "/api/v1/token/verify")
        data = self._json(response, "GET", "/api/v1/token/verify")
        if isinstance(data, dict) and data.get("valid") is False:
            raise ConfigError(f"Pendo says the integration key is not valid; {_REGION_HINT}")

    def list_features(self) -> list[Feature]:
        """List the Features of every app (``GET /api/v1/feature?expand=*``).

        Returns:
            The features, in Pendo's order.

        Raises:
            PayloadShapeError: The answer is not a list of objects with an ``id``.
        """
        path = "/api/v1/feature"
        response = self._send("GET", path, params={"expand": "*"})
        data = self._json(response, "GET", path)
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            data = data["results"]  # tolerated envelope (PostHog does the same)
        if not isinstance(data, list):
            raise self._shape("GET", path, "expected a JSON array of features")
        features = []
        for index, item in enumerate(data):
            try:
                if not isinstance(item, dict):
                    raise TypeError("not an object")
                features.append(Feature.from_api(item))
            except (KeyError, TypeError) as exc:
                raise self._shape(
                    "GET", path, f"feature {index} has no usable id ({exc})"
                ) from None
        return features

    # -- aggregations --------------------------------------------------------------------------

    def feature_event_pages(
        self,
        *,
        day: date,
        timezone: str,
        feature_ids: Sequence[str],
        app_ids: Literal["all"] | Sequence[int] = "all",
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[FeatureEventPage]:
        """Yield the featureEvents rows of one subscription-local day, one page per request.

        Each request is one aggregation: featureEvents source over the day window, a filter on
        the feature ids, a sort on every row key (a stable order for skip/limit), skip, limit.

        Args:
            day: The day in the subscription's timezone.
            timezone: The subscription's IANA timezone.
            feature_ids: Features to read; rows of other features are rejected.
            app_ids: ``"all"`` (``expandAppIds("*")``) or explicit Pendo app ids.
            max_pages: Hard cap; reaching it with a full page raises rather than stop short.

        Yields:
            Pages in order; the last page is the first one shorter than ``page_size``.

        Raises:
            ConfigError: No feature ids, bad app ids, bad timezone or ``max_pages`` below 1.
            PagingLimitError: ``max_pages`` full pages and still more rows.
            ApiError: From the request (after retries) or a malformed answer.
        """
        ids = _feature_ids(feature_ids)
        _check_max_pages(max_pages)
        first_ms, _ = day_window(day, timezone)
        source = {
            "source": {
                "featureEvents": {"appId": _app_ids_param(app_ids)},
                "timeSeries": {"period": "dayRange", "first": first_ms, "count": 1},
            }
        }
        head: list[JSONDict] = [
            source,
            {"filter": feature_filter(ids)},
            {"sort": list(FEATURE_EVENT_SORT)},
        ]

        def finish(
            prepared: _Prepared, page_index: int, skip_first: bool
        ) -> tuple[FeatureEventPage, int]:
            page = _finish_feature_events(
                prepared,
                day_ms=first_ms,
                feature_ids=ids,
                page_index=page_index,
                url=AGGREGATION_PATH,
            )
            if skip_first:
                page = _without_first_row(page)
            return page, page.row_count

        # Arguments are checked above, when called; requests start on the first next().
        return self._paged(
            head, f"feature-events-{day.isoformat()}", max_pages, _prepare_feature_events, finish
        )

    def pipeline_pages(
        self,
        *,
        stages: Sequence[Mapping[str, Any]],
        day: date,
        timezone: str,
        sort_field: str | Sequence[str],
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[list[JSONDict]]:
        """Run a user pipeline over one subscription-local day and yield its rows page by page.

        The first stage must be a ``source``; its ``timeSeries`` is replaced by the day window
        (``dayRange``, local midnight, count 1). ``sort``, ``skip`` and ``limit`` are appended.

        Args:
            stages: The pipeline (not modified).
            day: The day in the subscription's timezone.
            timezone: The subscription's IANA timezone.
            sort_field: Field(s) giving the results a total order, e.g. ``accountId``.
            max_pages: Hard cap; reaching it with a full page raises.

        Yields:
            Each page's rows as dicts. Floats are kept as sent, including NaN/Infinity when the
            body carried those tokens: the caller validates values.

        Raises:
            ConfigError: The first stage is not a source, or bad timezone / ``max_pages``.
            PagingLimitError: ``max_pages`` full pages and still more rows.
            ApiError: From the request or a malformed answer.
        """
        _check_max_pages(max_pages)
        first_ms, _ = day_window(day, timezone)
        pipeline = _windowed(stages, first_ms)
        sort = [sort_field] if isinstance(sort_field, str) else list(sort_field)
        if not sort or not all(isinstance(name, str) and name for name in sort):
            raise ConfigError(f"sort_field must name one or more fields, got {sort_field!r}")
        pipeline.append({"sort": sort})

        def prepare(body: bytes) -> _Prepared:
            try:
                rows = self._pipeline_rows(body)
            except PayloadShapeError:
                return _Prepared(body, None, None, None, None)  # `finish` raises it
            keys = [json.dumps(row, sort_keys=True, default=repr) for row in _edges(rows)]
            first, last = keys if keys else (None, None)
            return _Prepared(body, rows, len(rows), first, last)

        def finish(
            prepared: _Prepared, page_index: int, skip_first: bool
        ) -> tuple[list[JSONDict], int]:
            rows = prepared.rows
            if rows is None:
                rows = self._pipeline_rows(prepared.body)
            rows = cast(list[JSONDict], rows)[1 if skip_first else 0 :]
            return rows, len(rows)

        return self._paged(pipeline, f"pipeline-{day.isoformat()}", max_pages, prepare, finish)

    # -- helpers -------------------------------------------------------------------------------

    def _paged(
        self,
        head: list[JSONDict],
        label: str,
        max_pages: int,
        prepare: Callable[[bytes], _Prepared],
        finish: Callable[[_Prepared, int, bool], tuple[_PageT, int]],
    ) -> Iterator[_PageT]:
        """Append skip/limit to ``head`` page by page until a page has fewer rows than the limit.

        Pendo has no cursor, and a day's rows can change while it is read (late data,
        re-tagging). So every page after the first starts one row early: that row must be the
        previous page's last row, field for field, or rows shifted between the two requests and
        the page could hold a row twice or miss one. Then `PageDriftError` is raised and the
        caller reads the day again.

        The requests run in a background thread, one page ahead of the caller: as soon as page k
        has arrived and been decoded (``prepare``: enough to count its rows), page k+1 is
        requested, so Pendo computes and sends it while the caller builds page k (``finish``).
        Never more than that one page is in flight, so memory holds at most two pages, and the
        requests made are exactly those of reading page after page: a short page is the last
        one requested.
        """
        fetched: queue.SimpleQueue[_Prepared | BaseException] = queue.SimpleQueue()
        next_page = threading.Semaphore(0)
        closed = threading.Event()

        def fetch_pages() -> None:
            previous_last: str | None = None
            for page_index in range(max_pages):
                if page_index:
                    next_page.acquire()  # the caller took the previous page
                    if closed.is_set():
                        return
                overlap = 1 if page_index else 0
                pipeline = [
                    *head,
                    {"skip": page_index * self.page_size - overlap},
                    {"limit": self.page_size + overlap},
                ]
                try:
                    prepared = prepare(self._aggregate(pipeline, f"{label}-{page_index}"))
                    if overlap and (prepared.first is None or prepared.first != previous_last):
                        raise PageDriftError(
                            f"Pendo's rows for {label} changed between page {page_index} and "
                            f"page {page_index + 1} (data arriving or reprocessed while it was "
                            "read)",
                            service="pendo",
                            method="POST",
                            url=AGGREGATION_PATH,
                        )
                except BaseException as exc:  # handed to the caller, raised in its thread
                    fetched.put(exc)
                    return
                previous_last = prepared.last
                count = prepared.count
                fetched.put(prepared)
                del prepared
                if count is None or count < self.page_size + overlap:
                    return  # the last page (or an unreadable one, which `finish` reports)

        fetcher = threading.Thread(target=fetch_pages, name=f"pendo-{label}", daemon=True)
        fetcher.start()
        try:
            for page_index in range(max_pages):
                item = fetched.get()
                if isinstance(item, BaseException):
                    raise item
                next_page.release()  # request the next page while this one is built
                count = item.count
                page, rows = finish(item, page_index, bool(page_index))
                del item
                if count is None or rows != count - (1 if page_index else 0):
                    # The fetcher stopped after this page; it must be the last one.
                    raise self._shape(
                        "POST", AGGREGATION_PATH, "could not count the rows of the answer"
                    )
                yield page
                if rows < self.page_size:
                    return
            raise self._paging_limit(max_pages)
        finally:
            closed.set()
            next_page.release()  # a fetcher waiting for the caller wakes up and stops

    def _aggregate(self, pipeline: list[JSONDict], request_id: str) -> bytes:
        payload = {
            "response": {"mimeType": "application/json"},
            "request": {"requestId": f"pendo-planhat-{request_id}", "pipeline": pipeline},
        }
        response = self._send("POST", AGGREGATION_PATH, content=msgspec.json.encode(payload))
        return response.content

    def _pipeline_rows(self, body: bytes) -> list[JSONDict]:
        try:
            return _PIPELINE_DECODER.decode(body).results
        except msgspec.ValidationError as exc:
            raise self._shape("POST", AGGREGATION_PATH, f"unexpected shape ({exc})") from None
        except msgspec.DecodeError:
            pass
        try:
            document = json.loads(body)  # NaN / Infinity tokens
        except ValueError as exc:
            raise self._shape("POST", AGGREGATION_PATH, f"not JSON ({exc})") from None
        results = document.get("results") if isinstance(document, dict) else None
        if not isinstance(results, list) or not all(isinstance(row, dict) for row in results):
            raise self._shape("POST", AGGREGATION_PATH, "expected results: a list of objects")
        return results

    def _send(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        # Pendo's examples send Content-Type on every call, GETs included (pendo_api.md 1.1).
        headers = {
            **self._key_header,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        request = self._http.build_request(
            method, self.base_url + path, params=params, content=content, headers=headers
        )
        response = send_with_retries(
            request,
            client=self._http,
            service="pendo",
            redactor=self._redactor,
            policy=self._retry,
            idempotent=True,
            sleep=self._sleep,
            hint=None if self._answered else _REGION_HINT,
        )
        self._answered = True
        return response

    def _paging_limit(self, max_pages: int) -> PagingLimitError:
        return PagingLimitError(
            f"Pendo POST {AGGREGATION_PATH}: {max_pages} full pages of {self.page_size} rows and "
            "still more; raise max_pages or page_size (stopping here would lose rows)",
            service="pendo",
            method="POST",
            url=self._redactor.url(self.base_url + AGGREGATION_PATH),
        )


def _feature_ids(feature_ids: Sequence[str]) -> list[str]:
    if isinstance(feature_ids, str):
        raise ConfigError("feature_ids must be a list of feature ids, not one string")
    ids = list(dict.fromkeys(feature_ids))
    if not ids:
        raise ConfigError("feature_ids is empty: configure at least one Pendo feature id")
    bad = [feature_id for feature_id in ids if not isinstance(feature_id, str) or not feature_id]
    if bad:
        raise ConfigError(f"feature ids must be non-empty strings, got {bad[:5]!r}")
    return ids


def _app_ids_param(app_ids: Literal["all"] | Sequence[int]) -> str | list[int]:
    if app_ids == "all":
        # Without this Pendo answers for the subscription's default app only (pendo_api.md 2.2).
        return 'expandAppIds("*")'
    if isinstance(app_ids, str):
        raise ConfigError(f"app_ids must be 'all' or a list of Pendo app ids, got {app_ids!r}")
    ids = list(app_ids)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"app_ids must be 'all' or a non-empty list of integers, got {ids!r}")
    return ids


def _check_max_pages(max_pages: int) -> None:
    if max_pages < 1:
        raise ConfigError(f"max_pages must be 1 or more (a hard stop rule), got {max_pages}")


def _windowed(stages: Sequence[Mapping[str, Any]], first_ms: int) -> list[JSONDict]:
    example = '{"source": {"featureEvents": null, "timeSeries": {...}}}'
    if isinstance(stages, str | bytes) or not stages:
        raise ConfigError(f"the pipeline is empty; its first stage must be a source like {example}")
    pipeline: list[JSONDict] = [dict(stage) for stage in copy.deepcopy(list(stages))]
    source = pipeline[0].get("source")
    if not isinstance(source, dict):
        raise ConfigError(f"the pipeline's first stage must be a source stage like {example}")
    source["timeSeries"] = {"period": "dayRange", "first": first_ms, "count": 1}
    return pipeline
