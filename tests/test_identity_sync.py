"""End to end on the sandbox's identity data (DESIGN.md section 5, *Identity*): visitors found
by email, End Users created for the others, against the generator's ground truth."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import polars as pl
import pytest

from pendo_assets.sandbox import VISITORS, SandboxSpec, malformed_visitor_rows

from .conftest import SANDBOX_NOW, SHORT, Env, MakeEnv

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

    # A dry run lists who would be created, and creates and sends nothing.
    dry = env.sync(days[0], days[-1], dry_run=True)
    assert dry.success, dry.last_line
    assert env.sandbox.received.created("EndUser") == [] and env.analytics_requests() == 0
    planned = env.sql("SELECT external_id, email, company_external_id FROM planned_end_users")
    assert sorted(planned) == sorted(
        (ext, row["email"], row["companyExternalId"]) for ext, row in truth["created"].items()
    )

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


@pytest.mark.parametrize("backend", ["file"])
@pytest.mark.parametrize("fault", ["reset_after_apply", "reset"])
def test_a_creation_whose_answer_never_came_is_settled_by_reading_back(
    make_env: MakeEnv, fault: str
) -> None:
    """Planhat created the End Users but the answer was lost (``reset_after_apply``), or the
    request died before Planhat applied it (``reset``): the run says so and creates none twice;
    the next run reads them back and ends at the truth."""
    env = _identity_env(make_env)
    days = SHORT[:2]
    truth = _truth(env, days)
    env.sandbox.faults.add(service="planhat_api", kind=fault, path="/endusers", method="PUT")

    first = env.sync(days[0], days[-1])
    assert first.success, first.last_line  # the activities of the others were published
    statuses = dict(env.sql("SELECT status, COUNT(*) FROM end_user_creations GROUP BY ALL"))
    assert statuses == {"sending": len(truth["created"])}
    applied = fault == "reset_after_apply"
    received = env.sandbox.received
    assert len(received.created("EndUser")) == (len(truth["created"]) if applied else 0)

    second = env.sync(days[0], days[-1])
    assert second.success, second.last_line
    created = [item["externalId"] for item in received.created("EndUser")]
    assert sorted(created) == sorted(truth["created"])  # each once
    settled = dict(env.sql("SELECT status, COUNT(*) FROM end_user_creations GROUP BY ALL"))
    n = len(truth["created"])
    assert settled == ({"created": n} if applied else {"not_created": n, "created": n})
    assert received.activity_totals_by_key() == truth["activities"]


@pytest.mark.parametrize("backend", ["file"])
def test_matching_by_email_without_creating(make_env: MakeEnv) -> None:
    env = _identity_env(make_env, create=False)
    days = SHORT[:2]
    truth = _truth(env, days, create=False)
    outcome = env.sync(days[0], days[-1])
    assert outcome.success, outcome.last_line
    assert env.sandbox.received.created("EndUser") == []
    assert env.sandbox.received.activity_totals_by_key() == truth["activities"]
    reasons = dict(env.sql("SELECT reason, COUNT(*) FROM unmatched_visitors GROUP BY ALL"))
    assert reasons.get("no_enduser", 0) > 0 and reasons.get("ambiguous_email", 0) > 0

    # The ledger is keyed by the End User: when an End User found by email is given the
    # visitorId as externalId in Planhat, its activities are addressed anew but never resent.
    store = env.sandbox.dataset.planhat
    by_email = env.sql(
        "SELECT DISTINCT v.visitor_id, v.enduser_id FROM visitor_end_users AS v "
        "WHERE v.matched_by = 'email'"
    )
    assert by_email
    for visitor, enduser in by_email[:5]:
        store.upsert("EndUser", [{"_id": enduser, "externalId": visitor}])
    requests = env.analytics_requests()
    again = env.sync(days[0], days[-1])
    assert again.success, again.last_line
    assert env.analytics_requests() == requests
    moved = env.sql(
        "SELECT COUNT(*) FROM visitor_end_users WHERE matched_by = 'externalId' "
        "AND visitor_id IN (SELECT UNNEST(?::VARCHAR[]))",
        [[v for v, _ in by_email[:5]]],
    )
    assert moved[0][0] > 0


@pytest.mark.parametrize("backend", ["file"])
def test_malformed_visitors_are_quarantined_with_their_reason_or_stop_the_sync(
    make_env: MakeEnv,
) -> None:
    env = _identity_env(make_env, create=False)
    bad = malformed_visitor_rows()
    env.sandbox.pendo_rows.add(match=VISITORS, rows=[row for _, row in bad])
    day = SHORT[0]

    # Ten bad rows in about four hundred visitors: more than the default 1%.
    refused = env.sync(day, day)
    assert not refused.success
    assert "Pendo visitors are malformed" in refused.last_line, refused.last_line
    assert "sync.max_quarantine_share" in refused.last_line
    assert env.sandbox.received.activity_totals_by_key() == {}  # nothing matched or sent

    env.reconfigure(
        sync={"max_quarantine_share": 0.05},
        matching={"end_user_keys": KEYS, "create_end_users": False},
    )
    landed = env.sync(day, day)
    assert landed.success, landed.last_line
    rows = env.sql("SELECT reason, raw FROM quarantine_visitors ORDER BY raw")
    assert len(rows) == len(bad)
    expected = sorted(bad, key=lambda b: b[1])
    for (reason, _), (kind, _) in zip(rows, expected, strict=True):
        assert reason.startswith(kind), (reason, kind)
    truth = _truth(env, [day], create=False)
    assert env.sandbox.received.activity_totals_by_key() == truth["activities"]


@pytest.mark.parametrize("backend", ["file"])
def test_check_reads_the_visitors_and_reports_the_match_rate_email_reaches(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pendo_assets import partitions
    from pendo_assets.cli import main

    monkeypatch.setattr(partitions, "_now", lambda tz: SANDBOX_NOW.astimezone(tz))
    env = _identity_env(make_env, create=False)
    code = main(["check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"Pendo visitors.*\d+ visitors, \d+ with an email", out), out
    day = date(2026, 11, 19)  # the last complete day at the sandbox's clock
    identity = env.sandbox.dataset.truth_identity(end_user_keys=KEYS)
    events = env.sandbox.dataset.feature_events(day).filter(
        pl.col("featureId").is_in(list(env.actions()))
    )
    matched = identified = 0
    for visitor, account, n in events.select("visitorId", "accountId", "numEvents").rows():
        match = identity[(visitor, account)]
        identified += n if match.reason != "anonymous" else 0
        matched += n if match.matched_by else 0
    line = next(x for x in out.splitlines() if "match rate of feature events" in x)
    assert f"{matched / identified:.1%}" in line, (line, matched, identified)
