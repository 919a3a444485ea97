"""The sandbox's Pendo aggregation engine: time series, sources and operators."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from pendo_assets.sandbox import DEFAULT_APP_ID, SECOND_APP_ID, Dataset, PipelineError, SandboxSpec
from pendo_assets.sandbox.pipeline import (
    PipelineRunner,
    SourceSpec,
    evaluate_pipeline,
    parse_expression,
    resolve_time_series,
)

NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


class LiteralSource:
    """A RowSource over one literal frame (every source kind returns it)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.calls = 0

    @property
    def tz(self) -> ZoneInfo:
        return NY

    @property
    def default_app_id(self) -> int:
        return DEFAULT_APP_ID

    def source_frame(self, spec: SourceSpec) -> pl.DataFrame:
        self.calls += 1
        return self.frame

    def source_version(self, spec: SourceSpec) -> Hashable:
        return 0

    def estimate_rows(self, spec: SourceSpec) -> int:
        return self.frame.height


ROWS = pl.DataFrame(
    {
        "visitorId": ["a", 'q"uo\\te', "_PENDO_T_x1", "b", "a", "", "c"],
        "accountId": ["acct-1", "acct-1", None, "acct-2", "acct-2", "acct-3", ""],
        "featureId": ["f1", "f2", "f1", "f1", "f3", "f2", "f1"],
        "numEvents": [5, 1, 2, 3, 4, 1, 7],
        "numMinutes": [1, 0, 1, 1, 2, 0, 3],
    }
)
SOURCE = {
    "source": {
        "featureEvents": None,
        "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
    }
}


def run(*stages, frame: pl.DataFrame = ROWS) -> pl.DataFrame:
    return evaluate_pipeline(LiteralSource(frame), [SOURCE, *stages], now_ms=NOW_MS)


@pytest.mark.parametrize(
    ("expr", "visitors"),
    [
        ('visitorId == "a"', ["a", "a"]),
        ('visitorId == "q\\"uo\\\\te"', ['q"uo\\te']),
        ("visitorId == `b`", ["b"]),
        ('featureId == "f1" || featureId == "f3"', ["a", "_PENDO_T_x1", "b", "a", "c"]),
        ('(featureId == "f1" || featureId == "f2") && numEvents >= 3', ["a", "b", "c"]),
        ("numEvents > 2 && numMinutes <= 1", ["a", "b"]),
        ("numEvents != 1 && !(numEvents < 4)", ["a", "a", "c"]),
        ("accountId == null", ["_PENDO_T_x1"]),
        ('accountId != null && accountId != ""', ["a", 'q"uo\\te', "b", "a", ""]),
        ("numEvents * 2 - 1 == 9", ["a"]),
        (
            "now() > 1000 && missing.field == null",
            ["a", 'q"uo\\te', "_PENDO_T_x1", "b", "a", "", "c"],
        ),
        ("true", ["a", 'q"uo\\te', "_PENDO_T_x1", "b", "a", "", "c"]),
        ('visitorId > ""', ["a", 'q"uo\\te', "_PENDO_T_x1", "b", "a", "c"]),
    ],
)
def test_filter_expressions(expr, visitors):
    assert run({"filter": expr})["visitorId"].to_list() == visitors


@pytest.mark.parametrize(
    "expr",
    [
        'visitorId == "a',
        "visitorId = 1",
        "visitorId ==",
        "&& a",
        'x == "\\q"',
        "unknownFn(1)",
        "(a == 1",
        "a == 1 == 2",
        "`open",
        "a # b",
        "",
    ],
)
def test_unparseable_filters_raise_the_pendo_message(expr):
    with pytest.raises(PipelineError, match=r"^Cannot parse filter expression$"):
        run({"filter": expr})
    with pytest.raises(PipelineError):
        parse_expression(expr)


def test_identified_variants():
    assert run({"identified": "visitorId"})["visitorId"].to_list() == [
        "a",
        'q"uo\\te',
        "b",
        "a",
        "c",
    ]
    assert run({"identified": "!visitorId"})["visitorId"].to_list() == ["_PENDO_T_x1", ""]
    assert run({"identified": "accountId"})["accountId"].to_list() == [
        "acct-1",
        "acct-1",
        "acct-2",
        "acct-2",
        "acct-3",
    ]


def test_group_fields_as_object_or_list_with_every_aggregate():
    out = run(
        {"identified": "visitorId"},
        {
            "group": {
                "group": ["accountId"],
                "fields": [
                    {"events": {"sum": "numEvents"}},
                    {"rows": {"count": None}},
                    {"visitors": {"count": "visitorId"}},
                    {"most": {"max": "numEvents"}},
                    {"least": {"min": "numEvents"}},
                    {"firstFeature": {"first": "featureId"}},
                    {"lastFeature": {"last": "featureId"}},
                ],
            }
        },
        {"sort": ["accountId"]},
    )
    assert out.columns == [
        "accountId",
        "events",
        "rows",
        "visitors",
        "most",
        "least",
        "firstFeature",
        "lastFeature",
    ]
    assert out.row(1, named=True) == {
        "accountId": "acct-1", "events": 6, "rows": 2, "visitors": 2, "most": 5, "least": 1,
        "firstFeature": "f1", "lastFeature": "f2",
    }  # fmt: skip
    by_object = run(
        {"group": {"group": ["accountId"], "fields": {"e": {"sum": "numEvents"}}}}, {"sort": ["-e"]}
    )
    assert by_object["e"].to_list() == [7, 7, 6, 2, 1]


def test_sort_is_stable_and_descending_with_minus_and_skip_limit_page_it():
    full = run({"sort": ["featureId", "-numEvents"]})
    assert full["numEvents"].to_list() == [7, 5, 3, 2, 1, 1, 4]
    assert full.filter(pl.col("featureId") == "f2")["visitorId"].to_list() == [
        'q"uo\\te',
        "",
    ]  # stable
    pages = [
        run({"sort": ["featureId", "-numEvents"]}, {"skip": s}, {"limit": 3}) for s in (0, 3, 6, 9)
    ]
    assert [p.height for p in pages] == [3, 3, 1, 0]
    assert pl.concat(pages).equals(full)


def test_select_eval_count_reduce():
    visitors = pl.DataFrame(
        {
            "visitorId": ["v1", "v2"],
            "metadata": [
                {"auto": {"accountid": "acct-1", "ids": ["x", "y"]}},
                {"auto": {"accountid": None, "ids": []}},
            ],
        }
    )
    out = run(
        {
            "select": {
                "id": "visitorId",
                "account": "metadata.auto.accountid",
                "first": "metadata.auto.ids[0]",
                "none": "metadata.nope",
            }
        },
        frame=visitors,
    )
    assert out.to_dicts() == [
        {"id": "v1", "account": "acct-1", "first": "x", "none": None},
        {"id": "v2", "account": None, "first": None, "none": None},
    ]
    evald = run(
        {"eval": {"assetId": "accountId", "one": 1, "label": '"x"', "double": "numEvents * 2"}},
        {"limit": 1},
    )
    assert evald.select("assetId", "one", "label", "double").row(0) == ("acct-1", 1, "x", 10)
    assert run({"count": None}).to_dicts() == [{"count": 7}]
    assert run({"identified": "visitorId"}, {"count": None}).to_dicts() == [{"count": 5}]
    reduced = run(
        {"reduce": {"uniqueAccounts": {"count": "accountId"}, "events": {"sum": "numEvents"}}}
    )
    assert reduced.to_dicts() == [{"uniqueAccounts": 4, "events": 23}]


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"unwind": {"field": "x"}}, "Unknown pipeline operator: unwind"),
        ({"limit": -1}, "limit takes a non-negative integer"),
        ({"sort": []}, "sort takes"),
        (
            {"group": {"group": ["accountId"], "fields": {"x": {"median": "numEvents"}}}},
            "Unsupported aggregate",
        ),
        ({"filter": 'numEvents > "x"'}, "Cannot evaluate pipeline"),
        ({"filter": "a", "limit": 1}, "one operator"),
    ],
)
def test_bad_stages_are_pipeline_errors(stage, message):
    with pytest.raises(PipelineError, match=message):
        run(stage)


def test_pipeline_must_start_with_a_source():
    source = LiteralSource(ROWS)
    with pytest.raises(PipelineError, match="first pipeline stage must be a source"):
        evaluate_pipeline(source, [{"limit": 1}], now_ms=NOW_MS)
    with pytest.raises(PipelineError, match="Unsupported source: guideEvents"):
        evaluate_pipeline(
            source,
            [{"source": {"guideEvents": None, "timeSeries": SOURCE["source"]["timeSeries"]}}],
            now_ms=NOW_MS,
        )
    with pytest.raises(PipelineError, match="needs a timeSeries"):
        evaluate_pipeline(source, [{"source": {"featureEvents": None}}], now_ms=NOW_MS)


def _days(ts):
    periods, hourly = resolve_time_series(ts, tz=NY, now_ms=NOW_MS)
    return [p.day for p in periods], hourly, periods


def test_time_series_resolution():
    yesterday = date(2026, 11, 2)
    assert _days({"period": "dayRange", "first": "now()", "count": -1})[0] == [yesterday]
    first = int(datetime(2026, 10, 30, 9, tzinfo=NY).timestamp() * 1000)
    assert _days({"period": "dayRange", "first": first, "count": 3})[0] == [
        date(2026, 10, 30),
        date(2026, 10, 31),
        date(2026, 11, 1),
    ]
    assert _days({"period": "dayRange", "first": str(first), "count": 1})[0] == [date(2026, 10, 30)]
    assert _days({"period": "dayRange", "first": "now() - 2 * 24 * 60 * 60 * 1000", "count": -2})[
        0
    ] == [date(2026, 10, 30), date(2026, 10, 31)]
    assert _days({"period": "dayRange", "first": "date(2026, 10, 31)", "last": "now()"})[0] == [
        date(2026, 10, 31),
        date(2026, 11, 1),
        date(2026, 11, 2),
        date(2026, 11, 3),
    ]
    days, hourly, periods = _days(
        {
            "period": "hourRange",
            "first": int(datetime(2026, 11, 1, tzinfo=NY).timestamp() * 1000),
            "count": 25,
        }
    )
    assert hourly and set(days) == {date(2026, 11, 1)} and len({p.hour_ms for p in periods}) == 25
    days, _, periods = _days({"period": "hourRange", "first": "now()", "count": -2})
    assert [p.hour_ms for p in periods] == [NOW_MS - 2 * 3_600_000, NOW_MS - 3_600_000]
    for bad in (
        {"period": "weekRange", "first": 0, "count": 1},
        {"period": "dayRange", "count": 1},
        {"period": "dayRange", "first": "now(", "count": 1},
        {"period": "dayRange", "first": 0},
    ):
        with pytest.raises(PipelineError):
            resolve_time_series(bad, tz=NY, now_ms=NOW_MS)


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return Dataset(SandboxSpec(), now=NOW)


def _feature_source(params, period="dayRange"):
    return [
        {
            "source": {
                "featureEvents": params,
                "timeSeries": {"period": period, "first": "now()", "count": -1},
            }
        }
    ]


def test_app_id_parameters_select_apps(ds):
    everything = ds.feature_events(date(2026, 11, 2))
    default_only = evaluate_pipeline(ds, _feature_source(None), now_ms=NOW_MS)
    assert set(default_only["appId"]) == {DEFAULT_APP_ID}
    assert default_only.height == everything.filter(pl.col("appId") == DEFAULT_APP_ID).height
    for params in (
        {"appId": 'expandAppIds("*")'},
        {"appId": "expandAppIds(`*`)"},
        {"appId": [DEFAULT_APP_ID, str(SECOND_APP_ID)]},
    ):
        assert (
            evaluate_pipeline(ds, _feature_source(params), now_ms=NOW_MS).height
            == everything.height
        )
    second = evaluate_pipeline(ds, _feature_source({"appId": SECOND_APP_ID}), now_ms=NOW_MS)
    assert set(second["appId"]) == {SECOND_APP_ID}
    fid = ds.features(app_id=SECOND_APP_ID)[0]["id"]
    one = evaluate_pipeline(ds, _feature_source({"featureId": fid}), now_ms=NOW_MS)
    assert (
        set(one["featureId"]) == {fid}
        and one.height == everything.filter(pl.col("featureId") == fid).height
    )
    with pytest.raises(PipelineError, match="appId"):
        evaluate_pipeline(ds, _feature_source({"appId": "all"}), now_ms=NOW_MS)


def test_hour_range_and_other_sources(ds):
    hourly = evaluate_pipeline(
        ds, _feature_source({"appId": 'expandAppIds("*")'}, "hourRange"), now_ms=NOW_MS
    )
    assert set(hourly["hour"]) == {NOW_MS - 3_600_000}
    events = evaluate_pipeline(
        ds,
        [
            {
                "source": {
                    "events": {"eventClass": ["web"]},
                    "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
                }
            }
        ],
        now_ms=NOW_MS,
    )
    assert {"visitorId", "accountId", "numEvents", "day"} <= set(
        events.columns
    ) and "featureId" not in events.columns
    visitors = evaluate_pipeline(
        ds,
        [
            {"source": {"visitors": None}},
            {"identified": "visitorId"},
            {"select": {"visitorId": "visitorId", "accountid": "metadata.auto.accountid"}},
        ],
        now_ms=NOW_MS,
    )
    cats = ds.visitor_categories()
    assert visitors.height == sum(c != "anonymous" for c in cats.values())
    accounts = evaluate_pipeline(
        ds, [{"source": {"accounts": None}}, {"count": None}], now_ms=NOW_MS
    )
    assert accounts.to_dicts() == [{"count": len(ds.account_categories())}]


def test_runner_caches_everything_but_a_trailing_skip_limit():
    source = LiteralSource(ROWS)
    runner = PipelineRunner(source)
    base = [SOURCE, {"sort": ["visitorId"]}]
    pages = [
        runner.run([*base, {"skip": s}, {"limit": 2}], now_ms=NOW_MS).frame for s in (0, 2, 4, 6)
    ]
    assert source.calls == 1
    assert pl.concat(pages).equals(runner.run(base, now_ms=NOW_MS).frame)
    result = runner.run([*base, {"limit": 1}], now_ms=NOW_MS)
    assert result.start_ms == int(datetime(2026, 11, 2, tzinfo=NY).timestamp() * 1000)


def test_sorting_generated_rows_matches_a_string_sort_and_hides_rank_columns(ds):
    keys = ["accountId", "-visitorId", "featureId", "remoteIp", "userAgent", "server"]
    served = evaluate_pipeline(
        ds, [*_feature_source({"appId": 'expandAppIds("*")'}), {"sort": keys}], now_ms=NOW_MS
    )
    expected = ds.feature_events(date(2026, 11, 2)).sort(
        [k.lstrip("-") for k in keys],
        descending=[k.startswith("-") for k in keys],
        nulls_last=False,
        maintain_order=True,
    )
    assert served.equals(expected) and served["accountId"][0] is None
    assert not [c for c in served.columns if c.startswith("__")]
    # eval replaces a column: its old sort key must not be used any more
    flipped = evaluate_pipeline(
        ds,
        [
            *_feature_source(None),
            {"eval": {"visitorId": "featureId"}},
            {"sort": ["visitorId", "numEvents"]},
            {"limit": 50},
        ],
        now_ms=NOW_MS,
    )
    assert flipped["visitorId"].to_list() == sorted(flipped["visitorId"].to_list())


@pytest.mark.parametrize(
    "window",
    [
        [{"skip": 2}, {"limit": 3}],
        [{"limit": 5}, {"skip": 4}],
        [{"skip": 3}, {"limit": 10}, {"skip": 1}, {"limit": 1}],
        [{"skip": 50}],
        [{"limit": 0}],
        [],
    ],
)
def test_cached_row_selections_page_like_the_materialized_result(window):
    stages = [
        SOURCE,
        {"identified": "visitorId"},
        {"filter": "numEvents >= 1"},
        {"sort": ["-numEvents", "visitorId"]},
    ]
    expected = run(*stages[1:])
    for op in window:
        ((name, n),) = op.items()
        expected = expected.slice(n) if name == "skip" else expected.head(n)
    runner = PipelineRunner(LiteralSource(ROWS))
    runner.run(stages, now_ms=NOW_MS)  # warm the cache
    assert runner.run([*stages, *window], now_ms=NOW_MS).frame.equals(expected)


def test_partial_hour_ranges_match_the_full_hourly_day(ds):
    day = date(2026, 11, 2)
    full = ds.feature_events(day, hourly=True)
    hours = ds.hour_starts_ms(day)[9:12]
    served = evaluate_pipeline(
        ds,
        [
            {
                "source": {
                    "featureEvents": {"appId": 'expandAppIds("*")'},
                    "timeSeries": {"period": "hourRange", "first": hours[0], "count": 3},
                }
            },
            {"sort": ["hour", "visitorId", "accountId", "featureId", "remoteIp"]},
        ],
        now_ms=NOW_MS,
    )
    expected = full.filter(pl.col("hour").is_in(hours)).sort(
        ["hour", "visitorId", "accountId", "featureId", "remoteIp"],
        nulls_last=False,
        maintain_order=True,
    )
    assert served.height > 0 and served.equals(expected)
