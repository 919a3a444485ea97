"""In-memory stand-ins for the Pendo and Planhat clients, their resources, and payload builders.

`FakePendoClient` answers what the assets ask of a `PendoClient` (features, a day's feature-event
pages, a pipeline's result pages) from literal rows, decoding pages with the real decoder, so
the assets see exactly what they would see from Pendo. `FakePlanhatClient` serves a snapshot
from literal objects and records every analytics batch it is sent, exactly as the real client's
``post_activities`` / ``post_dimension_data`` receive it.

`FakePendoResource.of(client)` / `FakePlanhatResource.of(client)` wrap them as the ``pendo`` /
``planhat`` resources of ``dg.materialize``: subclasses of the real resources whose
``get_client()`` returns the fake (held in a module registry under the resource's ``fake`` key,
as a resource's fields must be config values).

Builders (``...`` as a value drops the key): `pendo_event`, `pendo_feature`, `planhat_enduser`,
`planhat_company`, `planhat_asset`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from pendo_assets.clients.pendo import decode_events
from pendo_assets.errors import ApiStatusError, DeliveryUnknownError
from pendo_assets.models import (
    ASSET_SCHEMA,
    COMPANY_SCHEMA,
    ENDUSER_SCHEMA,
    FEATURE_EVENTS,
    PROJECT_SCHEMA,
    DimensionDataResult,
    EventSource,
    Feature,
    FeatureEventPage,
    MetricPoint,
    PlanhatSnapshot,
)
from pendo_assets.resources import PendoResource, PlanhatResource

__all__ = [
    "DAY",
    "TIMEZONE",
    "FakePendoClient",
    "FakePendoResource",
    "FakePlanhatClient",
    "FakePlanhatResource",
    "api_status_error",
    "day_ms",
    "no_answer",
    "pendo_event",
    "pendo_feature",
    "planhat_asset",
    "planhat_company",
    "planhat_enduser",
]

TIMEZONE = "America/New_York"
DAY = date(2026, 11, 3)  # after the end of daylight saving time: midnight is 05:00 UTC

PipelineResults = (
    Mapping[date, Sequence[Mapping[str, Any]]]
    | Callable[[Sequence[Mapping[str, Any]], date], Sequence[Mapping[str, Any]]]
)


def day_ms(day: date = DAY, timezone: str = TIMEZONE) -> int:
    """Pendo's ``day`` of a row: the subscription's local midnight as UTC epoch milliseconds."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(timezone))
    return int(midnight.timestamp() * 1000)


def _built(defaults: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    row = {**defaults, **overrides}
    return {k: v for k, v in row.items() if v is not ...}


def pendo_event(*, day: date = DAY, timezone: str = TIMEZONE, **overrides: Any) -> dict[str, Any]:
    """One featureEvents row as Pendo sends it, on ``day``; ``overrides`` use Pendo's field names."""
    return _built(
        {
            "visitorId": "visitor-1",
            "accountId": "acct-1",
            "featureId": "feat-a",
            "appId": -323232,
            "day": day_ms(day, timezone),
            "numEvents": 1,
            "numMinutes": 1,
            "remoteIp": "204.16.137.218",
            "userAgent": "Mozilla/5.0",
            "server": "app.example.com",
        },
        overrides,
    )


def pendo_feature(feature_id: str, name: str | None = None, *, app_id: int = -323232) -> Feature:
    """A Pendo Feature as ``list_features()`` returns it."""
    return Feature(id=feature_id, name=name, app_id=app_id, kind="Feature")


def planhat_enduser(**overrides: Any) -> dict[str, Any]:
    """One End User as Planhat's ``GET /endusers`` sends it."""
    return _built(
        {
            "_id": "eu-1",
            "externalId": "visitor-1",
            "email": "visitor-1@example.com",
            "companyId": "co-1",
            "name": "Visitor One",
        },
        overrides,
    )


def planhat_company(**overrides: Any) -> dict[str, Any]:
    """One Company as Planhat's ``GET /companies`` sends it."""
    return _built({"_id": "co-1", "externalId": "acct-1", "name": "Account One"}, overrides)


def planhat_asset(**overrides: Any) -> dict[str, Any]:
    """One Asset as Planhat's ``GET /assets`` sends it."""
    return _built(
        {"_id": "as-1", "externalId": "asset-1", "companyId": "co-1", "name": "Asset One"},
        overrides,
    )


def api_status_error(service: str = "pendo", status: int = 503) -> ApiStatusError:
    """What a client raises once the service kept answering ``status`` through the retries."""
    url = "/api/v1/aggregation" if service == "pendo" else "/analytics/bulk/fake-tenant"
    return ApiStatusError(
        f"answered {status}",
        service=service,  # type: ignore[arg-type]
        method="POST",
        url=url,
        status_code=status,
    )


def no_answer() -> DeliveryUnknownError:
    """What the Planhat client raises when a batch was sent and no answer came back."""
    url = "/analytics/bulk/fake-tenant"
    return DeliveryUnknownError(
        "no answer (read timeout)", service="planhat", method="POST", url=url
    )


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


class _Closable:
    """Context-manager support; a closed fake refuses to be used, like a closed httpx client."""

    closed = False
    closes = 0

    def __enter__(self) -> Any:
        self.closed = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.closes += 1

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{type(self).__name__} used after close()")


@dataclass
class FakePendoClient(_Closable):
    """What the assets use of `PendoClient`, served from literal rows.

    Args:
        features: What ``list_features()`` returns.
        events: featureEvents rows (see `pendo_event`); a day's request gets the rows whose
            ``day`` is that day's local midnight and whose feature is requested, as Pendo's
            time series and filter select them. pageEvents and trackEvents rows (a ``pageId``
            or ``trackTypeId`` instead of ``featureId``) likewise.
        pages, track_types: What ``list_items`` returns for pages and track events.
        pipeline_results: Result rows per day (the same for every pipeline), or a function of
            ``(stages, day)``.
        page_size: Rows per page, like Pendo's ``limit``.
        fail: Raised instead of answering every request (an ``ApiError``, say); page requests
            raise it at the first page, as the real client does.
        fail_days: Raised instead of answering that day's page requests.

    ``calls`` records ``(method, keyword arguments)`` of every call.
    """

    features: Sequence[Feature] = ()
    events: Sequence[Mapping[str, Any]] = ()
    pages: Sequence[Feature] = ()
    track_types: Sequence[Feature] = ()
    pipeline_results: PipelineResults = field(default_factory=dict)
    page_size: int = 1_000
    fail: BaseException | None = None
    fail_days: Mapping[date, BaseException] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def _call(self, method: str, **kwargs: Any) -> None:
        self._check_open()
        self.calls.append((method, kwargs))

    def _failure(self, day: date) -> BaseException | None:
        return self.fail if self.fail is not None else self.fail_days.get(day)

    def list_features(self) -> list[Feature]:
        self._call("list_features")
        if self.fail is not None:
            raise self.fail
        return list(self.features)

    def list_items(self, source: EventSource) -> list[Feature]:
        if source.name == "feature_events":
            return self.list_features()
        self._call("list_items", source=source.name)
        if self.fail is not None:
            raise self.fail
        return list(self.pages if source.name == "page_events" else self.track_types)

    def event_pages(
        self, *, source: EventSource, day: date, item_ids: Sequence[str], **kwargs: Any
    ) -> Iterator[FeatureEventPage]:
        if source.name == "feature_events":
            return self.feature_event_pages(day=day, feature_ids=item_ids, **kwargs)
        self._call("event_pages", source=source.name, day=day, item_ids=list(item_ids), **kwargs)
        first_ms = day_ms(day, kwargs["timezone"])
        wanted = set(item_ids)
        rows = [
            row
            for row in self.events
            if row.get("day") == first_ms and row.get(source.id_field) in wanted
        ]
        return self._feature_event_pages(rows, day, first_ms, list(item_ids), source)

    def feature_event_pages(
        self,
        *,
        day: date,
        timezone: str,
        feature_ids: Sequence[str],
        app_ids: Any = "all",
        max_pages: int = 10_000,
        **kwargs: Any,
    ) -> Iterator[FeatureEventPage]:
        self._call(
            "feature_event_pages",
            day=day,
            timezone=timezone,
            feature_ids=list(feature_ids),
            app_ids=app_ids,
            max_pages=max_pages,
            **kwargs,
        )
        first_ms = day_ms(day, timezone)
        wanted = set(feature_ids)
        rows = [
            row
            for row in self.events
            if row.get("day") == first_ms
            and row.get("featureId") in wanted
            and (app_ids == "all" or row.get("appId") in app_ids)
        ]
        return self._feature_event_pages(rows, day, first_ms, list(feature_ids))

    def _feature_event_pages(
        self,
        rows: list[Mapping[str, Any]],
        day: date,
        first_ms: int,
        item_ids: list[str],
        source: EventSource = FEATURE_EVENTS,
    ) -> Iterator[FeatureEventPage]:
        if (failure := self._failure(day)) is not None:
            raise failure
        for index, page in enumerate(_pages(rows, self.page_size)):
            body = json.dumps({"startTime": first_ms, "results": page}).encode()
            page = decode_events(body, source=source, day_ms=first_ms, item_ids=item_ids)
            yield dataclasses.replace(page, page_index=index)

    def pipeline_pages(
        self,
        *,
        stages: Sequence[Mapping[str, Any]],
        day: date,
        timezone: str,
        sort_field: str | Sequence[str],
        max_pages: int = 10_000,
        **kwargs: Any,
    ) -> Iterator[list[dict[str, Any]]]:
        self._call(
            "pipeline_pages",
            stages=list(stages),
            day=day,
            timezone=timezone,
            sort_field=sort_field,
            max_pages=max_pages,
            **kwargs,
        )
        source = self.pipeline_results
        rows = source(stages, day) if callable(source) else source.get(day, ())
        return self._pipeline_pages([dict(row) for row in rows], day)

    def _pipeline_pages(
        self, rows: list[dict[str, Any]], day: date
    ) -> Iterator[list[dict[str, Any]]]:
        if (failure := self._failure(day)) is not None:
            raise failure
        yield from _pages(rows, self.page_size)


def _pages(rows: list[Any], size: int) -> list[list[Any]]:
    """Pages of ``size`` rows; the last one shorter (an empty page for no rows), as Pendo pages."""
    pages = [rows[i : i + size] for i in range(0, len(rows), size)]
    if not pages or len(pages[-1]) == size:
        pages.append([])
    return pages


@dataclass
class FakePlanhatClient(_Closable):
    """What the assets use of `PlanhatClient`: the snapshot and the two analytics writes.

    Args:
        endusers, companies, assets, projects: Objects as Planhat lists them (see the builders).
        metric_errors: Items to refuse in Planhat's answer to a metrics batch: ``(externalId,
            dimensionId)`` -> the error Planhat gives (the batch itself is accepted).
        max_items: Most items per batch this client takes (as `PlanhatClient.max_items`);
            None leaves the publisher's own limit.
        fail: Raised instead of answering any request.
        post_failures: Raised, in turn, by the next analytics posts instead of answering
            (``DeliveryUnknownError``: the batch may have landed; ``ApiStatusError``: refused).

    ``activity_batches`` / ``metric_batches`` hold each batch received and answered, decoded
    from its body; ``failed_batches`` those answered with one of ``post_failures``. Metric
    items accepted on an object listed here are kept as ``points``, which
    ``get_dimension_data`` reads back (like Planhat, one point per item).
    """

    endusers: Sequence[Mapping[str, Any]] = ()
    companies: Sequence[Mapping[str, Any]] = ()
    assets: Sequence[Mapping[str, Any]] = ()
    projects: Sequence[Mapping[str, Any]] = ()
    metric_errors: Mapping[tuple[str, str], str] = field(default_factory=dict)
    max_items: int | None = None
    fail: BaseException | None = None
    post_failures: list[BaseException] = field(default_factory=list)
    activity_batches: list[list[dict[str, Any]]] = field(default_factory=list)
    metric_batches: list[list[dict[str, Any]]] = field(default_factory=list)
    failed_batches: list[list[dict[str, Any]]] = field(default_factory=list)
    snapshots: int = 0
    points: list[MetricPoint] = field(default_factory=list)

    def _check(self) -> None:
        self._check_open()
        if self.fail is not None:
            raise self.fail

    def snapshot(self, *, max_pages: int = 10_000) -> PlanhatSnapshot:
        self._check()
        self.snapshots += 1
        return PlanhatSnapshot(
            endusers=_frame(self.endusers, ENDUSER_SCHEMA),
            companies=_frame(self.companies, COMPANY_SCHEMA),
            assets=_frame(self.assets, ASSET_SCHEMA),
            projects=_frame(self.projects, PROJECT_SCHEMA),
        )

    def post_activities(self, body: bytes, *, items: int, hooks: Any = None) -> None:
        self.activity_batches.append(self._received(body, items, hooks))

    def post_dimension_data(
        self, body: bytes, *, items: int, hooks: Any = None
    ) -> DimensionDataResult:
        batch = self._received(body, items, hooks)
        self.metric_batches.append(batch)
        errors = [
            {"item": item, "error": self.metric_errors[key]}
            for item in batch
            if (key := (item["externalId"], item["dimensionId"])) in self.metric_errors
        ]
        refused = {id(e["item"]) for e in errors}
        objects = {"Company": self.companies, "EndUser": self.endusers}
        objects |= {"Asset": self.assets, "Project": self.projects}
        for item in batch:
            model = item.get("model") or "Company"
            found = [o for o in objects[model] if o.get("externalId") == item["externalId"]]
            if id(item) not in refused and found:
                day = date.fromisoformat(item["date"])
                point = MetricPoint(item["dimensionId"], day, item["value"], model, found[0]["_id"])
                self.points.append(point)
        return DimensionDataResult(processed=len(batch) - len(errors), errors=errors)

    def get_dimension_data(
        self, *, dimension_id: str, start: date, end: date
    ) -> Iterator[list[MetricPoint]]:
        self._check()
        yield [p for p in self.points if p.dimension_id == dimension_id and start <= p.day <= end]

    def _received(self, body: bytes, items: int, hooks: Any) -> list[dict[str, Any]]:
        if hooks is not None:
            hooks.before_send()
        self._check()
        assert isinstance(body, bytes), type(body)
        batch = json.loads(body)
        assert isinstance(batch, list) and batch, "an empty batch must never be sent"
        assert len(batch) == items, (len(batch), items)
        assert self.max_items is None or items <= self.max_items, (items, self.max_items)
        if self.post_failures:
            self.failed_batches.append(batch)
            raise self.post_failures.pop(0)
        return batch

    @property
    def activities(self) -> list[dict[str, Any]]:
        """Every activity item received, in order."""
        return list(itertools.chain.from_iterable(self.activity_batches))

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every metric item received, in order."""
        return list(itertools.chain.from_iterable(self.metric_batches))


def _frame(objects: Sequence[Mapping[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    """Objects in the snapshot's layout: Planhat's fields as columns, absent ones null."""
    return pl.DataFrame(
        {name: [obj.get(name) for obj in objects] for name in schema}, schema=schema
    ).unique(subset="_id", keep="first", maintain_order=True)


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------

# A resource's fields are config values, so the fakes live here under a key the resource holds.
_CLIENTS: dict[str, Any] = {}
_KEYS = itertools.count(1)


def _register(client: Any) -> str:
    key = f"fake-{next(_KEYS)}"
    _CLIENTS[key] = client
    return key


def _client(key: str) -> Any:
    client = _CLIENTS[key]
    client.closed = False  # a fresh client for each get_client(), as the real resources give
    return client


class FakePendoResource(PendoResource):
    """The ``pendo`` resource, handing out a `FakePendoClient`."""

    integration_key: str = "fake-pendo-key"
    fake: str

    @classmethod
    def of(cls, client: FakePendoClient) -> FakePendoResource:
        return cls(fake=_register(client))

    def get_client(self) -> FakePendoClient:  # type: ignore[override]
        client: FakePendoClient = _client(self.fake)
        return client


class FakePlanhatResource(PlanhatResource):
    """The ``planhat`` resource, handing out a `FakePlanhatClient`."""

    api_token: str = "fake-planhat-token"
    tenant_token: str = "fake-tenant"
    fake: str

    @classmethod
    def of(cls, client: FakePlanhatClient) -> FakePlanhatResource:
        return cls(fake=_register(client))

    def get_client(self) -> FakePlanhatClient:  # type: ignore[override]
        client: FakePlanhatClient = _client(self.fake)
        return client
