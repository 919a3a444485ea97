"""The code location loads: Definitions, asset keys, partitions, checks, schedule, resources."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import dagster as dg
import pytest

CONFIG = """\
pendo:
  region: eu
  timezone: Asia/Tokyo
  start_date: 2026-09-01
features:
  - id: feat-a
    action: Used export
pipelines:
  - name: account_clicks
    model: Company
    metrics: {totalEvents: pendo_clicks}
    pipeline:
      - source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}
      - group: {group: [accountId], fields: {totalEvents: {sum: numEvents}}}
"""


def _load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str):
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(text)
    monkeypatch.setenv("PENDO_PLANHAT_CONFIG", str(path))
    sys.modules.pop("pendo_assets.definitions", None)
    return importlib.import_module("pendo_assets.definitions")


def test_definitions_load_from_the_config(monkeypatch, tmp_path):
    defs = _load(monkeypatch, tmp_path, CONFIG).defs
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {
        "pendo_feature_events",
        "pendo_pipeline_results",
        "planhat_snapshot",
        "matched_activities",
        "matched_metrics",
        "planhat_publish",
    }
    job = defs.resolve_job_def("sync_job")
    partitions = job.partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.timezone == "Asia/Tokyo"
    assert partitions.get_first_partition_key() == "2026-09-01"
    schedule = defs.resolve_schedule_def("daily_sync_schedule")
    assert schedule.execution_timezone == "Asia/Tokyo"
    assert set(defs.resources) == {"pendo", "planhat", "warehouse"}
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "rows_have_visitor_ids",
        "match_rate_above_threshold",
        "no_batches_in_doubt",
        "no_activity_drift",
        "metric_drift",
    }
    for key in ("pendo_feature_events", "matched_activities", "planhat_publish"):
        assert defs.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.single_run()


def test_secrets_are_environment_references_not_values(monkeypatch, tmp_path):
    monkeypatch.setenv("PENDO_INTEGRATION_KEY", "secret-pendo-value")
    defs = _load(monkeypatch, tmp_path, CONFIG).defs
    pendo = defs.resources["pendo"]
    assert isinstance(pendo.integration_key, dg.EnvVar)
    assert "secret-pendo-value" not in repr(defs.resources)


def test_a_bad_config_fails_the_code_location_with_the_key_named(monkeypatch, tmp_path):
    from pendo_assets.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pendo.timezone"):
        _load(monkeypatch, tmp_path, CONFIG.replace("Asia/Tokyo", "Mars/Olympus"))
