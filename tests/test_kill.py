"""Kill safety: ``pendo-planhat sync`` SIGKILLed at random moments, restarted, compared with truth.

The end-to-end rounds live in ``tests/kill_harness.py`` (runnable alone for long soaks; its
docstring describes them). The tests after it pin down, without processes, how a `last` metric
batch left in flight by a kill is recovered, and the sandbox control API the harness arms its
faults with.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from pendo_assets.delivery import Publisher
from pendo_assets.models import MATCHED_METRIC_SCHEMA
from pendo_assets.queries import replace_days
from tests.kill_harness import APPLIED_LATE, PINNED, Settings, run_harness

from .conftest import BACKENDS, KILL_REPORTS
from .postgres import PostgresCluster

# More rounds for a local soak: PENDO_PLANHAT_KILL_ROUNDS=100 make test PYTEST_ARGS=-k kill
ROUNDS = int(os.environ.get("PENDO_PLANHAT_KILL_ROUNDS", Settings.kills))
LAKE_ROUNDS = int(os.environ.get("PENDO_PLANHAT_KILL_ROUNDS", 8))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_killed_in_landing_and_publish_never_counts_twice_and_doubt_is_resolved(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # Raises with the details on any breach: a hang, a key above truth after a kill, a key off
    # truth outside the batches in doubt, a wrong exit code, check or `batches` answer.
    settings = Settings(kills=ROUNDS)
    if backend == "ducklake":
        # Fewer rounds (each sync takes about twice as long), the pinned ones included.
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        settings = Settings(kills=LAKE_ROUNDS, ducklake=cluster.create_database())
    rounds = settings.kills
    report = run_harness(settings, tmp_path)
    print(report.summary())

    assert len(report.kills) + len(report.missed) == rounds
    phases = report.phases()
    assert phases["landing"] >= rounds // 5, report.summary()
    assert phases["publish"] >= rounds // 5, report.summary()
    if len(PINNED) * 2 > rounds:
        return  # too few rounds for the pinned ones
    # Each pinned round that Planhat held killed the sync with its batch in flight ...
    in_flight = {k.scenario for k in report.kills if k.phase == "publish" and k.in_flight}
    assert set(APPLIED_LATE) <= in_flight, report.summary()
    # ... but a batch Planhat refused with a 429 is recorded as not sent while the client waits
    # out Retry-After, so that kill leaves it prepared (discarded at the next start), not in doubt.
    waiting = [k for k in report.kills if k.scenario == "retry_after_429"]
    assert waiting and all(not k.in_flight and k.statuses.get("prepared") for k in waiting), (
        report.summary()
    )

    # Batches in doubt were listed, failed the check, and settled by a user.
    assert report.final_exit_codes == [1, 0, 0]
    resolutions = Counter(b["resolution"] for b in report.in_doubt)
    assert resolutions["delivered"] >= 2, report.summary()
    assert {b["kind"] for b in report.in_doubt} == {"activities", "metrics"}
    # A `last` metric batch left in flight was resent at the next start, never held.
    assert report.last_batches_resent >= 1
    # The head of the report (kills, phases, batches in doubt and how each was settled) goes to
    # the end of the suite's output.
    KILL_REPORTS.append(report.summary(rounds=False))


# --------------------------------------------------------------------------------------------
# The recovery of a `last` metric batch whose request was sent when the process died.


class Killed(BaseException):
    """The process died (SIGKILL) right after Planhat applied the request: nothing is recorded."""


class Outcome:
    """Planhat's answer to ``POST /dimensiondata``: no per-item errors."""

    errors: tuple[dict[str, object], ...] = ()


class Planhat:
    """Keeps the values it received; ``die_after_apply`` simulates a kill once it applied them."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str, str, str], list[float]] = {}
        self.die_after_apply = False

    def post_activities(self, body: bytes, *, items: int, hooks: Any = None) -> None:
        raise AssertionError("no activities in these tests")

    def post_dimension_data(self, body: bytes, *, items: int, hooks: Any = None) -> object:
        for it in json.loads(body):
            key = (it["dimensionId"], it["model"], it["externalId"], it["date"])
            self.points.setdefault(key, []).append(it["value"])
        if self.die_after_apply:
            raise Killed
        return Outcome()

    def shows(self, key: tuple[str, str, str, str]) -> float:
        return self.points[key][-1]


DAY = date(2026, 11, 1)
KEY = ("pendo_active_visitors", "Company", "acme", DAY.isoformat())


def _metric(conn: duckdb.DuckDBPyConnection, value: float) -> None:
    frame = pl.DataFrame(
        [(DAY, "p", "Company", "acme", "pendo_active_visitors", value, "last")],
        schema=MATCHED_METRIC_SCHEMA,
        orient="row",
    )
    replace_days(conn, days=[DAY], frames={"matched_metrics": [frame]})


def _run(conn: duckdb.DuckDBPyConnection, planhat: Planhat) -> None:
    Publisher(conn=conn, sender=planhat, run_id="run").publish([DAY])


def test_a_last_batch_applied_by_planhat_as_the_run_died_is_corrected_when_pendo_reverts(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    planhat = Planhat()
    _metric(conn, 10)
    _run(conn, planhat)
    assert planhat.shows(KEY) == 10

    _metric(conn, 11)  # Pendo reprocessed the day ...
    planhat.die_after_apply = True
    with pytest.raises(Killed):  # ... and the run died after Planhat applied 11
        _run(conn, planhat)
    planhat.die_after_apply = False
    assert planhat.shows(KEY) == 11
    assert conn.execute("SELECT status FROM outbox_batches ORDER BY batch_id").fetchall() == [
        ("delivered",),
        ("sending",),
    ]

    _metric(conn, 10)  # Pendo went back to the value Planhat had before the kill
    _run(conn, planhat)
    assert planhat.shows(KEY) == 10  # the batch in flight was `last`: resent, never left stale
    assert conn.execute("SELECT COUNT(*) FROM batches_in_doubt").fetchone() == (0,)

    _run(conn, planhat)  # and once settled, nothing more is sent
    assert planhat.points[KEY] == [10, 11, 10]


def test_a_last_batch_that_never_reached_planhat_is_sent_at_the_next_start(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    class Unsent(Planhat):
        def post_dimension_data(self, body: bytes, *, items: int, hooks: Any = None) -> object:
            if self.die_after_apply:
                raise Killed  # killed while the request was being written: nothing applied
            return super().post_dimension_data(body, items=items)

    planhat = Unsent()
    _metric(conn, 10)
    planhat.die_after_apply = True
    with pytest.raises(Killed):
        _run(conn, planhat)
    planhat.die_after_apply = False
    assert KEY not in planhat.points

    _run(conn, planhat)
    assert planhat.points[KEY] == [10]
    _run(conn, planhat)
    assert planhat.points[KEY] == [10]


def test_the_sandbox_control_api_arms_faults_for_a_product_in_another_process() -> None:
    import httpx

    from pendo_assets.sandbox import Sandbox, SandboxSpec

    with Sandbox(SandboxSpec(n_visitors=50, n_accounts=10, rows_per_day=50)) as sandbox:
        control = httpx.Client(base_url=f"{sandbox.planhat_analytics_url}/_sandbox/")
        with control:
            arm = {"service": "planhat_analytics", "kind": "status", "path": "/analytics/bulk"}
            assert (
                control.post("faults", json={**arm, "params": {"status": 429}}).status_code == 200
            )
            assert control.get("faults").json()["active"][0]["kind"] == "status"
            bad = control.post("faults", json={**arm, "kind": "explode"})
            assert bad.status_code == 400 and "kind must be one of" in bad.text

            url = f"{sandbox.planhat_analytics_url}/analytics/bulk/{sandbox.tenant_token}"
            assert httpx.post(url, json=[{"externalId": "u", "action": "a"}]).status_code == 429
            assert control.get("faults").json() == {"fired": 1, "active": []}
            assert control.post("faults", json={**arm, "params": {"status": 500}}).is_success
            assert control.post("faults/clear").is_success
            assert control.get("faults").json() == {"fired": 0, "active": []}
            assert httpx.post(url, json=[{"externalId": "u", "action": "a"}]).status_code == 200
