"""``pendo-planhat ui`` without a browser: its port, when it creates the demo data, and a broken
config named before anything starts (the UI itself: ``test_ui.py``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pendo_assets.cli import main
from pendo_assets.errors import UsageError
from pendo_assets.ui import demo_ready, pick_port, prepare_dagster_home


def test_pick_port_takes_the_port_asked_for_and_refuses_a_busy_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is in use"):
            pick_port("127.0.0.1", port)
    assert pick_port("127.0.0.1", port) == port  # free again
    assert pick_port("127.0.0.1", 0) > 0
    assert pick_port("127.0.0.1", None) > 0  # 3000, or any free port when 3000 is taken


def _demo_files(demo: Path, config: str) -> None:
    (demo / "dagster_home" / "history").mkdir(parents=True)
    (demo / "dagster_home" / "history" / "runs.db").touch()
    (demo / "warehouse.duckdb").touch()
    (demo / "pendo_planhat.yaml").write_text(config, encoding="utf-8")


def test_demo_data_is_ready_only_with_its_config_warehouse_and_runs(tmp_path: Path) -> None:
    assert not demo_ready(tmp_path)
    _demo_files(tmp_path, "pendo: {}\n")
    assert demo_ready(tmp_path)
    (tmp_path / "dagster_home" / "history" / "runs.db").unlink()  # runs recorded elsewhere
    assert not demo_ready(tmp_path)


def test_the_ui_home_turns_off_the_newsletter_modal(tmp_path: Path) -> None:
    home = prepare_dagster_home(tmp_path / "home")
    assert home.is_absolute()
    assert "nux:\n  enabled: false" in (home / "dagster.yaml").read_text(encoding="utf-8")


def test_a_broken_config_stops_the_ui_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _demo_files(tmp_path, "pendo:\n  region: us\nbogus_key: 1\n")

    assert main(["ui", "--dir", str(tmp_path), "--port", "0"]) == 2

    err = capsys.readouterr().err
    assert "pendo_planhat.yaml:3: bogus_key: unknown key 'bogus_key'" in err
    assert not (tmp_path / "dagster_home" / "dagster-dev.log").exists()  # nothing started
