"""The Dagster UI as a user sees it: ``pendo-planhat ui`` on a small demo, driven in headless
Chromium (Debian's ``chromium``, which ``.ci/run`` installs; Playwright only drives it, no browser
is downloaded), and the same facts read from the webserver's GraphQL API.

Screenshots are kept in ``data/test-artifacts/ui/`` (git-ignored) after every run.
Deselect with ``-m "not ui"``.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "data" / "test-artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DAYS = 3

ASSETS = {
    "pendo_feature_events",
    "pendo_page_events",  # the demo syncs pages ...
    "pendo_track_events",  # ... and track events too
    "pendo_pipeline_results",
    "planhat_snapshot",
    "pendo_visitors",  # the demo matches by email ...
    "planhat_end_users",  # ... and creates End Users
    "matched_activities",
    "matched_metrics",
    "planhat_publish",
}
CHECKS = {
    ("pendo_feature_events", "rows_have_visitor_ids"): "WARN",
    ("matched_activities", "match_rate_above_threshold"): "ERROR",
    ("planhat_publish", "no_batches_in_doubt"): "ERROR",
    ("planhat_publish", "no_activity_drift"): "WARN",
    ("planhat_publish", "metric_drift"): "ERROR",
}

pytestmark = [pytest.mark.slow, pytest.mark.ui, pytest.mark.timeout(300)]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    pytest.skip(
        "needs Debian's chromium package (apt-get install chromium)", allow_module_level=True
    )


@dataclass
class Ui:
    url: str
    demo_dir: Path

    def graphql(self, query: str) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/graphql", json={"query": query}, timeout=30)
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body
        return body["data"]  # type: ignore[no-any-return]

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.demo_dir / "warehouse.duckdb"), read_only=True) as conn:
            return conn.execute(statement).fetchall()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    """``pendo-planhat ui`` from nothing: it creates a 3-day demo, starts the sandbox and
    ``dagster dev``, and prints the URL; at the end an interrupt stops it all."""
    demo_dir = tmp_path_factory.mktemp("ui") / "demo"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PENDO_", "PLANHAT_", "DAGSTER_", "PYTEST_"))
    }
    cmd = [sys.executable, "-m", "pendo_assets.cli", "ui", "--dir", str(demo_dir)]
    cmd += ["--days", str(DAYS), "--rows-per-day", "500", "--port", "0"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    url = None
    try:
        while url is None:
            line = lines.get(timeout=240)
            assert line is not None, "pendo-planhat ui ended early:\n" + "".join(output[-40:])
            if found := re.match(r"Dagster UI: (http://\S+)", line):
                url = found.group(1)
        yield Ui(url=url, demo_dir=demo_dir)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            reader.join(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()
        assert code == 0, "".join(output[-40:])
        assert _dagster_processes(demo_dir) == [], "dagster dev outlived pendo-planhat ui"


def _dagster_processes(demo_dir: Path) -> list[str]:
    """Command lines of live processes that use the demo's DAGSTER_HOME."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        zombie = "\nState:\tZ" in status
        if f"DAGSTER_HOME={demo_dir}".encode() in environ and not zombie:
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def _numbers(entries: list[dict[str, Any]]) -> dict[str, float]:
    return {
        e["label"]: e.get("intValue", e.get("floatValue"))
        for e in entries
        if "intValue" in e or "floatValue" in e
    }


METADATA = """
{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset { assetMaterializations(limit: 100) {
    partition runId metadataEntries { label
      ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } } }
"""


def test_graphql_the_assets_their_descriptions_and_checks(ui: Ui) -> None:
    data = ui.graphql(
        "{ shouldShowNux assetNodes { assetKey { path } description isPartitioned "
        "assetChecksOrError { ... on AssetChecks { checks { name description } } } } "
        'schedulesOrError(repositorySelector: {repositoryName: "__repository__", '
        'repositoryLocationName: "pendo_assets.definitions"}) '
        "{ ... on Schedules { results { name cronSchedule } } } }"
    )
    assert data["shouldShowNux"] is False  # no newsletter modal on the first visit
    nodes = {n["assetKey"]["path"][-1]: n for n in data["assetNodes"]}
    assert set(nodes) == ASSETS
    read_whole = {a for a, n in nodes.items() if not n["isPartitioned"]}
    assert read_whole == {"planhat_snapshot", "pendo_visitors"}
    for name, node in nodes.items():
        assert "Grain: " in node["description"], name
        assert "If it fails" in node["description"], name
    checks = {
        (asset, check["name"]): check["description"]
        for asset, node in nodes.items()
        for check in node["assetChecksOrError"].get("checks", [])
    }
    assert set(checks) == set(CHECKS)
    for key, description in checks.items():
        assert f"{CHECKS[key]}:" in description and "If it fails" in description, key
    schedules = data["schedulesOrError"]["results"]
    assert [(s["name"], s["cronSchedule"]) for s in schedules] == [
        ("daily_sync_schedule", "0 3 * * *")
    ]


def test_graphql_each_partition_has_its_own_days_numbers(ui: Ui) -> None:
    # The backfill ran the 3 days as one run; each partition still carries that day's numbers.
    events = ui.graphql(METADATA % "matched_activities")["assetOrError"]["assetMaterializations"]
    backfill = events[-1]["runId"]  # the demo's first run (events come newest first)
    by_day = {
        e["partition"]: _numbers(e["metadataEntries"]) for e in events if e["runId"] == backfill
    }
    truth = ui.sql("SELECT day, SUM(count), COUNT(*) FROM matched_activities GROUP BY day")
    assert len(truth) == DAYS
    for day, events_matched, keys in truth:
        assert by_day[day.isoformat()]["matched_events"] == events_matched
        assert by_day[day.isoformat()]["matched_keys"] == keys
    unmatched = ui.sql(
        "SELECT day, reason, SUM(num_events) FROM unmatched_visitors GROUP BY ALL ORDER BY ALL"
    )
    for day, reason, n in unmatched:
        assert by_day[day.isoformat()][f"unmatched_events: {reason}"] == n

    landed = ui.graphql(METADATA % "pendo_feature_events")["assetOrError"]["assetMaterializations"]
    rows = {
        e["partition"]: _numbers(e["metadataEntries"]) for e in landed if e["runId"] == backfill
    }
    for day, n in ui.sql("SELECT day, rows FROM landed_days WHERE source = 'feature_events'"):
        assert rows[day.isoformat()]["rows_landed"] == n

    sent = ui.graphql(METADATA % "planhat_publish")["assetOrError"]["assetMaterializations"]
    sent_by_day = {
        e["partition"]: _numbers(e["metadataEntries"]) for e in sent if e["runId"] == backfill
    }
    for day, items in ui.sql("SELECT day, COUNT(*) FROM sent_activities GROUP BY day"):
        assert sent_by_day[day.isoformat()]["activity_items_sent"] == items
    # The re-run sent nothing: its partitions say so.
    rerun = {e["partition"]: _numbers(e["metadataEntries"]) for e in sent if e["runId"] != backfill}
    assert len(rerun) == DAYS and all(m["activity_items_sent"] == 0 for m in rerun.values())


def test_graphql_the_checks_passed_with_their_severities(ui: Ui) -> None:
    for (asset, check), severity in CHECKS.items():
        data = ui.graphql(
            f'{{ assetCheckExecutions(assetKey: {{path: ["{asset}"]}}, checkName: "{check}", '
            "limit: 1) { status evaluation { success severity } } }"
        )
        (execution,) = data["assetCheckExecutions"]
        assert execution["status"] == "SUCCEEDED", (check, execution)
        assert execution["evaluation"] == {"success": True, "severity": severity}


@pytest.fixture(scope="module")
def page(ui: Ui) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser.new_page(viewport={"width": 1920, "height": 1500})
        finally:
            browser.close()


def _shot(page: Any, name: str, *, full_page: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def test_browser_the_asset_graph_shows_every_asset(ui: Ui, page: Any) -> None:
    page.set_viewport_size({"width": 1920, "height": 1900})  # the unfolded graph is tall
    page.goto(f"{ui.url}/asset-groups")
    page.wait_for_selector("text=pendo_raw")
    assert page.locator('[role="dialog"]').count() == 0  # no newsletter modal
    expand = page.locator('[aria-label="unfold_more"]')  # each group is drawn folded
    page.wait_for_timeout(500)
    for _ in range(expand.count()):
        expand.first.click()
    # Drawn again unfolded (the UI keeps the groups open), the graph is fitted to the window.
    page.reload()
    page.wait_for_selector("text=pendo_raw")
    page.wait_for_timeout(800)
    _shot(page, "1-asset-graph")  # kept even when an asset below is missing
    for asset in ASSETS:
        page.wait_for_selector(f"text={asset}", timeout=15_000)
    body = page.inner_text("body")
    page.set_viewport_size({"width": 1920, "height": 1500})
    assert all(asset in body for asset in ASSETS)
    assert "3 / 3 Passed" in body  # planhat_publish's three checks


def test_browser_a_partitioned_asset_shows_its_days_metadata(ui: Ui, page: Any) -> None:
    (day, events_matched), *_ = ui.sql(
        "SELECT day, SUM(count) FROM matched_activities GROUP BY day ORDER BY day"
    )
    page.goto(f"{ui.url}/assets/matched_activities?view=partitions&partition={day}")
    page.wait_for_selector("text=unmatched_events: no_enduser")
    text = page.inner_text("body")
    assert f"{DAYS} Partitions Selected" in text or f"Materialized ({DAYS})" in text
    assert re.search(rf"matched_events\s+{events_matched}\b", text), text[-2000:]
    _shot(page, "2-partition-metadata", full_page=True)

    page.goto(f"{ui.url}/assets/matched_activities")
    page.wait_for_selector("text=Grain: one row per End User")
    page.get_by_text("Plots", exact=True).click()
    page.wait_for_selector("text=unmatched_events: no_enduser")
    page.wait_for_timeout(800)  # the charts draw
    _shot(page, "3-metadata-plots", full_page=True)
    assert page.locator("canvas").count() >= 5  # one chart per number over the partitions


def test_browser_a_check_shows_its_result(ui: Ui, page: Any) -> None:
    page.goto(f"{ui.url}/assets/matched_activities?view=checks")
    page.wait_for_selector("text=Evaluation result")
    text = page.inner_text("body")
    assert "match_rate_above_threshold" in text and "Passed" in text
    assert re.search(r"match rate \d+\.\d% for \d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d", text)
    assert "If it fails" in text
    _shot(page, "4-check-result", full_page=True)

    page.goto(f"{ui.url}/assets/planhat_publish?view=checks")
    page.wait_for_selector("text=no_batches_in_doubt")
    assert "no_activity_drift" in page.inner_text("body")
    _shot(page, "5-publish-checks", full_page=True)
