"""Which End User a visitor's usage belongs to (DESIGN.md section 5, *Identity*). Pure Polars.

Keys are tried in the configured order (``externalId``, ``email``); the first key that finds
exactly one End User decides. A key that finds several decides too: the row stays unmatched
(``ambiguous`` for an externalId, ``ambiguous_email`` for an email the event's account cannot
settle), it is never guessed, and the next key is not tried. A key that finds no one passes the
row to the next key; after the last, the row is ``no_enduser``.

- ``externalId``: the visitorId equals an End User's ``externalId`` exactly (case-sensitive).
- ``email``: the visitor's email (from Pendo's visitors, trimmed, compared case-insensitively)
  equals an End User's email likewise. An email held by several End Users is settled by the one
  whose Company's externalId equals the event row's ``accountId``.

The result carries the End User's Planhat ``_id`` (``enduser_id``: the ledger key, so a later
change of key or address never sends a count twice), the address Planhat is sent
(``external_id`` when the End User has one, else ``email``), and ``matched_by``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias

import polars as pl

__all__ = ["EndUserKey", "normalize_email", "resolve_end_users"]

EndUserKey: TypeAlias = Literal["externalId", "email"]

#: Columns added to each usage row.
RESOLVED = {
    "enduser_id": pl.String,
    "external_id": pl.String,
    "email": pl.String,
    "company_external_id": pl.String,
    "matched_by": pl.String,
    "reason": pl.String,
}


def normalize_email(column: pl.Expr) -> pl.Expr:
    """Trimmed and lower-cased; empty becomes null (never matches)."""
    out = column.str.strip_chars().str.to_lowercase()
    return pl.when(out == "").then(None).otherwise(out)


def resolve_end_users(
    usage: pl.LazyFrame,
    endusers: pl.LazyFrame,
    *,
    keys: Sequence[EndUserKey] = ("externalId",),
    visitor_emails: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Add the End User of each identified usage row.

    Args:
        usage: Rows with at least ``visitor_id, account_id``; one row per event key.
        endusers: ``object_id, external_id, email, company_external_id`` of every End User.
        keys: The keys to try, in order.
        visitor_emails: ``visitor_id, email`` from Pendo's visitors (one row per visitor);
            needed when ``email`` is a key.

    Returns:
        ``usage`` with `RESOLVED`'s columns: the End User's ``enduser_id``, the addresses
        Planhat is sent (``external_id`` or, when the End User has none, ``email``), its
        Company's externalId and ``matched_by``; or ``reason`` (``ambiguous``,
        ``ambiguous_email``, ``no_enduser``) with the End User columns null.
    """
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"keys must name externalId and/or email once each, got {keys!r}")
    if "email" in keys and visitor_emails is None:
        raise ValueError("matching by email needs the visitors' emails")
    people = endusers.select(
        pl.col("object_id").alias("enduser_id"),
        pl.when(pl.col("external_id") == "")
        .then(None)
        .otherwise(pl.col("external_id"))
        .alias("_eu_external_id"),
        pl.col("email").alias("_eu_email"),
        normalize_email(pl.col("email")).alias("_eu_norm"),
        pl.col("company_external_id").alias("_eu_company"),
    )
    rows = usage.with_row_index("_row")
    if visitor_emails is not None:
        emails = visitor_emails.select(
            "visitor_id", normalize_email(pl.col("email")).alias("_visitor_norm")
        ).unique("visitor_id", keep="first")
        rows = rows.join(emails, on="visitor_id", how="left")
    else:
        rows = rows.with_columns(pl.lit(None, pl.String).alias("_visitor_norm"))

    decided: list[pl.LazyFrame] = []  # per key: _row, enduser_id (or null), reason (or null)
    for key in keys:
        if key == "externalId":
            candidates = rows.join(
                people.filter(pl.col("_eu_external_id").is_not_null()),
                left_on="visitor_id",
                right_on="_eu_external_id",
                how="inner",
            )
            ambiguous = "ambiguous"
        else:
            candidates = rows.join(
                people.filter(pl.col("_eu_norm").is_not_null()),
                left_on="_visitor_norm",
                right_on="_eu_norm",
                how="inner",
            )
            # Several End Users with the address: the one of the event's account, if exactly one.
            same_account = pl.col("_eu_company") == pl.col("account_id")
            candidates = candidates.filter(
                (pl.len().over("_row") == 1)
                | (same_account.fill_null(False).sum().over("_row") == 0)
                | same_account.fill_null(False)
            )
            ambiguous = "ambiguous_email"
        verdict = candidates.group_by("_row").agg(
            pl.when(pl.len() == 1).then(pl.col("enduser_id").first()).alias("enduser_id"),
            pl.when(pl.len() > 1).then(pl.lit(ambiguous)).alias("reason"),
            pl.lit(key).alias("matched_by"),
        )
        decided.append(verdict)
        rows = rows.join(verdict.select("_row"), on="_row", how="anti")
    verdicts = pl.concat(decided, how="vertical")
    return (
        usage.with_row_index("_row")
        .join(verdicts, on="_row", how="left")
        .join(people, on="enduser_id", how="left")
        .with_columns(
            pl.col("reason").fill_null(
                pl.when(pl.col("enduser_id").is_null()).then(pl.lit("no_enduser"))
            ),
            pl.when(pl.col("enduser_id").is_not_null())
            .then(pl.col("matched_by"))
            .alias("matched_by"),
            pl.col("_eu_external_id").alias("external_id"),
            pl.when(pl.col("_eu_external_id").is_null()).then(pl.col("_eu_email")).alias("email"),
            pl.col("_eu_company").alias("company_external_id"),
        )
        .sort("_row")
        .drop("_row", "_eu_external_id", "_eu_email", "_eu_norm", "_eu_company")
    )
