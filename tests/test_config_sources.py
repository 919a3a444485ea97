"""Config of pages, track events and `as: metric` features (DESIGN.md section 5, *More Pendo
sources and per-feature choice*)."""

from __future__ import annotations

import pytest

from pendo_assets.config import FeatureMetric, FeatureSpec, ItemSpec, parse_config
from pendo_assets.errors import ConfigError

HEAD = "pendo: {timezone: UTC, start_date: 2026-09-01}\n"


def test_pages_track_events_and_metric_features_are_read() -> None:
    config = parse_config(
        HEAD
        + "features:\n"
        + "  - id: f1\n    action: Used export\n"
        + "  - id: f2\n    as: metric\n    metric: {dimension_id: export_uses, model: EndUser}\n"
        + "pages:\n  - id: p1\n    action: Viewed billing\n    weight: 2\n"
        + "track_events:\n  - id: t1\n"
    )

    assert config.features == (
        FeatureSpec(id="f1", action="Used export"),
        FeatureSpec.model_validate(
            {
                "id": "f2",
                "as": "metric",
                "metric": {"dimension_id": "export_uses", "model": "EndUser"},
            }
        ),
    )
    assert config.features[0].as_ == "activity" and not config.features[0].is_metric
    assert config.features[1].metric == FeatureMetric(dimension_id="export_uses", model="EndUser")
    assert config.pages == (ItemSpec(id="p1", action="Viewed billing", weight=2.0),)
    assert config.track_events == (ItemSpec(id="t1"),)


def test_pages_alone_are_something_to_sync() -> None:
    assert parse_config(HEAD + "pages: [{id: p1}]\n").pages == (ItemSpec(id="p1"),)


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        pytest.param(
            "features:\n  - id: f1\n    as: metric\n",
            4,
            "features[0].as: `as: metric` needs the metric to feed; add metric:",
            id="metric without metric",
        ),
        pytest.param(
            "features:\n  - id: f1\n    metric: {dimension_id: x, model: EndUser}\n",
            4,
            "features[0].metric: is read only with `as: metric`",
            id="metric without as",
        ),
        pytest.param(
            "features:\n  - id: f1\n    as: metrics\n",
            4,
            "features[0].as: 'metrics' is not a valid `as:` value; did you mean 'metric'? "
            "expected one of: activity, metric",
            id="as typo",
        ),
        pytest.param(
            "features:\n  - id: f1\n    as: metric\n    metric: {dimension_id: x, model: Asset}\n",
            5,
            "features[0].metric.model: 'Asset' is not a valid Planhat model of the count",
            id="metric model",
        ),
        pytest.param(
            "features:\n  - id: f1\n    as: metric\n    metric: {dimension_id: a b, model: Company}\n",
            5,
            "features[0].metric.dimension_id: must be a Planhat dimensionId",
            id="dimension id",
        ),
        pytest.param(
            "pages:\n  - id: p1\n  - id: p1\n",
            4,
            "pages[1].id: page id 'p1' is already used by pages[0] (line 3); each page id may "
            "appear once",
            id="page twice",
        ),
        pytest.param(
            "features: [{id: x1}]\ntrack_events:\n  - id: x1\n",
            4,
            "track_events[0].id: track type id 'x1' is already used by features[0] (line 2)",
            id="id in two sections",
        ),
        pytest.param(
            "features:\n  - {id: f1, as: metric, metric: {dimension_id: d, model: EndUser}}\n"
            "  - {id: f2, as: metric, metric: {dimension_id: d, model: Company}}\n",
            4,
            "features[1].metric.dimension_id: dimensionId 'd' is already fed by "
            "features[0] (line 3); each dimensionId may appear once",
            id="dimension fed twice",
        ),
        pytest.param(
            "pages:\n  - id: p1\n    as: metric\n",
            4,
            "pages[0].as: unknown key 'as'; allowed keys here: id, action, weight",
            id="pages are activities only",
        ),
    ],
)
def test_source_config_errors_name_the_key_and_line(body: str, line: int, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + body, source="c.yaml")

    assert f"c.yaml:{line}: {problem}" in str(caught.value)
