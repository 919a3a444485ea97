"""``pendo-planhat check``: is this setup ready to sync, and if not, what to fix.

Each step runs the product's own code against the live APIs: the credentials, every configured
feature id, each pipeline for one day, then one day landed and matched in a scratch warehouse
(never the real one), giving the match rates a sync would reach. A failed step says which key or
variable to change and how; later steps that need it are skipped.
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from . import queries
from .clients import PendoClient, PlanhatClient
from .clients._visitor_rows import decode_visitors
from .config import Config
from .errors import (
    ApiStatusError,
    ApiTransportError,
    ConfigError,
    PendoAssetsError,
)
from .identity import resolve_visitors
from .landing import (
    PipelineDay,
    fetch_pipeline_day,
    ingest_feature_events,
    read_pipeline_day,
    resolve_feature_actions,
)
from .models import Feature
from .partitions import last_complete_day
from .transforms import daily_usage, match_activities, match_metrics
from .types import PENDO_HOSTS
from .warehouse import Warehouse

__all__ = ["Finding", "format_findings", "run_check"]

T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """One step's outcome: ``what`` was checked, ``detail`` what was found, ``fix`` what to do."""

    what: str
    ok: bool
    detail: str
    fix: str | None = None


_REGIONS = ", ".join(f"{region} ({host})" for region, host in PENDO_HOSTS.items())
_PENDO_KEY_FIX = (
    "set PENDO_INTEGRATION_KEY to an integration key of this subscription (Pendo: Settings > "
    "Integrations > Integration Keys), and pendo.region to the host you sign in to: " + _REGIONS
)
_PENDO_HOST_FIX = (
    "set pendo.region to the host you sign in to (" + _REGIONS + "); PENDO_BASE_URL, when set, "
    "overrides it"
)
_PLANHAT_TOKEN_FIX = (
    "set PLANHAT_API_TOKEN to a token of a Planhat private app (Settings > Private Apps) that may "
    "read End Users, Companies, Assets and Projects"
)
_PLANHAT_HOST_FIX = "check PLANHAT_API_URL (default https://api.planhat.com) and the network"


class _Steps:
    """The findings so far; `run` records one step and returns its value, or None if it failed."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def run(
        self,
        what: str,
        step: Callable[[], T],
        ok: Callable[[T], str],
        fix: Callable[[PendoAssetsError], str],
    ) -> T | None:
        try:
            value = step()
        except PendoAssetsError as exc:
            self.findings.append(Finding(what, False, " ".join(str(exc).split()), fix(exc)))
            return None
        self.findings.append(Finding(what, True, ok(value)))
        return value

    def fail(self, what: str, detail: str, fix: str) -> None:
        self.findings.append(Finding(what, False, detail, fix))


def _done(call: Callable[[], None]) -> bool:
    call()
    return True


def _api_fix(*, refused: str, unreachable: str, other: str | None = None) -> Callable[..., str]:
    def fix(exc: PendoAssetsError) -> str:
        if isinstance(exc, ApiStatusError) and exc.status_code in (401, 403):
            return refused
        if isinstance(exc, ApiTransportError) or (
            isinstance(exc, ApiStatusError) and exc.status_code in (400, 404)
        ):
            return unreachable
        if isinstance(exc, ConfigError):
            return refused
        return other or "try again later; if it persists, the answer above says what failed"

    return fix


def run_check(
    config: Config, *, pendo: PendoClient, planhat: PlanhatClient, day: date | None = None
) -> list[Finding]:
    """Check ``config`` and both APIs for ``day`` (default yesterday); never writes to Planhat."""
    day = day or last_complete_day(config)
    steps = _Steps()
    key_ok = steps.run(
        "Pendo integration key",
        partial(_done, pendo.verify_key),
        lambda _: f"accepted by {pendo.base_url}",
        _api_fix(refused=_PENDO_KEY_FIX, unreachable=_PENDO_HOST_FIX),
    )
    token_ok = steps.run(
        "Planhat API token",
        partial(_done, planhat.verify_token),
        lambda _: f"accepted by {planhat.api_url}",
        _api_fix(refused=_PLANHAT_TOKEN_FIX, unreachable=_PLANHAT_HOST_FIX),
    )
    if key_ok is None:  # everything below reads Pendo
        return steps.findings
    features = steps.run(
        "Pendo features",
        pendo.list_features,
        lambda fs: f"{len(fs)} features in Pendo",
        _api_fix(refused=_PENDO_KEY_FIX, unreachable=_PENDO_HOST_FIX),
    )
    if features is not None:
        _check_feature_ids(steps, config, features)
    results = [_check_pipeline(steps, config, i, pendo, day) for i in range(len(config.pipelines))]
    if token_ok is not None and all(f.ok for f in steps.findings):
        days = [r for r in results if r is not None]
        _check_match_rates(steps, config, pendo, planhat, features or [], days, day)
    return steps.findings


def _check_feature_ids(steps: _Steps, config: Config, features: list[Feature]) -> None:
    known = {f.id: f for f in features}
    names = {f"{f.name} ({f.id})": f.id for f in features if f.name}
    for index, spec in enumerate(config.features):
        where = f"features[{index}].id"
        if spec.id in known:
            steps.findings.append(Finding(where, True, f"{spec.id}: {known[spec.id].name!r}"))
            continue
        near = difflib.get_close_matches(spec.action or spec.id, list(names), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else ""
        steps.fail(
            where,
            f"{spec.id!r} in {config.source} is not a feature of this Pendo subscription{hint}",
            "copy the id from `pendo-planhat discover` (or Pendo: Product > Features > the "
            "feature's URL), or remove the entry",
        )


def _check_pipeline(
    steps: _Steps, config: Config, index: int, pendo: PendoClient, day: date
) -> PipelineDay | None:
    """Run one pipeline for ``day``: Pendo accepts it, it returns the fields the config maps."""
    spec = config.pipelines[index]
    what = f"pipelines[{index}] ({spec.name})"
    try:
        read = read_pipeline_day(pendo, spec=spec, day=day, config=config)
    except PendoAssetsError as exc:
        steps.fail(
            what,
            " ".join(str(exc).split()),
            f"run the pipeline in Pendo's Data Explorer for {day}; change "
            f"`pipelines[{index}].pipeline` until Pendo accepts it",
        )
        return None
    rows = read[0]
    missing = [name for name in (spec.id_field, *spec.metrics) if not any(name in r for r in rows)]
    if rows and missing:
        fields = sorted({k for row in rows for k in row})
        steps.fail(
            what,
            f"its {len(rows)} result rows for {day} have no field "
            f"{', '.join(map(repr, missing))} (they have: {', '.join(fields)})",
            f"make the pipeline return {', '.join(missing)} (in its `group` or `select` stage), "
            f"or set `pipelines[{index}].id_field` / `.metrics` to fields it returns",
        )
        return None
    return steps.run(
        what,
        lambda: fetch_pipeline_day(pendo, spec=spec, day=day, config=config, read=read),
        lambda r: f"{len(r.rows)} result rows, {r.values.height} metric values for {day}",
        lambda exc: (
            "the kinds of problem above say which values cannot be sent (a Planhat "
            "metric takes a finite number per id and day)"
        ),
    )


def _check_match_rates(
    steps: _Steps,
    config: Config,
    pendo: PendoClient,
    planhat: PlanhatClient,
    features: list[Feature],
    pipeline_days: list[PipelineDay],
    day: date,
) -> None:
    """Land ``day`` in a scratch warehouse and match it, as a sync would."""
    from .assets.planhat_snapshot import snapshot_objects

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pendo-planhat-")))
        conn = stack.enter_context(Warehouse(scratch / "check.duckdb").connect())
        snapshot = steps.run(
            "Planhat snapshot",
            planhat.snapshot,
            lambda s: (
                f"{s.endusers.height} End Users, {s.companies.height} Companies, "
                f"{s.assets.height} Assets, {s.projects.height} Projects"
            ),
            _api_fix(refused=_PLANHAT_TOKEN_FIX, unreachable=_PLANHAT_HOST_FIX),
        )
        if snapshot is None:
            return
        objects = snapshot_objects(snapshot, taken_at=datetime.now(UTC).replace(tzinfo=None))
        queries.replace_planhat_objects(conn, objects)
        objects = queries.select_planhat_objects(conn)
        if config.features:
            _feature_match_rate(steps, config, pendo, conn, scratch, features, objects, day)
        for spec, result in zip(config.pipelines, pipeline_days, strict=True):
            matched, unmatched = pl.collect_all(match_metrics(result.values.lazy(), objects.lazy()))
            ids = matched.select("external_id").n_unique() if matched.height else 0
            total = ids + unmatched.height
            reasons = dict(unmatched.group_by("reason").len().rows())
            fix = (
                f"make `{spec.id_field}` hold the externalId of a Planhat {spec.model} "
                "(`unmatched_accounts` lists each id after a sync)"
            )
            rate = ids / total if total else 1.0
            threshold = config.sync.min_match_rate
            what = f"pipeline {spec.name} match rate"
            _rate(steps, what, rate, reasons, fix, threshold=threshold, fails=False)


def _feature_match_rate(
    steps: _Steps,
    config: Config,
    pendo: PendoClient,
    conn: Any,
    scratch: Path,
    features: list[Feature],
    objects: pl.DataFrame,
    day: date,
) -> None:
    feature_ids = [f.id for f in config.features]
    resolve_feature_actions(conn, config=config, pendo_features=features)
    landed = steps.run(
        f"feature events of {day}",
        lambda: ingest_feature_events(
            pendo, conn, day=day, config=config, feature_ids=feature_ids, staging_dir=scratch
        ),
        lambda d: f"{d.rows} rows, {d.quarantined} quarantined",
        _api_fix(
            refused=_PENDO_KEY_FIX,
            unreachable=_PENDO_HOST_FIX,
            other="see the problem above; `sync.max_quarantine_share` bounds bad rows",
        ),
    )
    if landed is None:
        return
    events = queries.select_feature_events(conn, day=day)
    actions = queries.select_feature_actions(conn, feature_ids=feature_ids)
    usage = daily_usage(events.lazy())
    emails = _visitor_emails(steps, config, pendo) if config.matching.needs_visitors else None
    resolved = resolve_visitors(
        usage, objects.lazy(), keys=config.matching.end_user_keys, visitor_emails=emails
    )
    matched, unmatched = pl.collect_all(
        match_activities(usage, objects.lazy(), actions.lazy(), resolved=resolved)
    )
    by_reason = dict(unmatched.group_by("reason").agg(pl.col("num_events").sum()).rows())
    identified = int(matched["count"].sum() or 0)
    total = identified + sum(n for r, n in by_reason.items() if r != "anonymous")
    _rate(
        steps,
        "match rate of feature events",
        identified / total if total else 1.0,
        by_reason,
        "make Pendo's visitorId equal the End User's externalId in Planhat (or add the "
        "missing End Users); `unmatched_visitors` lists each one after a sync",
        threshold=config.sync.min_match_rate,
        fails=True,
    )


def _visitor_emails(steps: _Steps, config: Config, pendo: PendoClient) -> pl.LazyFrame:
    """Pendo's visitors with their email (matching by email), or none when they cannot be read."""
    field = config.matching.visitor_email_field

    def read() -> tuple[pl.DataFrame, int]:
        frames, bad = [], 0
        for page in pendo.visitor_pages():
            good, rejects = decode_visitors(page, email_field=field)
            frames.append(good.select("visitor_id", "email"))
            bad += len(rejects)
        return pl.concat(frames) if frames else pl.DataFrame(schema=_EMAILS), bad

    found = steps.run(
        "Pendo visitors",
        read,
        lambda r: (
            f"{r[0].height} visitors, {r[0]['email'].is_not_null().sum()} with an email "
            f"at {field}, {r[1]} malformed"
        ),
        _api_fix(
            refused=_PENDO_KEY_FIX,
            unreachable=_PENDO_HOST_FIX,
            other=f"check matching.visitor_email_field ({field})",
        ),
    )
    return (found[0] if found is not None else pl.DataFrame(schema=_EMAILS)).lazy()


_EMAILS = {"visitor_id": pl.String, "email": pl.String}


def _rate(
    steps: _Steps,
    what: str,
    rate: float,
    reasons: dict[str, int],
    fix: str,
    *,
    threshold: float,
    fails: bool,
) -> None:
    """A match rate; below ``threshold`` it fails when ``fails`` (a sync's asset check would),
    else it is reported with the fix."""
    unmatched = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none"
    detail = f"{rate:.1%} (unmatched: {unmatched})"
    if rate >= threshold:
        steps.findings.append(Finding(what, True, detail))
    elif fails:
        steps.fail(what, f"{detail}, below sync.min_match_rate {threshold:.0%}", fix)
    else:
        steps.findings.append(Finding(what, True, f"{detail}; a sync does not fail on it", fix))


def format_findings(findings: list[Finding]) -> Iterator[str]:
    """Lines for the terminal: one per finding, and the fix under each failure."""
    for f in findings:
        yield f"{'ok  ' if f.ok else 'FAIL'} {f.what}: {f.detail}"
        if f.fix:
            yield f"     fix: {f.fix}"
