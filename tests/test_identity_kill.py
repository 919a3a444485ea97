"""Kill safety while End Users are being created: ``pendo-planhat sync`` is SIGKILLed while
Planhat holds its ``PUT /endusers`` (which Planhat then applies), and run again. No End User is
created twice and no activity is counted twice; the data ends at the generator's ground truth.

The sandbox runs as its own process, so it outlives the kill and applies the request the dead
client sent, as Planhat would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pendo_assets.sandbox import Dataset, SandboxSpec

START, END = date(2026, 10, 30), date(2026, 10, 31)
KEYS = ["externalId", "email"]
HOLD_SECONDS = 3.0


class _Sandbox:
    def __init__(self, workdir: Path) -> None:
        port_file, self.config_path = workdir / "sandbox.json", workdir / "sandbox.yaml"
        argv = [
            *(sys.executable, "-m", "pendo_assets.sandbox", "--quiet", "--identity"),
            *("--port-file", str(port_file), "--config", str(self.config_path)),
            *("--seed", "11", "--rows-per-day", "1200", "--visitors", "400", "--accounts", "60"),
            *("--now", "2026-11-20T12:00:00+00:00", "--start-date", "2026-10-01"),
        ]
        self.log = (workdir / "sandbox.log").open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "no sandbox"
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written whole, but give the writer a moment
        info = json.loads(port_file.read_text())
        self.env: dict[str, str] = dict(info["env"])
        self.http = httpx.Client(base_url=info["planhat_analytics_url"] + "/_sandbox/", timeout=60)

    def get(self, name: str, **params: Any) -> Any:
        response = self.http.get(name, params=params)
        response.raise_for_status()
        return response.json()

    def post(self, name: str, body: dict[str, Any]) -> Any:
        response = self.http.post(name, json=body)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Any:
    box = _Sandbox(tmp_path)
    yield box
    box.close()


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("pendo-planhat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pendo_assets.cli"]


def test_killed_while_planhat_creates_end_users_creates_none_twice(
    sandbox: _Sandbox, tmp_path: Path
) -> None:
    config = yaml.safe_load(sandbox.config_path.read_text())
    config["matching"] = {"end_user_keys": KEYS, "create_end_users": True}
    config_path = tmp_path / "pendo_planhat.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        **sandbox.env,
        "PENDO_PLANHAT_CONFIG": str(config_path),
        "PENDO_PLANHAT_WAREHOUSE": str(tmp_path / "data" / "warehouse.duckdb"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    argv = [*_cli(), "sync", "--start", START.isoformat(), "--end", END.isoformat()]
    remote = sandbox.get("spec")
    data = Dataset(SandboxSpec(**remote["spec"]), now=datetime.fromisoformat(remote["now"]))
    names = {f["id"]: f["name"] for f in data.features()}
    actions = {f["id"]: f.get("action") or names[f["id"]] for f in config["features"]}
    days = [START + timedelta(days=i) for i in range((END - START).days + 1)]
    truth = data.truth_activities_by_key(
        days=days, features=actions, end_user_keys=KEYS, create_end_users=True
    )
    to_create = data.truth_created_end_users(end_user_keys=KEYS, days=days, features=actions)
    assert to_create

    # Planhat holds the request for a while, then applies it: the sync dies meanwhile.
    fault = {"service": "planhat_api", "kind": "delay", "path": "/endusers", "method": "PUT"}
    sandbox.post("faults", {**fault, "params": {"seconds": HOLD_SECONDS}})
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while sandbox.get("faults")["fired"] < 1:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "the sync never asked Planhat to create End Users"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.stdout is not None
    proc.stdout.close()
    time.sleep(HOLD_SECONDS + 1)  # Planhat applies what the dead client sent
    assert len(sandbox.get("created", model="EndUser")) == len(to_create)
    assert sandbox.get("activity_totals_by_key") == [] or all(
        truth.get((k, a, d), 0) >= n for k, a, d, n in sandbox.get("activity_totals_by_key")
    )

    again = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    created = [item["externalId"] for item in sandbox.get("created", model="EndUser")]
    assert sorted(created) == sorted(to_create)  # each exactly once
    totals = {(k, a, d): n for k, a, d, n in sandbox.get("activity_totals_by_key")}
    assert totals == truth

    def upserts() -> int:
        requests = sandbox.get("requests", service="planhat_api", path_prefix="/endusers")
        return sum(1 for r in requests if r["method"] == "PUT")

    analytics, puts = len(sandbox.get("requests", service="planhat_analytics")), upserts()
    last = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert len(sandbox.get("requests", service="planhat_analytics")) == analytics
    assert upserts() == puts
