"""The benchmark still runs: every section at tiny sizes (``bench/run.py --smoke``).

The figures themselves are measured by ``make bench``, never asserted here; this only guards the
scripts against drifting from the code they measure, and checks the invariants the benchmark
itself reports (both match engines agree, an unchanged publish sends nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The keys bench/results.json promises (README, Performance).
REQUIRED = {
    "ingest": {"rows", "rows_per_s", "parse_only_rows_per_s", "ratio", "peak_rss_mb"},
    "match": {"keys", "endusers", "polars_s", "duckdb_sql_s", "peak_rss_mb"},
    "publish": {"activities", "requests", "items_per_s", "rerun_items", "rerun_requests"},
    "backfill": {"days", "wall_s", "fetch_s", "land_s", "match_s", "publish_s", "overhead_s"},
    "snapshot": {
        "endusers",
        "companies",
        "wall_s",
        "requests",
        "requests_429",
        "peak_rss_mb",
        "match_event_rows",
        "match_wall_s",
        "match_peak_rss_mb",
    },
}


@pytest.mark.slow
def test_every_benchmark_section_runs_at_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PENDO_", "PLANHAT_"))}
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))

    for section, keys in REQUIRED.items():
        missing = keys - results[section].keys()
        assert not missing, f"{section} lacks {sorted(missing)}"
        assert all(isinstance(results[section][k], int | float) for k in keys), results[section]
    assert [p["rows"] for p in results["growth"]] == sorted(p["rows"] for p in results["growth"])
    assert len(results["growth"]) == 3 and all(p["wall_s"] > 0 for p in results["growth"])

    assert results["ingest"]["rows"] > 0 and results["ingest"]["ratio"] > 0
    assert (results["match"]["keys"], results["match"]["endusers"]) == (20_000, 4_000)
    assert results["match"]["same_output"] is True
    publish = results["publish"]
    assert (publish["activities"], publish["metrics"]) == (4_000, 800)
    assert publish["requests"] >= 2  # activities and metrics never share a request
    assert publish["items_received"] == 4_800  # counted by the sandbox, not by the publisher
    assert (publish["rerun_items"], publish["rerun_requests"]) == (0, 0)
    assert results["backfill"]["days"] == 3 and results["backfill"]["wall_s"] > 0
    snapshot = results["snapshot"]
    assert abs(snapshot["endusers"] - 4_000) <= 10 and abs(snapshot["companies"] - 200) <= 10
    assert snapshot["objects"] == sum(
        snapshot[k] for k in ("endusers", "companies", "assets", "projects")
    )
    for sample in snapshot["samples"]:  # every request is a page read or a 429 (then retried)
        assert sample["requests"] == sample["requests_ok"] + sample["requests_429"]
        assert sample["requests_ok"] == sum(sample["pages"].values())
    assert snapshot["match_event_rows"] == results["snapshot"]["land"]["rows"] > 0
    assert snapshot["match_endusers"] == snapshot["endusers"]
    assert "wrote" in done.stdout and "backfill" in done.stdout and "snapshot" in done.stdout
