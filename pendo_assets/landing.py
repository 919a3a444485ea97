"""Fetching a day from Pendo and landing it in the warehouse, the same way for every caller.

`ingest_events` streams a day of one event source (feature, page or track events,
`models.EVENT_SOURCES`) into the warehouse: pages go into DuckDB as they are
decoded, through one ``INSERT`` reading an Arrow stream, so Pendo answering, decoding and
DuckDB writing overlap, and memory holds a few pages whatever the size of the day. The day's
raw rows, its quarantined rows and its entry in ``landed_days`` are replaced in one
transaction. If the fetch fails, or more of the day is malformed than the configured share, the
transaction is rolled back and the day's previous data stays as it was.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from . import queries
from .clients import prefetch
from .config import Config, ItemSpec, PipelineSpec
from .errors import DayRejectedError, PageDriftError
from .models import EVENT_SOURCES, FEATURE_EVENTS, EventSource, Feature, FeatureEventPage
from .queries import insert_frame, transaction
from .transforms import MetricFieldSpec, ValueReject, extract_metric_values

__all__ = [
    "FeatureEventsDay",
    "PipelineDay",
    "configured_items",
    "fetch_pipeline_day",
    "ingest_events",
    "ingest_feature_events",
    "land_pipeline_day",
    "read_pipeline_day",
    "resolve_actions",
    "resolve_feature_actions",
]

log = logging.getLogger(__name__)

# Reads of one day restarted when Pendo's rows shift between page requests.
DRIFT_ATTEMPTS = 3

_QUARANTINE_SCHEMA = pa.schema(
    [("reason", pa.string()), ("raw", pa.string()), ("page", pa.int32())]
)


@dataclass
class FeatureEventsDay:
    """What landing one day of feature (page, track) events did (its rejected rows are staged
    in a file)."""

    day: date
    rejects_path: Path
    rows: int = 0
    quarantined: int = 0
    pages: int = 0
    body_bytes: int = 0
    fetch_seconds: float = 0.0
    land_seconds: float = 0.0
    #: Rows per kind of problem (a row with two problems counts under both).
    kinds: Counter[str] = field(default_factory=Counter)


def configured_items(config: Config, source: EventSource) -> tuple[ItemSpec, ...]:
    """The configured features (``as: metric`` ones too), pages or track types of ``source``."""
    items: tuple[ItemSpec, ...] = getattr(config, source.section)
    return items


def ingest_feature_events(
    client: Any,
    conn: duckdb.DuckDBPyConnection,
    *,
    day: date,
    config: Config,
    feature_ids: Sequence[str],
    staging_dir: Path,
) -> FeatureEventsDay:
    """`ingest_events` of feature events."""
    return ingest_events(
        client,
        conn,
        source=FEATURE_EVENTS,
        day=day,
        config=config,
        item_ids=feature_ids,
        staging_dir=staging_dir,
    )


def ingest_events(
    client: Any,
    conn: duckdb.DuckDBPyConnection,
    *,
    source: EventSource,
    day: date,
    config: Config,
    item_ids: Sequence[str],
    staging_dir: Path,
) -> FeatureEventsDay:
    """Fetch one day of ``source``'s events and land it, streaming, in one transaction.

    As the module docstring describes; the connection holds the transaction while Pendo answers.

    Args:
        client: A `PendoClient`.
        conn: An open read-write warehouse connection, not inside a transaction.
        source: Feature, page or track events.
        day: The subscription-local day.
        config: The sync configuration (timezone, app ids, quarantine share).
        item_ids: The configured features (pages, track types).
        staging_dir: Folder for the quarantined rows' staging file (created on demand).

    Returns:
        What was landed. ``fetch_seconds`` runs until the last page is decoded; ``land_seconds``
        is what landing added after that (the rest of it overlaps the fetch).

    Raises:
        DayRejectedError: More than ``sync.max_quarantine_share`` of the day is malformed.
        ApiError: Pendo failed after retries (the message names endpoint and status).
    """
    staging_dir.mkdir(parents=True, exist_ok=True)

    def once() -> FeatureEventsDay:
        out = FeatureEventsDay(
            day=day, rejects_path=staging_dir / f"{source.name}_{day}.rejects.parquet"
        )
        started = time.perf_counter()
        now = datetime.now(UTC).replace(tzinfo=None)
        pages: Iterator[FeatureEventPage] = client.event_pages(  # checks arguments now
            source=source,
            day=day,
            timezone=config.pendo.timezone,
            item_ids=item_ids,
            app_ids=config.pendo.app_ids,
        )
        # The first page is on its way while the day's old rows are deleted.
        stream = _PageStream(pages, out)
        try:
            with transaction(conn):
                queries.delete_raw_events_day(conn, source=source, day=day)
                reader = pa.RecordBatchReader.from_batches(source.schema, stream.batches())
                conn.register(_STREAM_VIEW, reader)
                try:
                    with _bulk_insert(conn):
                        queries.insert_raw_events_stream(
                            conn, source=source, view=_STREAM_VIEW, day=day, now=now
                        )
                finally:
                    conn.unregister(_STREAM_VIEW)
                stream.finish()  # raises what the fetch raised
                _check_share(
                    day, None, out.quarantined, out.rows + out.quarantined, out.kinds, config
                )
                if out.quarantined:
                    queries.insert_quarantined_events(
                        conn, source=source, day=day, now=now, path=out.rejects_path
                    )
                queries.record_landed_day(
                    conn,
                    source=source.name,
                    day=day,
                    rows=out.rows,
                    quarantined=out.quarantined,
                    pages=out.pages,
                    now=now,
                )
        except BaseException:
            stream.close()
            raise
        finally:
            out.rejects_path.unlink(missing_ok=True)
        out.land_seconds = max(0.0, time.perf_counter() - started - out.fetch_seconds)
        return out

    return _reading_again_on_drift(once, f"{day}: Pendo's {source.noun} events")


_T = TypeVar("_T")


def _reading_again_on_drift(read: Callable[[], _T], what: str) -> _T:
    """Run ``read``, again from the start when Pendo's rows shift between its page requests."""
    for _ in range(DRIFT_ATTEMPTS - 1):
        try:
            return read()
        except PageDriftError:
            log.warning("%s changed while they were read; reading them again", what)
    return read()  # the last attempt's drift is raised


# Rows per Arrow batch handed to DuckDB (about half a row group): big enough that the hand-over
# costs nothing, small enough that no batch outlives the row group it fills.
_STREAM_BATCH_ROWS = 65_536
_STREAM_VIEW = "_pendo_planhat_feature_event_pages"


class _PageStream:
    """Decoded pages of one day as an Arrow batch stream, produced in a worker thread.

    DuckDB pulls the batches from its own thread while the worker fetches and decodes the next
    page (the client requests the one after that meanwhile), so network, decoding and DuckDB's
    writing overlap. At most two decoded pages wait between them. The worker counts pages and
    rows into ``out`` and stages rejected rows in its Parquet file. An error of the fetch ends
    the stream early; `finish` raises it once DuckDB is done, so the caller rolls back.
    """

    def __init__(self, pages: Iterator[FeatureEventPage], out: FeatureEventsDay) -> None:
        self._out = out
        self._writer: pq.ParquetWriter | None = None
        self._error: BaseException | None = None
        self._started = time.perf_counter()
        self._tables = prefetch(self._produce(pages), ahead=2, name="pendo-pages")

    def _produce(self, pages: Iterator[FeatureEventPage]) -> Iterator[pa.Table]:
        try:
            for page in pages:
                self._count(page)
                if page.table.num_rows:
                    yield page.table
                del page
        finally:
            self._out.fetch_seconds = time.perf_counter() - self._started
            close = getattr(pages, "close", None)
            if close is not None:
                close()  # stops the client's prefetching
            if self._writer is not None:
                self._writer.close()

    def _count(self, page: FeatureEventPage) -> None:
        out, rejects = self._out, page.rejects
        out.pages += 1
        out.body_bytes += page.body_bytes
        out.rows += page.table.num_rows
        out.quarantined += len(rejects)
        for r in rejects:
            out.kinds.update(set(r.kinds))
        if not rejects:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(out.rejects_path, _QUARANTINE_SCHEMA)
        reasons, raws = [r.reason for r in rejects], [r.raw for r in rejects]
        pages = [page.page_index] * len(rejects)
        self._writer.write_table(
            pa.table({"reason": reasons, "raw": raws, "page": pages}, schema=_QUARANTINE_SCHEMA)
        )

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows, in batches of `_STREAM_BATCH_ROWS` (runs in DuckDB's scan thread)."""
        try:
            for table in self._tables:
                yield from table.to_batches(max_chunksize=_STREAM_BATCH_ROWS)
                del table
        except GeneratorExit:
            raise
        except BaseException as exc:  # raised in the caller's thread by finish()
            self._error = exc

    def close(self) -> None:
        """Stop the worker, or wait for it (a no-op once it is done)."""
        self._tables.close()

    def finish(self) -> None:
        """Wait for the worker and raise the error that ended the stream, if any."""
        self.close()
        if self._error is not None:
            raise self._error


@contextmanager
def _bulk_insert(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """DuckDB settings for a day's bulk ``INSERT`` of raw rows, restored afterwards.

    * The rows have no order of their own, so DuckDB need not keep their input order: it then
      writes in parallel, about twice as fast.
    * No FSST string compression: it costs a fifth of the insert's CPU for a tenth of the
      table's size (the repetitive columns are dictionary-compressed either way).
    * Row groups are written as soon as each is full, instead of five at a time: otherwise a
      day of a few million rows holds several hundred MB more until the end of the insert.
    * A small buffer pool: DuckDB keeps every block it writes cached up to its memory limit
      (80 % of RAM by default), so without a cap the process grows with the size of the day
      (about 90 MB more at 4M rows than at 1M). The blocks are already in the file, so dropping
      them costs nothing; the cap (32 MB plus 16 per thread) leaves each thread room for the
      row group it is building.
    """
    threads = int(queries.duckdb_setting(conn, "threads") or 1)
    settings = {
        "preserve_insertion_order": "false",
        "disabled_compression_methods": "'fsst'",
        "write_buffer_row_group_count": "1",
        "memory_limit": f"'{32 + 16 * threads}MB'",
    }
    previous = {name: queries.duckdb_setting(conn, name) for name in settings}
    for name, value in settings.items():
        queries.set_duckdb_setting(conn, name, value)
    try:
        yield
    finally:
        for name, old in previous.items():
            queries.set_duckdb_setting(conn, name, None)
            # A setting shown rounded (a memory limit in GiB) is put back by RESET when it was
            # the default; only a value set before is set again.
            if old and queries.duckdb_setting(conn, name) != old:
                queries.set_duckdb_setting(conn, name, "'" + old.replace("'", "''") + "'")


def _check_share(
    day: date, pipeline: str | None, rejected: int, total: int, kinds: Counter[str], config: Config
) -> None:
    """Raise `DayRejectedError` when more than the configured share of a day is malformed."""
    limit = config.sync.max_quarantine_share
    if total and rejected / total > limit:
        raise DayRejectedError(
            day=day,
            pipeline=pipeline,
            rejected=rejected,
            total=total,
            limit=limit,
            top=kinds.most_common(3),
        )


@dataclass
class PipelineDay:
    """One day of one pipeline's results."""

    day: date
    pipeline: str
    rows: list[Mapping[str, Any]]
    values: pl.DataFrame
    rejects: list[ValueReject]
    pages: int


def fetch_pipeline_day(
    client: Any,
    *,
    spec: PipelineSpec,
    day: date,
    config: Config,
    read: tuple[list[Mapping[str, Any]], int] | None = None,
) -> PipelineDay:
    """Run one configured pipeline for one day and read its metric values.

    ``read``, when given, is what `read_pipeline_day` returned for it: nothing is requested.

    Raises:
        DayRejectedError: More than the configured share of result rows cannot be sent.
    """
    rows, pages = read or read_pipeline_day(client, spec=spec, day=day, config=config)
    field_spec = MetricFieldSpec(
        pipeline=spec.name,
        model=spec.model,
        id_field=spec.id_field,
        metrics=spec.metrics,
        aggregation=spec.aggregation,
    )
    values, rejects = extract_metric_values(rows, day=day, spec=field_spec)
    bad_rows = len({id(r.row) for r in rejects})
    _check_share(day, spec.name, bad_rows, len(rows), Counter(r.kind for r in rejects), config)
    return PipelineDay(
        day=day, pipeline=spec.name, rows=rows, values=values, rejects=rejects, pages=pages
    )


def read_pipeline_day(
    client: Any, *, spec: PipelineSpec, day: date, config: Config
) -> tuple[list[Mapping[str, Any]], int]:
    """One pipeline's result rows for one day and the pages they took, read again if Pendo's
    rows shifted while paging."""

    def read() -> tuple[list[Mapping[str, Any]], int]:
        pages = list(
            client.pipeline_pages(
                stages=list(spec.stages),
                day=day,
                timezone=config.pendo.timezone,
                sort_field=spec.id_field,
                app_ids=config.pendo.app_ids,
            )
        )
        return [row for page in pages for row in page], len(pages)

    return _reading_again_on_drift(read, f"{day}: pipeline {spec.name}'s results")


_encoder = msgspec.json.Encoder()


def _to_json(row: Mapping[str, Any]) -> str:
    try:
        return _encoder.encode(row).decode()
    except (TypeError, ValueError, OverflowError):
        return repr(row)


def land_pipeline_day(conn: duckdb.DuckDBPyConnection, result: PipelineDay) -> None:
    """Replace one pipeline's raw results, values and quarantined rows for a day, atomically."""
    now = datetime.now(UTC).replace(tzinfo=None)
    # Day, pipeline and extraction time are the same on every row: added as literals.
    stamp = {"day": result.day, "pipeline": result.pipeline, "extracted_at": now}
    raw = pl.DataFrame(
        {"row_number": range(len(result.rows)), "row_json": [_to_json(r) for r in result.rows]},
        schema={"row_number": pl.Int32, "row_json": pl.String},
    ).with_columns(**{k: pl.lit(v) for k, v in stamp.items()})
    rejects = pl.DataFrame(
        {
            "reason": [r.reason for r in result.rejects],
            "raw": [_to_json(r.row) for r in result.rejects],
        },
        schema={"reason": pl.String, "raw": pl.String},
    ).with_columns(**{k: pl.lit(v) for k, v in stamp.items()})
    with transaction(conn):
        queries.delete_pipeline_day(conn, day=result.day, pipeline=result.pipeline)
        insert_frame(conn, "raw_pipeline_results", raw)
        insert_frame(conn, "pipeline_values", result.values)
        insert_frame(conn, "quarantine_pipeline_results", rejects)
        queries.record_landed_day(
            conn,
            source=f"pipeline:{result.pipeline}",
            day=result.day,
            rows=len(result.rows),
            quarantined=len({id(r.row) for r in result.rejects}),
            pages=result.pages,
            now=now,
        )


def resolve_feature_actions(
    conn: duckdb.DuckDBPyConnection, *, config: Config, pendo_features: Iterable[Feature]
) -> tuple[pl.DataFrame, list[str]]:
    """`resolve_actions` of the features."""
    return resolve_actions(conn, config=config, source=FEATURE_EVENTS, pendo_items=pendo_features)


def resolve_actions(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: Config,
    source: EventSource,
    pendo_items: Iterable[Feature],
) -> tuple[pl.DataFrame, list[str]]:
    """Decide the Planhat action name and weight of every configured feature (page, track
    type) of ``source`` whose events become activities, and persist it (``feature_actions``).

    The config's ``action`` wins. Otherwise the item's name in Pendo is used the first time
    the item is seen, and kept afterwards even if it is renamed in Pendo, so one activity is
    never split over two names. All items of one action share the weight of the first of them
    in the config (features, then pages, then track types). ``as: metric`` features have no
    action.

    Returns:
        ``(feature_id, action, weight)`` (the feature, page or track type id) for the
        configured items, and warnings for items Pendo does not list (their id stands in for
        the name until Pendo lists them).
    """
    names = {f.id: f.name for f in pendo_items}
    known = queries.feature_action_names(conn, source="pendo")
    warnings: list[str] = []
    rows: list[tuple[str, str, str | None, str]] = []
    # An action the config names under features, pages and track events alike has one weight.
    weights: dict[str, float] = {}
    for other in EVENT_SOURCES.values():
        for spec in configured_items(config, other):
            if spec.action and not spec.is_metric:
                weights.setdefault(spec.action, float(spec.weight))
    for item in configured_items(config, source):
        if item.is_metric:
            continue
        name = names.get(item.id)
        if item.action:
            action, origin = item.action, "config"
        elif item.id in known:
            action, origin = known[item.id], "pendo"
        elif name:
            action, origin = str(name), "pendo"
        else:
            warnings.append(
                f"{source.noun} {item.id} is not listed by Pendo and has no action in the "
                "config; its id is used as the activity name for now"
            )
            action, origin, name = item.id, "fallback", None
        rows.append((item.id, action, name, origin))
        weights.setdefault(action, float(item.weight))
    frame = pl.DataFrame(
        rows,
        schema=dict.fromkeys(["feature_id", "action", "pendo_name", "source"], pl.String),
        orient="row",
    ).with_columns(
        weight=pl.col("action").replace_strict(weights, return_dtype=pl.Float64),
        updated_at=pl.lit(datetime.now(UTC).replace(tzinfo=None), dtype=pl.Datetime("us")),
        event_source=pl.lit(source.name),
    )
    with transaction(conn):
        # Keep the first name of features no longer configured, for history (drift view).
        queries.delete_feature_actions(conn, feature_ids=frame["feature_id"].to_list())
        insert_frame(conn, "feature_actions", frame)
    return frame.select("feature_id", "action", "weight"), warnings
