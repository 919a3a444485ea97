"""Local, deterministic stand-ins for the Pendo and Planhat APIs (127.0.0.1 only).

Used by ``pendo-planhat demo``, by tests (which compare what Planhat received against the
generator's ground truth) and by benchmarks::

    from pendo_assets.sandbox import Sandbox, SandboxSpec

    with Sandbox(SandboxSpec(seed=7)) as sb:
        env = sb.env()                       # PENDO_BASE_URL, PLANHAT_API_URL, ...
        sb.write_config("pendo_planhat.yaml", start_date="2026-09-01")
        ...                                  # run the product against it
        sent = sb.received.activity_totals()
        truth = sb.dataset.truth_activities(days=[...], actions={...})

Modules: ``generator`` (data, Planhat tenant, ground truth), ``pipeline`` (aggregation engine),
``planhat`` (tenant state), ``server`` (HTTP), ``faults``, ``rows`` (bad-input rows),
``recorder``, ``sandbox``.
Run as a process with ``python -m pendo_assets.sandbox --help``.
"""

from __future__ import annotations

from .faults import Fault, FaultKind, Faults, SandboxService
from .generator import DEFAULT_APP_ID, SECOND_APP_ID, Dataset, IdentityMatch, SandboxSpec
from .pipeline import PipelineError
from .recorder import ActivityRecord, MetricRecord, Recorder, RequestRecord, UpsertRecord
from .rows import (
    FEATURE_EVENTS,
    PAGE_EVENTS,
    TRACK_EVENTS,
    VISITORS,
    PendoRows,
    RowInjection,
    malformed_feature_rows,
    malformed_visitor_rows,
    valid_odd_feature_rows,
)
from .sandbox import (
    DEFAULT_API_TOKEN,
    DEFAULT_PENDO_KEY,
    DEFAULT_TENANT_TOKEN,
    Sandbox,
    serve_forever,
)

__all__ = [
    "DEFAULT_API_TOKEN",
    "DEFAULT_APP_ID",
    "DEFAULT_PENDO_KEY",
    "DEFAULT_TENANT_TOKEN",
    "FEATURE_EVENTS",
    "PAGE_EVENTS",
    "SECOND_APP_ID",
    "TRACK_EVENTS",
    "VISITORS",
    "ActivityRecord",
    "Dataset",
    "Fault",
    "FaultKind",
    "Faults",
    "IdentityMatch",
    "MetricRecord",
    "PendoRows",
    "PipelineError",
    "Recorder",
    "RequestRecord",
    "RowInjection",
    "Sandbox",
    "SandboxService",
    "SandboxSpec",
    "UpsertRecord",
    "malformed_feature_rows",
    "malformed_visitor_rows",
    "serve_forever",
    "valid_odd_feature_rows",
]
