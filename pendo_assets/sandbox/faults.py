"""Fault switches for the sandbox servers.

A test arms a fault with :meth:`Faults.add`; the next matching request(s) get it:

=====================  ============================================================================
kind                   what the client sees
=====================  ============================================================================
``status``             ``status`` (e.g. 429, 500, 503) with ``body`` (text or HTML) and ``headers``
                       (e.g. ``{"Retry-After": "2"}``); the request is not applied
``delay``              nothing for ``seconds``, then the normal answer (the request is applied)
``reset``              TCP RST (SO_LINGER 0) after the request is read, before anything is applied
``reset_after_apply``  the request is applied and recorded, then TCP RST without an answer
``truncate``           200 with the full Content-Length but only ``fraction`` of the body, then
                       the connection closes (the request is applied)
``invalid_json``       200 with a garbage body (the request is applied)
``row_errors``         ``POST /dimensiondata``: the items at ``indexes`` come back in ``errors``
                       with ``error`` and are not applied
=====================  ============================================================================

A fault matches by service, path prefix and, optionally, method and a substring of the request
body (``body_contains``): e.g. ``body_contains=sandbox.day_marker(day)`` hits only Pendo
aggregations over one day, so "this day keeps failing" can be armed while every other day works.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "FAULT_KINDS",
    "SERVICES",
    "Fault",
    "FaultKind",
    "Faults",
    "SandboxService",
]

FaultKind: TypeAlias = Literal[
    "status", "delay", "reset", "reset_after_apply", "truncate", "invalid_json", "row_errors"
]
SandboxService: TypeAlias = Literal["pendo", "planhat_api", "planhat_analytics"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "status",
    "delay",
    "reset",
    "reset_after_apply",
    "truncate",
    "invalid_json",
    "row_errors",
)
SERVICES: tuple[SandboxService, ...] = ("pendo", "planhat_api", "planhat_analytics")
_PARAMS: dict[str, frozenset[str]] = {
    "status": frozenset({"status", "body", "headers", "content_type"}),
    "delay": frozenset({"seconds"}),
    "reset": frozenset(),
    "reset_after_apply": frozenset(),
    "truncate": frozenset({"fraction"}),
    "invalid_json": frozenset({"body"}),
    "row_errors": frozenset({"indexes", "error"}),
}
DEFAULT_GARBAGE = b'{"results": [{"visitorId": "v1", <html><body>502 Bad Gateway'


@dataclass
class Fault:
    """One armed fault. ``times=None`` fires forever; ``fired`` counts how often it fired."""

    service: SandboxService
    path: str
    kind: FaultKind
    method: str | None = None
    times: int | None = 1
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0
    body_contains: tuple[bytes, ...] = ()

    @property
    def remaining(self) -> int | None:
        """How many more times it fires (None = unlimited)."""
        return None if self.times is None else max(0, self.times - self.fired)

    def matches(self, service: str, method: str, path: str, body: bytes | None = None) -> bool:
        """Whether a request hits this fault (path prefix; method and body substring if given)."""
        return (
            self.service == service
            and path.startswith(self.path)
            and (self.method is None or self.method == method.upper())
            and (self.times is None or self.fired < self.times)
            and all(body is not None and part in body for part in self.body_contains)
        )

    # Typed views of params --------------------------------------------------------------

    @property
    def status(self) -> int:
        """Status of a ``status`` fault."""
        return int(self.params["status"])

    @property
    def body(self) -> bytes:
        """Body of a ``status`` or ``invalid_json`` fault."""
        raw = self.params.get("body", DEFAULT_GARBAGE if self.kind == "invalid_json" else b"")
        return raw.encode() if isinstance(raw, str) else bytes(raw)

    @property
    def headers(self) -> dict[str, str]:
        """Extra headers of a ``status`` fault."""
        return {str(k): str(v) for k, v in dict(self.params.get("headers") or {}).items()}

    @property
    def content_type(self) -> str:
        """Content type of a ``status`` fault's body."""
        ct = self.params.get("content_type")
        if ct:
            return str(ct)
        return (
            "text/html; charset=utf-8"
            if self.body.lstrip().startswith(b"<")
            else "text/plain; charset=utf-8"
        )

    @property
    def seconds(self) -> float:
        """Sleep of a ``delay`` fault."""
        return float(self.params.get("seconds", 1.0))

    @property
    def fraction(self) -> float:
        """Share of the body a ``truncate`` fault sends."""
        return float(self.params.get("fraction", 0.5))

    @property
    def indexes(self) -> frozenset[int]:
        """Item indexes a ``row_errors`` fault rejects."""
        return frozenset(int(i) for i in self.params.get("indexes", ()))

    @property
    def error(self) -> str:
        """Error text of a ``row_errors`` fault."""
        return str(self.params.get("error", "rejected by sandbox fault"))


class Faults:
    """The armed faults of one sandbox (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._fired = 0
        self._history: list[Fault] = []

    def add(
        self,
        *,
        service: SandboxService,
        kind: FaultKind,
        path: str = "/",
        method: str | None = None,
        times: int | None = 1,
        body_contains: str | bytes | Sequence[str | bytes] = (),
        **params: Any,
    ) -> Fault:
        """Arm a fault for the next ``times`` matching requests.

        Args:
            service: ``pendo``, ``planhat_api`` or ``planhat_analytics``.
            kind: see the module docstring.
            path: path prefix to match, e.g. ``/api/v1/aggregation`` or ``/analytics/bulk``.
            method: only this HTTP method (any when None).
            times: how many requests it hits; None for every request until cleared.
            body_contains: only requests whose body holds this text, or all of these texts
                (e.g. one day's ``"first":<epoch ms>`` in a Pendo aggregation, see
                ``Sandbox.day_marker``, and a metric name that singles out one pipeline).
            **params: kind-specific: ``status``/``body``/``headers``/``content_type``,
                ``seconds``, ``fraction``, ``indexes``/``error``.

        Returns:
            The fault (its ``fired`` counter updates as it fires).

        Raises:
            ValueError: unknown service, kind or parameter, or a missing required one.
        """
        if service not in SERVICES:
            raise ValueError(f"service must be one of {list(SERVICES)}, got {service!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {list(FAULT_KINDS)}, got {kind!r}")
        unknown = set(params) - _PARAMS[kind]
        if unknown:
            raise ValueError(
                f"{kind} fault takes {sorted(_PARAMS[kind]) or 'no parameters'}, got {sorted(unknown)}"
            )
        if kind == "status" and not isinstance(params.get("status"), int):
            raise ValueError("a status fault needs status=<int>")
        if kind == "row_errors" and not params.get("indexes"):
            raise ValueError("a row_errors fault needs indexes=[...]")
        if kind == "truncate" and not 0.0 <= float(params.get("fraction", 0.5)) < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        if "headers" in params and not isinstance(params["headers"], Mapping):
            raise ValueError("headers must be a mapping")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None for unlimited)")
        fault = Fault(
            service=service,
            path=path,
            kind=kind,
            method=method.upper() if method else None,
            times=times,
            params=dict(params),
            body_contains=tuple(
                part.encode() if isinstance(part, str) else bytes(part)
                for part in (
                    [body_contains] if isinstance(body_contains, str | bytes) else body_contains
                )
            ),
        )
        with self._lock:
            self._faults.append(fault)
            self._history.append(fault)
        return fault

    def take(
        self,
        service: str,
        method: str,
        path: str,
        *,
        kinds: frozenset[str] | None = None,
        body: bytes | None = None,
    ) -> Fault | None:
        """Consume the first armed fault matching a request (and count it as fired)."""
        with self._lock:
            for fault in self._faults:
                if (kinds is None or fault.kind in kinds) and fault.matches(
                    service, method, path, body
                ):
                    fault.fired += 1
                    self._fired += 1
                    return fault
        return None

    def clear(self) -> None:
        """Disarm every fault and reset :attr:`fired`."""
        with self._lock:
            self._faults.clear()
            self._fired = 0

    @property
    def fired(self) -> int:
        """How many times faults fired since the last :meth:`clear`."""
        with self._lock:
            return self._fired

    @property
    def history(self) -> list[Fault]:
        """Every fault armed since the sandbox started, spent or not, cleared or not."""
        with self._lock:
            return list(self._history)

    @property
    def active(self) -> list[Fault]:
        """Faults that will still fire."""
        with self._lock:
            return [f for f in self._faults if f.remaining is None or f.remaining > 0]
