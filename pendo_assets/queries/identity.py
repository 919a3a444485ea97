"""Pendo's visitors and the End Users this product creates: the statements of matching by email
and of `pendo_assets.assets.identity` (re-exported by `pendo_assets.queries`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

import polars as pl

from ..models import EventSource
from . import _IN_DAYS, Conn, insert_frame, transaction


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


__all__ = [
    "insert_creations",
    "replace_planned_end_users",
    "replace_visitors",
    "select_created_end_user_ids",
    "select_pending_creations",
    "select_usage_pairs",
    "select_visitor_emails",
    "select_visitors",
    "settle_creations",
]


def replace_visitors(conn: Conn, *, visitors: pl.DataFrame, rejects: pl.DataFrame) -> None:
    """Replace Pendo's visitors and their quarantined rows in one transaction."""
    with transaction(conn):
        conn.execute("DELETE FROM pendo_visitors")
        conn.execute("DELETE FROM quarantine_visitors")
        insert_frame(conn, "pendo_visitors", visitors)
        insert_frame(conn, "quarantine_visitors", rejects)


def select_visitor_emails(conn: Conn) -> pl.DataFrame:
    """``visitor_id, email`` of every landed visitor with an email."""
    return conn.execute("SELECT visitor_id, email FROM pendo_visitors WHERE email IS NOT NULL").pl()


def select_visitors(conn: Conn, *, visitor_ids: pl.Series) -> pl.DataFrame:
    """``visitor_id, email, account_ids`` of these landed visitors."""
    conn.register("_visitor_ids", visitor_ids.to_frame("visitor_id"))
    try:
        return conn.execute(
            "SELECT v.visitor_id, v.email, v.account_ids FROM pendo_visitors AS v "
            "SEMI JOIN _visitor_ids AS i USING (visitor_id)"
        ).pl()
    finally:
        conn.unregister("_visitor_ids")


def select_usage_pairs(
    conn: Conn, *, days: Sequence[date], item_ids: Mapping[EventSource, Sequence[str]]
) -> pl.DataFrame:
    """Distinct ``visitor_id, account_id`` in these days' events of these features (pages,
    track types), by event source."""
    pairs = [(source.name, item) for source, ids in item_ids.items() for item in ids]
    return conn.execute(
        "SELECT DISTINCT visitor_id, account_id FROM activity_events "
        f"WHERE {_IN_DAYS} AND (event_source, item_id) IN "
        "(SELECT UNNEST(?::VARCHAR[]), UNNEST(?::VARCHAR[]))",
        [list(days), [s for s, _ in pairs], [i for _, i in pairs]],
    ).pl()


def select_created_end_user_ids(conn: Conn) -> pl.DataFrame:
    """``enduser_id`` of every End User this product created."""
    return conn.execute("SELECT DISTINCT enduser_id FROM created_end_users").pl()


def select_pending_creations(conn: Conn) -> pl.DataFrame:
    """Creations asked for whose answer never came: ``external_id``."""
    return conn.execute(
        "SELECT DISTINCT external_id FROM end_user_creations WHERE status = 'sending'"
    ).pl()


def insert_creations(conn: Conn, *, items: pl.DataFrame, run_id: str) -> None:
    """Record End Users about to be asked for (status ``sending``), before the request."""
    with transaction(conn):
        insert_frame(
            conn,
            "end_user_creations",
            items.select("external_id", "email", "company_id", "company_external_id").with_columns(
                pl.lit("sending").alias("status"),
                pl.lit(run_id).alias("run_id"),
                pl.lit(_now()).alias("requested_at"),
            ),
        )


def settle_creations(conn: Conn, *, outcomes: pl.DataFrame, objects: pl.DataFrame) -> None:
    """Settle ``sending`` creations and add the End Users now known to the snapshot, at once.

    Args:
        outcomes: ``external_id, status, enduser_id, error`` per settled creation.
        objects: ``planhat_objects`` rows of the End Users created or found (may be empty).
    """
    with transaction(conn):
        conn.register("_outcomes", outcomes)
        try:
            conn.execute(
                "UPDATE end_user_creations SET status = o.status, enduser_id = o.enduser_id, "
                "error = o.error, settled_at = current_timestamp FROM _outcomes AS o "
                "WHERE end_user_creations.external_id = o.external_id "
                "AND end_user_creations.status = 'sending'"
            )
        finally:
            conn.unregister("_outcomes")
        if objects.height:
            conn.register("_created", objects.select("object_id"))
            try:
                conn.execute(
                    "DELETE FROM planhat_objects WHERE model = 'EndUser' "
                    "AND object_id IN (SELECT object_id FROM _created)"
                )
            finally:
                conn.unregister("_created")
            insert_frame(conn, "planhat_objects", objects)


def replace_planned_end_users(conn: Conn, *, planned: pl.DataFrame) -> None:
    """What a dry run would create: replaces the previous dry run's list."""
    with transaction(conn):
        conn.execute("DELETE FROM planned_end_users")
        insert_frame(
            conn,
            "planned_end_users",
            planned.select("external_id", "email", "company_external_id").with_columns(
                pl.lit(_now()).alias("planned_at")
            ),
        )
