"""End to end on the sandbox's identity data (DESIGN.md section 5, *Identity*): visitors found
by email, End Users created for the others, against the generator's ground truth."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from pendo_assets.sandbox import SandboxSpec

from .conftest import SHORT, Env, MakeEnv

KEYS = ["externalId", "email"]
SPEC = SandboxSpec(seed=11, n_visitors=400, n_accounts=60, rows_per_day=1200, identity=True)


def _identity_env(make_env: MakeEnv, *, create: bool = True) -> Env:
    env = make_env(spec=SPEC)
    env.reconfigure(
        matching={
            "end_user_keys": KEYS,
            "visitor_email_field": "metadata.agent.email",
            "create_end_users": create,
        }
    )
    return env


def _truth(env: Env, days: list[date], *, create: bool = True) -> dict[str, Any]:
    data = env.sandbox.dataset
    return {
        "activities": data.truth_activities_by_key(
            days=days, features=env.actions(), end_user_keys=KEYS, create_end_users=create
        ),
        "created": data.truth_created_end_users(
            end_user_keys=KEYS, days=days, features=env.actions()
        )
        if create
        else {},
        "identity": data.truth_identity(end_user_keys=KEYS, create_end_users=create),
    }


@pytest.mark.parametrize("backend", ["file"])
def test_email_matching_and_created_end_users_reach_ground_truth(make_env: MakeEnv) -> None:
    env = _identity_env(make_env)
    days = SHORT
    truth = _truth(env, days)  # against Planhat before anything is created

    outcome = env.sync(days[0], days[-1])
    assert outcome.success, outcome.last_line

    received = env.sandbox.received
    got, want = received.activity_totals_by_key(), truth["activities"]
    assert got == want
    created = {
        item["externalId"]: {k: item[k] for k in ("externalId", "email", "companyId")}
        for item in received.created("EndUser")
    }
    expected = {
        ext: {k: row[k] for k in ("externalId", "email", "companyId")}
        for ext, row in truth["created"].items()
    }
    assert created == expected and created
    assert sorted(r[0] for r in env.sql("SELECT external_id FROM created_end_users")) == sorted(
        expected
    )
    # Every unmatched (visitor, account) is unmatched for the reason the truth gives.
    unmatched = env.sql("SELECT DISTINCT visitor_id, account_id, reason FROM unmatched_visitors")
    assert unmatched
    for visitor, account, reason in unmatched:
        assert truth["identity"][(visitor, account)].reason == reason, (visitor, account)
    reasons = {r for _, _, r in unmatched}
    assert "ambiguous_email" in reasons and reasons <= {
        "anonymous",
        "ambiguous",
        "ambiguous_email",
        "no_enduser",
    }
    by = dict(env.sql("SELECT matched_by, SUM(count) FROM sent_activities GROUP BY ALL"))
    assert by.get("email", 0) > 0 and by.get("created", 0) > 0 and by.get("externalId", 0) > 0

    # A second run sends nothing and creates no one.
    requests = env.analytics_requests()
    upserts = len(received.upserts())
    again = env.sync(days[0], days[-1])
    assert again.success, again.last_line
    assert env.analytics_requests() == requests
    assert len(received.upserts()) == upserts
    assert received.activity_totals_by_key() == truth["activities"]
