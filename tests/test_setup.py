"""Self-service (DESIGN.md section 5): `discover`, `check`, then `sync`, against the sandbox.

Every broken setup must be named by `check` with the key or variable to change and the fix.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pendo_assets import partitions
from pendo_assets.cli import main
from tests.conftest import Env, MakeEnv

DAY = date(2026, 11, 3)
NOW = datetime(2026, 11, 4, 12, tzinfo=UTC)  # yesterday is DAY in the subscription's timezone


@pytest.fixture
def setup_env(make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setattr(partitions, "_now", lambda tz: NOW.astimezone(tz))
    env = make_env()
    env.sandbox.now = NOW
    return env


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_discover_then_check_then_sync_from_an_empty_config_directory(
    setup_env: Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "fresh"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PENDO_PLANHAT_CONFIG")
    code, out = _run(capsys, "discover", "--days", "7", "--timezone", "America/New_York")
    assert code == 0
    # Every Pendo feature is listed, most used first, with its events over the 7 days.
    dataset = setup_env.sandbox.dataset
    days = [date(2026, 10, 28 + n) if n < 4 else date(2026, 11, n - 3) for n in range(7)]
    assert days[-1] == DAY
    events: dict[str, int] = {}
    for day in days:
        frame = (
            dataset.feature_events(day)
            .group_by("featureId")
            .agg(n=__import__("polars").col("numEvents").sum())
        )
        for feature_id, n in frame.rows():
            events[feature_id] = events.get(feature_id, 0) + int(n)
    listed = [line.split() for line in out.splitlines() if line.startswith("feature ")]
    assert {row[1]: int(row[2].replace(",", "")) for row in listed} == {
        f["id"]: events.get(f["id"], 0) for f in dataset.features()
    }
    counts = [int(row[2].replace(",", "")) for row in listed]
    assert counts == sorted(counts, reverse=True)

    code, out = _run(
        capsys,
        "discover",
        "--days",
        "7",
        "--timezone",
        "America/New_York",
        "--write",
        "pendo_planhat.yaml",
    )
    assert code == 0 and "next: pendo-planhat check" in out
    written = yaml.safe_load((folder / "pendo_planhat.yaml").read_text(encoding="utf-8"))
    top = sorted(events, key=lambda f: -events[f])[:10]
    assert [f["id"] for f in written["features"]] == top

    code, out = _run(capsys, "check")
    assert code == 0, out
    assert "FAIL" not in out and "match rate of feature events" in out

    code, out = _run(capsys, "sync")
    assert code == 0, out
    assert "sync succeeded for 2026-10-25..2026-11-03" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _edit_pipeline(index: int, **changes: Any) -> Callable[[Env], dict[str, Any]]:
    def edit(env: Env) -> dict[str, Any]:
        pipelines = copy.deepcopy(env.pipelines())
        pipelines[index].update(changes)
        return {"pipelines": pipelines}

    return edit


# (id, environment changes, config changes, exit code, what the FAIL line names, words of the fix)
BROKEN: list[Any] = [
    pytest.param(
        {"PENDO_INTEGRATION_KEY": "not-the-key"},
        None,
        1,
        "Pendo integration key",
        ["PENDO_INTEGRATION_KEY", "Integration Keys"],
        id="wrong Pendo key",
    ),
    pytest.param(
        {"PENDO_BASE_URL": "http://127.0.0.1:{port}"},
        None,
        1,
        "Pendo integration key",
        ["pendo.region", "app.eu.pendo.io"],
        id="wrong region or host",
    ),
    pytest.param(
        {"PLANHAT_API_TOKEN": "not-the-token"},
        None,
        1,
        "Planhat API token",
        ["PLANHAT_API_TOKEN", "Private Apps"],
        id="wrong Planhat token",
    ),
    pytest.param(
        {"PLANHAT_API_URL": "http://127.0.0.1:{port}"},
        None,
        1,
        "Planhat API token",
        ["PLANHAT_API_URL"],
        id="wrong Planhat URL",
    ),
    pytest.param(
        {},
        lambda env: {"features": [{"id": "no-such-feature"}]},
        1,
        "features[0].id",
        ["pendo-planhat discover"],
        id="unknown feature id",
    ),
    pytest.param(
        {},
        _edit_pipeline(0, id_field="accountIdentifier"),
        1,
        "pipelines[0] (account_usage)",
        ["no field 'accountIdentifier'", "pipelines[0].id_field"],
        id="pipeline without the mapped id field",
    ),
    pytest.param(
        {},
        _edit_pipeline(1, metrics={"keyClickz": "pendo_key_feature_clicks"}),
        1,
        "pipelines[1] (account_key_feature_clicks)",
        ["no field 'keyClickz'", ".metrics"],
        id="pipeline without the mapped metric field",
    ),
    pytest.param(
        {},
        _edit_pipeline(2, pipeline=[{"source": {"featureEvents": None}}, {"explode": "x"}]),
        1,
        "pipelines[2] (asset_usage)",
        ["Data Explorer", "pipelines[2].pipeline"],
        id="pipeline Pendo refuses",
    ),
    pytest.param(
        {},
        lambda env: {"sync": {"min_match_rate": 0.99}},
        1,
        "match rate of feature events",
        ["visitorId", "externalId", "unmatched_visitors"],
        id="match rate below the threshold",
    ),
    pytest.param(
        {"PLANHAT_TENANT_TOKEN": None},
        None,
        2,
        "",
        ["PLANHAT_TENANT_TOKEN"],
        id="missing variable",
    ),
    pytest.param(
        {},
        lambda env: {"pendo": {"timezone": "Mars/Olympus"}},
        2,
        "",
        ["pendo.timezone", "pendo_planhat.yaml:"],
        id="bad timezone in the config",
    ),
]


@pytest.mark.parametrize(("environ", "config", "code", "what", "fix"), BROKEN)
def test_check_names_the_key_and_the_fix_of_each_broken_setup(
    setup_env: Env,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str | None],
    config: Callable[[Env], dict[str, Any]] | None,
    code: int,
    what: str,
    fix: list[str],
) -> None:
    port = _free_port()
    for name, value in environ.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value.format(port=port))
    if config is not None:
        overrides = config(setup_env)
        setup_env.sandbox.write_config(
            setup_env.config_path, start_date=date(2026, 10, 1), **overrides
        )
    exit_code, out = _run(capsys, "check")
    assert exit_code == code, out
    if code == 2:  # refused before any request: the message says what to set
        assert all(word in out for word in fix), out
        return
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert failures and failures[0].startswith(f"FAIL {what}:"), out
    first = out.splitlines().index(failures[0])
    assert out.splitlines()[first + 1].startswith("     fix: ")
    assert all(word in out.splitlines()[first + 1] + failures[0] for word in fix), out
    for secret in ("not-the-key", "not-the-token"):
        assert secret not in out
