"""Extra or altered Pendo aggregation rows for chosen days: the sandbox's bad-input switch.

The generator only produces well-formed rows (its data is typed). Real Pendo subscriptions send
rows without a ``visitorId``, numbers as strings, ``NaN`` tokens, ids longer than anything sane,
and pipelines whose metric fields hold nulls or booleans. A test arms those for one day::

    sandbox.pendo_rows.add(day=date(2026, 11, 3), rows=[row for _, row in malformed_feature_rows(
        day_ms=sandbox.dataset.day_start_ms("2026-11-03"), feature_id=feature_id)])
    sandbox.pendo_rows.add(day="2026-11-03", match='"totalEvents"', id_field="accountId",
                           edits={"acct-00007": {"totalEvents": float("nan")}})

``rows`` are appended after the day's real (sorted) rows of matching requests, and ``edits``
replace fields of real rows, before ``skip``/``limit`` are applied, so paging stays consistent:
every page boundary is the same on every read. A row given as text is sent byte for byte (any
JSON, or not JSON at all); a mapping is encoded with ``NaN``/``Infinity`` tokens for non-finite
floats, as a misbehaving server would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from ._time import as_date

__all__ = [
    "FEATURE_EVENTS",
    "PAGE_EVENTS",
    "TRACK_EVENTS",
    "VISITORS",
    "PendoRows",
    "RowInjection",
    "encode_row",
    "malformed_feature_rows",
    "malformed_visitor_rows",
    "valid_odd_feature_rows",
]

#: ``match`` value meaning the product's own feature-event reads: a ``featureEvents`` source
#: followed only by ``filter``/``sort``/``skip``/``limit`` stages (no grouping pipeline).
FEATURE_EVENTS: Final = "featureEvents rows"
#: The same for the product's ``pageEvents`` and ``trackEvents`` reads.
PAGE_EVENTS: Final = "pageEvents rows"
TRACK_EVENTS: Final = "trackEvents rows"
#: ``match`` value for the product's ``visitors`` reads (a ``visitors`` source with row-read
#: stages and ``select``); ``day`` is not needed, as the source has no timeSeries.
VISITORS: Final = "visitors rows"
_ROW_SOURCES: Final = {
    FEATURE_EVENTS: "featureEvents",
    PAGE_EVENTS: "pageEvents",
    TRACK_EVENTS: "trackEvents",
    VISITORS: "visitors",
}
_ROW_READ_STAGES: Final = frozenset({"filter", "sort", "skip", "limit", "identified"})


def encode_row(row: str | bytes | Mapping[str, Any]) -> bytes:
    """One result row as sent: text as given, a mapping as JSON with NaN/Infinity tokens."""
    if isinstance(row, bytes):
        return row
    if isinstance(row, str):
        return row.encode("utf-8")
    return json.dumps(row, allow_nan=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class RowInjection:
    """Rows added to (or edited in) one day's answers; ``served`` counts answers that had them."""

    day: date | None
    match: str
    rows: list[bytes] = field(default_factory=list)
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)
    id_field: str = "accountId"
    served: int = 0

    def applies(
        self, day_ms: int | None, pipeline: Sequence[Any], body: bytes, start_ms: int | None
    ) -> bool:
        if self.match != VISITORS and day_ms != start_ms:
            return False
        if self.match in _ROW_SOURCES:
            source = (
                pipeline[0].get("source") if pipeline and isinstance(pipeline[0], dict) else None
            )
            if not isinstance(source, dict) or _ROW_SOURCES[self.match] not in source:
                return False
            stages = _ROW_READ_STAGES | ({"select"} if self.match == VISITORS else set())
            return all(isinstance(stage, dict) and set(stage) <= stages for stage in pipeline[1:])
        return self.match.encode() in body


class PendoRows:
    """The armed row injections of one sandbox (thread-safe).

    Args:
        day_start_ms: The dataset's local midnight of a day as epoch ms (Pendo's ``day``).
    """

    def __init__(self, day_start_ms: Callable[[date], int]) -> None:
        self._day_start_ms = day_start_ms
        self._lock = threading.Lock()
        self._items: list[RowInjection] = []
        self._history: list[RowInjection] = []

    def add(
        self,
        *,
        day: date | str | None = None,
        rows: Sequence[str | bytes | Mapping[str, Any]] = (),
        edits: Mapping[str, Mapping[str, Any]] | None = None,
        id_field: str = "accountId",
        match: str = FEATURE_EVENTS,
    ) -> RowInjection:
        """Serve extra rows, and/or altered rows, in the answers for ``day``.

        Args:
            day: The subscription-local day whose aggregations get them (required unless
                ``match`` is `VISITORS`).
            rows: Rows appended after the real ones (text sent as is, mappings JSON-encoded).
            edits: ``{id value: {field: new value}}``: real rows whose ``id_field`` equals the
                id get those fields replaced (values JSON-encoded, NaN/Infinity as tokens).
            id_field: The field ``edits`` are keyed on.
            match: `FEATURE_EVENTS` (the product's feature-event reads; likewise
                `PAGE_EVENTS`, `TRACK_EVENTS`, `VISITORS`), or a text the request body must
                contain (e.g. ``'"totalEvents"'`` for one configured pipeline).

        Returns:
            The injection (its ``served`` counter grows with each answer that carried it).
        """
        if not rows and not edits:
            raise ValueError("give rows to add or edits to apply")
        if day is None and match != VISITORS:
            raise ValueError("give the day whose answers get the rows")
        item = RowInjection(
            day=as_date(day) if day is not None else None,
            match=match,
            rows=[encode_row(r) for r in rows],
            edits={str(k): dict(v) for k, v in (edits or {}).items()},
            id_field=id_field,
        )
        with self._lock:
            self._items.append(item)
            self._history.append(item)
        return item

    def clear(self) -> None:
        """Remove every injection."""
        with self._lock:
            self._items.clear()

    @property
    def history(self) -> list[RowInjection]:
        """Every injection added since the sandbox started, cleared or not."""
        with self._lock:
            return list(self._history)

    @property
    def armed(self) -> list[RowInjection]:
        """The injections, in the order they were added."""
        with self._lock:
            return list(self._items)

    def find(self, pipeline: Sequence[Any], body: bytes) -> list[RowInjection]:
        """The injections that apply to an aggregation request (empty when none is armed)."""
        with self._lock:
            items = list(self._items)
        if not items:
            return []
        day_ms = _first_ms(pipeline)
        return [
            item
            for item in items
            if item.applies(
                day_ms,
                pipeline,
                body,
                self._day_start_ms(item.day) if item.day is not None else None,
            )
        ]


def _first_ms(pipeline: Sequence[Any]) -> int | None:
    if not pipeline or not isinstance(pipeline[0], dict):
        return None
    source = pipeline[0].get("source")
    series = source.get("timeSeries") if isinstance(source, dict) else None
    first = series.get("first") if isinstance(series, dict) else None
    return first if isinstance(first, int) and not isinstance(first, bool) else None


def apply_injections(lines: list[bytes], injections: Sequence[RowInjection]) -> list[bytes]:
    """The result rows (one JSON text each) with edits applied and extra rows appended."""
    out = lines
    for item in injections:
        if item.edits:
            edited = []
            for line in out:
                row = json.loads(line)
                key = row.get(item.id_field) if isinstance(row, dict) else None
                if key is not None and str(key) in item.edits:
                    row.update(item.edits[str(key)])
                    line = encode_row(row)
                edited.append(line)
            out = edited
        out = out + item.rows
        item.served += 1
    return out


def malformed_feature_rows(
    *, day_ms: int, feature_id: str, id_field: str = "featureId"
) -> list[tuple[str, str]]:
    """One featureEvents row per kind of bad input, as ``(expected reason, row JSON text)``.

    Each row is otherwise valid for ``day_ms`` and ``feature_id``; the expected reason is the
    start of what the product must record in ``quarantine_feature_events.reason``. With
    ``id_field="pageId"`` or ``"trackTypeId"`` (and that id as ``feature_id``) the rows are
    ``pageEvents`` or ``trackEvents`` rows, the reasons naming that field.
    """

    def row(**fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "visitorId": "bad-input-visitor",
            "accountId": "acct-00003",
            id_field: feature_id,
            "appId": -323232,
            "day": day_ms,
            "numEvents": 3,
            "numMinutes": 1,
            "remoteIp": "192.0.2.1",
            "userAgent": "sandbox",
            "server": "app.example.com",
        }
        for name, value in fields.items():
            if value is _MISSING:
                base.pop(name)
            else:
                base[name] = value
        return base

    def text(**fields: Any) -> str:
        raw = {name: value for name, value in fields.items() if isinstance(value, _Raw)}
        placeholders = {name: f"__raw_{name}__" for name in raw}
        encoded = encode_row(row(**{**fields, **placeholders})).decode()
        for name, value in raw.items():
            encoded = encoded.replace(f'"{placeholders[name]}"', value.token)
        return encoded

    return [
        ("visitorId is missing", text(visitorId=_MISSING)),
        ("visitorId is empty", text(visitorId="")),
        ("visitorId is null", text(visitorId=None)),
        ("visitorId is not a string", text(visitorId=True)),
        ("visitorId is not a string", text(visitorId={"id": "v1"})),
        ("visitorId is longer than 1024 characters", text(visitorId="v" * 5000)),
        ("visitorId contains control characters", text(visitorId="bad\u0000id")),
        ("visitorId contains control characters", text(visitorId="line\nbreak")),
        ("numEvents is a string", text(numEvents="5")),
        ("numEvents is NaN", text(numEvents=float("nan"))),
        ("numEvents is infinite", text(numEvents=float("inf"))),
        ("numEvents is infinite", text(numEvents=float("-inf"))),
        ("numEvents is infinite", text(numEvents=_Raw("1e400"))),
        ("numEvents is out of range", text(numEvents=_Raw("123456789012345678901234567890"))),
        ("numEvents is negative", text(numEvents=-3)),
        ("numEvents is not an integer", text(numEvents=2.5)),
        ("numEvents is null", text(numEvents=None)),
        ("numEvents is missing", text(numEvents=_MISSING)),
        ("numEvents is not a number", text(numEvents=True)),
        ("numMinutes is NaN", text(numMinutes=float("nan"))),
        (f"{id_field} is missing", text(**{id_field: _MISSING})),
        (f"{id_field} is null", text(**{id_field: None})),
        ("day is a string", text(day=str(day_ms))),
        (
            f"day {day_ms - 86_400_000} is not the requested local midnight",
            text(day=day_ms - 86_400_000),
        ),
        ("accountId is not a string", text(accountId=["acct-00003"])),
        ("row is not a JSON object", '"not a row"'),
        ("row is not a JSON object", "[1, 2, 3]"),
    ]


def malformed_visitor_rows() -> list[tuple[str, str]]:
    """One ``visitors`` row per kind of bad input, as ``(expected reason, row JSON text)``.

    The reasons follow :func:`malformed_feature_rows`; the email field is
    ``metadata.agent.email``.
    """

    def row(visitor: Any = "bad-visitor", email: Any = "bad@example.com", **top: Any) -> str:
        base: dict[str, Any] = {
            "visitorId": visitor,
            "metadata": {
                "agent": {"email": email},
                "auto": {"accountid": "acct-00003", "accountids": ["acct-00003"]},
            },
        }
        if visitor is _MISSING:
            del base["visitorId"]
        base.update(top)
        return encode_row(base).decode()

    return [
        ("visitorId is missing", row(_MISSING)),
        ("visitorId is empty", row("")),
        ("visitorId is null", row(None)),
        ("visitorId is not a string", row(42)),
        ("visitorId is longer than 1024 characters", row("v" * 5000)),
        ("visitorId contains control characters", row("bad\u0000id")),
        ("metadata.agent.email is not a string", row("bad-email-1", email=12345)),
        ("metadata.agent.email is not a string", row("bad-email-2", email=["a@b.c"])),
        ("metadata is not an object", row("bad-metadata", metadata="nope")),
        ("row is not a JSON object", '"not a row"'),
    ]


def valid_odd_feature_rows(
    *, day_ms: int, feature_id: str, visitors: Sequence[str], num_events: int = 7
) -> list[str]:
    """Well-formed rows with awkward but valid ids (quotes, non-ASCII): they must land as is."""
    return [
        encode_row(
            {
                "visitorId": visitor,
                "accountId": 'Société Générale Ω "quoted"',
                "featureId": feature_id,
                "appId": -323232,
                "day": day_ms,
                "numEvents": num_events,
                "numMinutes": 0,
                "remoteIp": None,
                "userAgent": 'Mozilla/5.0 (\u00e9t\u00e9; "x")',
                "server": None,
            }
        ).decode()
        for visitor in visitors
    ]


class _Sentinel:
    pass


_MISSING: Final = _Sentinel()


class _Raw:
    """A JSON token written exactly as given (e.g. ``1e400``), not as Python would print it."""

    def __init__(self, token: str) -> None:
        self.token = token
