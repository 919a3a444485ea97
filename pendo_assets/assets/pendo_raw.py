"""Raw Pendo data, one partition per subscription-local day."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from functools import partial

import dagster as dg

from ..config import Config
from ..errors import ApiError, PendoAssetsError
from ..landing import (
    FeatureEventsDay,
    configured_items,
    fetch_pipeline_day,
    ingest_events,
    land_pipeline_day,
    resolve_actions,
)
from ..models import EVENT_SOURCES, FEATURE_EVENTS, EventSource, EventSourceName
from ..partitions import first_mutable_day
from ..resources import PendoResource, WarehouseResource
from ._common import (
    GIVE_UP_AFTER,
    add_day_metadata,
    daily_asset,
    day_error,
    failure_description,
    open_warehouse,
    reread,
    run_days,
    window,
)


def build_pendo_raw_assets(
    config: Config, partitions: dg.DailyPartitionsDefinition
) -> tuple[dict[EventSourceName, dg.AssetsDefinition], dg.AssetsDefinition]:
    """The event assets (feature events always; pages and track events when configured) by
    source, and the pipeline results asset."""
    events = {
        source.name: _build_events_asset(config, partitions, source)
        for source in EVENT_SOURCES.values()
        if source is FEATURE_EVENTS or configured_items(config, source)
    }
    return events, _build_pipeline_asset(config, partitions)


def _build_events_asset(
    config: Config, partitions: dg.DailyPartitionsDefinition, source: EventSource
) -> dg.AssetsDefinition:
    """``pendo_<source>`` (e.g. pendo_page_events): the configured items' rows of each day."""
    item_ids = [item.id for item in configured_items(config, source)]
    noun, raw, quarantine = source.noun, source.raw_table, source.quarantine_table
    uses = f"{noun}s"

    @daily_asset(
        partitions,
        name=f"pendo_{source.name}",
        group_name="pendo_raw",
        kinds={"pendo", "duckdb"},
        description=(
            f"Grain: one row per Pendo {noun}-event row (visitor x account x {noun} x day x IP "
            f"x user agent x server) of the configured {uses}, in table {raw}, one "
            f"partition per subscription-local day; malformed rows go to {quarantine} "
            "with the reason. Re-materializing a day replaces it in one transaction. "
            "If it fails: the failed days keep their previous data and the message names each "
            "day and the cause. A 403 or 400: check PENDO_INTEGRATION_KEY and pendo.region; "
            "429/5xx or timeouts: materialize the days again later; too many malformed rows: see "
            f"{quarantine} (sync.max_quarantine_share). Pendo changes recent days, "
            "so the daily sync re-pulls the last sync.lookback_days; older days are final "
            "(per-day metadata final, mutable_from)."
        ),
    )
    def events_asset(
        context: dg.AssetExecutionContext, pendo: PendoResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        attempts = _Attempts(what="day(s)")
        landed: dict[date, FeatureEventsDay] = {}
        # One warehouse connection for the step: this run is the only writer, and reopening
        # the file per day costs a checkpoint each time.
        with pendo.get_client() as client, open_warehouse(warehouse) as conn:
            if item_ids:
                try:
                    listed = reread(
                        partial(client.list_items, source),
                        retry=pendo.retry(),
                        what=f"Pendo {uses}",
                    )
                except ApiError as exc:
                    raise dg.Failure(
                        description=f"{window(days)}: could not list the Pendo {uses}: {exc}; "
                        "no day was landed, their previous data is unchanged",
                        allow_retries=False,
                    ) from None
                _, warnings = resolve_actions(
                    conn, config=config, source=source, pendo_items=listed
                )
                for warning in warnings:
                    context.log.warning(warning)
            todo = days if item_ids else []
            for n, day in enumerate(todo, start=1):
                if attempts.give_up(todo[n - 1 :], count=len(todo) - n + 1):
                    break

                # Fetch and land in one pass: pages stream into the day's transaction as they
                # are decoded (see landing.ingest_events).
                ingest = partial(
                    ingest_events,
                    client,
                    conn,
                    source=source,
                    day=day,
                    config=config,
                    item_ids=item_ids,
                    staging_dir=warehouse.staging_dir,
                )
                try:
                    staged = reread(ingest, retry=pendo.retry(), what=f"{day} {noun} events")
                except PendoAssetsError as exc:
                    context.log.error(f"{noun} events not landed: {attempts.failure(day, exc)}")
                    continue
                attempts.streak = 0
                landed[day] = staged
                context.log.info(
                    f"[{n}/{len(days)}] {day}: {staged.rows} rows landed, {staged.quarantined} "
                    f"quarantined, {staged.pages} page(s), {staged.body_bytes / 1e6:.1f} MB"
                )
        attempts.raise_failure(
            f"{noun} events of {attempts.count} of {len(days)} day(s) not landed, their "
            "previous data is unchanged",
            failed_days=attempts.count,
            days=len(days),
        )
        mutable_from = first_mutable_day(config)  # older days are final
        add_day_metadata(
            context,
            {
                day: {"days": 1, "final": day < mutable_from, **_landed_metadata([staged])}
                for day, staged in landed.items()
            },
        )
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                "days": len(days),
                **_finality(days, mutable_from),
                **_landed_metadata(list(landed.values())),
            }
        )

    return events_asset


def _build_pipeline_asset(
    config: Config, partitions: dg.DailyPartitionsDefinition
) -> dg.AssetsDefinition:
    @daily_asset(
        partitions,
        name="pendo_pipeline_results",
        group_name="pendo_raw",
        kinds={"pendo", "duckdb"},
        description=(
            "Grain: one row per result row of each configured Pendo pipeline and day, run with "
            "its timeSeries set to that day (raw_pipeline_results); one row per (day, pipeline, "
            "id, dimensionId) metric value in pipeline_values; values that cannot be sent in "
            "quarantine_pipeline_results. "
            "If it fails: the failed pipeline days keep their previous data; the message names "
            "the pipeline and day. A 400 usually means the pipeline in the config is invalid "
            "(test it in Pendo's aggregation API); a 403: check PENDO_INTEGRATION_KEY and "
            "pendo.region."
        ),
    )
    def pendo_pipeline_results(
        context: dg.AssetExecutionContext, pendo: PendoResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        days = run_days(context)
        totals: Counter[str] = Counter()
        kinds: Counter[str] = Counter()  # values quarantined per kind of problem
        attempts = _Attempts(what="pipeline day(s)")
        jobs = [(day, spec) for day in days for spec in config.pipelines]
        by_day: dict[date, Counter[str]] = {}
        with pendo.get_client() as client, open_warehouse(warehouse) as conn:
            for i, (day, spec) in enumerate(jobs):
                if attempts.give_up(sorted({d for d, _ in jobs[i:]}), count=len(jobs) - i):
                    break

                fetch = partial(fetch_pipeline_day, client, spec=spec, day=day, config=config)
                try:
                    result = reread(fetch, retry=pendo.retry(), what=f"{day} pipeline {spec.name}")
                    land_pipeline_day(conn, result)
                except PendoAssetsError as exc:
                    failure = attempts.failure(day, exc, f" pipeline {spec.name!r}")
                    context.log.error(f"pipeline results not landed: {failure}")
                    continue
                attempts.streak = 0
                totals.update(
                    rows=len(result.rows), values=result.values.height, rejected=len(result.rejects)
                )
                kinds.update(r.kind for r in result.rejects)
                on_day = by_day.setdefault(day, Counter(days=1, pipelines=len(config.pipelines)))
                on_day.update(
                    result_rows=len(result.rows),
                    metric_values=result.values.height,
                    values_quarantined=len(result.rejects),
                )
                on_day.update(f"quarantined: {r.kind}" for r in result.rejects)
                if spec is config.pipelines[-1]:
                    context.log.info(
                        f"[{days.index(day) + 1}/{len(days)}] {day}: {len(config.pipelines)} pipeline(s) run"
                    )
        attempts.raise_failure(
            f"{attempts.count} of {len(jobs)} pipeline day(s) not landed, their previous data "
            "is unchanged",
            failed=attempts.count,
            pipeline_days=len(jobs),
        )
        add_day_metadata(context, by_day)
        return dg.MaterializeResult(
            metadata={
                "partition_window": window(days),
                "days": len(days),
                **_finality(days, first_mutable_day(config)),
                "pipelines": len(config.pipelines),
                "result_rows": totals["rows"],
                "metric_values": totals["values"],
                "values_quarantined": totals["rejected"],
                **{f"quarantined: {kind}": n for kind, n in sorted(kinds.items())},
            }
        )

    return pendo_pipeline_results


def _finality(days: list[date], mutable_from: date) -> dict[str, int | str]:
    """Which of ``days`` are final: older than the window the daily sync re-pulls."""
    return {
        "final_days": sum(day < mutable_from for day in days),
        "mutable_from": mutable_from.isoformat(),
    }


def _landed_metadata(landed: list[FeatureEventsDay]) -> dict[str, int | float]:
    """What ``landed`` days of feature events hold, summed (one day's, or a run's)."""
    kinds: Counter[str] = Counter()
    for day in landed:
        kinds.update(day.kinds)
    return {
        "rows_landed": sum(d.rows for d in landed),
        "rows_quarantined": sum(d.quarantined for d in landed),
        "pages": sum(d.pages for d in landed),
        "response_mb": round(sum(d.body_bytes for d in landed) / 1e6, 2),
        "fetch_seconds": round(sum(d.fetch_seconds for d in landed), 2),
        "land_seconds": round(sum(d.land_seconds for d in landed), 2),
        **{f"quarantined: {kind}": rows for kind, rows in sorted(kinds.items())},
    }


@dataclass
class _Attempts:
    """A step's (pipeline) days that failed, and when to stop trying the rest: after
    `GIVE_UP_AFTER` in a row failed on the Pendo API, the rest is reported as one failure."""

    what: str
    failed: list[str] = field(default_factory=list)
    count: int = 0  # (pipeline) days failed or not tried
    streak: int = 0

    def give_up(self, rest: list[date], *, count: int) -> bool:
        """True, recording ``count`` (pipeline) days over ``rest`` as not tried, if it is time."""
        if self.streak < GIVE_UP_AFTER:
            return False
        self.failed.append(
            f"{window(rest)}: not tried after {self.streak} {self.what} in a row failed on the "
            f"Pendo API ({count} {self.what} not tried; the next run tries them again)"
        )
        self.count += count
        return True

    def failure(self, day: date, exc: BaseException, label: str = "") -> str:
        """Record a (pipeline) day that failed; returns its one-line description."""
        # A failure of the data, not of the API, does not count towards the streak.
        self.streak = self.streak + 1 if isinstance(exc, ApiError) else 0
        self.failed.append(day_error(day, exc, label))
        self.count += 1
        return self.failed[-1]

    def raise_failure(self, summary: str, **metadata: int) -> None:
        """Fail the step if any (pipeline) day failed; ``summary`` says what it did not do."""
        if self.failed:
            raise dg.Failure(
                description=failure_description(self.failed, count=self.count, summary=summary),
                metadata=metadata,
                allow_retries=False,
            )
