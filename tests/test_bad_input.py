"""Bad input end to end: malformed Pendo rows, unsendable metric values, broken configs.

The sandbox serves, for a chosen day, rows that real subscriptions send now and then (no
visitorId, numbers as strings, NaN and Infinity tokens, ids of 5,000 characters, control
characters, rows that are not objects) next to awkward but valid ones (quotes, non-ASCII). The
malformed ones must land in a quarantine table with their reason and be counted in the run's
metadata, never silently dropped; the valid ones must land and publish like any other; and a
day with more malformed rows than ``sync.max_quarantine_share`` must not be landed at all.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from pendo_assets.cli import main
from pendo_assets.sandbox import SandboxSpec, malformed_feature_rows, valid_odd_feature_rows

from .conftest import FAST_RETRIES, Env, MakeEnv

SPEC = SandboxSpec(seed=11, n_visitors=300, n_accounts=40, rows_per_day=300)
DAY = date(2026, 11, 3)
OTHER = date(2026, 11, 2)
SHARE = 0.2
# Valid ids that are awkward: quotes, markup, non-ASCII, padding. The first four are End Users
# in the sandbox's Planhat; the last one is not.
ODD_MATCHED = ['xss"/*\\*/"onmouseover=alert(1)', "用户-7", "zoë-42", " padded-user "]
ODD_UNKNOWN = "ünknown-Ω 'single' \"double\" ; DROP TABLE raw_feature_events; --"
ODD_EVENTS = 7
# Metric values JSON cannot carry (or Planhat would misread), by the reason they must get.
BAD_VALUES: list[tuple[Any, str]] = [
    (float("nan"), "totalEvents is not finite"),
    (float("inf"), "totalEvents is not finite"),
    ("12", "totalEvents is a string"),
    (None, "totalEvents is null"),
    (True, "totalEvents is a boolean"),
    (2**60, "totalEvents is too large to send exactly"),
]


@pytest.fixture
def benv(make_env: MakeEnv) -> Env:
    return make_env(spec=SPEC, sync={**FAST_RETRIES, "max_quarantine_share": SHARE})


def materialization(asset: str) -> dict[str, Any]:
    instance = dg.DagsterInstance.get()
    record = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records[0]
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}  # type: ignore[union-attr]


def check_results(run_id: str | None) -> dict[str, tuple[bool, dict[str, Any]]]:
    instance = dg.DagsterInstance.get()
    out = {}
    for entry in instance.all_logs(run_id or ""):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.asset_check_evaluation_data
            out[data.check_name] = (data.passed, {k: v.value for k, v in data.metadata.items()})
    return out


def test_malformed_rows_are_quarantined_with_reasons_and_the_rest_publishes_exactly(
    benv: Env,
) -> None:
    sandbox = benv.sandbox
    feature_id = benv.config.features[0].id
    action = benv.actions()[feature_id]
    day_ms = sandbox.dataset.day_start_ms(DAY)
    malformed = malformed_feature_rows(day_ms=day_ms, feature_id=feature_id)
    odd = valid_odd_feature_rows(
        day_ms=day_ms,
        feature_id=feature_id,
        visitors=[*ODD_MATCHED, ODD_UNKNOWN],
        num_events=ODD_EVENTS,
    )
    sandbox.pendo_rows.add(day=DAY, rows=[text for _, text in malformed] + odd)
    # Metric values nobody can send: the first matched companies of the day get one each.
    truth_m = benv.truth_metrics([DAY])
    companies = sorted(k[2] for k in truth_m if k[0] == "pendo_feature_events")[: len(BAD_VALUES)]
    sandbox.pendo_rows.add(
        day=DAY,
        match='"totalMinutes"',
        id_field="accountId",
        edits={c: {"totalEvents": v} for c, (v, _) in zip(companies, BAD_VALUES, strict=True)},
    )

    outcome = benv.sync(DAY, DAY)

    assert outcome.exit_code == 0, outcome.last_line

    # Every malformed row is in quarantine, with its reason and the row as sent.
    quarantined = benv.sql(
        "SELECT reason, raw FROM quarantine_feature_events WHERE day = ? ORDER BY reason", [DAY]
    )
    assert len(quarantined) == len(malformed)
    reasons = Counter(reason for reason, _ in quarantined)
    for expected, count in Counter(expected for expected, _ in malformed).items():
        assert sum(n for r, n in reasons.items() if r.startswith(expected)) == count, expected
    assert all(raw for _, raw in quarantined)
    real = sandbox.dataset.feature_events(DAY).filter(
        pl.col("featureId").is_in([f.id for f in benv.config.features])
    )
    assert benv.sql(
        "SELECT rows, quarantined FROM landed_days WHERE source = 'feature_events' AND day = ?",
        [DAY],
    ) == [(real.height + len(odd), len(malformed))]
    assert benv.sql("SELECT COUNT(*) FROM raw_feature_events WHERE day = ?", [DAY]) == [
        (real.height + len(odd),)
    ]

    # ... and counted in the run's metadata: in total and per kind of problem.
    meta = materialization("pendo_feature_events")
    assert meta["rows_quarantined"] == len(malformed)
    # The kind of each problem is its expected reason without the value at fault.
    wrong_day = f" {day_ms - 86_400_000}"  # the one value an expected reason quotes
    expected_kinds = Counter(expected.replace(wrong_day, "") for expected, _ in malformed)
    assert {
        k.removeprefix("quarantined: "): v for k, v in meta.items() if k.startswith("quarantined: ")
    } == dict(expected_kinds)
    assert outcome.summary["rows_quarantined"] == len(malformed) + len(BAD_VALUES)
    checks = check_results(outcome.run_id)
    assert checks["rows_have_visitor_ids"] == (
        False,
        {
            "rows_without_visitor_id": sum(1 for e, _ in malformed if e.startswith("visitorId")),
            "partition_window": str(DAY),
        },
    )

    # Awkward but valid ids land byte for byte, match, and publish exactly.
    landed = {
        v
        for (v,) in benv.sql(
            "SELECT DISTINCT visitor_id FROM raw_feature_events WHERE day = ? AND visitor_id IN "
            "(SELECT UNNEST(?::VARCHAR[]))",
            [DAY, [*ODD_MATCHED, ODD_UNKNOWN]],
        )
    }
    assert landed == {*ODD_MATCHED, ODD_UNKNOWN}
    truth = benv.truth_activities([DAY])
    for visitor in ODD_MATCHED:
        key = (visitor, action, DAY.isoformat())
        truth[key] = truth.get(key, 0) + ODD_EVENTS
    assert sandbox.received.activity_totals() == truth
    unmatched = {
        (d.isoformat(), v, a): (reason, n)
        for d, v, a, reason, n in benv.sql(
            "SELECT day, visitor_id, account_id, reason, num_events FROM unmatched_visitors"
        )
    }
    truth_unmatched = sandbox.dataset.truth_unmatched_visitors(
        days=[DAY], feature_ids=[f.id for f in benv.config.features]
    )
    truth_unmatched[(DAY.isoformat(), ODD_UNKNOWN, 'Société Générale Ω "quoted"')] = (
        "no_enduser",
        ODD_EVENTS,
    )
    assert unmatched == truth_unmatched

    # Metric values JSON cannot carry are quarantined with the reason and never sent.
    bad_keys = {("pendo_feature_events", "Company", c, DAY.isoformat()) for c in companies}
    assert benv.received_metrics() == {k: v for k, v in truth_m.items() if k not in bad_keys}
    received = sandbox.received.metrics(include_errors=True)
    assert not [m for m in received if (m.dimension_id, m.model, m.external_id, m.date) in bad_keys]
    assert all(
        isinstance(m.value, int | float)
        and not isinstance(m.value, bool)
        and math.isfinite(m.value)
        for m in received
    )
    pipeline_rejects = benv.sql(
        "SELECT reason FROM quarantine_pipeline_results WHERE day = ? AND pipeline = 'account_usage'",
        [DAY],
    )
    kinds = sorted(kind for _, kind in BAD_VALUES)
    assert len(pipeline_rejects) == len(kinds)
    assert (
        sorted(max((k for k in kinds if r.startswith(k)), key=len) for (r,) in pipeline_rejects)
        == kinds
    )
    assert benv.sql("SELECT COUNT(*) FROM pipeline_values WHERE NOT isfinite(value)") == [(0,)]
    meta_p = materialization("pendo_pipeline_results")
    assert meta_p["values_quarantined"] == len(BAD_VALUES)
    assert meta_p["quarantined: totalEvents is not finite"] == 2


def test_a_day_over_the_quarantine_share_is_not_landed_and_the_run_names_it(benv: Env) -> None:
    sandbox = benv.sandbox
    assert benv.sync(OTHER, DAY).exit_code == 0
    tables = (
        "raw_feature_events",
        "quarantine_feature_events",
        "raw_pipeline_results",
        "pipeline_values",
        "quarantine_pipeline_results",
        "landed_days",
    )

    def rows(day: date) -> dict[str, list[Any]]:
        return {t: benv.sql(f"SELECT * FROM {t} WHERE day = ? ORDER BY ALL", [day]) for t in tables}

    before = {day: rows(day) for day in (OTHER, DAY)}
    sent = sandbox.received.activity_totals()
    for day in (OTHER, DAY):
        sandbox.dataset.revise_day(day, grow=True)
    # DAY: far more malformed feature-event rows than the share allows.
    feature_id = benv.config.features[0].id
    malformed = malformed_feature_rows(
        day_ms=sandbox.dataset.day_start_ms(DAY), feature_id=feature_id
    )
    sandbox.pendo_rows.add(day=DAY, rows=[text for _, text in malformed] * 8)
    # OTHER: a third of one pipeline's result rows cannot be sent.
    ids = sorted({k[2] for k in benv.truth_metrics([OTHER]) if k[0] == "pendo_feature_events"})
    sandbox.pendo_rows.add(
        day=OTHER,
        match='"totalMinutes"',
        edits={c: {"totalEvents": "n/a"} for c in ids[: len(ids) // 2]},
    )

    outcome = benv.sync(OTHER, DAY)

    assert outcome.exit_code == 1
    line = outcome.last_line
    bad = len(malformed) * 8
    assert f"pendo_feature_events: {DAY}: {bad} of " in line
    assert f"over sync.max_quarantine_share {SHARE:.1%}" in line
    assert "The day was not landed; its previous data is unchanged" in line
    assert f"pendo_pipeline_results: {OTHER} pipeline 'account_usage': " in line
    assert "result rows cannot be sent" in line and "totalEvents is a string" in line
    after = {day: rows(day) for day in (OTHER, DAY)}
    # DAY's feature events are exactly what they were (its pipelines, fine, were landed).
    for table in ("raw_feature_events", "quarantine_feature_events"):
        assert after[DAY][table] == before[DAY][table], table
    assert [r for r in after[DAY]["landed_days"] if r[0] == "feature_events"] == [
        r for r in before[DAY]["landed_days"] if r[0] == "feature_events"
    ]
    assert after[DAY]["pipeline_values"] != before[DAY]["pipeline_values"]
    # OTHER's account_usage results stayed as they were; its feature events (fine) were landed.
    assert after[OTHER]["raw_feature_events"] != before[OTHER]["raw_feature_events"]
    for table in ("raw_pipeline_results", "pipeline_values", "quarantine_pipeline_results"):
        mine = [r for r in after[OTHER][table] if "account_usage" in r]
        assert mine == [r for r in before[OTHER][table] if "account_usage" in r], table
    assert sandbox.received.activity_totals() == sent  # publish did not run

    sandbox.pendo_rows.clear()
    again = benv.sync(OTHER, DAY)
    assert again.exit_code == 0, again.last_line
    assert sandbox.received.activity_totals() == benv.truth_activities([OTHER, DAY])


# --------------------------------------------------------------------------------------------
# Config errors: one clear message, exit code 2, no traceback
# --------------------------------------------------------------------------------------------

GOOD_CONFIG = """\
pendo:
  region: us
  timezone: America/New_York
  start_date: 2026-09-01
features:
  - id: feat-a
    action: Used export
"""
BROKEN_CONFIGS = {
    "unknown key": (GOOD_CONFIG.replace("  region: us", "  regoin: us"), ":2: pendo.regoin"),
    "bad value": (GOOD_CONFIG.replace("region: us", "region: usa"), ":2: pendo.region"),
    "YAML syntax": (GOOD_CONFIG.replace("features:", "features: [\n"), "pendo_planhat.yaml"),
    "a secret in the file": (GOOD_CONFIG + "planhat_token: abc\n", "looks like a secret"),
    "bad timezone": (GOOD_CONFIG.replace("America/New_York", "Mars/Olympus"), ":3: pendo.timezone"),
    "sync out of range": (GOOD_CONFIG + "sync:\n  retry_attempts: 0\n", "sync.retry_attempts"),
}


@pytest.mark.parametrize(("text", "names"), BROKEN_CONFIGS.values(), ids=BROKEN_CONFIGS.keys())
def test_sync_with_a_broken_config_says_what_and_where_and_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    names: str,
) -> None:
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("PENDO_PLANHAT_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    assert main(["sync", "--start", "2026-11-01", "--end", "2026-11-01"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {path}") and names in err
    assert err.count("error: ") == 1 and "Traceback" not in err
    assert "abc" not in err  # a secret's value is never echoed


def test_sync_without_its_environment_or_with_a_bad_range_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(GOOD_CONFIG, encoding="utf-8")
    monkeypatch.setenv("PENDO_PLANHAT_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    for name in ("PENDO_INTEGRATION_KEY", "PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["sync", "--start", "2026-11-01", "--end", "2026-11-01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: missing environment variable(s): PENDO_INTEGRATION_KEY, ")
    assert main(["sync", "--start", "2026-08-01", "--end", "2026-08-02"]) == 2
    assert "before pendo.start_date 2026-09-01" in capsys.readouterr().err
    assert main(["sync", "--start", "2026-11-02", "--end", "2026-11-01"]) == 2
    assert "is before --start" in capsys.readouterr().err


@pytest.mark.slow
def test_the_console_script_reports_a_broken_config_in_one_message(tmp_path: Path) -> None:
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(BROKEN_CONFIGS["unknown key"][0] + "pipelines: 3\n", encoding="utf-8")
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PENDO_PLANHAT_CONFIG": str(path),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "pendo-planhat"),
            "sync",
            "--start",
            "2026-11-01",
            "--end",
            "2026-11-01",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: {path}: 2 problems in the config file:"
    assert [line.split(": ")[1] for line in lines[1:]] == ["pendo.regoin", "pipelines"]
    assert "Traceback" not in result.stderr
