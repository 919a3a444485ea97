"""``pendo-planhat discover``: what a Pendo subscription tracks, and a starter config.

Lists every Feature (id, name, app, kind) with its events over the last days, most used first,
and can write a config holding the most used ones, each commented with its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import yaml

from .clients import PendoClient
from .types import PENDO_HOSTS

__all__ = ["Trackable", "discover", "format_table", "starter_config"]

#: Features written into a starter config (the most used).
STARTER_FEATURES = 10


@dataclass(frozen=True)
class Trackable:
    """A Pendo Feature with its use over the window."""

    kind: str  # "feature"
    id: str
    name: str | None
    app_id: int | None
    events: int


def discover(pendo: PendoClient, *, timezone: str, end: date, days: int) -> list[Trackable]:
    """Every Feature of the subscription with its events over ``days`` days ending ``end``,
    most used first (then by name)."""
    usage: dict[str, int] = {}
    stages: list[dict[str, Any]] = [
        {"source": {"featureEvents": None}},
        {"group": {"group": ["featureId"], "fields": {"events": {"sum": "numEvents"}}}},
    ]
    pages = pendo.pipeline_pages(
        stages=stages,
        day=end - timedelta(days=days - 1),
        days=days,
        timezone=timezone,
        sort_field="featureId",
    )
    for page in pages:
        for row in page:
            if isinstance(row.get("featureId"), str):
                usage[row["featureId"]] = int(row.get("events") or 0)
    found = [
        Trackable("feature", f.id, f.name, f.app_id, usage.get(f.id, 0))
        for f in pendo.list_features()
    ]
    return sorted(found, key=lambda t: (-t.events, t.name or "", t.id))


def format_table(items: Iterable[Trackable], days: int) -> Iterator[str]:
    """The listing as aligned text lines."""
    rows = [("kind", "id", f"events ({days} d)", "app", "name")]
    rows += [(t.kind, t.id, f"{t.events:,}", str(t.app_id or ""), t.name or "") for t in items]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4]


def starter_config(
    items: list[Trackable], *, timezone: str, region: str, start_date: date, days: int
) -> str:
    """A config with the most used Features, each commented with its name and use."""
    used = [t for t in items if t.events > 0][:STARTER_FEATURES] or items[:STARTER_FEATURES]
    pendo = {"timezone": timezone, "start_date": start_date.isoformat(), "region": region}
    lines = [
        "# Written by `pendo-planhat discover`. Check it with `pendo-planhat check`.",
        f"# pendo.timezone must be your subscription's timezone; region is one of "
        f"{', '.join(PENDO_HOSTS)}.",
        yaml.safe_dump({"pendo": pendo}, sort_keys=False).rstrip(),
        f"# The {len(used)} most used Features over the last {days} days; `action` is the name",
        "# of the User Activity in Planhat (default: the Feature's name in Pendo).",
        "features:",
    ]
    for t in used:
        lines.append(f"  - id: {_scalar(t.id)}")
        lines.append(
            f"    action: {_scalar(t.name or t.id)}  # {t.events:,} events, app {t.app_id}"
        )
    lines += [
        "# Pipelines turn Pendo aggregations into Planhat Custom Metrics; see the README:",
        "# pipelines:",
        "#   - name: account_clicks",
        "#     model: Company",
        "#     id_field: accountId",
        "#     metrics: {totalEvents: pendo_clicks}",
        "#     aggregation: last",
        "#     pipeline:",
        "#       - source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), "
        "count: -1}}",
        "#       - identified: accountId",
        "#       - group: {group: [accountId], fields: {totalEvents: {sum: numEvents}}}",
    ]
    return "\n".join(lines) + "\n"


def _scalar(value: str) -> str:
    """A YAML scalar on one line, quoted when needed."""
    return yaml.safe_dump(value, width=10_000).splitlines()[0]
