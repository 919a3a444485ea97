"""End User resolution by externalId and email, against a plain-Python reading of the contract
(DESIGN.md section 5, *Identity*) on literal and randomly generated frames."""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

from pendo_assets.identity import resolve_end_users

ENDUSERS = pl.DataFrame(
    {
        "object_id": ["e1", "e2", "e3", "e4", "e5", "e6", "e7"],
        "external_id": ["u1", None, "", "dup", "dup", None, "u7"],
        "email": ["a@x.com", " Bee@X.com ", "c@x.com", None, None, "shared@x.com", "shared@x.com"],
        "company_external_id": ["acc1", "acc2", "acc3", "acc1", "acc1", "acc6", "acc7"],
    }
)
VISITORS = pl.DataFrame(
    {
        "visitor_id": ["u1", "v-bee", "v-c", "dup", "v-shared", "v-none", "v-nomail"],
        "email": [
            "other@x.com",
            "bee@x.com",
            "  C@X.COM",
            "a@x.com",
            "Shared@x.com",
            "z@x.com",
            None,
        ],
    }
)


def _usage(*rows: tuple[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"visitor_id": [v for v, _ in rows], "account_id": [a for _, a in rows]},
        schema={"visitor_id": pl.String, "account_id": pl.String},
    )


def _resolve(usage: pl.DataFrame, keys: Any) -> list[tuple[Any, ...]]:
    out = resolve_end_users(
        usage.lazy(), ENDUSERS.lazy(), keys=keys, visitor_emails=VISITORS.lazy()
    ).collect()
    return out.select(
        "visitor_id", "enduser_id", "external_id", "email", "matched_by", "reason"
    ).rows()


def test_each_rule_of_the_contract() -> None:
    usage = _usage(
        ("u1", "acc1"),  # externalId match (its email would not match)
        ("v-bee", "acc2"),  # no externalId; email differs only in case and spaces
        ("v-c", "acc3"),  # End User with "" externalId: addressed by email
        ("dup", "acc1"),  # externalId on two End Users: never guessed, but its email finds e1
        ("v-shared", "acc7"),  # email on two End Users: the one of the event's account
        ("v-shared", "acc9"),  # ... and on no account of theirs: ambiguous_email
        ("v-none", "acc1"),  # email held by no End User
        ("v-nomail", "acc1"),  # no email at all
    )
    assert _resolve(usage, ["externalId", "email"]) == [
        ("u1", "e1", "u1", None, "externalId", None),
        ("v-bee", "e2", None, " Bee@X.com ", "email", None),
        ("v-c", "e3", None, "c@x.com", "email", None),
        ("dup", "e1", "u1", None, "email", None),
        ("v-shared", "e7", "u7", None, "email", None),
        ("v-shared", None, None, None, None, "ambiguous_email"),
        ("v-none", None, None, None, None, "no_enduser"),
        ("v-nomail", None, None, None, None, "no_enduser"),
    ]
    # Today's behaviour: externalId only.
    assert [r[4:] for r in _resolve(usage, ["externalId"])] == [
        ("externalId", None),
        (None, "no_enduser"),
        (None, "no_enduser"),
        (None, "ambiguous"),
        (None, "no_enduser"),
        (None, "no_enduser"),
        (None, "no_enduser"),
        (None, "no_enduser"),
    ]
    # Email first: u1's email (other@x.com) finds no one, so its externalId decides.
    assert _resolve(usage, ["email", "externalId"])[0][4] == "externalId"
    assert _resolve(usage, ["email", "externalId"])[3][1:] == ("e1", "u1", None, "email", None)


def _reference(
    usage: list[tuple[str, str | None]],
    endusers: list[dict[str, Any]],
    visitors: dict[str, str | None],
    keys: list[str],
) -> list[tuple[Any, ...]]:
    """The contract, read literally, one row at a time."""

    def norm(value: str | None) -> str | None:
        value = (value or "").strip().lower()
        return value or None

    out = []
    for visitor, account in usage:
        found: tuple[Any, ...] = (None, None, None, None, "no_enduser")
        for key in keys:
            if key == "externalId":
                hits = [e for e in endusers if e["external_id"] and e["external_id"] == visitor]
                if len(hits) > 1:  # never guessed; the next key may still find one
                    if found[4] == "no_enduser":
                        found = (None, None, None, None, "ambiguous")
                    continue
            else:
                address = norm(visitors.get(visitor))
                hits = [e for e in endusers if address and norm(e["email"]) == address]
                if len(hits) > 1:
                    mine = [e for e in hits if account and e["company_external_id"] == account]
                    if len(mine) != 1:
                        if found[4] == "no_enduser":
                            found = (None, None, None, None, "ambiguous_email")
                        continue
                    hits = mine
            if hits:
                e = hits[0]
                external = e["external_id"] or None
                found = (e["object_id"], external, None if external else e["email"], key, None)
                break
        out.append((visitor, *found))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_random_populations_agree_with_the_contract_read_row_by_row(seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"u{n}" for n in range(12)]
    mails = ["a@x.com", "B@x.com", " b@X.com", "c@x.com", "", None]
    accounts = [f"acc{n}" for n in range(4)] + [None]
    endusers = [
        {
            "object_id": f"e{n}",
            "external_id": rng.choice([*ids[:8], None, ""]),
            "email": rng.choice(mails),
            "company_external_id": rng.choice(accounts),
        }
        for n in range(15)
    ]
    visitors = {v: rng.choice(mails) for v in ids}
    usage = [(rng.choice(ids), rng.choice(accounts)) for _ in range(60)]
    for keys in (["externalId"], ["email"], ["externalId", "email"], ["email", "externalId"]):
        got = resolve_end_users(
            _usage(*usage).lazy(),
            pl.DataFrame(endusers, schema={k: pl.String for k in endusers[0]}).lazy(),
            keys=keys,  # type: ignore[arg-type]
            visitor_emails=pl.DataFrame(
                {"visitor_id": list(visitors), "email": list(visitors.values())},
                schema={"visitor_id": pl.String, "email": pl.String},
            ).lazy(),
        ).collect()
        rows = got.select(
            "visitor_id", "enduser_id", "external_id", "email", "matched_by", "reason"
        ).rows()
        assert rows == _reference(usage, endusers, visitors, keys), keys


def test_bad_keys_are_refused() -> None:
    for keys in ([], ["externalId", "externalId"]):
        with pytest.raises(ValueError, match="keys"):
            resolve_end_users(_usage().lazy(), ENDUSERS.lazy(), keys=keys)
    with pytest.raises(ValueError, match="emails"):
        resolve_end_users(_usage().lazy(), ENDUSERS.lazy(), keys=["email"])
