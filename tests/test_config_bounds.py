"""Hostile config input is refused at once, naming the file and line (issue 13).

Alias bombs, huge files and deep nesting, in the YAML config and in a ``pipeline_file``. Each
test runs under a timeout, so a hang fails it; no timings are asserted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pendo_assets.config import load_config, parse_config
from pendo_assets.errors import ConfigError
from pendo_assets.sandbox import Sandbox, SandboxSpec

pytestmark = pytest.mark.timeout(10)

HEAD = """\
pendo: {timezone: UTC, start_date: 2026-01-01}
pipelines:
  - name: clicks
    model: Company
    id_field: accountId
    metrics: {totalEvents: pendo_clicks}
    pipeline:
      - source: {featureEvents: null}
"""  # 8 lines; a stage added below is line 9
LOL = ", ".join(["lol"] * 9)
LEVELS = [f"a0: &a0 [{LOL}]"] + [
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)
]  # level i expands to over 9**(i + 1) values: a8 to over 387 million
MANY = "the config passes 10,000 keys and values here, the most it may hold"
DEEP = "nests more than 64 levels deep, the most a config may"


def refused(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of loading ``text`` from a file: each ``file:line: path: message``."""
    path = tmp_path / "pendo_planhat.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    head, *lines = str(excinfo.value).splitlines()
    assert head.startswith(f"{path}: ")
    return [line.strip() for line in lines]


def test_nine_level_alias_bomb_in_a_pipeline_filter_is_refused(tmp_path: Path) -> None:
    # The levels in one stage, the last (387 million values) as the next stage's filter.
    text = HEAD + f"      - {{{', '.join(LEVELS)}}}\n      - filter: *a8\n"

    (problem,) = refused(tmp_path, text)

    # Counted as written, level a4 (9**5 values) is the first past the bound.
    assert problem.startswith(f"{tmp_path / 'pendo_planhat.yaml'}:9: pipelines[0].pipeline[1].a4")
    assert MANY in problem and "a YAML alias `*name` counts as a copy" in problem


def test_nine_level_alias_bomb_at_top_level_is_refused(tmp_path: Path) -> None:
    text = "\n".join(LEVELS) + "\n" + HEAD + "      - filter: *a8\n"

    (problem,) = refused(tmp_path, text)

    assert re.match(rf"{re.escape(str(tmp_path))}/pendo_planhat.yaml:5: a4\[\d+\]: {MANY}", problem)


def test_alias_bomb_given_as_text_is_refused_too() -> None:
    text = "\n".join(LEVELS) + "\n" + HEAD + "      - filter: *a8\n"

    with pytest.raises(ConfigError, match=r"cfg\.yaml:5: a4\[\d+\]: the config passes 10,000"):
        parse_config(text, source="cfg.yaml")


def test_a_50_mb_config_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "pendo_planhat.yaml"
    data = HEAD.encode() + b"# a long comment\n" * 3_000_000
    path.write_bytes(data)
    assert len(data) > 50_000_000
    crossing = data[: 256 * 1024].count(b"\n") + 1  # the line that goes past 256 KB

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    limit = "the file is larger than 256 KB, the most a config or pipeline file may be"
    assert f"{path}:{crossing}: (top level): {limit}" in str(excinfo.value)
    with pytest.raises(ConfigError, match=rf"cfg\.yaml:{crossing}: \(top level\): {limit}"):
        parse_config(data.decode(), source="cfg.yaml")


@pytest.mark.parametrize(
    ("nested", "line", "where"),
    [
        pytest.param("[" * 1000 + "]" * 1000, 9, r"filter(\[0\]){59}", id="flow"),
        pytest.param(  # 300 deep: 1,000 would be over 256 KB of indentation
            "\n" + "".join(" " * (9 + i) + "a:\n" for i in range(300)) + " " * 309 + "1",
            68,
            r"filter(\.a){58}",
            id="block",
        ),
        pytest.param("\n        " + "- " * 1000 + "1", 10, r"filter(\[0\]){59}", id="dashes"),
    ],
)
def test_nesting_1000_deep_is_refused_at_the_first_too_deep_line(
    tmp_path: Path, nested: str, line: int, where: str
) -> None:
    (problem,) = refused(tmp_path, HEAD + f"      - filter: {nested}\n")

    at = rf"pendo_planhat\.yaml:{line}: pipelines\[0\]\.pipeline\[1\]\.{where}: {DEEP}"
    assert re.search(at, problem), problem


def test_aliases_nesting_what_is_nested_are_refused_at_the_alias(tmp_path: Path) -> None:
    # Each level legal as written (40 deep); with the alias in it, 80.
    deep = "[" * 40 + "]" * 40
    text = HEAD + f"      - filter: [&d {deep}, {'[' * 40}*d{']' * 40}]\n"

    (problem,) = refused(tmp_path, text)

    assert ":9: pipelines[0].pipeline[1].filter[1]" in problem and DEEP in problem


def test_an_oversized_inline_pipeline_is_refused_at_the_value_past_the_bound(
    tmp_path: Path,
) -> None:
    ten = "          - [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"  # 10 values a line, from line 10
    text = HEAD + "      - filter:\n" + ten * 1_200

    (problem,) = refused(tmp_path, text)

    place = r"pipelines\[0\]\.pipeline\[1\]\.filter\[(\d+)\](\[\d\])?"
    found = re.search(rf"pendo_planhat\.yaml:(\d+): {place}: {MANY}$", problem)
    assert found and int(found[1]) == 10 + int(found[2]), problem  # the value's own line
    assert MANY in problem


PIPELINE_FILE = """\
pendo: {timezone: UTC, start_date: 2026-01-01}
pipelines:
  - name: clicks
    model: Company
    id_field: accountId
    metrics: {totalEvents: pendo_clicks}
    pipeline_file: stages.json
"""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            [{"source": {"featureEvents": None}}, {"filter": list(range(12_000))}],
            "the pipeline holds more than 10,000 keys and values, the most a pipeline may",
            id="oversized",
        ),
        pytest.param(
            [{"source": {"featureEvents": None}}, {"filter": json.loads("[" * 100 + "]" * 100)}],
            f"the pipeline {DEEP}",
            id="100 deep",
        ),
        pytest.param("[" * 100_000 + "]" * 100_000, f"the pipeline {DEEP}", id="100,000 deep"),
        pytest.param(
            "[" + "0,\n" * 200_000 + "0]",
            "line 87382: the file is larger than 256 KB",  # 3 bytes a line
            id="over 256 KB",
        ),
    ],
)
def test_a_pipeline_file_goes_through_the_same_bounds(
    tmp_path: Path, content: object, message: str
) -> None:
    stages = tmp_path / "stages.json"
    stages.write_text(content if isinstance(content, str) else json.dumps(content))

    (problem,) = refused(tmp_path, PIPELINE_FILE)

    assert problem.startswith(
        f"{tmp_path / 'pendo_planhat.yaml'}:7: pipelines[0].pipeline_file: in {stages}"
    )
    assert message in problem


def test_readme_config_and_anchors_still_load(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "pendo_planhat.yaml").write_text(block, encoding="utf-8")

    config = load_config(tmp_path / "pendo_planhat.yaml")

    assert [p.name for p in config.pipelines] == ["account_clicks"]
    anchored = HEAD + '      - &f {filter: "accountId != null"}\n      - *f\n'
    assert parse_config(anchored).pipelines[0].stages[1:] == ({"filter": "accountId != null"},) * 2


@pytest.mark.parametrize(
    "spec",
    [SandboxSpec(), SandboxSpec(seed=11, n_visitors=400, n_accounts=60, rows_per_day=1200)],
    ids=["demo", "tests"],
)
def test_sandbox_configs_still_load(tmp_path: Path, spec: SandboxSpec) -> None:
    with Sandbox(spec) as sandbox:
        path = sandbox.write_config(tmp_path / "pendo_planhat.yaml", start_date="2026-10-01")

    assert load_config(path).pipelines


def test_a_large_honest_config_still_loads() -> None:
    features = "".join(
        f"  - id: 4qxwyooqP_s_hHt8meR{i:05d}\n    action: Used export {i}\n    weight: 1\n"
        for i in range(1_000)
    )

    config = parse_config("pendo: {timezone: UTC, start_date: 2026-01-01}\nfeatures:\n" + features)

    assert len(config.features) == 1_000
