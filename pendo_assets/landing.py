"""Fetching a day from Pendo and landing it in the warehouse, the same way for every caller.

A day is fetched page by page into a Parquet staging file (so memory stays bounded by one
page, and no warehouse connection is held during HTTP), then landed in one transaction that
replaces the day's raw rows, its quarantined rows and its entry in ``landed_days``. If the
fetch fails, or more of the day is malformed than the configured share, nothing is written and
the day's previous data stays as it was.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config, PipelineSpec
from .errors import PageDriftError, PendoAssetsError
from .transforms import MetricFieldSpec, extract_metric_values
from .warehouse import insert_frame, replace_days_in_transaction

__all__ = [
    "DayRejectedError",
    "FeatureEventsDay",
    "PipelineDay",
    "fetch_feature_events",
    "fetch_pipeline_day",
    "land_feature_events",
    "land_pipeline_day",
    "resolve_feature_actions",
]

log = logging.getLogger(__name__)

# Reads of one day restarted when Pendo's rows shift between page requests.
DRIFT_ATTEMPTS = 3

_QUARANTINE_SCHEMA = pa.schema(
    [("reason", pa.string()), ("raw", pa.string()), ("page", pa.int32())]
)


class DayRejectedError(PendoAssetsError):
    """A day holds more malformed rows than the configured share; it was not landed."""




class _Feature(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...


@dataclass
class FeatureEventsDay:
    """One day of feature events fetched into staging files, ready to land."""

    day: date
    rows_path: Path
    rejects_path: Path
    rows: int = 0
    quarantined: int = 0
    pages: int = 0
    body_bytes: int = 0
    fetch_seconds: float = 0.0
    land_seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def quarantine_share(self) -> float:
        total = self.rows + self.quarantined
        return self.quarantined / total if total else 0.0

    def cleanup(self) -> None:
        self.rows_path.unlink(missing_ok=True)
        self.rejects_path.unlink(missing_ok=True)


def fetch_feature_events(
    client: Any,
    *,
    day: date,
    config: Config,
    feature_ids: Sequence[str],
    staging_dir: Path,
) -> FeatureEventsDay:
    """Fetch one day of feature events into staging Parquet files.

    Args:
        client: A `PendoClient`.
        day: The subscription-local day.
        config: The sync configuration (timezone, app ids, quarantine share).
        feature_ids: The configured features.
        staging_dir: Folder for the staging files (created on demand).

    Returns:
        What was fetched; the caller lands it with `land_feature_events`.

    Raises:
        DayRejectedError: More than ``sync.max_quarantine_share`` of the day is malformed.
        ApiError: Pendo failed after retries (the message names endpoint and status).
    """
    for attempt in range(1, DRIFT_ATTEMPTS + 1):
        try:
            return _fetch_feature_events_once(
                client, day=day, config=config, feature_ids=feature_ids, staging_dir=staging_dir
            )
        except PageDriftError:
            if attempt == DRIFT_ATTEMPTS:
                raise
            log.warning("%s: Pendo's rows changed while they were read; reading the day again", day)
    raise AssertionError("unreachable")


def _fetch_feature_events_once(
    client: Any,
    *,
    day: date,
    config: Config,
    feature_ids: Sequence[str],
    staging_dir: Path,
) -> FeatureEventsDay:
    staging_dir.mkdir(parents=True, exist_ok=True)
    out = FeatureEventsDay(
        day=day,
        rows_path=staging_dir / f"feature_events_{day.isoformat()}.parquet",
        rejects_path=staging_dir / f"feature_events_{day.isoformat()}.rejects.parquet",
    )
    started = time.perf_counter()
    writer: pq.ParquetWriter | None = None
    reject_writer = pq.ParquetWriter(out.rejects_path, _QUARANTINE_SCHEMA)
    try:
        for page in client.feature_event_pages(
            day=day,
            timezone=config.pendo.timezone,
            feature_ids=feature_ids,
            app_ids=config.pendo.app_ids,
        ):
            out.pages += 1
            out.body_bytes += page.body_bytes
            if page.table.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(out.rows_path, page.table.schema, compression="none")
                writer.write_table(page.table)
                out.rows += page.table.num_rows
            if page.rejects:
                out.quarantined += len(page.rejects)
                out.reasons.update(r.reason for r in page.rejects)
                reject_writer.write_table(
                    pa.table(
                        {
                            "reason": [r.reason for r in page.rejects],
                            "raw": [r.raw for r in page.rejects],
                            "page": [page.page_index] * len(page.rejects),
                        },
                        schema=_QUARANTINE_SCHEMA,
                    )
                )
    except BaseException:
        if writer is not None:
            writer.close()
        reject_writer.close()
        out.cleanup()
        raise
    if writer is not None:
        writer.close()
    reject_writer.close()
    out.fetch_seconds = time.perf_counter() - started
    if out.quarantine_share > config.sync.max_quarantine_share:
        out.cleanup()
        top = ", ".join(f"{reason} ({n})" for reason, n in out.reasons.most_common(3))
        raise DayRejectedError(
            f"{day}: {out.quarantined} of {out.rows + out.quarantined} Pendo rows are malformed "
            f"({out.quarantine_share:.1%}, over sync.max_quarantine_share "
            f"{config.sync.max_quarantine_share:.1%}): {top}. The day was not landed; its "
            "previous data is unchanged."
        )
    return out


def land_feature_events(conn: duckdb.DuckDBPyConnection, staged: FeatureEventsDay) -> None:
    """Replace the day's raw and quarantined rows with the staged ones, in one transaction."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(tzinfo=None)
    day = staged.day
    conn.execute("BEGIN TRANSACTION")
    try:
        replace_days_in_transaction(conn, table="raw_feature_events", days=[day], frames=[])
        replace_days_in_transaction(conn, table="quarantine_feature_events", days=[day], frames=[])
        if staged.rows:
            conn.execute(
                "INSERT INTO raw_feature_events BY NAME "
                "SELECT ?::DATE AS day, *, ?::TIMESTAMP AS extracted_at FROM read_parquet(?)",
                [day, now, str(staged.rows_path)],
            )
        if staged.quarantined:
            conn.execute(
                "INSERT INTO quarantine_feature_events BY NAME "
                "SELECT ?::DATE AS day, *, ?::TIMESTAMP AS extracted_at FROM read_parquet(?)",
                [day, now, str(staged.rejects_path)],
            )
        _record_landed(conn, "feature_events", day, staged.rows, staged.quarantined, staged.pages, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    staged.land_seconds = time.perf_counter() - started
    staged.cleanup()


def _record_landed(
    conn: duckdb.DuckDBPyConnection,
    source: str,
    day: date,
    rows: int,
    quarantined: int,
    pages: int,
    now: datetime,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO landed_days VALUES (?, ?, ?, ?, ?, ?)",
        [source, day, rows, quarantined, pages, now],
    )


@dataclass
class PipelineDay:
    """One day of one pipeline's results."""

    day: date
    pipeline: str
    rows: list[Mapping[str, Any]]
    values: pl.DataFrame
    rejects: list[tuple[str, Mapping[str, Any]]]
    pages: int


def fetch_pipeline_day(client: Any, *, spec: PipelineSpec, day: date, config: Config) -> PipelineDay:
    """Run one configured pipeline for one day and read its metric values.

    Raises:
        DayRejectedError: More than the configured share of result rows cannot be sent.
    """
    for attempt in range(1, DRIFT_ATTEMPTS + 1):
        rows: list[Mapping[str, Any]] = []
        pages = 0
        try:
            for page in client.pipeline_pages(
                stages=list(spec.stages),
                day=day,
                timezone=config.pendo.timezone,
                sort_field=spec.id_field,
            ):
                pages += 1
                rows.extend(page)
            break
        except PageDriftError:
            if attempt == DRIFT_ATTEMPTS:
                raise
            log.warning("%s: pipeline %s changed while it was read; reading it again", day, spec.name)
    field_spec = MetricFieldSpec(
        pipeline=spec.name,
        model=spec.model,
        id_field=spec.id_field,
        metrics=spec.metrics,
        aggregation=spec.aggregation,
    )
    values, rejects = extract_metric_values(rows, day=day, spec=field_spec)
    bad_rows = len({id(row) for _, row in rejects})
    if rows and bad_rows / len(rows) > config.sync.max_quarantine_share:
        top = Counter(reason for reason, _ in rejects).most_common(3)
        raise DayRejectedError(
            f"{day}: pipeline {spec.name!r}: {bad_rows} of {len(rows)} result rows cannot be sent "
            f"(over sync.max_quarantine_share {config.sync.max_quarantine_share:.1%}): "
            + ", ".join(f"{r} ({n})" for r, n in top)
            + ". The day was not landed; its previous data is unchanged."
        )
    return PipelineDay(day=day, pipeline=spec.name, rows=rows, values=values, rejects=rejects, pages=pages)


_encoder = msgspec.json.Encoder()


def _to_json(row: Mapping[str, Any]) -> str:
    try:
        return _encoder.encode(row).decode()
    except (TypeError, ValueError, OverflowError):
        return repr(row)


def land_pipeline_day(conn: duckdb.DuckDBPyConnection, result: PipelineDay) -> None:
    """Replace one pipeline's raw results, values and quarantined rows for a day, atomically."""
    now = datetime.now(UTC).replace(tzinfo=None)
    raw = pl.DataFrame(
        {
            "day": [result.day] * len(result.rows),
            "pipeline": [result.pipeline] * len(result.rows),
            "row_number": list(range(len(result.rows))),
            "row_json": [_to_json(r) for r in result.rows],
            "extracted_at": [now] * len(result.rows),
        },
        schema={
            "day": pl.Date,
            "pipeline": pl.String,
            "row_number": pl.Int32,
            "row_json": pl.String,
            "extracted_at": pl.Datetime("us"),
        },
    )
    rejects = pl.DataFrame(
        {
            "day": [result.day] * len(result.rejects),
            "pipeline": [result.pipeline] * len(result.rejects),
            "reason": [reason for reason, _ in result.rejects],
            "raw": [_to_json(row) for _, row in result.rejects],
            "extracted_at": [now] * len(result.rejects),
        },
        schema={
            "day": pl.Date,
            "pipeline": pl.String,
            "reason": pl.String,
            "raw": pl.String,
            "extracted_at": pl.Datetime("us"),
        },
    )
    one = "pipeline = ?"
    conn.execute("BEGIN TRANSACTION")
    try:
        for table, frame in (
            ("raw_pipeline_results", raw),
            ("pipeline_values", result.values),
            ("quarantine_pipeline_results", rejects),
        ):
            replace_days_in_transaction(
                conn, table=table, days=[result.day], frames=[frame], where=one, params=[result.pipeline]
            )
        _record_landed(
            conn,
            f"pipeline:{result.pipeline}",
            result.day,
            len(result.rows),
            len({id(r) for _, r in result.rejects}),
            result.pages,
            now,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def resolve_feature_actions(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: Config,
    pendo_features: Iterable[_Feature],
) -> tuple[pl.DataFrame, list[str]]:
    """Decide the Planhat action name and weight of every configured feature, and persist it.

    The config's ``action`` wins. Otherwise the feature's name in Pendo is used the first time
    the feature is seen, and kept afterwards even if the feature is renamed in Pendo, so one
    activity is never split over two names. All features of one action share the weight of
    the first of them in the config.

    Returns:
        ``(feature_id, action, weight)`` for the configured features, and warnings for features
        Pendo does not list (their id stands in for the name until Pendo lists them).
    """
    names = {f.id: f.name for f in pendo_features}
    known = dict(
        conn.execute(
            "SELECT feature_id, action FROM feature_actions WHERE source = 'pendo'"
        ).fetchall()
    )
    warnings: list[str] = []
    rows: list[tuple[str, str, str | None, str]] = []
    for feature in config.features:
        if feature.action:
            rows.append((feature.id, feature.action, names.get(feature.id), "config"))
        elif feature.id in known:
            rows.append((feature.id, known[feature.id], names.get(feature.id), "pendo"))
        elif names.get(feature.id):
            rows.append((feature.id, str(names[feature.id]), names[feature.id], "pendo"))
        else:
            warnings.append(
                f"feature {feature.id} is not listed by Pendo and has no action in the config; "
                "its id is used as the activity name for now"
            )
            rows.append((feature.id, feature.id, None, "fallback"))
    weights: dict[str, float] = {}
    for feature, (_, action, _, _) in zip(config.features, rows, strict=True):
        weights.setdefault(action, float(feature.weight))
    now = datetime.now(UTC).replace(tzinfo=None)
    frame = pl.DataFrame(
        {
            "feature_id": [r[0] for r in rows],
            "action": [r[1] for r in rows],
            "weight": [weights[r[1]] for r in rows],
            "pendo_name": [r[2] for r in rows],
            "source": [r[3] for r in rows],
            "updated_at": [now] * len(rows),
        },
        schema={
            "feature_id": pl.String,
            "action": pl.String,
            "weight": pl.Float64,
            "pendo_name": pl.String,
            "source": pl.String,
            "updated_at": pl.Datetime("us"),
        },
    )
    conn.execute("BEGIN TRANSACTION")
    try:
        # Keep the first name of features no longer configured, for history (drift view).
        conn.execute(
            "DELETE FROM feature_actions WHERE feature_id IN (SELECT UNNEST(?::VARCHAR[]))",
            [frame["feature_id"].to_list()],
        )
        insert_frame(conn, "feature_actions", frame)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return frame.select("feature_id", "action", "weight"), warnings
