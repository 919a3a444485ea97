"""Decoding Pendo ``visitors`` rows into a frame of (visitor, email, accounts), every unusable
row kept with why (reference: /work/shared/reference/pendo_api.md section 4.2)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import polars as pl

from ..models import RejectedRow
from ._pendo_rows import _UNSET, _add, _Problem, _rejected, _show, visitor_id

__all__ = ["ACCOUNT_IDS_FIELD", "VISITOR_SCHEMA", "decode_visitors"]

ACCOUNT_IDS_FIELD: Final = "metadata.auto.accountids"
#: ``pendo_visitors`` as landed (``landed_at`` is added by the landing).
VISITOR_SCHEMA: Final = pl.Schema(
    [("visitor_id", pl.String()), ("email", pl.String()), ("account_ids", pl.List(pl.String()))]
)


def decode_visitors(
    rows: Sequence[Any], *, email_field: str
) -> tuple[pl.DataFrame, list[RejectedRow]]:
    """Split one page of ``visitors`` rows into usable ones and rejects.

    Args:
        rows: The page's rows as decoded from JSON (anything: checked here).
        email_field: The dotted path of the email, e.g. ``metadata.agent.email``.

    Returns:
        ``(visitors, rejects)``: `VISITOR_SCHEMA` rows, and the rows that could not be used with
        every problem (a missing email or account list is not a problem: null / empty).
    """
    good: list[tuple[str, str | None, list[str]]] = []
    rejects: list[RejectedRow] = []
    for index, row in enumerate(rows):
        clean, problems = _classify(row, email_field)
        if clean is None:
            raw = json.dumps(row, ensure_ascii=False, default=repr)
            rejects.append(_rejected(index, problems, raw))
        else:
            good.append(clean)
    return pl.DataFrame(good, schema=VISITOR_SCHEMA, orient="row"), rejects


def _classify(
    row: Any, email_field: str
) -> tuple[tuple[str, str | None, list[str]] | None, list[_Problem]]:
    problems: list[_Problem] = []
    if not isinstance(row, dict):
        _add(problems, "row is not a JSON object", _show(row))
        return None, problems
    visitor = visitor_id(row.get("visitorId", _UNSET), problems, numeric=False)
    email = _at(row, email_field, problems)
    if email is not None and not isinstance(email, str):
        _add(problems, f"{email_field} is not a string", _show(email))
    accounts = _at(row, ACCOUNT_IDS_FIELD, problems)
    if accounts is not None and not (
        isinstance(accounts, list) and all(isinstance(a, str) for a in accounts)
    ):
        _add(problems, f"{ACCOUNT_IDS_FIELD} is not a list of strings", _show(accounts))
    if problems:
        return None, problems
    return (visitor, email, [a for a in accounts or [] if a]), []


def _at(row: dict[str, Any], path: str, problems: list[_Problem]) -> Any:
    """The value at a dotted path; None when a part is missing; a problem when a part on the
    way is not an object (reported once per row)."""
    value: Any = row
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if value is None:
            return None
        if not isinstance(value, dict):
            kind = f"{'.'.join(parts[:depth])} is not an object"
            if kind not in (k for k, _ in problems):
                _add(problems, kind, _show(value))
            return None
        value = value.get(part)
    return value
