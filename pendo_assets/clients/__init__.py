"""HTTP clients for Pendo and Planhat, free of Dagster and usable from a REPL or script."""

from __future__ import annotations

from ._http import AttemptHooks, RetryPolicy, build_http_client
from ._prefetch import prefetch
from .pendo import PendoClient, day_window
from .planhat import PlanhatClient

__all__ = [
    "AttemptHooks",
    "PendoClient",
    "PlanhatClient",
    "RetryPolicy",
    "build_http_client",
    "day_window",
    "prefetch",
]
