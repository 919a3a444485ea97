"""Which End User a visitor's usage belongs to (DESIGN.md section 5, *Identity*). Pure Polars.

Keys are tried in the configured order (``externalId``, ``email``); the first key that finds
exactly one End User decides. A key that finds several never guesses among them: the next key is
tried, and if no key finds exactly one, the row stays unmatched for the first such key
(``ambiguous`` for an externalId, ``ambiguous_email`` for an email the event's account cannot
settle); when no key finds anyone, the row is ``no_enduser``.

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

__all__ = [
    "ANONYMOUS_PREFIX",
    "EndUserKey",
    "normalize_email",
    "resolve_end_users",
    "resolve_visitors",
]

EndUserKey: TypeAlias = Literal["externalId", "email"]

ANONYMOUS_PREFIX = "_PENDO_T_"
# Pendo's placeholder when a snippet sends no visitor id; treated as anonymous defensively.
_ANONYMOUS_LITERALS = ["VISITOR-UNIQUE-ID"]

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
    # Numbered once, for good: a lazy plan numbered twice may number rows differently (e.g.
    # after a group_by or unique, whose order is not fixed).
    indexed = usage.with_row_index("_row").collect().lazy()
    rows = indexed
    if visitor_emails is not None:
        emails = visitor_emails.select(
            "visitor_id", normalize_email(pl.col("email")).alias("_visitor_norm")
        ).unique("visitor_id", keep="first")
        rows = rows.join(emails, on="visitor_id", how="left")
    else:
        rows = rows.with_columns(pl.lit(None, pl.String).alias("_visitor_norm"))

    found: list[pl.LazyFrame] = []  # per key: _row, enduser_id, matched_by
    unsure: list[pl.LazyFrame] = []  # per key: _row, reason (several End Users)
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
        per_row = candidates.group_by("_row").agg(
            pl.len().alias("_n"), pl.col("enduser_id").first()
        )
        one = per_row.filter(pl.col("_n") == 1)
        found.append(one.select("_row", "enduser_id", pl.lit(key).alias("matched_by")))
        unsure.append(
            per_row.filter(pl.col("_n") > 1).select("_row", pl.lit(ambiguous).alias("reason"))
        )
        rows = rows.join(one.select("_row"), on="_row", how="anti")
    # The first key that found several End Users names the reason, unless a later key found one.
    reasons = pl.concat(unsure, how="vertical").unique("_row", keep="first", maintain_order=True)
    return (
        indexed.join(pl.concat(found, how="vertical"), on="_row", how="left")
        .join(reasons, on="_row", how="left")
        .with_columns(
            pl.when(pl.col("enduser_id").is_null()).then(pl.col("reason")).alias("reason")
        )
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


def resolve_visitors(
    usage: pl.LazyFrame,
    objects: pl.LazyFrame,
    *,
    keys: Sequence[EndUserKey] = ("externalId",),
    visitor_emails: pl.LazyFrame | None = None,
    created: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """The End User of each distinct (visitor, account) of ``usage``, or why there is none.

    Args:
        usage: Rows with ``visitor_id, account_id``.
        objects: The Planhat snapshot (``model, object_id, external_id, email,
            company_external_id``); only End Users are used.
        keys: The keys to try, in order (`resolve_end_users`).
        visitor_emails: ``visitor_id, email`` from Pendo's visitors.
        created: ``enduser_id`` of End Users this product created: matched_by ``created``.

    Returns:
        One row per (visitor_id, account_id) with `RESOLVED`'s columns; ``reason`` is
        ``anonymous`` for Pendo's anonymous visitors (never matched).
    """
    visitor = pl.col("visitor_id")
    anonymous = visitor.str.starts_with(ANONYMOUS_PREFIX) | visitor.is_in(_ANONYMOUS_LITERALS)
    pairs = usage.select("visitor_id", "account_id").unique().with_columns(anonymous.alias("_anon"))
    if "email" not in objects.collect_schema().names():
        objects = objects.with_columns(pl.lit(None, pl.String).alias("email"))
    endusers = objects.filter(pl.col("model") == "EndUser").select(
        "object_id", "external_id", "email", "company_external_id"
    )
    found = resolve_end_users(
        pairs.filter(~pl.col("_anon")).drop("_anon"),
        endusers,
        keys=keys,
        visitor_emails=visitor_emails,
    )
    if created is not None:
        mine = pl.col("enduser_id").is_in(created.select("enduser_id").collect().to_series())
        found = found.with_columns(
            pl.when(mine)
            .then(pl.lit("created"))
            .otherwise(pl.col("matched_by"))
            .alias("matched_by")
        )
    nobody = pairs.filter(pl.col("_anon")).select(
        "visitor_id",
        "account_id",
        *(pl.lit(None, dtype).alias(name) for name, dtype in RESOLVED.items() if name != "reason"),
        pl.lit("anonymous").alias("reason"),
    )
    columns = ["visitor_id", "account_id", *RESOLVED]
    return pl.concat([found.select(columns), nobody.select(columns)], how="vertical")


def creation_candidates(
    resolved: pl.LazyFrame, visitors: pl.LazyFrame, objects: pl.LazyFrame
) -> pl.LazyFrame:
    """The End Users to create (DESIGN.md section 5, *Identity*, creating End Users).

    A visitor gets one when every (visitor, account) of it is unmatched with reason
    ``no_enduser``, it has an email, and one of its accounts is the externalId of exactly one
    Company: the first such account in Pendo's order of the visitor's accounts
    (``metadata.auto.accountids``), then its events' accounts in sorted order.

    Args:
        resolved: `resolve_visitors` of every (visitor, account) to consider, including each
            visitor's accounts from Pendo's visitors.
        visitors: ``visitor_id, email, account_ids`` from Pendo's visitors.
        objects: The Planhat snapshot (``model, object_id, external_id``).

    Returns:
        ``external_id`` (the visitorId), ``email`` (trimmed), ``company_id`` (the Company's
        ``_id``), ``company_external_id``; one row per visitor, sorted by visitorId.
    """
    unmatched = (
        resolved.group_by("visitor_id")
        .agg((pl.col("reason") == "no_enduser").fill_null(False).all().alias("_all"))
        .filter(pl.col("_all"))
        .select("visitor_id")
    )
    people = visitors.select(
        "visitor_id",
        pl.col("email").str.strip_chars().alias("email"),
        normalize_email(pl.col("email")).alias("_norm"),
        "account_ids",
    ).filter(pl.col("_norm").is_not_null())
    companies = (
        objects.filter(
            (pl.col("model") == "Company")
            & pl.col("external_id").is_not_null()
            & (pl.col("external_id") != "")
        )
        .group_by("external_id")
        .agg(pl.len().alias("_n"), pl.col("object_id").first())
        .filter(pl.col("_n") == 1)
        .select(pl.col("external_id").alias("account_id"), pl.col("object_id").alias("company_id"))
    )
    listed = (
        people.select("visitor_id", pl.col("account_ids").alias("account_id"))
        .explode("account_id")
        .with_columns(
            pl.int_range(pl.len()).over("visitor_id").alias("_order"), pl.lit(0).alias("_from")
        )
    )
    seen = (
        resolved.select("visitor_id", "account_id")
        .filter(pl.col("account_id").is_not_null())
        .unique()
        .with_columns(pl.lit(0).alias("_order"), pl.lit(1).alias("_from"))
    )
    company = (
        pl.concat([listed, seen], how="vertical_relaxed")
        .join(companies, on="account_id", how="inner")
        .sort("visitor_id", "_from", "_order", "account_id")
        .group_by("visitor_id", maintain_order=True)
        .first()
    )
    return (
        unmatched.join(people, on="visitor_id", how="inner")
        .join(company, on="visitor_id", how="inner")
        .select(
            pl.col("visitor_id").alias("external_id"),
            "email",
            "company_id",
            pl.col("account_id").alias("company_external_id"),
        )
        .sort("external_id")
    )
