"""HTTP servers of the sandbox: Pendo, the Planhat main API and the Planhat analytics host.

Built on the stdlib ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, ``Content-Length`` on every
answer) so that faults can act on the wire itself: TCP resets, truncated bodies, garbage bodies.
Every request is recorded before its answer is written, so a client that got an answer can
assert on the recording at once.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import io
import ipaddress
import math
import os
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import polars as pl

from pendo_assets.types import MODELS, JSONDict, Model

from .faults import Faults, SandboxService
from .generator import Dataset
from .pipeline import PipelineError, PipelineRunner
from .planhat import COLLECTIONS, MAX_LIMIT
from .recorder import ActivityRecord, MetricRecord, Recorder, UpsertRecord
from .rows import PendoRows, RowInjection, apply_injections

__all__ = [
    "CONTROL_PREFIX",
    "DIMENSIONDATA_DEFAULT_LIMIT",
    "DIMENSIONDATA_MAX_LIMIT",
    "MAX_ANALYTICS_BODY",
    "MAX_UPSERT_ITEMS",
    "App",
    "ControlApp",
    "PendoApp",
    "PlanhatAnalyticsApp",
    "PlanhatApiApp",
    "RateLimiter",
    "Request",
    "Response",
    "make_server",
    "require_loopback",
    "rows_json",
]

CONTROL_PREFIX = "/_sandbox/"
MAX_ANALYTICS_BODY = 32 * 1024 * 1024
MAX_UPSERT_ITEMS = 5000
DIMENSIONDATA_DEFAULT_LIMIT = 2000
DIMENSIONDATA_MAX_LIMIT = 10_000
_TRANSPORT_FAULTS = frozenset(
    {"status", "delay", "reset", "reset_after_apply", "truncate", "invalid_json"}
)
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """A parsed request handed to an app."""

    seq: int
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def param(self, name: str) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    """An app's answer; ``items`` and ``applied`` feed the request recording."""

    status: int
    body: bytes | Sequence[bytes | memoryview] = b""
    content_type: str | None = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    items: int = 0
    applied: bool = False

    def chunks(self) -> list[bytes | memoryview]:
        """The body as a list of byte chunks."""
        return [self.body] if isinstance(self.body, bytes) else list(self.body)


def _json(
    status: int,
    payload: Any,
    *,
    items: int = 0,
    applied: bool = False,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    return Response(status, msgspec.json.encode(payload), _JSON, headers or [], items, applied)


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode(), _TEXT)


def rows_json(frame: pl.DataFrame) -> list[bytes | memoryview]:
    """A frame as a JSON array of row objects, in chunks (NDJSON from Polars, newlines -> commas).

    Polars escapes control characters inside strings, so the only raw newlines in its NDJSON are
    the row separators.
    """
    if frame.height == 0:
        return [b"[]"]
    buf = io.BytesIO()
    frame.write_ndjson(buf)
    data = buf.getvalue().replace(b"\n", b",")
    return [b"[", memoryview(data)[:-1], b"]"]


class App(Protocol):
    """What a sandbox server speaks: one service's routes."""

    service: SandboxService
    max_body: int | None

    def handle(self, req: Request) -> Response: ...


class RateLimiter:
    """A sliding-window limit of ``requests`` per ``per_seconds`` (thread-safe)."""

    def __init__(self, requests: int, per_seconds: float) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("rate limit needs requests >= 1 and per_seconds > 0")
        self.requests = requests
        self.per_seconds = per_seconds
        self._hits: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float | None:
        """Take a slot: None when allowed, else the seconds until one frees up."""
        now = time.monotonic()
        with self._lock:
            while self._hits and now - self._hits[0] >= self.per_seconds:
                self._hits.popleft()
            if len(self._hits) < self.requests:
                self._hits.append(now)
                return None
            return self.per_seconds - (now - self._hits[0])


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode()
    )


# --------------------------------------------------------------------------- Pendo


class PendoApp:
    """``/api/v1/token/verify``, ``/api/v1/feature``, ``/api/v1/page`` and ``/api/v1/aggregation``."""

    service: SandboxService = "pendo"
    max_body: int | None = None

    def __init__(
        self,
        *,
        dataset: Dataset,
        runner: PipelineRunner,
        key: str,
        rows: PendoRows | None = None,
    ) -> None:
        self.dataset = dataset
        self.runner = runner
        self.key = key
        self.rows = rows

    def handle(self, req: Request) -> Response:
        """Route one request."""
        if not _same(req.headers.get("x-pendo-integration-key"), self.key):
            # Pendo answers a missing or wrong key with 403 and an empty body.
            return Response(403, b"", content_type=None)
        path = req.path.rstrip("/")
        if req.method == "GET" and path == "/api/v1/token/verify":
            return _json(200, {"valid": True, "writeAccess": False})
        if req.method == "GET" and path == "/api/v1/feature":
            return self._features(req)
        if req.method == "GET" and path.startswith("/api/v1/feature/"):
            fid = unquote(path.rsplit("/", 1)[1])
            hits = [f for f in self.dataset.features() if f["id"] == fid]
            return _json(200, hits[0], items=1) if hits else Response(404, b"", content_type=None)
        if req.method == "POST" and path == "/api/v1/aggregation":
            return self._aggregation(req)
        if req.method == "GET" and path == "/api/v1/page":
            return self._features(req, self.dataset.pages())
        if req.method == "GET" and path.startswith("/api/v1/page/"):
            pid = unquote(path.rsplit("/", 1)[1])
            hits = [p for p in self.dataset.pages() if p["id"] == pid]
            return _json(200, hits[0], items=1) if hits else Response(404, b"", content_type=None)
        return _text(404, "Not Found")

    def _features(self, req: Request, objects: list[JSONDict] | None = None) -> Response:
        """Features (or, given ``objects``, pages): every app with ``?expand=*``."""
        features = self.dataset.features() if objects is None else objects
        app_param = req.param("appId")
        if req.param("expand") == "*":
            return _json(200, features, items=len(features))
        if app_param is not None:
            try:
                app_id = int(app_param)
            except ValueError:
                return _text(400, f"Invalid appId {app_param!r}")
            features = [f for f in features if f["appId"] == app_id]
        else:
            # Like Pendo: only the default app unless ?expand=* asks for every app.
            features = [f for f in features if f["appId"] == self.dataset.default_app_id]
        return _json(200, features, items=len(features))

    def _aggregation(self, req: Request) -> Response:
        try:
            payload = msgspec.json.decode(req.body)
        except msgspec.DecodeError:
            return _text(400, "Invalid JSON body")
        request = payload.get("request") if isinstance(payload, dict) else None
        if not isinstance(request, dict) or "pipeline" not in request:
            return _text(
                400,
                'Body must be {"response": {"mimeType": "application/json"}, "request": {"pipeline": [...]}}',
            )
        response_spec = payload.get("response") or {}
        mime = (
            response_spec.get("mimeType", "application/json")
            if isinstance(response_spec, dict)
            else None
        )
        if mime not in ("application/json", None):
            return _text(
                400, f"Unsupported mimeType {mime!r}; the sandbox answers application/json"
            )
        pipeline = request["pipeline"]
        injections = (
            self.rows.find(pipeline, req.body)
            if self.rows is not None and isinstance(pipeline, list)
            else []
        )
        if injections:
            return self._injected(pipeline, injections)
        try:
            result = self.runner.run(pipeline, now_ms=self.dataset.now_ms)
        except PipelineError as exc:
            return _text(400, str(exc))
        body = [b'{"startTime":%d,"results":' % result.start_ms, *rows_json(result.frame), b"}"]
        return Response(200, body, _JSON, items=result.frame.height)

    def _injected(self, pipeline: list[Any], injections: Sequence[RowInjection]) -> Response:
        """Answer with the day's real rows plus injected ones, paged after the injection."""
        stages = list(pipeline)
        skip, limit = 0, None
        while stages and isinstance(stages[-1], dict) and len(stages[-1]) == 1:
            ((name, value),) = stages[-1].items()
            if name not in ("skip", "limit") or not isinstance(value, int):
                break
            stages.pop()
            if name == "skip":
                skip = value
            else:
                limit = value
        try:
            result = self.runner.run(stages, now_ms=self.dataset.now_ms)
        except PipelineError as exc:
            return _text(400, str(exc))
        buf = io.BytesIO()
        if result.frame.height:
            result.frame.write_ndjson(buf)
        lines = buf.getvalue().splitlines()
        rows = apply_injections(lines, injections)
        page = rows[skip:] if limit is None else rows[skip : skip + limit]
        body = b'{"startTime":%d,"results":[%s]}' % (result.start_ms, b",".join(page))
        return Response(200, body, _JSON, items=len(page))


# --------------------------------------------------------------------------- Planhat main API


class _BadRequest(Exception):
    pass


def _int_param(req: Request, name: str, default: int) -> int:
    raw = req.param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise _BadRequest(f"{name} must be an integer") from exc
    if value < 0:
        raise _BadRequest(f"{name} must be >= 0")
    return value


class PlanhatApiApp:
    """``GET /endusers|companies|assets|projects``, ``PUT /<collection>``, ``GET /dimensiondata``."""

    service: SandboxService = "planhat_api"
    max_body: int | None = MAX_ANALYTICS_BODY

    def __init__(
        self,
        *,
        dataset: Dataset,
        token: str,
        recorder: Recorder,
        rate_limit: RateLimiter | None = None,
    ) -> None:
        self.dataset = dataset
        self.token = token
        self.recorder = recorder
        self.rate_limit = rate_limit

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return _same(value.strip(), self.token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            # Planhat also takes Basic auth with the token as user name and an empty password.
            return _same(decoded, f"{self.token}:")
        return False

    def handle(self, req: Request) -> Response:
        """Route one request."""
        if not self._authorized(req.headers.get("Authorization")):
            return _json(401, {"error": "planhat: unauthorized request"})
        limiter = self.rate_limit
        if limiter is not None:
            wait = limiter.acquire()
            if wait is not None:
                retry = str(max(1, math.ceil(wait)))
                return _json(429, {"error": "Too Many Requests"}, headers=[("Retry-After", retry)])
        segments = [unquote(s) for s in req.path.strip("/").split("/")]
        try:
            if segments == ["dimensiondata"] and req.method == "GET":
                return self._dimensiondata(req)
            if len(segments) == 1 and segments[0] in COLLECTIONS:
                model = COLLECTIONS[segments[0]]
                if req.method == "GET":
                    return self._list(req, model)
                if req.method == "PUT":
                    return self._upsert(req, model)
            if len(segments) == 2 and segments[0] in COLLECTIONS and req.method == "GET":
                record = self.dataset.planhat.get(COLLECTIONS[segments[0]], segments[1])
                return _json(200, record, items=1) if record else _json(404, {"error": "Not found"})
        except _BadRequest as exc:
            return _json(400, {"error": str(exc)})
        return _json(404, {"error": "Not found"})

    def _list(self, req: Request, model: Model) -> Response:
        limit = _int_param(req, "limit", 100)
        if limit > MAX_LIMIT[model]:
            raise _BadRequest(f"limit must be at most {MAX_LIMIT[model]} for {model}")
        offset = _int_param(req, "offset", 0)
        select_raw = req.param("select")
        select = [s.strip() for s in select_raw.split(",") if s.strip()] if select_raw else None
        filters = {}
        for name in ("companyId", "email"):
            raw = req.param(name)
            if raw:
                filters[name] = {v for v in raw.split(",") if v}
        page = self.dataset.planhat.page(
            model,
            offset=offset,
            limit=limit,
            select=select,
            sort=req.param("sort"),
            filters=filters,
        )
        return _json(200, page, items=len(page))

    def _upsert(self, req: Request, model: Model) -> Response:
        try:
            items = msgspec.json.decode(req.body)
        except msgspec.DecodeError as exc:
            raise _BadRequest("body must be a JSON array") from exc
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise _BadRequest("body must be a JSON array")
        if len(items) > MAX_UPSERT_ITEMS:
            raise _BadRequest(f"at most {MAX_UPSERT_ITEMS} items per request, got {len(items)}")
        outcomes: list[str] = []
        report = self.dataset.planhat.upsert(model, items, outcomes=outcomes)
        self.recorder.add_upserts(
            [UpsertRecord(req.seq, model, item, o) for item, o in zip(items, outcomes, strict=True)]
        )
        failed = bool(report["createdErrors"] or report["updatedErrors"])
        return _json(206 if failed else 200, report, items=len(items), applied=True)

    def _dimensiondata(self, req: Request) -> Response:
        # Paged by limit/offset over the points in the order received, like Planhat's lists
        # (a bare JSON array, a short page is the last). The company filter is spelled `cId` by
        # one client and `cid` by another (planhat_api.md section 7): both are taken.
        limit = _int_param(req, "limit", DIMENSIONDATA_DEFAULT_LIMIT)
        if not 1 <= limit <= DIMENSIONDATA_MAX_LIMIT:
            raise _BadRequest(f"limit must be between 1 and {DIMENSIONDATA_MAX_LIMIT}")
        points = self.dataset.planhat.metric_points(
            company_id=req.param("cId") or req.param("cid"),
            dimension_id=req.param("dimid"),
            from_day=_int_param(req, "from", -(10**9)) if req.param("from") else None,
            to_day=_int_param(req, "to", 10**9) if req.param("to") else None,
            offset=_int_param(req, "offset", 0),
            limit=limit,
        )
        return _json(200, points, items=len(points))


# --------------------------------------------------------------------------- Planhat analytics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class PlanhatAnalyticsApp:
    """``POST /analytics/bulk/{tenant}``, ``POST /analytics/{tenant}``, ``POST /dimensiondata/{tenant}``.

    Always 200 (like Planhat's data sinks): unmatched items are silently dropped, but recorded.
    """

    service: SandboxService = "planhat_analytics"
    max_body: int | None = MAX_ANALYTICS_BODY

    def __init__(
        self, *, dataset: Dataset, tenant: str, recorder: Recorder, faults: Faults
    ) -> None:
        self.dataset = dataset
        self.tenant = tenant
        self.recorder = recorder
        self.faults = faults

    def handle(self, req: Request) -> Response:
        """Route one request."""
        segments = [unquote(s) for s in req.path.strip("/").split("/")]
        if req.method != "POST":
            return _text(404, "Not Found")
        if len(segments) == 3 and segments[:2] == ["analytics", "bulk"]:
            return self._activities(req, segments[2])
        if len(segments) == 2 and segments[0] == "analytics":
            return self._activities(req, segments[1])
        if len(segments) == 2 and segments[0] == "dimensiondata":
            return self._metrics(req, segments[1])
        return _text(404, "Not Found")

    @staticmethod
    def _items(body: bytes) -> list[Any] | None:
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return None
        return data if isinstance(data, list) else [data]

    def _activities(self, req: Request, tenant: str) -> Response:
        tenant_ok = _same(tenant, self.tenant)
        items = self._items(req.body)
        if items is None:
            return _json(200, {}, applied=True)
        store = self.dataset.planhat
        records = []
        for item in items:
            if not isinstance(item, dict):
                records.append(
                    ActivityRecord(
                        req.seq, tenant_ok, None, None, None, None, 0, None, None, None, True, item
                    )
                )
                continue
            ext, email = item.get("externalId"), item.get("email")
            hits = store.match_external("EndUser", ext) if ext else store.match_email(email)
            matched = bool(hits)
            chosen = self._pick_enduser(hits, item.get("companyExternalId"))
            records.append(
                ActivityRecord(
                    request_seq=req.seq,
                    tenant_ok=tenant_ok,
                    external_id=ext,
                    email=email,
                    action=item.get("action"),
                    date=item.get("date"),
                    count=item.get("count", 1),
                    weight=item.get("weight"),
                    company_external_id=item.get("companyExternalId"),
                    info=item.get("info"),
                    dropped=not (tenant_ok and matched),
                    raw=item,
                    enduser_id=chosen if tenant_ok else None,
                )
            )
        self.recorder.add_activities(records)
        return _json(200, {}, items=len(items), applied=True)

    def _pick_enduser(self, hits: list[JSONDict], company_external_id: Any) -> str | None:
        """The End User an activity lands on: the only hit, or the only one whose Company's
        externalId is ``companyExternalId`` (Planhat's rule for an email on several End Users)."""
        if len(hits) > 1:
            store = self.dataset.planhat
            hits = [
                h
                for h in hits
                if company_external_id
                and store.company_external_id(h.get("companyId")) == company_external_id
            ]
        return hits[0]["_id"] if len(hits) == 1 else None

    def _metrics(self, req: Request, tenant: str) -> Response:
        tenant_ok = _same(tenant, self.tenant)
        items = self._items(req.body)
        if items is None:
            return _json(
                200,
                {"processed": 0, "errors": [{"item": None, "error": "body must be JSON"}]},
                applied=True,
            )
        fault = self.faults.take(
            self.service, req.method, req.path, kinds=frozenset({"row_errors"}), body=req.body
        )
        rejected = fault.indexes if fault else frozenset()
        store = self.dataset.planhat
        errors: list[JSONDict] = []
        records: list[MetricRecord] = []
        processed = 0
        for i, item in enumerate(items):
            error = fault.error if fault and i in rejected else self._invalid(item)
            d = item if isinstance(item, dict) else {}
            model: Model = d.get("model") or "Company"
            if error:
                errors.append({"item": item, "error": error})
                records.append(
                    MetricRecord(
                        req.seq,
                        tenant_ok,
                        d.get("dimensionId"),
                        model,
                        d.get("externalId"),
                        d.get("date"),
                        d.get("value"),
                        True,
                        error,
                        item,
                    )
                )
                continue
            processed += 1
            targets = store.match_external(model, d["externalId"]) if tenant_ok else []
            if targets:
                store.store_metric(
                    target=targets[0],
                    model=model,
                    dimension_id=d["dimensionId"],
                    value=float(d["value"]),
                    day=d.get("date"),
                )
            records.append(
                MetricRecord(
                    req.seq,
                    tenant_ok,
                    d["dimensionId"],
                    model,
                    d["externalId"],
                    d.get("date"),
                    d["value"],
                    not targets,
                    None,
                    item,
                )
            )
        self.recorder.add_metrics(records)
        return _json(
            200, {"processed": processed, "errors": errors}, items=len(items), applied=True
        )

    @staticmethod
    def _invalid(item: Any) -> str | None:
        if not isinstance(item, dict):
            return "item must be an object"
        if not isinstance(item.get("dimensionId"), str) or not item["dimensionId"]:
            return "dimensionId must be specified"
        if not isinstance(item.get("externalId"), str) or not item["externalId"]:
            return "externalId must be specified"
        if "value" not in item or item["value"] is None:
            return "value must be specified"
        if not _is_number(item["value"]):
            return "value must be a number"
        model = item.get("model") or "Company"
        if model not in MODELS:
            return f"model must be one of {', '.join(MODELS)}"
        date_value = item.get("date")
        if date_value is not None and not isinstance(date_value, str):
            return "date must be a string"
        return None


# --------------------------------------------------------------------------- control API


def _flag(req: Request, name: str, default: bool) -> bool:
    raw = req.param(name)
    return default if raw is None else raw.lower() not in ("0", "false", "no", "")


class ControlApp:
    """``/_sandbox/...`` on every server: lets an out-of-process benchmark read what was received
    and drive the data set. Loopback only, like the rest; never recorded or faulted.

    GET ``spec``, ``requests`` (``?service=&path_prefix=``), ``activity_totals``,
    ``activity_totals_by_key`` and ``metric_points`` (``?include_dropped=0|1``), ``created``
    (``?model=EndUser``: the upsert items that created a record); POST ``revise_day``
    (``{"day", "grow"}``), ``add_late_endusers``, ``now`` (``{"now": ISO datetime | null}``),
    ``clear``, ``set_metric_day`` (``{"dimensionId", "model", "externalId", "day", "value":
    number | null}``: a metric day changed, or deleted with null, on the Planhat side).

    Faults, for tests that run the product as another process: GET ``faults`` (``{"fired",
    "active": [...]}``); POST ``faults`` (``{"service", "kind", "path", "method", "times",
    "params": {...}}``, as :meth:`Faults.add` takes them) and ``faults/clear``.
    """

    service: SandboxService = "pendo"
    max_body: int | None = 1 << 20

    def __init__(
        self, *, dataset: Dataset, recorder: Recorder, faults: Faults | None = None
    ) -> None:
        self.dataset = dataset
        self.recorder = recorder
        self.faults = faults

    def handle(self, req: Request) -> Response:
        """Route one control request."""
        name = req.path[len(CONTROL_PREFIX) :].strip("/")
        ds, rec = self.dataset, self.recorder
        if req.method == "GET":
            if name == "spec":
                return _json(
                    200,
                    {
                        "spec": dataclasses.asdict(ds.spec),
                        "revisions": ds.revision_log(),
                        "now": ds.now.isoformat(),
                    },
                )
            if name == "requests":
                records = rec.requests(
                    service=req.param("service"), path_prefix=req.param("path_prefix")
                )
                return _json(200, [dataclasses.asdict(r) for r in records])
            if name == "activity_totals":
                totals = rec.activity_totals(include_dropped=_flag(req, "include_dropped", True))
                return _json(200, [[*k, v] for k, v in totals.items()])
            if name == "activity_totals_by_key":
                totals = rec.activity_totals_by_key(
                    include_dropped=_flag(req, "include_dropped", False)
                )
                return _json(200, [[*k, v] for k, v in totals.items()])
            if name == "created":
                return _json(200, rec.created(req.param("model") or "EndUser"))
            if name == "metric_points":
                points = rec.metric_points(include_dropped=_flag(req, "include_dropped", True))
                return _json(200, [[*k, v] for k, v in points.items()])
            if name == "faults" and self.faults is not None:
                active = [
                    {
                        "service": f.service,
                        "path": f.path,
                        "kind": f.kind,
                        "method": f.method,
                        "remaining": f.remaining,
                        "fired": f.fired,
                    }
                    for f in self.faults.active
                ]
                return _json(200, {"fired": self.faults.fired, "active": active})
        if req.method == "POST":
            try:
                body = msgspec.json.decode(req.body) if req.body else {}
            except msgspec.DecodeError:
                return _text(400, "body must be JSON")
            if not isinstance(body, dict):
                return _text(400, "body must be a JSON object")
            if name == "revise_day" and isinstance(body.get("day"), str):
                revision = ds.revise_day(body["day"], grow=bool(body.get("grow", True)))
                return _json(200, {"revision": revision})
            if name == "add_late_endusers":
                return _json(200, {"added": ds.add_late_endusers()})
            if name == "now":
                raw = body.get("now")
                ds.now = datetime.fromisoformat(raw) if isinstance(raw, str) else None
                return _json(200, {"now": ds.now.isoformat()})
            if name == "clear":
                rec.clear()
                return _json(200, {})
            if name == "set_metric_day":
                value = body.get("value")
                if value is not None and not _is_number(value):
                    return _text(400, "value must be a number or null")
                try:
                    removed = ds.planhat.set_metric_day(
                        dimension_id=str(body.get("dimensionId")),
                        model=body.get("model") or "Company",
                        external_id=str(body.get("externalId")),
                        day=str(body.get("day")),
                        value=value,
                    )
                except KeyError as exc:
                    return _text(404, str(exc.args[0]))
                return _json(200, {"removed": removed})
            if name == "faults" and self.faults is not None:
                params = body.get("params") or {}
                if not isinstance(params, dict):
                    return _text(400, "params must be a JSON object")
                try:
                    fault = self.faults.add(
                        service=body.get("service"),  # type: ignore[arg-type]
                        kind=body.get("kind"),  # type: ignore[arg-type]
                        path=str(body.get("path") or "/"),
                        method=body.get("method"),
                        times=body.get("times", 1),
                        **params,
                    )
                except (TypeError, ValueError) as exc:
                    return _text(400, str(exc))
                return _json(200, {"kind": fault.kind, "path": fault.path, "times": fault.times})
            if name == "faults/clear" and self.faults is not None:
                self.faults.clear()
                return _json(200, {})
        return _text(404, "Not Found")


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        *,
        app: App,
        recorder: Recorder,
        faults: Faults,
        clock: Callable[[], datetime],
        control: App | None = None,
    ) -> None:
        self.app = app
        self.control = control
        self.recorder = recorder
        self.faults = faults
        self.clock = clock
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away (timeouts, resets): nothing to report
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pendo-planhat-sandbox"
    sys_version = ""
    timeout = 300  # idle keep-alive connections close after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK
        # stall every small answer by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return format_datetime(self.server.clock(), usegmt=True)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET
    do_PATCH = do_GET

    def _read_body(self, limit: int | None) -> tuple[bytes, int, bool]:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(65537)
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(n)
                self.rfile.readline(65537)
                size += n
                if limit is None or size <= limit:
                    chunks.append(data)
            too_large = limit is not None and size > limit
            return (b"" if too_large else b"".join(chunks)), size, too_large
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if limit is not None and length > limit:
            remaining = length
            while remaining > 0:
                got = self.rfile.read(min(remaining, 1 << 20))
                if not got:
                    break
                remaining -= len(got)
            return b"", length, True
        return self.rfile.read(length), length, False

    def _record(
        self,
        req: Request,
        *,
        status: int | None,
        size: int,
        items: int,
        fault: str | None,
        applied: bool,
    ) -> None:
        self.server.recorder.add_request(
            elapsed=time.perf_counter() - self._started,
            seq=req.seq,
            service=self.server.app.service,
            method=req.method,
            path=req.path,
            query=urlsplit(self.path).query,
            status=status,
            items=items,
            body_bytes=size,
            fault=fault,
            applied=applied,
        )

    def _dispatch(self) -> None:
        self._started = time.perf_counter()
        app, faults = self.server.app, self.server.faults
        split = urlsplit(self.path)
        if split.path.startswith(CONTROL_PREFIX):
            self._control(split.path, split.query)
            return
        req = Request(
            seq=self.server.recorder.next_seq(),
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=b"",
        )
        try:
            body, size, too_large = self._read_body(app.max_body)
        except (ValueError, OSError):
            self.close_connection = True
            self._send(req, _text(400, "Malformed request body"), size=0, fault=None)
            return
        if too_large:
            limit = app.max_body or 0
            shown = f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit} bytes"
            self._send(
                req,
                _json(413, {"error": f"Payload Too Large: bodies are limited to {shown}"}),
                size=size,
                fault=None,
            )
            return
        req = Request(req.seq, req.method, req.path, req.query, req.headers, body)
        fault = faults.take(app.service, req.method, req.path, kinds=_TRANSPORT_FAULTS, body=body)
        kind = fault.kind if fault else None
        if fault is not None and kind == "status":
            resp = Response(
                fault.status,
                fault.body,
                fault.content_type if fault.body else None,
                list(fault.headers.items()),
            )
            self._send(req, resp, size=size, fault=kind)
            return
        if kind == "reset":
            self._record(req, status=None, size=size, items=0, fault=kind, applied=False)
            self._reset()
            return
        if fault is not None and kind == "delay":
            time.sleep(fault.seconds)
        try:
            resp = app.handle(req)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            resp = _text(500, "sandbox internal error")
        if kind == "reset_after_apply":
            self._record(
                req, status=None, size=size, items=resp.items, fault=kind, applied=resp.applied
            )
            self._reset()
            return
        if fault is not None and kind == "invalid_json":
            resp = Response(200, fault.body, _JSON, [], resp.items, resp.applied)
        truncate = fault.fraction if fault is not None and kind == "truncate" else None
        self._send(req, resp, size=size, fault=kind, truncate=truncate)

    def _control(self, path: str, query: str) -> None:
        body, _, _ = self._read_body(1 << 20)
        req = Request(
            0, self.command, path, parse_qs(query, keep_blank_values=True), self.headers, body
        )
        control = self.server.control
        resp = control.handle(req) if control is not None else _text(404, "Not Found")
        self._write(resp)

    def _send(
        self,
        req: Request,
        resp: Response,
        *,
        size: int,
        fault: str | None,
        truncate: float | None = None,
    ) -> None:
        self._record(
            req, status=resp.status, size=size, items=resp.items, fault=fault, applied=resp.applied
        )
        self._write(resp, truncate=truncate)

    def _write(self, resp: Response, *, truncate: float | None = None) -> None:
        chunks = resp.chunks()
        total = sum(len(c) for c in chunks)
        try:
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            if resp.content_type:
                self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            if truncate is None:
                for chunk in chunks:
                    self.wfile.write(chunk)
                return
            # Full Content-Length, part of the body, then close: the client sees a short body.
            keep = int(total * truncate)
            for chunk in chunks:
                if keep <= 0:
                    break
                self.wfile.write(chunk[:keep])
                keep -= len(chunk)
            self.close_connection = True
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), sending no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(self.connection.detach())
        except OSError:
            pass


def require_loopback(host: str) -> None:
    """Refuse any bind address but a loopback one (``localhost``, 127.0.0.0/8, ``::1``).

    Raises:
        ValueError: ``host`` is not a loopback address (``0.0.0.0`` and ``::`` included).
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the sandbox binds loopback addresses only (e.g. 127.0.0.1), not {host!r}"
        )


def make_server(
    host: str,
    port: int,
    *,
    app: App,
    recorder: Recorder,
    faults: Faults,
    clock: Callable[[], datetime],
    control: App | None = None,
) -> ThreadingHTTPServer:
    """Bind one sandbox server (not started).

    Args:
        host: a loopback address.
        port: 0 for an ephemeral port.
        app: which service it speaks.
        recorder: where requests are recorded.
        faults: the fault switches.
        clock: the clock for ``Date`` headers.
        control: answers ``/_sandbox/...`` (not recorded, never faulted), or None.

    Returns:
        The bound server; run ``serve_forever()`` in a thread.

    Raises:
        ValueError: ``host`` is not a loopback address (the sandbox never listens beyond it).
    """
    require_loopback(host)
    cls = _Server6 if ":" in host else _Server
    return cls(
        (host, port), app=app, recorder=recorder, faults=faults, clock=clock, control=control
    )
