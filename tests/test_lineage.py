"""Lineage (DESIGN.md section 5): every item sent, where it came from, and the dry-run diff.

Compared with what the sandbox's Planhat received and with the generator's own rows.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.conftest import SHORT, Env


def test_sent_items_lists_every_item_planhat_received_with_its_batch_and_run(env: Env) -> None:
    outcome = env.sync(SHORT[0], SHORT[-1])
    assert outcome.exit_code == 0
    rows = env.sql(
        "SELECT kind, external_id, key, day::VARCHAR, amount, run_id, matched_by, batch_id "
        "FROM sent_items"
    )
    activities = Counter(
        (r.external_id, r.action, r.date, float(r.count)) for r in env.sandbox.received.activities()
    )
    metrics = Counter(
        (r.external_id, r.dimension_id, r.date, float(r.value))
        for r in env.sandbox.received.metrics()
    )
    assert Counter((e, k, d, a) for kind, e, k, d, a, *_ in rows if kind == "activities") == (
        activities
    )
    assert Counter((e, k, d, a) for kind, e, k, d, a, *_ in rows if kind == "metrics") == metrics
    assert {r[5] for r in rows} == {outcome.run_id}
    assert {r[6] for r in rows} == {"externalId"}
    batches = env.sql("SELECT batch_id FROM outbox_batches WHERE status = 'delivered'")
    assert {r[7] for r in rows} == {b for (b,) in batches}
    assert env.sql("SELECT DISTINCT matched_by FROM sent_activities") == [("externalId",)]


def test_item_lineage_gives_the_pendo_rows_and_quarantined_rows_of_a_sent_key(env: Env) -> None:
    day = SHORT[1]
    events = env.sandbox.dataset.feature_events(day)
    actions = env.actions()
    truth = env.truth_activities([day])
    (visitor, action, _), count = max(truth.items(), key=lambda kv: (kv[1], kv[0]))
    mine = events.filter(
        (events["visitorId"] == visitor)
        & events["featureId"].is_in([f for f, a in actions.items() if a == action])
    )
    assert int(mine["numEvents"].sum()) == count
    # One malformed row of that visitor for the same feature: quarantined, and traced too.
    bad = mine.row(0, named=True) | {"numEvents": "lots"}
    env.sandbox.pendo_rows.add(day=day, rows=[bad])
    assert env.sync(day, day).exit_code == 0

    lineage = env.sql(
        "SELECT source, amount, row FROM item_lineage "
        "WHERE kind = 'activities' AND external_id = ? AND key = ? AND day = ?",
        [visitor, action, day],
    )
    raw = [(a, json.loads(r)) for s, a, r in lineage if s == "raw_feature_events"]
    assert sum(a for a, _ in raw) == count
    assert sorted(r["num_events"] for _, r in raw) == sorted(mine["numEvents"].to_list())
    quarantined = [json.loads(r) for s, _, r in lineage if s == "quarantine_feature_events"]
    assert [(q["visitorId"], q["numEvents"]) for q in quarantined] == [(visitor, "lots")]

    # The README's one query gives the same rows, each beside the item it explains.
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    query = next(b for b in readme.split("```sql")[1:] if "item_lineage" in b).split("```")[0]
    for example, value in (("user-000042", visitor), ("Export report", action)):
        query = query.replace(f"'{example}'", "'" + value.replace("'", "''") + "'")
    query = query.replace("2026-11-03", day.isoformat())
    explained = env.sql(query)
    assert {(r[4], r[6]) for r in explained} == {(s, r) for s, _, r in lineage}

    # A metric key traces back to the pipeline result row carrying its id.
    (dimension, model, external_id, mday), value = min(env.truth_metrics([day]).items())
    rows = env.sql(
        "SELECT source, amount, row FROM item_lineage "
        "WHERE kind = 'metrics' AND external_id = ? AND key = ? AND day = ?",
        [external_id, dimension, day],
    )
    assert [s for s, _, _ in rows] == ["raw_pipeline_results"]
    assert rows[0][1] == value and external_id in json.loads(rows[0][2]).values()
    assert mday == day.isoformat() and model


def test_dry_run_diff_shows_per_key_what_was_sent_what_pendo_says_and_what_would_go(
    env: Env,
) -> None:
    days = SHORT[:2]
    assert env.sync(days[0], days[-1]).exit_code == 0
    assert env.sql("SELECT COUNT(*) FROM dry_run_diff") == [(0,)]
    old = env.truth_activities(days)
    env.sandbox.dataset.revise_day(days[-1], grow=True)
    new = env.truth_activities(days)
    changed = {k: (old.get(k), new[k]) for k in new if new[k] != old.get(k)}
    assert changed

    sent_before = len(env.sandbox.received.activities())
    assert env.sync(days[0], days[-1], dry_run=True).exit_code == 0
    assert len(env.sandbox.received.activities()) == sent_before
    diff = env.sql(
        "SELECT external_id, key, day::VARCHAR, sent, pendo, would_send FROM dry_run_diff "
        "WHERE kind = 'activities'"
    )
    assert {(e, k, d): (s, p, w) for e, k, d, s, p, w in diff} == {
        k: (o, n, n - (o or 0)) for k, (o, n) in changed.items()
    }
    # Once published, Planhat agrees with Pendo again and the diff is empty.
    assert env.sync(days[0], days[-1]).exit_code == 0
    assert env.sql("SELECT COUNT(*) FROM dry_run_diff WHERE kind = 'activities'") == [(0,)]
