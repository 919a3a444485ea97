"""Pendo Engage v1 client: key check, catalogues of features, pages and track types, and
paged day-window aggregations.

Feature, page and track event pages are decoded by `decode_events` (every row in the table or in
the rejects, with why); every aggregation starts with the source stage of `source_stage`. Pages
are requested one ahead (`prefetch`), so a day costs little more than decoding it.

Reference: /work/shared/reference/pendo_api.md (sections 1, 2, 3, 5).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import msgspec

from ..errors import ConfigError, PageDriftError, PagingLimitError, PayloadShapeError
from ..models import FEATURE_EVENTS, EventSource, Feature, FeatureEventPage
from ..types import PENDO_HOSTS, JSONDict, Region
from ._http import PooledClient, RetryPolicy, Sleep, check_max_pages
from ._pendo_rows import (
    AGGREGATION_PATH,
    _edges,
    _finish_events,
    _finish_pipeline,
    _pipeline_rows,
    _prepare_events,
    _prepare_pipeline,
    _Prepared,
    _results,
    _without_first_row,
    decode_events,
    decode_feature_events,
    row_format,
)
from ._prefetch import prefetch

__all__ = [
    "PendoClient",
    "day_window",
    "decode_events",
    "decode_feature_events",
    "event_sort",
    "feature_filter",
    "item_filter",
    "source_stage",
]

#: ``pendo.app_ids``: every app of the subscription, or the listed Pendo app ids.
AppIds: TypeAlias = Literal["all"] | Sequence[int]


def event_sort(source: EventSource) -> tuple[str, ...]:
    """Every field of a ``source`` row (``day`` aside, the same on all): a total order, so
    skip/limit pages neither overlap nor leave gaps."""
    ids = ("visitorId", "accountId", source.id_field, "appId")
    return (*ids, "remoteIp", "userAgent", "server", "numEvents", "numMinutes")


DEFAULT_MAX_PAGES: Final = 1_000

# A key is valid on one regional host only; a wrong host answers 400 or 403 like a wrong key
# (Estuary PR #4006; pendo_api.md section 1.2).
_REGION_HINT: Final = (
    "check PENDO_INTEGRATION_KEY and pendo.region (a key is valid on one regional host only)"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PageT = TypeVar("_PageT")
_SOURCE_EXAMPLE: Final = '{"source": {"featureEvents": null, "timeSeries": {...}}}'


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
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"unknown timezone {timezone!r}: use an IANA zone name such as America/New_York, "
            "Europe/Paris or UTC"
        ) from exc
    start = datetime.combine(day, dtime.min, tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), dtime.min, tzinfo=zone)
    one_ms = timedelta(milliseconds=1)
    return (start - _EPOCH) // one_ms, (end - _EPOCH) // one_ms


def feature_filter(feature_ids: Sequence[str]) -> str:
    """`item_filter` of feature ids: ``featureId == "a" || featureId == "b"``."""
    return item_filter("featureId", feature_ids)


def item_filter(id_field: str, ids: Sequence[str]) -> str:
    """Build the aggregation ``filter`` expression selecting the given ids of ``id_field``.

    Ids are double-quoted with ``\\`` escaped before ``"`` (an id holding a quote otherwise
    makes Pendo answer 400 "Cannot parse filter expression"; Estuary PR #4477).

    Returns:
        e.g. ``pageId == "a" || pageId == "b"``.
    """
    return " || ".join(f"{id_field} == {_quote(item_id)}" for item_id in ids)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def source_stage(
    source: Mapping[str, Any], *, first_ms: int, app_ids: AppIds, days: int = 1
) -> JSONDict:
    """Build the source stage of an aggregation (feature events or a pipeline) over whole days.

    ``timeSeries`` becomes the window of ``days`` days from ``first_ms``. A row source that names no ``appId`` reads
    ``app_ids``: without one Pendo answers for the default app only (pendo_api.md 2.2).

    Args:
        source: The source stage's value, e.g. ``{"featureEvents": None}`` (not modified).
        first_ms: The first day's local midnight in epoch ms (see `day_window`).
        app_ids: ``"all"`` (``appId: expandAppIds("*")``) or Pendo app ids (``appId: [...]``).

    Returns:
        ``{"source": {...}}``.

    Raises:
        ConfigError: ``app_ids`` is neither ``"all"`` nor a non-empty list of integers.
    """
    app_id = _app_ids_param(app_ids)
    stage: JSONDict = copy.deepcopy(dict(source))
    for kind, params in stage.items():
        if kind == "timeSeries":
            continue
        if params is None:
            stage[kind] = {"appId": app_id}
        elif isinstance(params, dict):
            params.setdefault("appId", app_id)
    stage["timeSeries"] = {"period": "dayRange", "first": first_ms, "count": days}
    return {"source": stage}


class PendoClient(PooledClient):
    """Pendo Engage v1 API client for one subscription; aggregations are read-only, so retried.

    Args:
        integration_key: The Pendo integration key (read-only is enough); never logged.
        region: ``us``, ``us1``, ``eu``, ``jpn`` or ``au``; picks the API host.
        base_url: Overrides the region's host (the sandbox, Pendo Adopt hosts).
        timeout, retry, transport, sleep: As for every client (`PooledClient`).
        page_size: Rows per aggregation page (Pendo's ``limit``).

    Raises:
        ConfigError: Unknown region, empty key or a page size below 1.
    """

    _service = "pendo"
    _hint_statuses = (400, 403)

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
        if region not in PENDO_HOSTS:
            raise ConfigError(
                f"unknown Pendo region {region!r}; valid regions: {', '.join(PENDO_HOSTS)}"
            )
        if page_size < 1:
            raise ConfigError(f"page_size must be 1 or more, got {page_size}")
        super().__init__(
            secrets=[integration_key],
            timeout=timeout,
            retry=retry,
            transport=transport,
            sleep=sleep,
        )
        self.region: str = region
        host = PENDO_HOSTS[cast(Region, region)]
        self.base_url: str = (base_url or f"https://{host}").rstrip("/")
        self._base_url = self.base_url
        self.page_size = page_size
        # Pendo's examples send Content-Type on every call, GETs included (pendo_api.md 1.1).
        self._key_header = {
            "x-pendo-integration-key": integration_key,
            "Content-Type": "application/json",
        }
        self._answered = False  # True after the first 2xx: the key and host are known good

    def __repr__(self) -> str:
        return f"PendoClient(region={self.region!r}, base_url={self.base_url!r})"

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
        return self._catalogue("/api/v1/feature", "feature")

    def list_pages(self) -> list[Feature]:
        """List the Pages of every app (``GET /api/v1/page?expand=*``), as for features."""
        return self._catalogue("/api/v1/page", "page")

    def list_track_types(self) -> list[Feature]:
        """List the track types of every app (the ``trackTypes`` aggregation source).

        Raises:
            PayloadShapeError: The answer is not a list of objects with an ``id``.
        """
        app_id = _app_ids_param("all")
        body = self._aggregate([{"source": {"trackTypes": {"appId": app_id}}}], "track-types")
        return self._items(_pipeline_rows(body), AGGREGATION_PATH, "track type", method="POST")

    def list_items(self, source: EventSource) -> list[Feature]:
        """The features, pages or track types ``source``'s rows are keyed by."""
        listing = {
            "feature_events": self.list_features,
            "page_events": self.list_pages,
            "track_events": self.list_track_types,
        }
        return listing[source.name]()

    def _catalogue(self, path: str, noun: str) -> list[Feature]:
        response = self._send("GET", path, params={"expand": "*"})
        data = self._json(response, "GET", path)
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            data = data["results"]  # tolerated envelope (PostHog does the same)
        if not isinstance(data, list):
            raise self._shape("GET", path, f"expected a JSON array of {noun}s")
        return self._items(data, path, noun)

    def _items(
        self, data: list[Any], path: str, noun: str, *, method: Literal["GET", "POST"] = "GET"
    ) -> list[Feature]:
        items = []
        for index, item in enumerate(data):
            try:
                if not isinstance(item, dict):
                    raise TypeError("not an object")
                items.append(Feature.from_api(item))
            except (KeyError, TypeError) as exc:
                raise self._shape(
                    method, path, f"{noun} {index} has no usable id ({exc})"
                ) from None
        return items

    def feature_event_pages(
        self,
        *,
        day: date,
        timezone: str,
        feature_ids: Sequence[str],
        app_ids: AppIds = "all",
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[FeatureEventPage]:
        """`event_pages` of feature events."""
        return self.event_pages(
            source=FEATURE_EVENTS,
            day=day,
            timezone=timezone,
            item_ids=feature_ids,
            app_ids=app_ids,
            max_pages=max_pages,
        )

    def event_pages(
        self,
        *,
        source: EventSource,
        day: date,
        timezone: str,
        item_ids: Sequence[str],
        app_ids: AppIds = "all",
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[FeatureEventPage]:
        """Yield ``source``'s rows (feature, page or track events) of one subscription-local day,
        one page per request.

        Args:
            source: Which rows: ``EVENT_SOURCES["page_events"]``, ...
            day: The day in the subscription's timezone.
            timezone: The subscription's IANA timezone.
            item_ids: Features (pages, track types) to read; rows of others are rejected.
            app_ids: ``"all"`` (``expandAppIds("*")``) or explicit Pendo app ids.
            max_pages: Hard cap; reaching it with a full page raises rather than stop short.

        Yields:
            Pages in order; the last page is the first one shorter than ``page_size``.

        Raises:
            ConfigError: No ids, bad app ids, bad timezone or ``max_pages`` below 1.
            PagingLimitError: ``max_pages`` full pages and still more rows.
            ApiError: From the request (after retries) or a malformed answer.
        """
        ids = _item_ids(item_ids, source)
        check_max_pages(max_pages)
        first_ms, _ = day_window(day, timezone)
        head: list[JSONDict] = [
            source_stage({source.row_source: None}, first_ms=first_ms, app_ids=app_ids),
            {"filter": item_filter(source.id_field, ids)},
            {"sort": list(event_sort(source))},
        ]
        fmt = row_format(source)

        def prepare(body: bytes) -> _Prepared:
            return _prepare_events(fmt, body)

        def finish(
            prepared: _Prepared, page_index: int, skip_first: bool
        ) -> tuple[FeatureEventPage, int]:
            page = _finish_events(
                fmt, prepared, day_ms=first_ms, item_ids=ids, page_index=page_index
            )
            if skip_first:
                page = _without_first_row(page)
            return page, page.row_count

        # Arguments are checked above, when called; requests start on the first next().
        label = f"{source.name.replace('_', '-')}-{day.isoformat()}"
        return self._paged(head, label, max_pages, prepare, finish)

    def pipeline_pages(
        self,
        *,
        stages: Sequence[Mapping[str, Any]],
        day: date,
        timezone: str,
        sort_field: str | Sequence[str],
        app_ids: AppIds = "all",
        max_pages: int = DEFAULT_MAX_PAGES,
        days: int = 1,
    ) -> Iterator[list[JSONDict]]:
        """Run a user pipeline over subscription-local days and yield its rows page by page.

        The first stage, a ``source``, is rebuilt by `source_stage`; sort, skip and limit follow.

        Args:
            stages: The pipeline (not modified).
            day: The day in the subscription's timezone.
            timezone: The subscription's IANA timezone.
            sort_field: Field(s) giving the results a total order, e.g. ``accountId``.
            app_ids: ``pendo.app_ids``, for a row source that names no ``appId``.
            max_pages: Hard cap; reaching it with a full page raises.
            days: How many days from ``day`` the window holds (one by default).

        Yields:
            Each page's rows as dicts. Floats are kept as sent, including NaN/Infinity when the
            body carried those tokens: the caller validates values.

        Raises:
            ConfigError: The first stage is not a source, or bad app ids, timezone or
                ``max_pages``.
            PagingLimitError: ``max_pages`` full pages and still more rows.
            ApiError: From the request or a malformed answer.
        """
        check_max_pages(max_pages)
        first_ms, _ = day_window(day, timezone)
        pipeline = _windowed(stages, first_ms, app_ids, days)
        sort = [sort_field] if isinstance(sort_field, str) else list(sort_field)
        if not sort or not all(isinstance(name, str) and name for name in sort):
            raise ConfigError(f"sort_field must name one or more fields, got {sort_field!r}")
        pipeline.append({"sort": sort})

        label = f"pipeline-{day.isoformat()}"
        return self._paged(pipeline, label, max_pages, _prepare_pipeline, _finish_pipeline)

    def visitor_pages(self, *, max_pages: int = DEFAULT_MAX_PAGES) -> Iterator[list[Any]]:
        """Every identified visitor, page by page (the ``visitors`` source, by visitorId).

        Args:
            max_pages: Hard cap; reaching it with a full page raises.

        Yields:
            Each page's rows as Pendo sent them, whatever their shape (`decode_visitors`
            checks them); the email is at ``email_field``, the accounts at
            ``metadata.auto.accountids``.

        Raises:
            PagingLimitError: ``max_pages`` full pages and still more rows.
            ApiError: From the request or a malformed answer.
        """
        check_max_pages(max_pages)
        pipeline: list[JSONDict] = [
            {"source": {"visitors": None}},
            {"identified": "visitorId"},
            {"sort": ["visitorId"]},
        ]
        return self._paged(pipeline, "visitors", max_pages, _prepare_rows, _finish_rows)

    def _paged(
        self,
        head: list[JSONDict],
        label: str,
        max_pages: int,
        prepare: Callable[[bytes], _Prepared],
        finish: Callable[[_Prepared, int, bool], tuple[_PageT, int]],
    ) -> Iterator[_PageT]:
        """Append skip/limit to ``head`` page by page until a page has fewer rows than the limit.

        Pendo has no cursor, and a day's rows can change while it is read. So every page after
        the first starts one row early: that row must be the previous page's last row, field for
        field, else rows shifted between the two requests and `PageDriftError` is raised (the
        caller reads the day again). Page k+1 is requested and counted (``prepare``, in a
        `prefetch` thread) while the caller builds page k (``finish``); a short page is the last
        one requested, and memory holds at most two pages.
        """
        fetches = self._fetched(head, label, max_pages, prepare)
        with prefetch(fetches, name=f"pendo-{label}") as fetched:
            for page_index, prepared in enumerate(fetched):
                overlap = 1 if page_index else 0
                count = prepared.count
                page, rows = finish(prepared, page_index, bool(overlap))
                del prepared
                if count is None or rows != count - overlap:
                    # The fetcher stopped after this page; it must be the last one.
                    raise self._shape(
                        "POST", AGGREGATION_PATH, "could not count the rows of the answer"
                    )
                yield page
                if rows < self.page_size:
                    return
        raise self._shape(
            "POST",
            AGGREGATION_PATH,
            f"{max_pages} full pages of {self.page_size} rows and still more; raise max_pages "
            "or page_size (stopping here would lose rows)",
            PagingLimitError,
        )

    def _fetched(
        self,
        head: list[JSONDict],
        label: str,
        max_pages: int,
        prepare: Callable[[bytes], _Prepared],
    ) -> Iterator[_Prepared]:
        """The pages of `_paged`, requested and prepared (in the prefetching thread)."""
        previous_last: str | None = None
        for page_index in range(max_pages):
            overlap = 1 if page_index else 0
            pipeline = [
                *head,
                {"skip": page_index * self.page_size - overlap},
                {"limit": self.page_size + overlap},
            ]
            prepared = prepare(self._aggregate(pipeline, f"{label}-{page_index}"))
            if overlap and (prepared.first is None or prepared.first != previous_last):
                problem = (
                    f"the rows for {label} changed between page {page_index} and page "
                    f"{page_index + 1} (data arriving or reprocessed while it was read)"
                )
                raise self._shape("POST", AGGREGATION_PATH, problem, PageDriftError)
            previous_last, count = prepared.last, prepared.count
            yield prepared
            del prepared
            if count is None or count < self.page_size + overlap:
                return  # the last page (or an unreadable one, which `finish` reports)

    def _aggregate(self, pipeline: list[JSONDict], request_id: str) -> bytes:
        payload = {
            "response": {"mimeType": "application/json"},
            "request": {"requestId": f"pendo-planhat-{request_id}", "pipeline": pipeline},
        }
        response = self._send("POST", AGGREGATION_PATH, content=msgspec.json.encode(payload))
        return response.content

    def _send(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        response = self._request(
            method,
            self.base_url + path,
            auth=self._key_header,
            hint=None if self._answered else _REGION_HINT,
            params=params,
            content=content,
        )
        self._answered = True
        return response


def _any_rows(body: bytes) -> list[Any]:
    """The answer's rows as Python values, whatever each row is (NaN and Infinity included)."""
    return [json.loads(bytes(row)) for row in _results(body)]


def _prepare_rows(body: bytes) -> _Prepared:
    """As `_prepare_pipeline`, but rows of any shape are kept for the caller to check."""
    try:
        rows = _any_rows(body)
    except PayloadShapeError:
        return _Prepared(body, None, None, None, None)  # `_finish_rows` raises it
    keys = [json.dumps(row, sort_keys=True, default=repr) for row in _edges(rows)]
    first, last = keys if keys else (None, None)
    return _Prepared(body, rows, len(rows), first, last)


def _finish_rows(prepared: _Prepared, page_index: int, skip_first: bool) -> tuple[list[Any], int]:
    rows = prepared.rows if prepared.rows is not None else _any_rows(prepared.body)
    rows = rows[1 if skip_first else 0 :]
    return rows, len(rows)


def _item_ids(item_ids: Sequence[str], source: EventSource) -> list[str]:
    noun = source.noun
    if isinstance(item_ids, str):
        raise ConfigError(f"{noun} ids must be a list of {noun} ids, not one string")
    ids = list(dict.fromkeys(item_ids))
    if not ids:
        raise ConfigError(f"{noun} ids are empty: configure at least one Pendo {noun} id")
    bad = [item_id for item_id in ids if not isinstance(item_id, str) or not item_id]
    if bad:
        raise ConfigError(f"{noun} ids must be non-empty strings, got {bad[:5]!r}")
    return ids


def _app_ids_param(app_ids: AppIds) -> str | list[int]:
    """The row-source ``appId`` of ``app_ids``, in the documented forms (pendo_api.md 2.2)."""
    if app_ids == "all":
        return 'expandAppIds("*")'
    if isinstance(app_ids, str):
        raise ConfigError(f"app_ids must be 'all' or a list of Pendo app ids, got {app_ids!r}")
    ids = list(app_ids)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"app_ids must be 'all' or a non-empty list of integers, got {ids!r}")
    return ids


def _windowed(
    stages: Sequence[Mapping[str, Any]], first_ms: int, app_ids: AppIds, days: int
) -> list[JSONDict]:
    head = stages[0] if stages and not isinstance(stages, str | bytes) else None
    source = head.get("source") if isinstance(head, Mapping) else None
    if not isinstance(source, Mapping):
        raise ConfigError(
            f"the pipeline's first stage must be a source stage like {_SOURCE_EXAMPLE}"
        )
    first = source_stage(source, first_ms=first_ms, app_ids=app_ids, days=days)
    return [first, *(dict(stage) for stage in copy.deepcopy(list(stages[1:])))]
