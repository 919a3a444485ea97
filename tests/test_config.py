"""The YAML config contract (DESIGN.md §5): parsing, friendly errors, pipeline files."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError

from pendo_assets.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    Config,
    FeatureSpec,
    PendoSettings,
    PipelineSpec,
    SyncSettings,
    config_path_from_env,
    load_config,
    parse_config,
)
from pendo_assets.errors import ConfigError, PendoAssetsError

# DESIGN.md §5, verbatim. Line numbers below refer to this text.
EXAMPLE = """\
pendo:
  region: us                  # us | us1 | eu | jpn | au  -> app.pendo.io, us1.app.pendo.io, app.eu.pendo.io, app.jpn.pendo.io, app.au.pendo.io
  timezone: America/New_York  # the subscription's timezone: partitions are its days
  start_date: 2026-09-01      # first partition
  app_ids: all                # all (sends appId expandAppIds("*")) | a list of Pendo app ids
features:                     # Pendo features -> Planhat User Activities
  - id: 4qxwyooqP_s_hHt8meR8lWDxSfo
    action: Used export       # activity name in Planhat; default: the feature's name in Pendo
    weight: 1                 # Planhat activity weight; default 1
pipelines:                    # Pendo pipelines -> Planhat Custom Metrics
  - name: account_clicks
    model: Company            # Company | Asset | Project | EndUser
    id_field: accountId       # result field matched to the object's externalId
    metrics:                  # result field -> Planhat dimensionId
      totalEvents: pendo_clicks
    aggregation: last         # how the Planhat metric aggregates a day: last | sum
    pipeline:                 # the Pendo pipeline; its first stage is a source whose timeSeries is set per partition
      - source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}
      - identified: accountId
      - group: {group: [accountId], fields: {totalEvents: {sum: numEvents}}}
"""

EXAMPLE_STAGES = (
    {
        "source": {
            "featureEvents": None,
            "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
        }
    },
    {"identified": "accountId"},
    {"group": {"group": ["accountId"], "fields": {"totalEvents": {"sum": "numEvents"}}}},
)

# A smaller valid config for pipeline_file tests: lines 1-3 are pendo, 4 pipelines, 5 the item.
FILE_CONFIG = """\
pendo:
  timezone: UTC
  start_date: 2026-01-01
pipelines:
  - name: from_file
    model: Asset
    metrics: {totalEvents: asset_clicks}
    pipeline_file: {file}
"""

PROBLEM_RE = re.compile(
    r"^  (?P<source>.+?):(?P<line>\d+): (?P<path>\(top level\)|\S+): (?P<message>.*)$"
)


def problems(text: str, **kwargs: object) -> dict[str, tuple[int, str]]:
    """Parse ``text`` expecting a ConfigError; return {key path: (line, message)}."""
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, source="pendo_planhat.yaml", **kwargs)  # type: ignore[arg-type]
    head, *lines = str(excinfo.value).splitlines()
    assert (
        head
        == f"pendo_planhat.yaml: {len(lines)} problem{'s' * (len(lines) != 1)} in the config file:"
    )
    found: dict[str, tuple[int, str]] = {}
    for line in lines:
        match = PROBLEM_RE.match(line)
        assert match, f"not in the file:line: path: message format: {line!r}"
        assert match["source"] == "pendo_planhat.yaml"
        found.setdefault(match["path"], (int(match["line"]), match["message"]))
    return found


def edit(old: str, new: str, text: str = EXAMPLE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --------------------------------------------------------------------------------------------
# The valid example
# --------------------------------------------------------------------------------------------


def test_parse_config_builds_the_design_example() -> None:
    config = parse_config(EXAMPLE, source="pendo_planhat.yaml")

    assert config == Config(
        pendo=PendoSettings(
            region="us", timezone="America/New_York", start_date=date(2026, 9, 1), app_ids="all"
        ),
        features=(FeatureSpec(id="4qxwyooqP_s_hHt8meR8lWDxSfo", action="Used export", weight=1.0),),
        pipelines=(
            PipelineSpec(
                name="account_clicks",
                model="Company",
                id_field="accountId",
                metrics={"totalEvents": "pendo_clicks"},
                aggregation="last",
                pipeline=EXAMPLE_STAGES,
            ),
        ),
        sync=SyncSettings(min_match_rate=0.5, max_quarantine_share=0.01, page_size=100_000),
    )
    assert config.source == "pendo_planhat.yaml"


def test_parse_config_applies_defaults_when_optional_keys_are_left_out() -> None:
    text = """\
pendo:
  timezone: Europe/Berlin
  start_date: "2026-09-01"
features:
  - id: feat-1
pipelines:
  - name: p
    model: EndUser
    metrics: {n: dim_n}
    pipeline: [{source: {visitors: null}}]
"""
    config = parse_config(text)

    assert config.pendo == PendoSettings(
        region="us", timezone="Europe/Berlin", start_date=date(2026, 9, 1), app_ids="all"
    )
    assert config.features == (FeatureSpec(id="feat-1", action=None, weight=1.0),)
    assert config.pipelines[0].id_field == "accountId"
    assert config.pipelines[0].aggregation == "last"
    assert config.sync == SyncSettings()


def test_parse_config_reads_app_ids_sync_and_plain_scalar_ids() -> None:
    text = """\
pendo: {region: eu, timezone: UTC, start_date: 2026-01-31, app_ids: [-323232, 5]}
features:
  - {id: 12345, action: yes, weight: 0.5}
pipelines: []
sync: {min_match_rate: 1, max_quarantine_share: 0, page_size: 1000}
"""
    config = parse_config(text)

    assert config.pendo.region == "eu"
    assert config.pendo.app_ids == (-323232, 5)
    # Ids and names are taken as written, even where YAML would read a number or a boolean.
    assert config.features == (FeatureSpec(id="12345", action="yes", weight=0.5),)
    assert config.sync == SyncSettings(min_match_rate=1.0, max_quarantine_share=0.0, page_size=1000)


def test_parse_config_expands_yaml_anchors_and_merge_keys() -> None:
    text = """\
pendo: {timezone: UTC, start_date: 2026-01-01}
pipelines:
  - &base
    name: one
    model: Company
    metrics: {a: dim_a}
    aggregation: sum
    pipeline: &stages
      - source: {accounts: null}
  - <<: *base
    name: two
    metrics: {a: dim_b}
    pipeline: *stages
"""
    one, two = parse_config(text).pipelines

    assert (two.name, two.model, two.aggregation) == ("two", "Company", "sum")
    assert dict(two.metrics) == {"a": "dim_b"}
    assert two.stages == one.stages == ({"source": {"accounts": None}},)


def test_config_objects_are_frozen() -> None:
    config = parse_config(EXAMPLE)

    with pytest.raises(ValidationError, match="frozen"):
        config.pendo.region = "eu"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.pipelines[0].metrics["x"] = "y"  # type: ignore[index]
    assert hash(config) == hash(parse_config(EXAMPLE))
    # Equality is about content, not where the config was read from.
    assert config == parse_config(EXAMPLE, source="elsewhere.yaml")


def test_parse_config_reads_empty_optional_sections_as_empty() -> None:
    config = parse_config(EXAMPLE + "sync:\n", source="cfg.yaml")

    assert config.sync == SyncSettings()
    assert parse_config(edit(FEATURES, "features:\n#\n#\n#")).features == ()


# --------------------------------------------------------------------------------------------
# Errors: every rule names the key path and the line
# --------------------------------------------------------------------------------------------

SECRETS_HINT = "PENDO_INTEGRATION_KEY, PLANHAT_API_TOKEN, PLANHAT_TENANT_TOKEN"
SOURCE = "      - source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}\n"
EXTRA_PIPELINE = """\
  - name: second
    model: Asset
    metrics: {clicks: pendo_clicks}
    pipeline: [{source: {accounts: null}}]
"""

FEATURES = (
    "features:                     # Pendo features -> Planhat User Activities\n"
    "  - id: 4qxwyooqP_s_hHt8meR8lWDxSfo\n"
    "    action: Used export       # activity name in Planhat; default: the feature's name in Pendo\n"
    "    weight: 1 "
)
METRICS = (
    "    metrics:                  # result field -> Planhat dimensionId\n"
    "      totalEvents: pendo_clicks"
)
NO_SOURCE = edit(SOURCE, "")

# fmt: off
ERROR_CASES = [
    # text, key path, line, words the message must hold
    pytest.param(EXAMPLE + "extra: 1\n", "extra", 21, ["unknown key 'extra'", "pendo, features, pages, track_events, pipelines, sync"], id="unknown root key"),
    pytest.param(edit("  timezone:", "  time_zone:"), "pendo.time_zone", 3, ["did you mean 'timezone'?", "region, timezone, start_date, app_ids"], id="unknown pendo key"),
    pytest.param(edit("    weight: 1 ", "    weigth: 1 "), "features[0].weigth", 9, ["did you mean 'weight'?"], id="unknown feature key"),
    pytest.param(edit("    aggregation: last", "    aggregate: last"), "pipelines[0].aggregate", 16, ["allowed keys here: name, model"], id="unknown pipeline key"),
    pytest.param(edit("  app_ids: all", "  region: eu"), "pendo.region", 5, ["duplicate key (first on line 2)"], id="duplicate key"),
    pytest.param(edit("pendo:", "pendox:"), "pendo", 1, ["is required"], id="pendo missing"),
    pytest.param("pendo: [1]\nfeatures: [{id: a}]\n", "pendo", 1, ["must be a mapping", "got a list"], id="pendo not a mapping"),
    pytest.param(edit("region: us ", "region: usa"), "pendo.region", 2, ["'usa'", "expected one of: us, us1, eu, jpn, au"], id="region"),
    pytest.param(edit("region: us ", "region: EU "), "pendo.region", 2, ["did you mean 'eu'?"], id="region casing"),
    pytest.param(edit("region: us ", "region:    "), "pendo.region", 2, ["got an empty value", "us, us1, eu, jpn, au"], id="region empty"),
    pytest.param(edit("America/New_York ", "Mars/Olympus_Mons"), "pendo.timezone", 3, ["not an IANA time zone"], id="timezone unknown"),
    pytest.param(edit("America/New_York ", "America/NewYork  "), "pendo.timezone", 3, ["did you mean 'America/New_York'?"], id="timezone typo"),
    pytest.param(edit("  timezone: America/New_York", "  # no zone"), "pendo.timezone", 1, ["is required"], id="timezone missing"),
    pytest.param(edit("2026-09-01", "2026-02-30"), "pendo.start_date", 4, ["not a real date"], id="start_date not real"),
    pytest.param(edit("2026-09-01", "'1 Sep 26'"), "pendo.start_date", 4, ["YYYY-MM-DD"], id="start_date text"),
    pytest.param(edit("2026-09-01", "2026-09-01 10:00:00"), "pendo.start_date", 4, ["has a time"], id="start_date with time"),
    pytest.param(edit("  start_date: 2026-09-01", "  #"), "pendo.start_date", 1, ["is required"], id="start_date missing"),
    pytest.param(edit("app_ids: all", "app_ids: All"), "pendo.app_ids", 5, ["did you mean 'all'?", "list of Pendo app ids"], id="app_ids word"),
    pytest.param(edit("app_ids: all", "app_ids: -323232"), "pendo.app_ids", 5, ["[-323232]"], id="app_ids one int"),
    pytest.param(edit("app_ids: all", "app_ids: []"), "pendo.app_ids", 5, ["empty list"], id="app_ids empty"),
    pytest.param(edit("app_ids: all", "app_ids: [1, abc]"), "pendo.app_ids[1]", 5, ["integer Pendo app id", "'abc'"], id="app_ids not int"),
    pytest.param(edit("app_ids: all", "app_ids: ['7']"), "pendo.app_ids[0]", 5, ["without quotes"], id="app_ids quoted"),
    pytest.param(edit("app_ids: all", "app_ids: [7, 7]"), "pendo.app_ids[1]", 5, ["listed twice"], id="app_ids duplicate"),
    pytest.param(edit(FEATURES, "features: {id: x}\n#\n#\n#"), "features", 6, ["must be a list of features"], id="features not a list"),
    pytest.param(edit("  - id: 4qxwyoo", "  - ix: 4qxwyoo"), "features[0].id", 7, ["is required"], id="feature id missing"),
    pytest.param(edit("id: 4qxwyooqP_s_hHt8meR8lWDxSfo", 'id: ""'), "features[0].id", 7, ["Pendo feature id", "empty"], id="feature id empty"),
    pytest.param(edit("pipelines:  ", "  - id: 4qxwyooqP_s_hHt8meR8lWDxSfo\npipelines:  "), "features[1].id", 10, ["already used by features[0] (line 7)"], id="feature id duplicate"),
    pytest.param(edit("action: Used export", "action: ''"), "features[0].action", 8, ["empty"], id="action empty"),
    pytest.param(edit("action: Used export", "action: " + "x" * 256), "features[0].action", 8, ["256 characters", "255"], id="action too long"),
    pytest.param(edit("weight: 1 ", "weight: -1"), "features[0].weight", 9, ["out of range", "≥ 0"], id="weight negative"),
    pytest.param(edit("weight: 1 ", "weight: .inf"), "features[0].weight", 9, ["finite"], id="weight infinite"),
    pytest.param(edit("weight: 1 ", "weight: heavy"), "features[0].weight", 9, ["a number", "'heavy'"], id="weight text"),
    pytest.param(edit("weight: 1 ", "weight: true"), "features[0].weight", 9, ["a number"], id="weight boolean"),
    pytest.param("pendo: {timezone: UTC, start_date: 2026-01-01}\nfeatures: []\npipelines: []\n", "features", 2, ["nothing to sync"], id="nothing to sync"),
    pytest.param(edit("name: account_clicks", "name: account clicks"), "pipelines[0].name", 11, ["letters, digits, _ and -"], id="name charset"),
    pytest.param(EXAMPLE + EXTRA_PIPELINE.replace("second", "account_clicks").replace("pendo_clicks", "other"), "pipelines[1].name", 21, ["already used by pipelines[0] (line 11)"], id="name duplicate"),
    pytest.param(edit("model: Company ", "model: company "), "pipelines[0].model", 12, ["did you mean 'Company'?", "Company, Asset, Project, EndUser"], id="model casing"),
    pytest.param(edit("model: Company ", "model: Account "), "pipelines[0].model", 12, ["expected one of: Company, Asset, Project, EndUser"], id="model unknown"),
    pytest.param(edit("id_field: accountId", "id_field: ''       "), "pipelines[0].id_field", 13, ["empty"], id="id_field empty"),
    pytest.param(edit(METRICS, "    metrics: {}\n#"), "pipelines[0].metrics", 14, ["at least one result field"], id="metrics empty"),
    pytest.param(edit(METRICS, "#\n#"), "pipelines[0].metrics", 11, ["is required"], id="metrics missing"),
    pytest.param(edit("totalEvents: pendo_clicks", "totalEvents: pendo clicks"), "pipelines[0].metrics.totalEvents", 15, ["no spaces", "'pendo clicks'"], id="dimensionId charset"),
    pytest.param(EXAMPLE + EXTRA_PIPELINE, "pipelines[1].metrics.clicks", 23, ["'pendo_clicks' is already fed by pipelines[0].metrics.totalEvents (line 15)"], id="dimensionId duplicate"),
    pytest.param(edit("aggregation: last", "aggregation: avg "), "pipelines[0].aggregation", 16, ["expected one of: last, sum"], id="aggregation"),
    pytest.param(EXAMPLE + "    pipeline_file: p.json\n", "pipelines[0].pipeline_file", 21, ["not both"], id="pipeline and pipeline_file"),
    pytest.param(EXAMPLE.split("    pipeline:")[0], "pipelines[0].pipeline", 11, ["pipeline_file"], id="no pipeline"),
    pytest.param(EXAMPLE.split("    pipeline:")[0] + "    pipeline: {a: 1}\n", "pipelines[0].pipeline", 17, ["list of Pendo pipeline stages"], id="pipeline not a list"),
    pytest.param(EXAMPLE.split("    pipeline:")[0] + "    pipeline: []\n", "pipelines[0].pipeline", 17, ["is empty", "source"], id="pipeline empty"),
    pytest.param(NO_SOURCE, "pipelines[0].pipeline[0]", 18, ["a pipeline without a source stage"], id="no source stage"),
    pytest.param(NO_SOURCE + SOURCE, "pipelines[0].pipeline[2]", 20, ["must be the first stage"], id="source not first"),
    pytest.param(EXAMPLE + "      - source: {accounts: null}\n", "pipelines[0].pipeline[3]", 21, ["only the first stage may be a source"], id="second source"),
    pytest.param(edit("      - identified: accountId", "      - {identified: accountId, sort: [a]}"), "pipelines[0].pipeline[1]", 19, ["one key, the operator name", "2 keys"], id="stage with two keys"),
    pytest.param(edit("      - identified: accountId", "      - identified"), "pipelines[0].pipeline[1]", 19, ["one key, the operator name", "'identified'"], id="stage not a mapping"),
    pytest.param(edit("{featureEvents: null,", "{featureEvents: null, pageEvents: null,"), "pipelines[0].pipeline[0]", 18, ["2 row sources", "featureEvents, pageEvents"], id="two row sources"),
    pytest.param(edit("{featureEvents: null, timeSeries", "{timeSeries"), "pipelines[0].pipeline[0]", 18, ["names no row source"], id="no row source"),
    pytest.param(edit("source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}", "source: featureEvents"), "pipelines[0].pipeline[0]", 18, ["one row source and a timeSeries"], id="source not a mapping"),
    pytest.param(EXAMPLE + "sync: fast\n", "sync", 21, ["must be a mapping", "min_match_rate"], id="sync not a mapping"),
    pytest.param(EXAMPLE + "sync:\n  batch: 3\n", "sync.batch", 22, ["unknown key 'batch'", "min_match_rate, max_quarantine_share, page_size"], id="sync unknown key"),
    pytest.param(EXAMPLE + "sync:\n  min_match_rate: 1.5\n", "sync.min_match_rate", 22, ["1.5 is out of range", "from 0 to 1"], id="min_match_rate"),
    pytest.param(EXAMPLE + "sync:\n  max_quarantine_share: -0.1\n", "sync.max_quarantine_share", 22, ["out of range", "from 0 to 1"], id="max_quarantine_share"),
    pytest.param(EXAMPLE + "sync:\n  page_size: 999\n", "sync.page_size", 22, ["999 is out of range", "1000 to 1000000"], id="page_size range"),
    pytest.param(EXAMPLE + "sync:\n  page_size: 5000.5\n", "sync.page_size", 22, ["whole number"], id="page_size fraction"),
    pytest.param(EXAMPLE + "sync:\n  page_size: '5000'\n", "sync.page_size", 22, ["whole number from 1000", "'5000'"], id="page_size text"),
    pytest.param(edit("action: Used export", "action: !!binary aGVsbG8="), "features[0].action", 8, ["YAML tag"], id="unsupported tag"),
]
# fmt: on


@pytest.mark.parametrize(("text", "path", "line", "words"), ERROR_CASES)
def test_parse_config_names_key_path_and_line_when_a_rule_is_broken(
    text: str, path: str, line: int, words: list[str]
) -> None:
    found = problems(text)

    assert path in found, f"{path} not reported; got {found}"
    assert found[path][0] == line
    for word in words:
        assert word in found[path][1]


def test_parse_config_reports_every_problem_at_once_in_line_order() -> None:
    text = edit("region: us ", "region: usa")
    text = edit("model: Company ", "model: company ", text)
    text = edit("aggregation: last", "aggregation: avg ", text)

    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, source="cfg.yaml")

    assert str(excinfo.value).splitlines() == [
        "cfg.yaml: 3 problems in the config file:",
        "  cfg.yaml:2: pendo.region: 'usa' is not a valid Pendo region; did you mean 'us'? "
        "expected one of: us, us1, eu, jpn, au",
        "  cfg.yaml:12: pipelines[0].model: 'company' is not a valid Planhat model; did you mean "
        "'Company'? expected one of: Company, Asset, Project, EndUser",
        "  cfg.yaml:16: pipelines[0].aggregation: 'avg' is not a valid aggregation; expected one "
        "of: last, sum",
    ]


def test_config_error_is_a_value_error_and_a_package_error() -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_config("pendo: 1\n")
    assert isinstance(excinfo.value, PendoAssetsError)


# fmt: off
SECRET_CASES = [
    pytest.param(edit("  app_ids: all", "  integration_key: {secret}"), "pendo.integration_key", 5, id="integration_key"),
    pytest.param(EXAMPLE + "planhat:\n  api_token: {secret}\n", "planhat.api_token", 22, id="api_token"),
    pytest.param(EXAMPLE + "tenant_token: '{secret}'\n", "tenant_token", 21, id="tenant_token"),
    pytest.param(edit("    weight: 1 ", "    token: {secret}"), "features[0].token", 9, id="token"),
    pytest.param(EXAMPLE + "sync: {password: {secret}}\n", "sync.password", 21, id="password"),
    pytest.param(EXAMPLE + "PENDO_INTEGRATION_KEY: {secret}\n", "PENDO_INTEGRATION_KEY", 21, id="env var name"),
    pytest.param(EXAMPLE + "      - select: {apiToken: {secret}}\n", "pipelines[0].pipeline[3].select.apiToken", 21, id="in a stage"),
]
# fmt: on


@pytest.mark.parametrize(("text", "path", "line"), SECRET_CASES)
def test_parse_config_rejects_secrets_without_echoing_them(text: str, path: str, line: int) -> None:
    secret = "pk-live-8f3a9c2e1d7b"
    text = text.replace("{secret}", secret)
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, source="pendo_planhat.yaml")
    message = str(excinfo.value)

    assert secret not in message
    found = problems(text)
    assert found[path][0] == line
    assert "secret" in found[path][1]
    assert SECRETS_HINT in found[path][1]


def test_parse_config_never_echoes_a_secret_from_a_yaml_syntax_error() -> None:
    secret = "pk-live-8f3a9c2e1d7b"
    text = f"pendo:\n  integration_key: {secret}: oops\n"

    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, source="cfg.yaml")

    assert secret not in str(excinfo.value)
    assert excinfo.value.__suppress_context__


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param(
            "pendo: [\n", ["cfg.yaml:2:", "line 2, column 1", "YAML syntax error"], id="unclosed"
        ),
        pytest.param(
            "pendo:\n  region: us\n timezone: UTC\n",
            ["cfg.yaml:3:", "line 3, column 2", "indentation"],
            id="indent",
        ),
        pytest.param(
            "pendo:\n\tregion: us\n", ["cfg.yaml:2:", "line 2, column 1", "spaces"], id="tab"
        ),
        pytest.param("a: 1\n---\nb: 2\n", ["cfg.yaml:2:", "single document"], id="two documents"),
        pytest.param("pendo: \x07\n", ["cfg.yaml:1:", "#x0007"], id="control character"),
    ],
)
def test_parse_config_reports_yaml_syntax_errors_with_line_and_column(
    text: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, source="cfg.yaml")

    for word in words:
        assert word in str(excinfo.value)


@pytest.mark.parametrize("text", ["", "   \n", "# just a comment\n"])
def test_parse_config_says_the_file_is_empty(text: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^cfg\.yaml: the config file is empty; it needs a `pendo:`"
    ):
        parse_config(text, source="cfg.yaml")


def test_parse_config_rejects_a_document_that_is_not_a_mapping() -> None:
    assert problems("- pendo\n") == {
        "(top level)": (
            1,
            "must be a mapping with the keys pendo, features, pages, track_events, pipelines, sync, matching; got a list",
        )
    }


def test_parse_config_reports_an_alias_loop_once() -> None:
    text = "pendo: {timezone: UTC, start_date: 2026-01-01}\nfeatures: &x\n  - id: a\n  - *x\n"

    # An alias is the node it names: its line is the anchor's.
    assert problems(text) == {
        "features[1]": (2, "is an alias of a node that holds it; remove the loop")
    }


def test_parse_config_reports_an_unsupported_tag_on_a_required_key_once() -> None:
    found = problems(edit("id: 4qxwyooqP_s_hHt8meR8lWDxSfo", "id: !!binary aGVsbG8="))

    assert list(found) == ["features[0].id"]
    assert "YAML tag" in found["features[0].id"][1]


# Every key of every section, upper-cased into an unknown key: the message names the key meant
# and every key allowed there, all read from the models (a new field needs no list of keys).
SECTIONS = {
    "": Config,
    "pendo": PendoSettings,
    "features[0]": FeatureSpec,
    "pipelines[0]": PipelineSpec,
    "sync": SyncSettings,
}
SECTION_TEMPLATE = """\
pendo: {timezone: UTC, start_date: 2026-01-01<pendo>}
features: [{id: a<features[0]>}]
pipelines: [{name: p, model: Asset, metrics: {n: d}, pipeline: [{source: {accounts: null}}]<pipelines[0]>}]
sync: {page_size: 1000<sync>}
<>
"""


def keys_of(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


@pytest.mark.parametrize(
    ("section", "key"),
    [(section, key) for section, model in SECTIONS.items() for key in keys_of(model)],
)
def test_parse_config_suggests_the_nearest_key_in_every_section(section: str, key: str) -> None:
    text = SECTION_TEMPLATE
    for marker in SECTIONS:
        extra = f"{key.upper()}: 1" if marker == section else ""
        text = text.replace(f"<{marker}>", f", {extra}" if extra and marker else extra)

    found = problems(text)

    line, message = found[f"{section}.{key.upper()}" if section else key.upper()]
    assert line == (list(SECTIONS).index(section) or 5)  # the template's line for the section
    assert f"unknown key '{key.upper()}'; did you mean '{key}'?" in message
    assert message.endswith(f"allowed keys here: {', '.join(keys_of(SECTIONS[section]))}")


def plain(number: object) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", list(SyncSettings.model_fields))
@pytest.mark.parametrize("side", ["below", "above"])
def test_every_sync_range_error_names_the_bounds_and_the_default(key: str, side: str) -> None:
    field = SyncSettings.model_fields[key]
    low = next(m.ge for m in field.metadata if isinstance(m, annotated_types.Ge))
    high = next(m.le for m in field.metadata if isinstance(m, annotated_types.Le))

    found = problems(EXAMPLE + f"sync:\n  {key}: {low - 1 if side == 'below' else high + 1}\n")

    line, message = found[f"sync.{key}"]
    assert line == 22
    assert "is out of range" in message
    assert f"from {plain(low)} to {plain(high)} (default {plain(field.default)})" in message
    assert message.startswith(f"{low - 1 if side == 'below' else high + 1} is out of range: ")


# --------------------------------------------------------------------------------------------
# Files and the environment
# --------------------------------------------------------------------------------------------


def test_config_path_from_env_prefers_the_variable() -> None:
    assert config_path_from_env({CONFIG_ENV_VAR: "/etc/pp.yaml"}) == Path("/etc/pp.yaml")
    assert config_path_from_env({}) == Path(DEFAULT_CONFIG_PATH)
    assert config_path_from_env({CONFIG_ENV_VAR: "  "}) == Path("pendo_planhat.yaml")


def test_load_config_reads_the_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))

    config = load_config()

    assert config.source == str(path)
    assert config == parse_config(EXAMPLE)


def test_load_config_error_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(edit("region: us ", "region: usa"), encoding="utf-8")

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert f"  {path}:2: pendo.region: 'usa'" in str(excinfo.value)


def test_load_config_says_how_to_point_at_a_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv(CONFIG_ENV_VAR, str(missing))

    with pytest.raises(ConfigError) as excinfo:
        load_config()

    message = str(excinfo.value)
    assert str(missing) in message
    assert f"{CONFIG_ENV_VAR} points to" in message
    assert f"export {CONFIG_ENV_VAR}=" in message


def test_load_config_default_path_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError, match=f"{CONFIG_ENV_VAR} is not set"):
        load_config()
    (tmp_path / DEFAULT_CONFIG_PATH).write_text(EXAMPLE, encoding="utf-8")
    assert load_config().source == DEFAULT_CONFIG_PATH


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(json.dumps(list(EXAMPLE_STAGES)), id="stage list"),
        pytest.param(
            json.dumps(
                {
                    "channelId": "",
                    "response": {"location": "request", "mimeType": "application/json"},
                    "request": {"name": "", "requestId": "", "pipeline": list(EXAMPLE_STAGES)},
                },
                indent=2,
            ),
            id="whole request body",
        ),
    ],
)
def test_load_config_reads_pipeline_file_relative_to_the_config(
    tmp_path: Path, content: str
) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "clicks.json").write_text(content, encoding="utf-8")
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(FILE_CONFIG.replace("{file}", "pipelines/clicks.json"), encoding="utf-8")

    spec = load_config(path).pipelines[0]

    assert spec.stages == EXAMPLE_STAGES


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(None, ["pipeline file not found", "clicks.json"], id="missing"),
        pytest.param("[{", ["is not valid JSON", "line 1, column 3"], id="invalid json"),
        pytest.param('[{"source": {"a": NaN}}]', ["NaN is not a JSON number"], id="nan"),
        pytest.param('[{"a": 1, "a": 2}]', ["duplicate key 'a'"], id="duplicate key"),
        pytest.param(
            '{"response": {}}',
            ["must hold a list of pipeline stages", '"request"'],
            id="wrong shape",
        ),
        pytest.param("[]", ["is empty"], id="empty"),
    ],
)
def test_parse_config_reports_a_bad_pipeline_file_by_name(
    tmp_path: Path, content: str | None, words: list[str]
) -> None:
    if content is not None:
        (tmp_path / "clicks.json").write_text(content, encoding="utf-8")

    found = problems(FILE_CONFIG.replace("{file}", "clicks.json"), base_dir=tmp_path)

    line, message = found["pipelines[0].pipeline_file"]
    assert line == 8
    assert str(tmp_path / "clicks.json") in message
    for word in words:
        assert word in message


def test_parse_config_reports_stage_problems_inside_a_pipeline_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(
        json.dumps([{"identified": "accountId"}, "oops"]), encoding="utf-8"
    )

    found = problems(FILE_CONFIG.replace("{file}", "p.json"), base_dir=tmp_path)

    assert found["pipelines[0].pipeline_file[0]"] == (
        8,
        f"in {tmp_path / 'p.json'}: a pipeline without a source stage; the first stage must be "
        "{source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}}",
    )
    assert "one key, the operator name" in found["pipelines[0].pipeline_file[1]"][1]


# DESIGN.md §5 Additions, *Identity*, verbatim (after the example's 20 lines).
IDENTITY = """\
matching:
  end_user_keys: [externalId, email]        # tried in this order; default [externalId]
  visitor_email_field: metadata.agent.email # Pendo `visitors` field holding the email
  create_end_users: false                   # true: create missing End Users (below)
"""


def test_the_identity_section_of_the_design_parses_and_defaults_keep_todays_matching() -> None:
    config = parse_config(EXAMPLE + IDENTITY)
    assert config.matching.end_user_keys == ("externalId", "email")
    assert config.matching.visitor_email_field == "metadata.agent.email"
    assert config.matching.create_end_users is False
    assert config.matching.needs_visitors
    default = parse_config(EXAMPLE).matching
    assert default.end_user_keys == ("externalId",) and not default.create_end_users
    assert not default.needs_visitors
    assert parse_config(EXAMPLE + "matching: {create_end_users: true}\n").matching.needs_visitors


def test_identity_keys_are_checked_with_a_line_and_a_hint() -> None:
    found = problems(
        EXAMPLE
        + "matching:\n  end_user_keys: [externalId, mail]\n  visitor_email_field: 'a b'\n"
        + "  create_end_users: yes please\n"
    )
    assert found["matching.end_user_keys[1]"] == (
        22,
        "'mail' is not an End User key; did you mean 'email'? expected one of: externalId, email",
    )
    assert found["matching.visitor_email_field"][0] == 23
    assert found["matching.create_end_users"][0] == 24
    twice = problems(EXAMPLE + "matching:\n  end_user_keys: [email, email]\n")
    assert "names a key twice" in twice["matching.end_user_keys"][1]
    assert (
        "expected a list"
        not in problems(EXAMPLE + "matching: {end_user_keys: []}\n")["matching.end_user_keys"][1]
    )
