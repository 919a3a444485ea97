"""Errors raised by pendo-planhat.

The tree::

    PendoAssetsError
    ├── ApiError                      (service, method, url: always redacted; endpoint, problem)
    │   ├── ApiStatusError            (status_code, body: truncated)
    │   │   ├── RateLimitedError      (retry_after)
    │   │   └── PayloadTooLargeError  (413: split the batch, then send again)
    │   ├── ApiTransportError         (the request could not be completed)
    │   │   └── DeliveryUnknownError  (sent, but no answer: the outcome is unknown)
    │   ├── PayloadShapeError         (the answer is not the documented shape)
    │   ├── PagingLimitError          (max_pages reached before the last page)
    │   └── PageDriftError            (the rows changed between two page requests)
    ├── BatchError                    (also a ValueError: refused before sending)
    ├── ConfigError                   (also a ValueError)
    │   └── UsageError                (the command line asks for what cannot be done)
    ├── DayRejectedError              (day, pipeline, rejected, total, limit, top kinds)
    ├── DeliveryError                 (publishing stopped: batch_id, kind, items, status_code)
    │   └── ItemTooLargeError         (item_bytes, max_bytes: one item over the body limit)
    ├── BatchStateError               (batch_id, status: not a batch in doubt)
    ├── UiError                       (log_path: the Dagster UI did not come up)
    └── WarehouseError                (path)
        └── WarehouseLockedError      (pid: another process holds the DuckDB file)

No message or attribute ever holds a secret: URLs are redacted before an error is built and
bodies are truncated to ``MAX_ERROR_BODY`` characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from .types import SERVICE_NAMES, BatchKind, HttpMethod, Service

__all__ = [
    "MAX_ERROR_BODY",
    "ApiError",
    "ApiStatusError",
    "ApiTransportError",
    "BatchError",
    "BatchStateError",
    "ConfigError",
    "DayRejectedError",
    "DeliveryError",
    "DeliveryUnknownError",
    "ItemTooLargeError",
    "PageDriftError",
    "PagingLimitError",
    "PayloadShapeError",
    "PayloadTooLargeError",
    "PendoAssetsError",
    "RateLimitedError",
    "UiError",
    "UsageError",
    "WarehouseError",
    "WarehouseLockedError",
]

MAX_ERROR_BODY = 300


class PendoAssetsError(Exception):
    """Root of every error this package raises on purpose."""


class ApiError(PendoAssetsError):
    """A call to Pendo or Planhat failed: ``<endpoint><sep><problem>``.

    The error carries its parts, so nothing needs to parse the message: ``endpoint``
    (``Pendo GET /api/v1/feature``: service, method, path of the redacted ``url``) and ``problem``
    (what went wrong there, e.g. ``not JSON (...)`` or ``answered 503``).
    """

    def __init__(
        self, problem: str, *, service: Service, method: HttpMethod | str, url: str, sep: str = ": "
    ) -> None:
        self.endpoint = f"{SERVICE_NAMES[service]} {method} {urlsplit(url).path}"
        super().__init__(f"{self.endpoint}{sep}{problem}")
        self.service = service
        self.method = method
        self.url = url
        self.problem = problem


class ApiStatusError(ApiError):
    """The service answered with an error status."""

    def __init__(self, problem: str, *, status_code: int, body: str = "", **context: Any) -> None:
        super().__init__(problem, **context)
        self.status_code = status_code
        self.body = body[:MAX_ERROR_BODY]


class RateLimitedError(ApiStatusError):
    """The service answered 429 Too Many Requests, and retries ran out."""

    def __init__(
        self, problem: str, *, retry_after: float | None = None, body: str = "", **context: Any
    ) -> None:
        super().__init__(problem, status_code=429, body=body, **context)
        self.retry_after = retry_after


class PayloadTooLargeError(ApiStatusError):
    """The service answered 413 Payload Too Large: nothing was accepted, split before resending."""


class ApiTransportError(ApiError):
    """The request could not be completed (connection refused, reset, timeout)."""


class DeliveryUnknownError(ApiTransportError):
    """A write was sent but no answer came back, so whether the service applied it is unknown."""


class PayloadShapeError(ApiError):
    """The service answered, but not with the documented shape (bad JSON, missing keys)."""


class PagingLimitError(ApiError):
    """Paging reached its ``max_pages`` cap before a short page, so the listing is incomplete."""


class PageDriftError(ApiError):
    """Pendo's rows shifted between two page requests (data changed mid-read): read again."""


class BatchError(PendoAssetsError, ValueError):
    """A write was refused before sending: empty, over a size limit, or not as declared."""


class ConfigError(PendoAssetsError, ValueError):
    """The configuration file or environment is invalid."""


class UiError(PendoAssetsError):
    """``pendo-planhat ui``: the Dagster UI did not come up; ``log_path`` holds its log."""

    def __init__(self, message: str, *, log_path: str | None) -> None:
        super().__init__(message + (f" (log: {log_path})" if log_path else ""))
        self.log_path = log_path


class WarehouseError(PendoAssetsError):
    """The DuckDB warehouse (``path``) could not be opened or written."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class WarehouseLockedError(WarehouseError):
    """Another process (``pid``, when DuckDB names it) holds the DuckDB warehouse file open."""

    def __init__(self, *, path: str, pid: int | None) -> None:
        holder = f" (process {pid})" if pid else ""
        super().__init__(
            f"the warehouse {path} is open in another process{holder}. DuckDB allows one writer "
            "per file: close that session (for example quit the duckdb CLI or a notebook holding "
            "it) and run again. For ad-hoc SQL while runs write, query the Parquet exports in "
            "data/exports/ instead.",
            path=path,
        )
        self.pid = pid


class UsageError(ConfigError):
    """The command line asks for something that cannot be done (bad range, missing variable)."""


@dataclass(eq=False, kw_only=True)
class DayRejectedError(PendoAssetsError):
    """A day (of feature events, or of one ``pipeline``) holds more malformed rows than
    ``sync.max_quarantine_share`` (``limit``); it was not landed."""

    day: date
    pipeline: str | None
    rejected: int
    total: int
    limit: float
    top: Sequence[tuple[str, int]]  # the most frequent kinds of problem, with their rows

    def __post_init__(self) -> None:
        where = "" if self.pipeline is None else f" pipeline {self.pipeline!r}:"
        super().__init__(f"{self.day}:{where} {self.problem}")

    @property
    def problem(self) -> str:
        """What is wrong, without the day and pipeline that the message starts with."""
        reasons = ", ".join(f"{reason} ({n})" for reason, n in self.top)
        if self.pipeline is None:
            share = f"{self.rejected / self.total:.1%}, "
            what = f"{self.rejected} of {self.total} Pendo rows are malformed ({share}"
        else:
            what = f"{self.rejected} of {self.total} result rows cannot be sent ("
        return (
            f"{what}over sync.max_quarantine_share {self.limit:.1%}): {reasons}. The day was "
            "not landed; its previous data is unchanged."
        )


class DeliveryError(PendoAssetsError):
    """Publishing stopped because Planhat did not accept a batch (``batch_id``) after retries."""

    def __init__(
        self,
        message: str,
        *,
        batch_id: int | None = None,
        kind: BatchKind | None = None,
        items: int | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.kind = kind
        self.items = items
        self.status_code = status_code


class ItemTooLargeError(DeliveryError):
    """One item alone is over the body limit, so no batch can carry it."""

    def __init__(self, *, item_bytes: int, max_bytes: int) -> None:
        super().__init__(f"one item is {item_bytes} bytes, over the {max_bytes}-byte body limit")
        self.item_bytes = item_bytes
        self.max_bytes = max_bytes


class BatchStateError(PendoAssetsError):
    """A batch a user asked to resolve does not exist or is not in doubt."""

    def __init__(self, *, batch_id: int, status: str | None) -> None:
        if status is None:
            message = f"batch {batch_id} does not exist"
        else:
            message = f"batch {batch_id} is {status}, not in doubt; nothing to resolve"
        super().__init__(message)
        self.batch_id = batch_id
        self.status = status
