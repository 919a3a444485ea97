"""The outbox, the ledger and the metric read-back: the statements `pendo_assets.delivery` and
`pendo_assets.readback` run (re-exported by `pendo_assets.queries`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl

from ..types import BatchKind
from . import _IN_DAYS, BatchStatus, Conn, _scalar, _sql_file, insert_frame, transaction

__all__ = [
    "count_metric_drift",
    "insert_batch",
    "mark_batch",
    "metric_drift_keys",
    "metric_drift_span",
    "record_item_errors",
    "rejected_items_of_run",
    "replace_metric_readback",
    "resolve_batch_status",
    "select_batch_status",
    "select_current_activities",
    "select_current_metrics",
    "select_held_activity_keys",
    "select_held_metric_keys",
    "select_ledger_activities",
    "select_ledger_metrics",
    "select_metric_drift",
    "select_sent_metric_days",
    "sent_per_day",
    "settle_interrupted_batches",
    "sync_summary",
]


def select_current_activities(conn: Conn, *, days: Sequence[date]) -> pl.DataFrame:
    """What Pendo says now, per activity key."""
    return conn.execute(
        "SELECT day, external_id, action, count, weight, company_external_id, feature_ids, "
        "enduser_id, email, matched_by, page_ids, track_type_ids "
        f"FROM matched_activities WHERE {_IN_DAYS}",
        [list(days)],
    ).pl()


def select_ledger_activities(conn: Conn, *, days: Sequence[date]) -> pl.DataFrame:
    """What Planhat holds, per activity key."""
    return conn.execute(f"SELECT * FROM ledger_activities WHERE {_IN_DAYS}", [list(days)]).pl()


def select_held_activity_keys(conn: Conn, *, days: Sequence[date]) -> pl.DataFrame:
    """Activity keys held back by a batch in doubt."""
    return conn.execute(f"SELECT * FROM held_activity_keys WHERE {_IN_DAYS}", [list(days)]).pl()


def select_current_metrics(conn: Conn, *, days: Sequence[date]) -> pl.DataFrame:
    """What Pendo says now, per metric key."""
    return conn.execute(
        "SELECT day, model, external_id, dimension_id, value, aggregation "
        f"FROM matched_metrics WHERE {_IN_DAYS}",
        [list(days)],
    ).pl()


def select_ledger_metrics(conn: Conn, *, days: Sequence[date]) -> pl.DataFrame:
    """What Planhat holds, per metric key: ``last_value`` (null when unknown) and ``sum_value``
    (``sql/select_ledger_metrics.sql``)."""
    return conn.execute(_sql_file("select_ledger_metrics"), {"days": list(days)}).pl()


def select_held_metric_keys(conn: Conn, *, days: Sequence[date]) -> pl.DataFrame:
    """Metric keys held back by a batch in doubt."""
    return conn.execute(f"SELECT * FROM held_metric_keys WHERE {_IN_DAYS}", [list(days)]).pl()


def select_sent_metric_days(
    conn: Conn, *, days: Sequence[date], dimension_id: str | None = None
) -> pl.DataFrame:
    """``dimension_id, day`` of ``days`` that the ledger says Planhat was sent (of one
    dimension when given), ordered."""
    return conn.execute(
        f"SELECT DISTINCT dimension_id, day FROM ledger_metrics WHERE {_IN_DAYS} "
        "AND (?::VARCHAR IS NULL OR dimension_id = ?) ORDER BY dimension_id, day",
        [list(days), dimension_id, dimension_id],
    ).pl()


def replace_metric_readback(
    conn: Conn, *, scope: pl.DataFrame, values: pl.DataFrame, run_id: str | None
) -> None:
    """Record a read-back in one transaction: for each ``day, dimension_id`` of ``scope``,
    the values Planhat holds (``values``: ``day, model, external_id, dimension_id, points,
    sum_value, last_value``) replace those of any earlier read-back.

    ``read_at`` is the transaction's ``current_timestamp``, the clock ``sent_at`` is stamped
    with, so `metric_drift` can tell whether a key was sent after it was read back.
    """
    conn.register("_readback_scope", scope.select("day", "dimension_id"))
    conn.register("_readback_values", values)
    try:
        with transaction(conn):
            for table in ("planhat_readback_days", "planhat_metric_readback"):
                conn.execute(
                    f"DELETE FROM {table} WHERE (day, dimension_id) IN "
                    "(SELECT (day, dimension_id) FROM _readback_scope)"
                )
            conn.execute(
                "INSERT INTO planhat_readback_days BY NAME SELECT day, dimension_id, "
                "current_timestamp::TIMESTAMP AS read_at, ?::VARCHAR AS run_id FROM _readback_scope",
                [run_id],
            )
            conn.execute(
                "INSERT INTO planhat_metric_readback BY NAME SELECT *, "
                "current_timestamp::TIMESTAMP AS read_at, ?::VARCHAR AS run_id FROM _readback_values",
                [run_id],
            )
    finally:
        conn.unregister("_readback_scope")
        conn.unregister("_readback_values")


def count_metric_drift(conn: Conn) -> int:
    """How many metric keys Planhat disagrees on (``metric_drift``)."""
    return int(_scalar(conn, "SELECT COUNT(*) FROM metric_drift"))


def metric_drift_span(conn: Conn) -> tuple[int, date | None, date | None]:
    """Keys in ``metric_drift``, and their first and last day (None when there is none)."""
    row = conn.execute("SELECT COUNT(*), min(day), max(day) FROM metric_drift").fetchone()
    return (int(row[0]), row[1], row[2]) if row else (0, None, None)


def metric_drift_keys(
    conn: Conn, *, limit: int
) -> list[tuple[date, str, str, str, float, float | None]]:
    """The first ``limit`` rows of ``metric_drift`` (``day, model, external_id, dimension_id,
    sent, planhat``), by day and key."""
    return conn.execute(
        "SELECT day, model, external_id, dimension_id, sent, planhat FROM metric_drift "
        "ORDER BY day, dimension_id, model, external_id LIMIT ?",
        [limit],
    ).fetchall()


def select_metric_drift(
    conn: Conn, *, days: Sequence[date], dimension_id: str | None = None
) -> pl.DataFrame:
    """``metric_drift`` rows of ``days`` (of one dimension when given) with the key's
    ``aggregation`` and whether a batch in doubt holds it (``held``)."""
    return conn.execute(
        "SELECT m.day, m.model, m.external_id, m.dimension_id, m.sent, m.planhat, l.aggregation, "
        "h.day IS NOT NULL AS held FROM metric_drift AS m "
        "JOIN ledger_metrics AS l USING (day, model, external_id, dimension_id) "
        "LEFT JOIN held_metric_keys AS h USING (day, model, external_id, dimension_id) "
        "WHERE m.day IN (SELECT UNNEST(?::DATE[])) AND (?::VARCHAR IS NULL OR m.dimension_id = ?) "
        "ORDER BY m.day, m.dimension_id, m.model, m.external_id",
        [list(days), dimension_id, dimension_id],
    ).pl()


def select_batch_status(conn: Conn, *, batch_id: int) -> str | None:
    """A batch's status, or None when there is no such batch."""
    row = conn.execute(
        "SELECT status FROM outbox_batches WHERE batch_id = ?", [batch_id]
    ).fetchone()
    return None if row is None else str(row[0])


def settle_interrupted_batches(
    conn: Conn,
    *,
    status: BatchStatus,
    to: BatchStatus,
    note: str,
    kind: BatchKind | None = None,
    aggregation: str | None = None,
) -> int:
    """Move every batch in ``status`` (of ``kind`` and ``aggregation`` when given) to ``to``.

    Returns:
        How many batches moved.
    """
    # The changed-row count, not RETURNING: DuckLake has no RETURNING on UPDATE.
    return int(
        _scalar(
            conn,
            "UPDATE outbox_batches SET status = ?, settled_at = current_timestamp, note = ? "
            "WHERE status = ? AND (?::VARCHAR IS NULL OR kind = ?) "
            "AND (?::VARCHAR IS NULL OR aggregation = ?)",
            [to, note, status, kind, kind, aggregation, aggregation],
        )
    )


def insert_batch(
    conn: Conn,
    *,
    kind: BatchKind,
    aggregation: str | None,
    items: pl.DataFrame,
    body_bytes: int,
    run_id: str | None,
) -> int:
    """Write a batch and its items to the outbox as ``prepared``, in one transaction.

    Returns:
        The new batch id.
    """
    with transaction(conn):
        # One past the highest id, not a sequence (DuckLake has none): batches are written by
        # one publisher at a time (the warehouse's writer lock, or DuckLake's publish lock).
        batch_id = int(_scalar(conn, "SELECT COALESCE(MAX(batch_id), 0) + 1 FROM outbox_batches"))
        conn.execute(
            "INSERT INTO outbox_batches (batch_id, kind, aggregation, status, items, body_bytes, "
            "created_at, run_id) VALUES (?, ?, ?, 'prepared', ?, ?, current_timestamp, ?)",
            [batch_id, kind, aggregation, items.height, body_bytes, run_id],
        )
        table = "outbox_activity_items" if kind == "activities" else "outbox_metric_items"
        insert_frame(
            conn, table, items.with_columns(pl.lit(batch_id, dtype=pl.Int64).alias("batch_id"))
        )
    return batch_id


def mark_batch(
    conn: Conn, *, batch_id: int, status: BatchStatus, note: str | None = None, sent: bool = False
) -> None:
    """Set a batch's status, stamping ``sent_at`` (``sent``) or ``settled_at``; keeps the note
    when ``note`` is None."""
    stamp = "sent_at" if sent else "settled_at"
    conn.execute(
        f"UPDATE outbox_batches SET status = ?, {stamp} = current_timestamp, "
        "note = coalesce(?, note) WHERE batch_id = ?",
        [status, note, batch_id],
    )


def resolve_batch_status(conn: Conn, *, batch_id: int, status: BatchStatus, note: str) -> None:
    """A user's decision on a batch in doubt, appended to its note."""
    conn.execute(
        "UPDATE outbox_batches SET status = ?, settled_at = current_timestamp, "
        "note = coalesce(note || '; ', '') || ? WHERE batch_id = ?",
        [status, note, batch_id],
    )


def record_item_errors(conn: Conn, *, batch_id: int, errors: pl.DataFrame) -> None:
    """Set ``error`` on the metric items of a batch that Planhat named in its answer.

    Args:
        conn: An open connection (inside the caller's transaction).
        batch_id: The batch.
        errors: ``k`` (dimension_id, external_id, model and day joined by chr(31)) and ``error``.
    """
    conn.register("_rejected", errors)
    try:
        conn.execute(
            "UPDATE outbox_metric_items AS i SET error = r.error FROM _rejected AS r "
            "WHERE i.batch_id = ? AND r.k = i.dimension_id || chr(31) || i.external_id "
            "|| chr(31) || i.model || chr(31) || CAST(i.day AS VARCHAR)",
            [batch_id],
        )
    finally:
        conn.unregister("_rejected")


def rejected_items_of_run(conn: Conn, *, run_id: str | None) -> tuple[int, str | None]:
    """Metric items of a run that Planhat answered 200 to but listed as failed, and the first
    error."""
    row = conn.execute(
        "SELECT COUNT(*), min(i.error) FROM outbox_metric_items AS i "
        "JOIN outbox_batches AS b USING (batch_id) WHERE b.run_id = ? AND i.error IS NOT NULL",
        [run_id],
    ).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def sent_per_day(conn: Conn, *, run_id: str) -> dict[date, dict[str, int]]:
    """What a run delivered, per day (``sent_items``): ``activity_items_sent``,
    ``activity_units_sent`` (events) and ``metric_items_sent``."""
    rows = conn.execute(
        "SELECT day, kind, COUNT(*), SUM(amount) FROM sent_items WHERE run_id = ? GROUP BY ALL",
        [run_id],
    ).fetchall()
    out: dict[date, dict[str, int]] = {}
    for day, kind, items, units in rows:
        sent = out.setdefault(day, {})
        if kind == "activities":
            sent |= {"activity_items_sent": int(items), "activity_units_sent": int(units or 0)}
        else:
            sent["metric_items_sent"] = int(items)
    return out


def sync_summary(conn: Conn, *, days: Sequence[date], run_id: str | None) -> dict[str, int | float]:
    """Headline numbers of a run: what its days landed and matched, and what the run sent
    (``sql/select_sync_summary.sql``); a sum over no rows is 0."""
    cursor = conn.execute(_sql_file("select_sync_summary"), {"days": list(days), "run_id": run_id})
    row = cursor.fetchone()
    assert row is not None  # one row, always
    return {d[0]: 0 if v is None else v for d, v in zip(cursor.description, row, strict=True)}
