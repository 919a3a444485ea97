"""Planhat client: the object snapshot, the two analytics writes and reading metrics back.

Analytics writes are the exactly-once critical path: `PlanhatClient.post_activities` and
`PlanhatClient.post_dimension_data` send exactly one HTTP request per call (the caller records
each batch in an outbox before sending it), retry only when Planhat certainly did not accept the
batch, and raise `DeliveryUnknownError` when the outcome is unknown. Planhat answers 200 to
whatever it receives, and any 2xx is taken as accepted: nothing after it raises.

Reference: /work/shared/reference/planhat_api.md (sections 1-5).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import httpx
import msgspec
import polars as pl

from ..errors import BatchError, ConfigError, PagingLimitError
from ..models import (
    SNAPSHOT_SCHEMAS,
    DimensionDataResult,
    MetricPoint,
    PlanhatSnapshot,
    UpsertResult,
)
from ..types import JSONDict, Model
from ._http import AttemptHooks, PooledClient, RetryPolicy, Sleep, check_max_pages

__all__ = [
    "API_QUOTA",
    "DIMENSIONDATA_PAGE_LIMIT",
    "MAX_ANALYTICS_BODY_BYTES",
    "MAX_UPSERT_ITEMS",
    "MODEL_PAGE_LIMITS",
    "PlanhatClient",
]

logger = logging.getLogger("pendo_assets.clients")

#: Path and documented maximum ``limit`` per model: 5,000 companies, 2,000 for the others
#: (planhat_api.md section 2.2; the projects maximum is unconfirmed and assumed 2,000).
MODEL_PAGE_LIMITS: Final[Mapping[Model, tuple[str, int]]] = {
    "EndUser": ("endusers", 2_000),
    "Company": ("companies", 5_000),
    "Asset": ("assets", 2_000),
    "Project": ("projects", 2_000),
}
#: Planhat's hard cap on an analytics body (planhat_api.md section 3.4).
MAX_ANALYTICS_BODY_BYTES: Final = 32_000_000
DEFAULT_MAX_PAGES: Final = 10_000
#: ``limit`` of ``GET /dimensiondata``: undocumented; the cruds client defaults to 10,000.
DIMENSIONDATA_PAGE_LIMIT: Final = 10_000
_EPOCH: Final = date(1970, 1, 1)
#: Planhat's main-API quota, 200 calls a minute (planhat_api.md section 5.2; its hard limit, 150 a
#: second, is never reached one request at a time). Whether a 429 carries ``Retry-After`` is
#: undocumented, and five backed-off attempts span about 20 s, so the client keeps under it.
API_QUOTA: Final = (200, 60.0)
#: The most items of one bulk upsert (planhat_api.md section 5.1).
MAX_UPSERT_ITEMS: Final = 5000
_TOKEN_HINT: Final = "check PLANHAT_API_TOKEN: a service-account token with access to this object"
_RAW_LIST: Final = msgspec.json.Decoder(list[msgspec.Raw])


class PlanhatClient(PooledClient):
    """Planhat API client: main API (snapshot) and analytics writes, one pool for both hosts.

    Args:
        api_token: Service-account token, sent as ``Authorization: Bearer``; never logged.
        tenant_token: Tenant token, part of analytics URL paths; never logged.
        api_url: Main API host (regional hosts are ``https://api-<region>.planhat.com``).
        analytics_url: Analytics host.
        timeout, retry, transport, sleep: As for every client (`PooledClient`); one transport
            serves both hosts.
        max_body_bytes: Largest analytics body this client sends (Planhat's cap is 32 MB).
        max_items: Most items in one analytics body (Planhat: "about 150,000" fit in 32 MB).
        api_quota: ``(requests, seconds)``: before a main-API request that would make more than
            ``requests`` in ``seconds``, wait (with ``sleep``) until it would not; None never
            waits. The analytics host has no such limit.
        clock: Monotonic seconds for ``api_quota`` (tests pass a fake one with ``sleep``).

    Raises:
        ConfigError: Empty tokens, non-HTTP URLs or limits out of range.
    """

    _service = "planhat"
    _hint_statuses = (401, 403)

    def __init__(
        self,
        *,
        api_token: str,
        tenant_token: str,
        api_url: str = "https://api.planhat.com",
        analytics_url: str = "https://analytics.planhat.com",
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        max_body_bytes: int = 30_000_000,
        max_items: int = 140_000,
        api_quota: tuple[int, float] | None = API_QUOTA,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("api_token", api_token), ("tenant_token", tenant_token)):
            if not isinstance(value, str) or not value.strip():
                env = "PLANHAT_API_TOKEN" if name == "api_token" else "PLANHAT_TENANT_TOKEN"
                raise ConfigError(f"the Planhat {name} is empty (set {env})")
        for name, url in (("api_url", api_url), ("analytics_url", analytics_url)):
            if not url.startswith(("https://", "http://")):
                raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")
        if not 3 <= max_body_bytes <= MAX_ANALYTICS_BODY_BYTES:
            raise ConfigError(
                f"max_body_bytes must be between 3 and {MAX_ANALYTICS_BODY_BYTES} "
                f"(Planhat's cap), got {max_body_bytes}"
            )
        if max_items < 1:
            raise ConfigError(f"max_items must be 1 or more, got {max_items}")
        if api_quota is not None and not (api_quota[0] >= 1 and api_quota[1] > 0):
            raise ConfigError(f"api_quota must be (requests >= 1, seconds > 0), got {api_quota}")
        super().__init__(
            secrets=[api_token, tenant_token],
            timeout=timeout,
            retry=retry,
            transport=transport,
            sleep=sleep,
        )
        self.api_url = self._base_url = api_url.rstrip("/")
        self.analytics_url = analytics_url.rstrip("/")
        self.max_body_bytes = max_body_bytes
        self.max_items = max_items
        self._bearer = {"Authorization": f"Bearer {api_token}"}
        tenant = quote(tenant_token, safe="")
        self._activities_url = f"{self.analytics_url}/analytics/bulk/{tenant}"
        self._dimensiondata_url = f"{self.analytics_url}/dimensiondata/{tenant}"
        self._quota = api_quota
        self._clock = clock
        self._api_calls: deque[float] = deque()

    def __repr__(self) -> str:
        return f"PlanhatClient(api_url={self.api_url!r}, analytics_url={self.analytics_url!r})"

    def verify_token(self) -> None:
        """Check the API token with one small read (``GET /companies?limit=1``).

        Raises:
            ApiStatusError: Planhat refused the token (401/403) or the URL (404).
            ApiTransportError: ``api_url`` cannot be reached.
        """
        next(self._offset_pages("/companies", {"select": "_id", "sort": "_id"}, 1, 1), None)

    def iter_pages(
        self,
        model: Model,
        *,
        select: Sequence[str],
        page_size: int | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[list[JSONDict]]:
        """Yield pages of one model's objects (``GET /{model path}?limit=&offset=&select=&sort=_id``).

        Stops after a page shorter than ``page_size`` (an empty one included): Planhat returns
        no total or cursor. Sorting by ``_id`` keeps offsets stable while objects are added.

        Args:
            model: ``EndUser``, ``Company``, ``Asset`` or ``Project``.
            select: Planhat field names to return.
            page_size: ``limit``; defaults to and may not exceed the model's documented maximum.
            max_pages: Hard cap; reaching it with a full page raises rather than stop short.

        Yields:
            Each page's objects.

        Raises:
            ConfigError: Unknown model, or a page size / ``max_pages`` without a stop rule.
            PagingLimitError: ``max_pages`` full pages and still more.
            ApiError: From the requests or a malformed answer.
        """
        if model not in MODEL_PAGE_LIMITS:
            raise ConfigError(
                f"unknown Planhat model {model!r}; valid models: {', '.join(MODEL_PAGE_LIMITS)}"
            )
        path, maximum = MODEL_PAGE_LIMITS[model]
        limit = maximum if page_size is None else page_size
        if not 1 <= limit <= maximum:
            raise ConfigError(
                f"page_size for /{path} must be between 1 and {maximum} "
                f"(a page shorter than it is the stop rule), got {page_size}"
            )
        check_max_pages(max_pages)
        # Arguments are checked above, when called; requests start on the first next().
        params = {"select": ",".join(select), "sort": "_id"}
        return self._offset_pages(f"/{path}", params, limit, max_pages)

    def snapshot(self, *, max_pages: int = DEFAULT_MAX_PAGES) -> PlanhatSnapshot:
        """Read End Users, Companies, Assets and Projects whole, de-duplicated by ``_id``.

        A missing or null ``externalId`` is kept as null and ``""`` as ``""``: matching decides.

        Args:
            max_pages: Hard cap per model.

        Returns:
            Frames with the schemas of `SNAPSHOT_SCHEMAS`.

        Raises:
            PayloadShapeError: An object without a string ``_id``.
            ApiError: From the requests.
        """
        frames: dict[Model, pl.DataFrame] = {}
        for model, schema in SNAPSHOT_SCHEMAS.items():
            # One frame per page: a million End Users held as Python strings until the end
            # peaked at seven times the finished frames (bench/snapshot.py).
            parts: list[pl.DataFrame] = []
            for page in self.iter_pages(model, select=list(schema), max_pages=max_pages):
                columns: dict[str, list[Any]] = {name: [] for name in schema}
                for item in page:
                    self._collect(model, item, columns)
                parts.append(pl.DataFrame(columns, schema=schema))
            frame = pl.concat(parts, rechunk=True)
            unique = frame
            if frame["_id"].n_unique() != frame.height:  # counting is cheaper than a copy
                unique = frame.unique(subset="_id", keep="first", maintain_order=True)
                # Offset paging over a changing collection can repeat an object across pages.
                logger.info(
                    "Planhat %s snapshot: dropped %d repeated _id rows",
                    model,
                    frame.height - unique.height,
                )
            frames[model] = unique
        return PlanhatSnapshot(**{MODEL_PAGE_LIMITS[m][0]: frame for m, frame in frames.items()})

    def _collect(self, model: Model, item: JSONDict, columns: dict[str, list[Any]]) -> None:
        object_id = item.get("_id")
        if not isinstance(object_id, str) or not object_id:
            raise self._shape(
                "GET",
                f"/{MODEL_PAGE_LIMITS[model][0]}",
                f"an object has no string _id (got {type(object_id).__name__})",
            )
        for field, column in columns.items():
            value = item.get(field)
            if field == "archived":
                column.append(value if isinstance(value, bool) else None)
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # defensive: an id stored as a number matches its text
            elif value is not None and not isinstance(value, str):
                logger.warning(
                    "Planhat %s %s: %s is a %s, kept as null",
                    model,
                    object_id,
                    field,
                    type(value).__name__,
                )
                value = None
            column.append(value)

    def post_activities(
        self, body: bytes, *, items: int, hooks: AttemptHooks | None = None
    ) -> None:
        """Send one batch of User Activities: exactly one ``POST /analytics/bulk/{tenant}``.

        Args:
            body: A JSON array of ``items`` activities.
            items: How many items ``body`` holds; checked before sending.
            hooks: Told before each attempt and when one was refused and will be retried.

        Raises:
            BatchError: Empty, over ``max_body_bytes`` / ``max_items``, or not ``items`` long;
                nothing was sent.
            DeliveryUnknownError: The batch may have reached Planhat; do not resend blindly.
            PayloadTooLargeError: 413; nothing was accepted, split and send again.
            ApiStatusError: Planhat answered an error (after retries); nothing was accepted.
            ApiTransportError: Planhat could not be reached; nothing was sent.
        """
        self._check_batch(body, items)
        self._request(
            "POST",
            self._activities_url,
            auth={},
            hint=None,
            idempotent=False,
            content=body,
            hooks=hooks,
        )
        logger.info("Planhat accepted a batch of %d activities (%d bytes)", items, len(body))

    def post_dimension_data(
        self, body: bytes, *, items: int, hooks: AttemptHooks | None = None
    ) -> DimensionDataResult:
        """Send one batch of Custom Metric values: exactly one ``POST /dimensiondata/{tenant}``.

        The Bearer token is sent too (Airbyte's Planhat destination requires it for metrics).
        Once Planhat answered 2xx the batch counts as accepted: an unreadable answer is logged
        and reported as ``processed=None``, never raised, so the caller cannot resend it.

        Args:
            body: A JSON array of ``items`` metric values.
            items: How many items ``body`` holds; checked before sending.
            hooks: Told before each attempt and when one was refused and will be retried.

        Returns:
            ``processed`` and Planhat's per-item ``errors`` (``{"item", "error"}``).

        Raises:
            BatchError, DeliveryUnknownError, PayloadTooLargeError, ApiStatusError,
                ApiTransportError: As for `post_activities`.
        """
        self._check_batch(body, items)
        response = self._request(
            "POST",
            self._dimensiondata_url,
            auth=self._bearer,
            hint=_TOKEN_HINT,
            idempotent=False,
            content=body,
            hooks=hooks,
        )
        result = _dimension_data_result(response.content)
        logger.info(
            "Planhat accepted a batch of %d metric values (processed=%s, errors=%d)",
            items,
            result.processed,
            len(result.errors),
        )
        return result

    def upsert_end_users(self, items: Sequence[JSONDict]) -> UpsertResult:
        """Create End Users: exactly one bulk upsert, ``PUT {api_url}/endusers``, keyed by
        ``externalId`` (at most `MAX_UPSERT_ITEMS` items; send requests one at a time).

        Args:
            items: ``{"externalId", "email", "companyId"}`` each, every one with an externalId.

        Returns:
            What Planhat created, already had, and refused, by externalId.

        Raises:
            BatchError: No items, too many, or one without an externalId; nothing was sent.
            DeliveryUnknownError: The request may have reached Planhat: read the End Users back
                before asking again.
            ApiStatusError: Planhat answered an error (after retries); nothing was created.
            ApiTransportError: Planhat could not be reached; nothing was sent.
        """
        if not 1 <= len(items) <= MAX_UPSERT_ITEMS:
            raise BatchError(f"an upsert takes 1 to {MAX_UPSERT_ITEMS} items, got {len(items)}")
        if not all(isinstance(i.get("externalId"), str) and i["externalId"] for i in items):
            raise BatchError("every End User to upsert needs an externalId (else Planhat inserts)")
        response = self._request(
            "PUT",
            self.api_url + "/endusers",
            auth=self._bearer,
            hint=_TOKEN_HINT,
            idempotent=False,
            content=msgspec.json.encode(list(items)),
        )
        result = _upsert_result(self._json(response, "PUT", "/endusers"))
        logger.info(
            "Planhat upserted %d End Users: %d created, %d already there, %d refused",
            len(items),
            len(result.created),
            len(result.existed),
            len(result.errors),
        )
        return result

    def _check_batch(self, body: bytes, items: int) -> None:
        if not isinstance(body, bytes):
            raise BatchError(f"body must be bytes, got {type(body).__name__}")
        if len(body) > self.max_body_bytes:
            raise BatchError(
                f"refusing to send {len(body)} bytes: over max_body_bytes={self.max_body_bytes}; "
                "split the batch"
            )
        if isinstance(items, bool) or not isinstance(items, int) or items < 1:
            raise BatchError(f"refusing to send an empty batch (items={items!r})")
        if items > self.max_items:
            raise BatchError(
                f"refusing to send {items} items: over max_items={self.max_items}; split the batch"
            )
        try:
            count = len(_RAW_LIST.decode(body))
        except msgspec.DecodeError:
            raise BatchError("refusing to send: the body is not a JSON array") from None
        if count == 0:
            raise BatchError("refusing to send an empty JSON array")
        if count != items:
            raise BatchError(f"refusing to send: the body holds {count} items, not items={items}")

    def get_dimension_data(
        self,
        *,
        dimension_id: str,
        start: date,
        end: date,
        company_id: str | None = None,
        page_size: int = DIMENSIONDATA_PAGE_LIMIT,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[list[MetricPoint]]:
        """Yield pages of the data points Planhat holds for one metric over ``[start, end]``.

        ``GET /dimensiondata?dimid=&from=&to=&limit=&offset=`` (planhat_api.md section 4.5),
        ``from``/``to`` as integer days since 1970-01-01, both included. Paged like the object
        lists: it stops after a page shorter than ``page_size``. Points keep Planhat's order,
        so the last point of a day is its latest.

        Args:
            dimension_id: The metric's ``dimensionId`` (``dimid``).
            start: First day (``from``).
            end: Last day (``to``).
            company_id: A Planhat Company ``_id`` (``cId``) to read one company only.
            page_size: ``limit`` per request (1 to `DIMENSIONDATA_PAGE_LIMIT`).
            max_pages: Hard cap; reaching it with a full page raises rather than stop short.

        Yields:
            Each page's points (points without a value are left out).

        Raises:
            ConfigError: ``start`` after ``end``, or a page size / ``max_pages`` without a
                stop rule.
            PagingLimitError: ``max_pages`` full pages and still more.
            PayloadShapeError: An item without ``dimensionId``, ``parentId`` or a usable
                ``time`` or ``value``.
            ApiError: From the requests.
        """
        if start > end:
            raise ConfigError(f"start {start} is after end {end}")
        if not 1 <= page_size <= DIMENSIONDATA_PAGE_LIMIT:
            raise ConfigError(
                f"page_size for /dimensiondata must be between 1 and {DIMENSIONDATA_PAGE_LIMIT} "
                f"(a page shorter than it is the stop rule), got {page_size}"
            )
        check_max_pages(max_pages)
        params = {
            "dimid": dimension_id,
            "from": str((start - _EPOCH).days),
            "to": str((end - _EPOCH).days),
        }
        if company_id is not None:
            params["cId"] = company_id
        # Arguments are checked above, when called; requests start on the first next().
        return self._points(params, page_size, max_pages)

    def _points(
        self, params: Mapping[str, str], limit: int, max_pages: int
    ) -> Iterator[list[MetricPoint]]:
        for page in self._offset_pages("/dimensiondata", params, limit, max_pages):
            points = [self._point(item) for item in page]
            yield [p for p in points if p is not None]

    def _point(self, item: JSONDict) -> MetricPoint | None:
        dimension_id, parent_id = item.get("dimensionId"), item.get("parentId")
        value, day = item.get("value"), _day(item.get("time"))
        if not isinstance(dimension_id, str) or not dimension_id:
            raise self._shape("GET", "/dimensiondata", "an item has no dimensionId")
        if not isinstance(parent_id, str) or not parent_id:
            raise self._shape("GET", "/dimensiondata", "an item has no parentId")
        if day is None:
            problem = f"an item's time is not a date: {str(item.get('time'))[:40]!r}"
            raise self._shape("GET", "/dimensiondata", problem)
        if value is None:
            return None  # Planhat shows a day without a value as null: nothing to compare
        if not _is_number(value):
            problem = f"an item's value is not a number: {str(value)[:40]!r}"
            raise self._shape("GET", "/dimensiondata", problem)
        model = item.get("model")
        return MetricPoint(
            dimension_id=dimension_id,
            day=day,
            value=float(value),
            model=model if isinstance(model, str) and model else "Company",
            parent_id=parent_id,
        )

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self._quota is None or not url.startswith(self.api_url + "/"):
            return super()._request(method, url, **kwargs)
        self._wait_for_quota(*self._quota)
        try:
            return super()._request(method, url, **kwargs)
        finally:
            # Stamped when the answer is in: Planhat counted the call before that, never after.
            self._api_calls.append(self._clock())

    def _wait_for_quota(self, requests: int, seconds: float) -> None:
        calls = self._api_calls
        now = self._clock()
        while calls and now - calls[0] >= seconds:
            calls.popleft()
        if len(calls) >= requests:
            wait = seconds - (now - calls[0])
            logger.info(
                "Planhat API quota: %d calls in %.0f s; waiting %.1f s", requests, seconds, wait
            )
            self._sleep(wait)
            now = max(self._clock(), calls[0] + seconds)
            while calls and now - calls[0] >= seconds:
                calls.popleft()

    def _offset_pages(
        self, path: str, params: Mapping[str, str], limit: int, max_pages: int
    ) -> Iterator[list[JSONDict]]:
        for page_index in range(max_pages):
            query = {**params, "limit": str(limit), "offset": str(page_index * limit)}
            response = self._request(
                "GET", self.api_url + path, auth=self._bearer, hint=_TOKEN_HINT, params=query
            )
            data = self._json(response, "GET", path)
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise self._shape("GET", path, "expected a JSON array of objects")
            yield data
            if len(data) < limit:
                return
        raise self._shape(
            "GET",
            path,
            f"{max_pages} full pages of {limit} and still more; raise max_pages (stopping here "
            "would give an incomplete listing)",
            PagingLimitError,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _day(value: Any) -> date | None:
    """The day of a point's ``time``: an ISO date or timestamp (``2026-11-02T00:00:00.000Z``),
    or a number (days since 1970-01-01, or epoch milliseconds); None when it is neither."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    if not _is_number(value):
        return None
    if abs(value) < 1_000_000:  # days: 1,000,000 days is the year 4707
        return _EPOCH + timedelta(days=int(value))
    try:
        return datetime.fromtimestamp(value / 1000, UTC).date()
    except (OverflowError, OSError, ValueError):
        return None


def _dimension_data_result(content: bytes) -> DimensionDataResult:
    if not content.strip():
        return DimensionDataResult(processed=None)
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        logger.warning("Planhat accepted a metrics batch but its answer is not JSON; ignored")
        return DimensionDataResult(processed=None)
    if not isinstance(data, dict):
        logger.warning("Planhat accepted a metrics batch with an unexpected answer; ignored")
        return DimensionDataResult(processed=None)
    errors: list[JSONDict] = []
    entries = data.get("errors")
    for entry in entries if isinstance(entries, list) else []:
        entry = entry if isinstance(entry, dict) else {"error": entry}
        item = entry.get("item")
        error = {
            "item": item if isinstance(item, dict) else {},
            "error": str(entry.get("error", "")),
        }
        errors.append(error)
    processed = data.get("processed")
    valid = isinstance(processed, int) and not isinstance(processed, bool)
    return DimensionDataResult(processed=processed if valid else None, errors=errors)


def _upsert_result(data: Any) -> UpsertResult:
    """Read ``{insertsKeys, updatesKeys, createdErrors, updatedErrors, ...}`` defensively."""
    if not isinstance(data, dict):
        return UpsertResult()

    def keys(name: str) -> dict[str, str]:
        entries = data.get(name)
        return {
            e["externalId"]: e["_id"]
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict)
            and isinstance(e.get("externalId"), str)
            and isinstance(e.get("_id"), str)
        }

    errors: dict[str | None, str] = {}
    for name in ("createdErrors", "updatedErrors", "permissionErrors"):
        entries = data.get(name)
        for entry in entries if isinstance(entries, list) else []:
            entry = entry if isinstance(entry, dict) else {"error": entry}
            item = entry.get("item")
            ext = item.get("externalId") if isinstance(item, dict) else None
            errors[ext if isinstance(ext, str) else None] = str(entry.get("error", entry))[:500]
    return UpsertResult(created=keys("insertsKeys"), existed=keys("updatesKeys"), errors=errors)
