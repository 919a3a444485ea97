"""Each asset of the sync, materialized with ``dg.materialize`` on fake Pendo and Planhat clients.

The fakes (`tests.fakes`) serve a small literal day; every expected row below is worked out by
hand from those rows and the rules of DESIGN.md (never read back from the code's output). A real
DuckDB warehouse under ``tmp_path`` is read back with plain SQL. One ephemeral Dagster instance
serves the module, and a test of a later asset starts from a copy of the warehouse the earlier
assets built once for the module (`landed`, `matched`, `published`), so each test materializes
only what it is about.

The day, by hand (features: feat-export and feat-print fold into "Used export", weight 1 from
the first of them; feat-share is named "Share report" by Pendo, weight 2):

=====================  =========  ============  ======  ==========================================
visitor                account    feature       events  outcome
=====================  =========  ============  ======  ==========================================
alice                  acct-1     feat-export   3 + 2   matched (End User eu-1, Company acct-1):
alice                  acct-1     feat-print    4         Used export 9
alice                  acct-1     feat-share    1         Share report 1
bob                    acct-2     feat-export   7       matched (eu-2, whose Company has no
                                                        externalId): Used export 7
carol                  acct-1     feat-export   2       ambiguous: two End Users carry "carol"
_PENDO_T_4f2a          acct-1     feat-export   6       anonymous
erin                   acct-1     feat-share    4       no_enduser
erin                   acct-9     feat-export   1       no_enduser (another account: another row)
=====================  =========  ============  ======  ==========================================

Pipeline ``account_clicks`` (Company, ``last``): acct-1 12 clicks / 3 minutes and acct-3 0 / 0
are matched (a 0 is sent as 0); acct-dup is on two Companies (ambiguous); acct-404 is on none
(no_object).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from pendo_assets.build import build_definitions
from pendo_assets.config import parse_config
from pendo_assets.resources import WarehouseResource

from .fakes import (
    DAY,
    FakePendoClient,
    FakePendoResource,
    FakePlanhatClient,
    FakePlanhatResource,
    api_status_error,
    no_answer,
    pendo_event,
    pendo_feature,
    planhat_asset,
    planhat_company,
    planhat_enduser,
)

NEXT_DAY = date(2026, 11, 4)
D = DAY.isoformat()

CONFIG = """\
pendo:
  region: us
  timezone: America/New_York
  start_date: 2026-11-01
  app_ids: all
features:
  - id: feat-export
    action: Used export
  - id: feat-share
    weight: 2
  - id: feat-print
    action: Used export
    weight: 5
pipelines:
  - name: account_clicks
    model: Company
    id_field: accountId
    metrics: {totalEvents: pendo_clicks, totalMinutes: pendo_minutes}
    aggregation: last
    pipeline:
      - source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}
      - group: {group: [accountId], fields: {totalEvents: {sum: numEvents}, totalMinutes: {sum: numMinutes}}}
sync:
  max_quarantine_share: 0.5
"""

FEATURES = [
    pendo_feature("feat-export", "Export CSV"),
    pendo_feature("feat-share", "Share report"),
    pendo_feature("feat-print", "Print"),
]


def event(visitor: str, account: str, feature: str, events: int, **kw: Any) -> dict[str, Any]:
    return pendo_event(
        visitorId=visitor, accountId=account, featureId=feature, numEvents=events, **kw
    )


EVENTS = [
    event("alice", "acct-1", "feat-export", 3, remoteIp="10.0.0.1"),
    event("alice", "acct-1", "feat-export", 2, remoteIp="10.0.0.2"),
    event("alice", "acct-1", "feat-print", 4),
    event("alice", "acct-1", "feat-share", 1),
    event("bob", "acct-2", "feat-export", 7),
    event("carol", "acct-1", "feat-export", 2),
    event("_PENDO_T_4f2a", "acct-1", "feat-export", 6),
    event("erin", "acct-1", "feat-share", 4),
    event("erin", "acct-9", "feat-export", 1),
    # Another day, and a feature that is not configured: never landed on DAY.
    event("alice", "acct-1", "feat-export", 100, day=NEXT_DAY),
    event("alice", "acct-1", "feat-unconfigured", 50),
]

RESULTS: list[dict[str, Any]] = [
    {"accountId": "acct-1", "totalEvents": 12, "totalMinutes": 3},
    {"accountId": "acct-3", "totalEvents": 0, "totalMinutes": 0},
    {"accountId": "acct-dup", "totalEvents": 5, "totalMinutes": 1},
    {"accountId": "acct-404", "totalEvents": 2, "totalMinutes": 1},
]

COMPANIES = [
    planhat_company(_id="co-1", externalId="acct-1"),
    planhat_company(_id="co-2", externalId=...),
    planhat_company(_id="co-3", externalId="acct-3"),
    planhat_company(_id="co-4", externalId="acct-dup"),
    planhat_company(_id="co-5", externalId="acct-dup"),
]
ENDUSERS = [
    planhat_enduser(_id="eu-1", externalId="alice", companyId="co-1"),
    planhat_enduser(_id="eu-2", externalId="bob", companyId="co-2"),
    planhat_enduser(_id="eu-3", externalId="carol", companyId="co-1"),
    planhat_enduser(_id="eu-4", externalId="carol", companyId="co-3"),
    planhat_enduser(_id="eu-5", externalId=None, companyId="co-1"),
]
ASSETS = [planhat_asset(_id="as-1", externalId="asset-1", companyId="co-1")]

# The expected rows of each table, in the order of ``ORDER BY ALL``.
# (day, external_id, action, count, weight, company_external_id, feature_ids)
MATCHED_ACTIVITIES = [
    (DAY, "alice", "Share report", 1, 2.0, "acct-1", "feat-share"),
    (DAY, "alice", "Used export", 9, 1.0, "acct-1", "feat-export,feat-print"),
    (DAY, "bob", "Used export", 7, 1.0, None, "feat-export"),
]
# (day, visitor_id, account_id, reason, num_events)
UNMATCHED_VISITORS = [
    (DAY, "_PENDO_T_4f2a", "acct-1", "anonymous", 6),
    (DAY, "carol", "acct-1", "ambiguous", 2),
    (DAY, "erin", "acct-1", "no_enduser", 4),
    (DAY, "erin", "acct-9", "no_enduser", 1),
]
# (day, pipeline, model, external_id, dimension_id, value, aggregation)
MATCHED_METRICS = [
    (DAY, "account_clicks", "Company", "acct-1", "pendo_clicks", 12.0, "last"),
    (DAY, "account_clicks", "Company", "acct-1", "pendo_minutes", 3.0, "last"),
    (DAY, "account_clicks", "Company", "acct-3", "pendo_clicks", 0.0, "last"),
    (DAY, "account_clicks", "Company", "acct-3", "pendo_minutes", 0.0, "last"),
]
# (day, pipeline, model, id, reason)
UNMATCHED_ACCOUNTS = [
    (DAY, "account_clicks", "Company", "acct-404", "no_object"),
    (DAY, "account_clicks", "Company", "acct-dup", "ambiguous"),
]

ACTIVITY_ITEMS = [
    {
        "externalId": "alice",
        "action": "Share report",
        "date": D,
        "count": 1,
        "weight": 2,
        "info": {"featureId": "feat-share", "source": "pendo"},
        "companyExternalId": "acct-1",
    },
    {
        "externalId": "alice",
        "action": "Used export",
        "date": D,
        "count": 9,
        "weight": 1,
        "info": {"featureId": "feat-export,feat-print", "source": "pendo"},
        "companyExternalId": "acct-1",
    },
    {
        "externalId": "bob",
        "action": "Used export",
        "date": D,
        "count": 7,
        "weight": 1,
        "info": {"featureId": "feat-export", "source": "pendo"},
    },
]
METRIC_ITEMS = [
    {"dimensionId": dim, "value": value, "externalId": ext, "model": "Company", "date": D}
    for ext, dim, value in [
        ("acct-1", "pendo_clicks", 12),
        ("acct-1", "pendo_minutes", 3),
        ("acct-3", "pendo_clicks", 0),
        ("acct-3", "pendo_minutes", 0),
    ]
]

RAW = ["pendo_feature_events", "pendo_pipeline_results", "planhat_snapshot"]
MATCHING = ["matched_activities", "matched_metrics"]
ALL = [*RAW, *MATCHING, "planhat_publish"]


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return build_definitions(parse_config(CONFIG, source="test_assets.yaml"))


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


class Sync:
    """Fake clients, a warehouse file, and ``run``: materialize a selection of the assets."""

    def __init__(
        self, definitions: dg.Definitions, instance: dg.DagsterInstance, path: Path
    ) -> None:
        self.definitions = definitions
        self.instance = instance
        self.path = path
        self.pendo = FakePendoClient(
            features=FEATURES, events=list(EVENTS), pipeline_results={DAY: RESULTS}, page_size=4
        )
        self.planhat = FakePlanhatClient(endusers=ENDUSERS, companies=COMPANIES, assets=ASSETS)

    def start_from(self, template: Path) -> Sync:
        """Begin with a copy of the warehouse ``template`` (built by a module fixture)."""
        shutil.copyfile(template, self.path)
        return self

    def run(
        self,
        *selection: str,
        day: date = DAY,
        checks: bool = False,
        dry_run: bool = False,
        raise_on_error: bool = True,
    ) -> dg.ExecuteInProcessResult:
        assets: list[Any] = list(self.definitions.assets or [])
        if checks:
            assets += list(self.definitions.asset_checks or [])
        partitioned = any(
            self.definitions.resolve_assets_def(key).partitions_def is not None for key in selection
        )
        run_config = (
            {"ops": {"planhat_publish": {"config": {"dry_run": True}}}} if dry_run else None
        )
        return dg.materialize(
            assets,
            selection=list(selection),
            partition_key=day.isoformat() if partitioned else None,
            resources={
                "pendo": FakePendoResource.of(self.pendo),
                "planhat": FakePlanhatResource.of(self.planhat),
                "warehouse": WarehouseResource(path=str(self.path)),
            },
            instance=self.instance,
            run_config=run_config,
            raise_on_error=raise_on_error,
        )

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.path)) as conn:
            return conn.execute(query, list(params)).fetchall()


@pytest.fixture
def sync(definitions: dg.Definitions, instance: dg.DagsterInstance, tmp_path: Path) -> Sync:
    """A fresh warehouse and fresh fakes serving the literal day."""
    return Sync(definitions, instance, tmp_path / "w.duckdb")


@pytest.fixture(scope="module")
def landed_template(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A warehouse where the day was landed and the snapshot taken from the literal rows."""
    template = Sync(definitions, instance, tmp_path_factory.mktemp("landed") / "w.duckdb")
    template.run(*RAW)
    return template.path


@pytest.fixture(scope="module")
def matched_template(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    landed_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """`landed_template`, matched as well: the state a publish starts from."""
    template = Sync(definitions, instance, tmp_path_factory.mktemp("matched") / "w.duckdb")
    template.start_from(landed_template).run(*MATCHING)
    return template.path


@pytest.fixture(scope="module")
def published_template(
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    matched_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """`matched_template`, published as well: Planhat holds the day."""
    template = Sync(definitions, instance, tmp_path_factory.mktemp("published") / "w.duckdb")
    template.start_from(matched_template).run("planhat_publish")
    return template.path


@pytest.fixture
def landed(sync: Sync, landed_template: Path) -> Sync:
    return sync.start_from(landed_template)


@pytest.fixture
def matched(sync: Sync, matched_template: Path) -> Sync:
    return sync.start_from(matched_template)


@pytest.fixture
def published(sync: Sync, published_template: Path) -> Sync:
    return sync.start_from(published_template)


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in materialization.metadata.items()}


def by_key(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


# (day, visitor_id, account_id, feature_id, num_events, remote_ip), as ordered by DuckDB
RAW_EVENTS = sorted(
    [
        (DAY, "alice", "acct-1", "feat-export", 3, "10.0.0.1"),
        (DAY, "alice", "acct-1", "feat-export", 2, "10.0.0.2"),
        (DAY, "alice", "acct-1", "feat-print", 4, "204.16.137.218"),
        (DAY, "alice", "acct-1", "feat-share", 1, "204.16.137.218"),
        (DAY, "bob", "acct-2", "feat-export", 7, "204.16.137.218"),
        (DAY, "carol", "acct-1", "feat-export", 2, "204.16.137.218"),
        (DAY, "_PENDO_T_4f2a", "acct-1", "feat-export", 6, "204.16.137.218"),
        (DAY, "erin", "acct-1", "feat-share", 4, "204.16.137.218"),
        (DAY, "erin", "acct-9", "feat-export", 1, "204.16.137.218"),
    ]
)
RAW_EVENTS_SQL = (
    "SELECT day, visitor_id, account_id, feature_id, num_events, remote_ip "
    "FROM raw_feature_events ORDER BY ALL"
)
ACTIVITIES_SQL = (
    "SELECT day, external_id, action, count, weight, company_external_id, feature_ids "
    "FROM matched_activities ORDER BY ALL"
)
UNMATCHED_VISITORS_SQL = (
    "SELECT day, visitor_id, account_id, reason, num_events FROM unmatched_visitors ORDER BY ALL"
)
METRICS_SQL = (
    "SELECT day, pipeline, model, external_id, dimension_id, value, aggregation "
    "FROM matched_metrics ORDER BY ALL"
)
UNMATCHED_ACCOUNTS_SQL = (
    "SELECT day, pipeline, model, id, reason FROM unmatched_accounts ORDER BY ALL"
)


# ---------------------------------------------------------------------------------------------
# pendo_feature_events
# ---------------------------------------------------------------------------------------------


def test_pendo_feature_events_lands_the_days_rows_of_the_configured_features(sync):
    result = sync.run("pendo_feature_events")

    assert sync.rows(RAW_EVENTS_SQL) == RAW_EVENTS
    # 9 rows in pages of 4: 4, 4, 1.
    assert sync.rows("SELECT source, day, rows, quarantined, pages FROM landed_days") == [
        ("feature_events", DAY, 9, 0, 3)
    ]
    assert sync.rows("SELECT feature_id, action, weight FROM feature_actions ORDER BY 1") == [
        ("feat-export", "Used export", 1.0),
        ("feat-print", "Used export", 1.0),
        ("feat-share", "Share report", 2.0),
    ]
    (call,) = [kw for name, kw in sync.pendo.calls if name == "feature_event_pages"]
    assert call["day"] == DAY and call["timezone"] == "America/New_York"
    assert sorted(call["feature_ids"]) == ["feat-export", "feat-print", "feat-share"]
    assert call["app_ids"] == "all"
    assert sync.pendo.closed
    meta = metadata(result, "pendo_feature_events")
    assert (meta["rows_landed"], meta["rows_quarantined"], meta["pages"]) == (9, 0, 3)


def test_pendo_feature_events_rerun_replaces_the_day_with_what_pendo_says_now(landed):
    landed.run("pendo_feature_events")  # the day again, unchanged
    assert landed.rows(RAW_EVENTS_SQL) == RAW_EVENTS
    assert landed.rows(
        "SELECT source, rows FROM landed_days WHERE day = ? ORDER BY source", [DAY]
    ) == [
        ("feature_events", 9),
        ("pipeline:account_clicks", 4),
    ]

    landed.pendo.events = [*EVENTS, event("alice", "acct-1", "feat-export", 2, remoteIp="10.0.0.3")]
    landed.run("pendo_feature_events")
    assert landed.rows(RAW_EVENTS_SQL) == sorted(
        [*RAW_EVENTS, (DAY, "alice", "acct-1", "feat-export", 2, "10.0.0.3")]
    )
    assert landed.rows("SELECT rows FROM landed_days WHERE source = 'feature_events'") == [(10,)]


def test_pendo_feature_events_lands_an_empty_day_as_landed_with_no_rows(sync):
    sync.run("pendo_feature_events", day=date(2026, 11, 5))

    assert sync.rows("SELECT COUNT(*) FROM raw_feature_events") == [(0,)]
    assert sync.rows("SELECT source, day, rows, pages FROM landed_days") == [
        ("feature_events", date(2026, 11, 5), 0, 1)
    ]


def test_pendo_feature_events_quarantines_malformed_rows_and_the_check_fails(sync):
    sync.pendo.events = [
        *EVENTS,
        pendo_event(visitorId=..., accountId="acct-1", featureId="feat-export"),
        pendo_event(visitorId="grace", accountId="acct-1", featureId="feat-export", numEvents="5"),
    ]

    result = sync.run("pendo_feature_events", checks=True)

    assert sync.rows("SELECT COUNT(*) FROM raw_feature_events") == [(9,)]
    quarantined = sync.rows("SELECT day, reason, raw FROM quarantine_feature_events")
    by_visitor = {
        json.loads(raw).get("visitorId"): (day, reason) for day, reason, raw in quarantined
    }
    assert set(by_visitor) == {None, "grace"}
    assert by_visitor[None][0] == by_visitor["grace"][0] == DAY
    assert by_visitor[None][1].startswith("visitorId")  # what the check looks for
    assert by_visitor["grace"][1].startswith("numEvents")
    assert sync.rows("SELECT rows, quarantined FROM landed_days") == [(9, 2)]
    assert checks_of(result) == {"rows_have_visitor_ids": False}
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.metadata["rows_without_visitor_id"].value == 1


def test_pendo_feature_events_keeps_the_previous_rows_of_a_day_pendo_fails(sync):
    sync.run("pendo_feature_events")
    before = sync.rows(RAW_EVENTS_SQL)
    sync.pendo.fail_days = {DAY: api_status_error("pendo", 503)}
    sync.pendo.events = []

    result = sync.run("pendo_feature_events", raise_on_error=False)

    assert not result.success
    assert sync.rows(RAW_EVENTS_SQL) == before
    assert sync.pendo.closed


# ---------------------------------------------------------------------------------------------
# pendo_pipeline_results
# ---------------------------------------------------------------------------------------------


def test_pendo_pipeline_results_lands_result_rows_and_metric_values(sync):
    sync.run("pendo_pipeline_results")

    raw = sync.rows("SELECT day, pipeline, row_json FROM raw_pipeline_results ORDER BY row_number")
    assert [(day, name, json.loads(row)) for day, name, row in raw] == [
        (DAY, "account_clicks", row) for row in RESULTS
    ]
    assert sync.rows(
        "SELECT day, pipeline, model, id, dimension_id, value, aggregation "
        "FROM pipeline_values ORDER BY ALL"
    ) == [
        (DAY, "account_clicks", "Company", ident, dim, value, "last")
        for ident, dim, value in [
            ("acct-1", "pendo_clicks", 12.0),
            ("acct-1", "pendo_minutes", 3.0),
            ("acct-3", "pendo_clicks", 0.0),
            ("acct-3", "pendo_minutes", 0.0),
            ("acct-404", "pendo_clicks", 2.0),
            ("acct-404", "pendo_minutes", 1.0),
            ("acct-dup", "pendo_clicks", 5.0),
            ("acct-dup", "pendo_minutes", 1.0),
        ]
    ]
    assert sync.rows("SELECT source, rows, quarantined FROM landed_days") == [
        ("pipeline:account_clicks", 4, 0)
    ]
    (call,) = [kw for name, kw in sync.pendo.calls if name == "pipeline_pages"]
    assert call["day"] == DAY and call["sort_field"] == "accountId"
    assert list(call["stages"][0]["source"]) == ["featureEvents", "timeSeries"]


def test_pendo_pipeline_results_rerun_and_empty_day(sync):
    sync.run("pendo_pipeline_results")
    first = sync.rows("SELECT * EXCLUDE (extracted_at) FROM raw_pipeline_results ORDER BY ALL")
    sync.run("pendo_pipeline_results")
    assert (
        sync.rows("SELECT * EXCLUDE (extracted_at) FROM raw_pipeline_results ORDER BY ALL") == first
    )
    assert sync.rows("SELECT COUNT(*) FROM pipeline_values") == [(8,)]

    sync.run("pendo_pipeline_results", day=NEXT_DAY)
    assert sync.rows("SELECT COUNT(*) FROM pipeline_values WHERE day = ?", [NEXT_DAY]) == [(0,)]
    assert sync.rows("SELECT day, rows FROM landed_days ORDER BY day") == [
        (DAY, 4),
        (NEXT_DAY, 0),
    ]


def test_pendo_pipeline_results_quarantines_values_that_cannot_be_sent(sync):
    sync.pendo.pipeline_results = {
        DAY: [*RESULTS, {"accountId": "acct-5", "totalEvents": "7", "totalMinutes": 2}]
    }

    sync.run("pendo_pipeline_results")

    assert sync.rows("SELECT id, dimension_id, value FROM pipeline_values WHERE id = 'acct-5'") == [
        ("acct-5", "pendo_minutes", 2.0)
    ]
    ((reason, raw),) = sync.rows("SELECT reason, raw FROM quarantine_pipeline_results")
    assert reason.startswith("totalEvents") and json.loads(raw)["accountId"] == "acct-5"


# ---------------------------------------------------------------------------------------------
# planhat_snapshot
# ---------------------------------------------------------------------------------------------

OBJECTS_SQL = (
    "SELECT model, object_id, external_id, company_id, company_external_id "
    "FROM planhat_objects ORDER BY ALL"
)


def test_planhat_snapshot_stores_every_object_with_its_company_external_id(sync):
    result = sync.run("planhat_snapshot")

    assert sync.rows(OBJECTS_SQL) == sorted(
        [
            ("EndUser", "eu-1", "alice", "co-1", "acct-1"),
            ("EndUser", "eu-2", "bob", "co-2", None),
            ("EndUser", "eu-3", "carol", "co-1", "acct-1"),
            ("EndUser", "eu-4", "carol", "co-3", "acct-3"),
            ("EndUser", "eu-5", None, "co-1", "acct-1"),
            ("Company", "co-1", "acct-1", "co-1", "acct-1"),
            ("Company", "co-2", None, "co-2", None),
            ("Company", "co-3", "acct-3", "co-3", "acct-3"),
            ("Company", "co-4", "acct-dup", "co-4", "acct-dup"),
            ("Company", "co-5", "acct-dup", "co-5", "acct-dup"),
            ("Asset", "as-1", "asset-1", "co-1", "acct-1"),
        ]
    )
    meta = metadata(result, "planhat_snapshot")
    assert meta["EndUser: objects"] == 5
    assert meta["EndUser: without externalId"] == 1
    assert meta["EndUser: externalIds shared by 2+ objects"] == 1
    assert meta["Company: externalIds shared by 2+ objects"] == 1
    assert sync.planhat.closed


def test_planhat_snapshot_rerun_replaces_the_whole_snapshot(sync):
    sync.run("planhat_snapshot")
    sync.planhat.endusers = [planhat_enduser(_id="eu-9", externalId="zoe", companyId="co-1")]
    sync.planhat.companies = [COMPANIES[0]]
    sync.planhat.assets = []

    sync.run("planhat_snapshot")

    assert sync.rows(OBJECTS_SQL) == [
        ("Company", "co-1", "acct-1", "co-1", "acct-1"),
        ("EndUser", "eu-9", "zoe", "co-1", "acct-1"),
    ]


def test_planhat_snapshot_failure_keeps_the_previous_snapshot(sync):
    sync.run("planhat_snapshot")
    before = sync.rows(OBJECTS_SQL)
    sync.planhat.fail = api_status_error("planhat", 500)

    result = sync.run("planhat_snapshot", raise_on_error=False)

    assert not result.success
    assert sync.rows(OBJECTS_SQL) == before


# ---------------------------------------------------------------------------------------------
# matched_activities, matched_metrics
# ---------------------------------------------------------------------------------------------


def test_matched_activities_sums_splits_folds_features_and_explains_every_unmatched_visitor(
    landed,
):
    result = landed.run("matched_activities", checks=True)

    assert landed.rows(ACTIVITIES_SQL) == MATCHED_ACTIVITIES
    assert landed.rows(UNMATCHED_VISITORS_SQL) == UNMATCHED_VISITORS
    meta = metadata(result, "matched_activities")
    assert (meta["matched_keys"], meta["matched_events"]) == (3, 17)
    assert meta["unmatched_events: anonymous"] == 6
    assert meta["unmatched_events: no_enduser"] == 5
    assert meta["unmatched_events: ambiguous"] == 2
    # 17 matched of 17 + 5 + 2 identified events (anonymous ones do not count).
    assert checks_of(result) == {"match_rate_above_threshold": True}
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.metadata["match_rate"].value == round(17 / 24, 4)


def test_matched_activities_rerun_is_idempotent_and_an_empty_day_matches_nothing(matched):
    matched.run("matched_activities")
    assert matched.rows(ACTIVITIES_SQL) == MATCHED_ACTIVITIES
    assert matched.rows(UNMATCHED_VISITORS_SQL) == UNMATCHED_VISITORS

    matched.run("matched_activities", day=NEXT_DAY)  # nothing landed that day
    assert matched.rows("SELECT DISTINCT day FROM matched_activities") == [(DAY,)]
    assert matched.rows("SELECT DISTINCT day FROM unmatched_visitor_rows") == [(DAY,)]


def test_match_rate_check_fails_when_most_identified_visitors_have_no_end_user(landed):
    landed.planhat.endusers = []
    landed.run("planhat_snapshot")

    result = landed.run("matched_activities", checks=True)

    assert landed.rows(ACTIVITIES_SQL) == []
    assert landed.rows(
        "SELECT reason, SUM(num_events) FROM unmatched_visitors GROUP BY ALL ORDER BY ALL"
    ) == [("anonymous", 6), ("no_enduser", 10 + 7 + 2 + 5)]
    assert checks_of(result) == {"match_rate_above_threshold": False}


def test_matched_metrics_matches_ids_to_objects_of_the_model_and_explains_the_rest(landed):
    result = landed.run("matched_metrics")

    assert landed.rows(METRICS_SQL) == MATCHED_METRICS
    assert landed.rows(UNMATCHED_ACCOUNTS_SQL) == UNMATCHED_ACCOUNTS
    meta = metadata(result, "matched_metrics")
    assert meta["matched_values"] == 4
    assert (meta["unmatched_ids: no_object"], meta["unmatched_ids: ambiguous"]) == (1, 1)


def test_matched_metrics_rerun_is_idempotent_and_an_empty_day_matches_nothing(matched):
    matched.run("matched_metrics")
    assert matched.rows(METRICS_SQL) == MATCHED_METRICS
    assert matched.rows(UNMATCHED_ACCOUNTS_SQL) == UNMATCHED_ACCOUNTS

    matched.run("matched_metrics", day=NEXT_DAY)
    assert matched.rows("SELECT DISTINCT day FROM matched_metrics") == [(DAY,)]
    assert matched.rows("SELECT DISTINCT day FROM unmatched_account_rows") == [(DAY,)]


# ---------------------------------------------------------------------------------------------
# planhat_publish
# ---------------------------------------------------------------------------------------------

SENT_ACTIVITIES_SQL = "SELECT day, external_id, action, count FROM sent_activities ORDER BY ALL"
SENT_METRICS_SQL = (
    "SELECT day, model, external_id, dimension_id, value FROM sent_metrics ORDER BY ALL"
)


def test_planhat_publish_sends_exactly_the_matched_items_once(matched):
    result = matched.run("planhat_publish", checks=True)

    assert by_key(matched.planhat.activities) == by_key(ACTIVITY_ITEMS)
    assert by_key(matched.planhat.metrics) == by_key(METRIC_ITEMS)
    assert (len(matched.planhat.activity_batches), len(matched.planhat.metric_batches)) == (1, 1)
    assert matched.rows(SENT_ACTIVITIES_SQL) == [row[:4] for row in MATCHED_ACTIVITIES]
    assert matched.rows(SENT_METRICS_SQL) == [
        (d, m, e, dim, v) for d, _, m, e, dim, v, _ in MATCHED_METRICS
    ]
    assert checks_of(result) == {
        "no_batches_in_doubt": True,
        "no_activity_drift": True,
        "metric_drift": True,
    }
    meta = metadata(result, "planhat_publish")
    assert meta["partition_window"] == D

    matched.run("planhat_publish")  # a re-run: nothing changed, nothing is sent
    assert len(matched.planhat.activities) == 3 and len(matched.planhat.metrics) == 4
    assert matched.rows("SELECT COUNT(*) FROM outbox_batches") == [(2,)]


def test_planhat_publish_sends_only_what_changed_when_pendo_restates_a_day(published):
    published.pendo.events = [
        *EVENTS,
        event("alice", "acct-1", "feat-print", 2, remoteIp="10.9.9.9"),
    ]
    published.pendo.pipeline_results = {DAY: [{**RESULTS[0], "totalEvents": 15}, *RESULTS[1:]]}

    # The day again: land, match, publish (the snapshot is unchanged).
    published.run(*ALL[:2], *MATCHING, "planhat_publish")

    assert published.planhat.activities == [{**ACTIVITY_ITEMS[1], "count": 2}]
    assert published.planhat.metrics == [{**METRIC_ITEMS[0], "value": 15}]
    assert published.rows(
        "SELECT count FROM sent_activities WHERE external_id = 'alice' AND action = 'Used export'"
    ) == [(11,)]
    # Every step closed the client it was given: feature events and pipelines; publish.
    assert published.pendo.closed and published.planhat.closed
    assert (published.pendo.closes, published.planhat.closes) == (2, 1)


def test_planhat_publish_on_a_day_with_nothing_matched_sends_nothing(matched):
    result = matched.run("planhat_publish", day=NEXT_DAY, checks=True)

    assert matched.planhat.activity_batches == [] and matched.planhat.metric_batches == []
    assert matched.rows("SELECT COUNT(*) FROM outbox_batches") == [(0,)]
    assert checks_of(result) == {
        "no_batches_in_doubt": True,
        "no_activity_drift": True,
        "metric_drift": True,
    }


def test_planhat_publish_dry_run_stores_the_plan_and_sends_nothing(matched):
    matched.run("planhat_publish", dry_run=True)

    assert matched.planhat.activity_batches == [] and matched.planhat.metric_batches == []
    assert matched.rows("SELECT COUNT(*) FROM outbox_batches") == [(0,)]
    assert (
        matched.rows(
            "SELECT day, external_id, action, count, weight, company_external_id, feature_ids "
            "FROM planned_activities ORDER BY ALL"
        )
        == MATCHED_ACTIVITIES
    )
    assert matched.rows(
        "SELECT day, model, external_id, dimension_id, value FROM planned_metrics ORDER BY ALL"
    ) == [(d, m, e, dim, v) for d, _, m, e, dim, v, _ in MATCHED_METRICS]

    matched.run("planhat_publish")  # the real run sends what the dry run planned
    assert by_key(matched.planhat.activities) == by_key(ACTIVITY_ITEMS)
    assert by_key(matched.planhat.metrics) == by_key(METRIC_ITEMS)


def test_planhat_publish_holds_back_a_batch_without_answer_and_the_check_fails(matched):
    matched.planhat.post_failures = [no_answer()]

    result = matched.run("planhat_publish", checks=True)

    assert by_key(matched.planhat.failed_batches[0]) == by_key(ACTIVITY_ITEMS)
    assert matched.planhat.activity_batches == []
    assert by_key(matched.planhat.metrics) == by_key(METRIC_ITEMS)
    assert matched.rows("SELECT kind, items FROM batches_in_doubt") == [("activities", 3)]
    assert matched.rows(SENT_ACTIVITIES_SQL) == []
    assert checks_of(result) == {
        "no_batches_in_doubt": False,
        "no_activity_drift": True,
        "metric_drift": True,
    }

    matched.run("planhat_publish")  # its keys stay held back until the batch is resolved
    assert matched.planhat.activity_batches == []
    assert len(matched.planhat.metrics) == 4


def test_planhat_publish_fails_the_step_when_planhat_refuses_and_resends_next_run(matched):
    matched.planhat.post_failures = [api_status_error("planhat", 400)]

    result = matched.run("planhat_publish", raise_on_error=False)

    assert not result.success
    assert matched.rows("SELECT kind, status FROM outbox_batches") == [("activities", "failed")]
    assert matched.planhat.activities == [] and matched.planhat.metrics == []
    assert matched.rows(SENT_ACTIVITIES_SQL) == []

    matched.run("planhat_publish")
    assert by_key(matched.planhat.activities) == by_key(ACTIVITY_ITEMS)
    assert by_key(matched.planhat.metrics) == by_key(METRIC_ITEMS)


def test_planhat_publish_counts_items_planhat_refuses_as_not_sent_and_sends_them_again(matched):
    matched.planhat.metric_errors = {("acct-3", "pendo_clicks"): "dimension not found"}

    result = matched.run("planhat_publish")

    assert by_key(matched.planhat.metrics) == by_key(METRIC_ITEMS)
    assert matched.rows(SENT_METRICS_SQL) == [
        (d, m, e, dim, v)
        for d, _, m, e, dim, v, _ in MATCHED_METRICS
        if (e, dim) != ("acct-3", "pendo_clicks")
    ]
    assert metadata(result, "planhat_publish")["metric_items_rejected"] == 1

    matched.planhat.metric_errors = {}
    matched.run("planhat_publish")
    assert matched.planhat.metrics[4:] == [METRIC_ITEMS[2]]


def test_planhat_publish_keeps_batches_within_the_clients_item_limit(matched):
    matched.planhat.max_items = 2

    matched.run("planhat_publish")

    assert [len(batch) for batch in matched.planhat.activity_batches] == [2, 1]
    assert [len(batch) for batch in matched.planhat.metric_batches] == [2, 2]
    assert by_key(matched.planhat.activities) == by_key(ACTIVITY_ITEMS)
    assert by_key(matched.planhat.metrics) == by_key(METRIC_ITEMS)
