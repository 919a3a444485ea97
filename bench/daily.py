"""Daily benchmark: the scheduled run over a 10-day window, unchanged and with every day changed.

The schedule re-pulls the last days Pendo may still change as one Dagster run over the window,
i.e. `pendo_assets.runner.run_sync` over ``[end - days + 1, end]``. This section, run by
``run.py`` (`run_daily`), measures it against a sandbox process serving ``rows`` feature-event
rows a day (the demo config: features and pipelines), its clock fixed so ``end`` is yesterday:

1. ``prime``: a backfill of the window into a fresh warehouse (once);
2. ``unchanged``: the scheduled run when Pendo changed nothing (it must send 0 items);
3. ``changed``: the scheduled run after every day of the window was revised, ~1% of its rows
   grown (the sandbox's ``revise_day`` with ``share=0.01``; each repeat revises them again);
4. ``one_day``: today's scheduled run for comparison: yesterday alone, into a fresh warehouse.

Each run is a fresh process under ``/usr/bin/time -v`` (peak RSS per run); the prime, unchanged
and changed runs share one warehouse and ``DAGSTER_HOME``. Pendo requests and the items Planhat
received are counted by the sandbox; items sent are also read from the run's own summary.

As a script, one measured run: ``daily.py --port-file F --config C --workdir W --start D
--end D --result R`` (``W`` is reused when it exists).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from _harness import FIXED_NOW, INGEST_DAY, SandboxProcess, measure, median, write_result

#: The scheduled window: ``sync.lookback_days``'s default.
WINDOW_DAYS = 10
#: The share of each day's rows a revision changes in the ``changed`` run.
CHANGE_SHARE = 0.01
#: The 1 GiB peak RSS the unchanged window must stay within.
RSS_LIMIT_MB = 1024


# --------------------------------------------------------------------------------------------
# The section (run by run.py)
# --------------------------------------------------------------------------------------------


def run_daily(
    rows: int, *, days: int = WINDOW_DAYS, repeat: int, scratch: Path, log: Any = print
) -> dict[str, Any]:
    """Prime, then the unchanged and changed window ``repeat`` times each, then the 1-day run."""
    end = date.fromisoformat(INGEST_DAY)  # yesterday at the sandbox's fixed clock
    start = end - timedelta(days=days - 1)
    config = scratch / "daily.yaml"
    with SandboxProcess(
        scratch / "sandbox-daily",
        rows_per_day=rows,
        now=FIXED_NOW,
        config_path=config,
        start_date=start.isoformat(),
    ) as sandbox:
        workdir = scratch / "daily-window"
        shutil.rmtree(workdir, ignore_errors=True)
        window = [start + timedelta(days=k) for k in range(days)]

        def run(label: str, first: date, where: Path) -> dict[str, Any]:
            sample = _measured_run(sandbox, config, where, first, end, label, scratch)
            log(
                f"  {label}: {sample['days']} days, {sample['wall_s']:.1f} s, "
                f"{sample['pendo_requests']} Pendo requests ({sample['pendo_rows']:,} rows), "
                f"{sample['items_sent']:,} items sent ({sample['items_received']:,} received), "
                f"peak RSS {sample['peak_rss_mb']:.0f} MB (highest step: {_top_step(sample)})"
            )
            return sample

        prime = run("prime (backfill)", start, workdir)
        unchanged = [run(f"[{k + 1}/{repeat}] unchanged", start, workdir) for k in range(repeat)]
        changed = []
        for k in range(repeat):
            for day in window:
                _revise(sandbox, day)
            changed.append(run(f"[{k + 1}/{repeat}] changed {CHANGE_SHARE:.0%}", start, workdir))
        one_day = []
        for k in range(repeat):
            fresh = Path(tempfile.mkdtemp(prefix="daily-one-", dir=scratch))
            one_day.append(run(f"[{k + 1}/{repeat}] 1 day (today)", end, fresh))
            shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "rows_per_day": rows,
        "window_days": days,
        "repeat": repeat,
        "change_share": CHANGE_SHARE,
        "window": [start.isoformat(), end.isoformat()],
        "prime": _summarize([prime]),
        "unchanged": _summarize(unchanged),
        "changed": _summarize(changed),
        "one_day": _summarize(one_day),
    }


def _top_step(sample: dict[str, Any]) -> str:
    peaks: dict[str, float] = sample["step_peak_rss_mb"]
    step = max(peaks, key=peaks.__getitem__, default="none")
    return f"{step} {peaks.get(step, 0.0):.0f} MB"


def _revise(sandbox: SandboxProcess, day: date) -> None:
    response = httpx.post(
        f"{sandbox.info['planhat_analytics_url']}/_sandbox/revise_day",
        json={"day": day.isoformat(), "grow": True, "share": CHANGE_SHARE},
        timeout=60,
    )
    response.raise_for_status()


def _measured_run(
    sandbox: SandboxProcess,
    config: Path,
    workdir: Path,
    start: date,
    end: date,
    label: str,
    scratch: Path,
) -> dict[str, Any]:
    mark = max((r["seq"] for r in sandbox.control("requests")), default=-1)
    args = ["--port-file", sandbox.port_file, "--config", str(config), "--workdir", str(workdir)]
    args += ["--start", start.isoformat(), "--end", end.isoformat()]
    sample = measure("daily.py", args, scratch=scratch, label="daily")
    seen = [r for r in sandbox.control("requests") if r["seq"] > mark]
    pendo = [r for r in seen if r["service"] == "pendo"]
    planhat = [r for r in seen if r["service"] == "planhat_analytics" and r["method"] == "POST"]
    summary = sample["summary"]
    sample.update(
        label=label,
        pendo_requests=len(pendo),
        pendo_rows=sum(r["items"] for r in pendo),
        planhat_requests=len(planhat),
        items_received=sum(r["items"] for r in planhat if r["applied"]),
        items_sent=int(summary["activity_items_sent"]) + int(summary["metric_items_sent"]),
    )
    return sample


_KEYS = ("wall_s", "fetch_s", "land_s", "match_s", "publish_s", "peak_rss_mb")


def _summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"days": samples[0]["days"]}
    out.update({k: round(median(s[k] for s in samples), 2) for k in _KEYS})
    out["max_peak_rss_mb"] = max(s["peak_rss_mb"] for s in samples)
    # Where the worst run peaked: each step's highest RSS, sampled in the measured process.
    worst = max(samples, key=lambda s: s["peak_rss_mb"])
    out["step_peak_rss_mb"] = worst["step_peak_rss_mb"]
    for key in ("pendo_requests", "pendo_rows", "planhat_requests"):
        out[key] = round(median(s[key] for s in samples))
    # Items: the most any run sent, so one stray send is never hidden by a median.
    out["items_sent"] = max(s["items_sent"] for s in samples)
    out["items_received"] = max(s["items_received"] for s in samples)
    out["samples"] = samples
    return out


def daily_targets(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The section's rows of the targets table (the format of ``run.targets``)."""
    unchanged = d["unchanged"]
    sent = max(unchanged["items_sent"], unchanged["items_received"])
    rss = unchanged["max_peak_rss_mb"]
    return {
        "daily unchanged window: items sent": {"value": sent, "target": "0", "met": sent == 0},
        "daily unchanged window: peak RSS (MB)": {
            "value": rss,
            "target": f"<= {RSS_LIMIT_MB}",
            "met": rss <= RSS_LIMIT_MB,
        },
    }


def daily_rows(d: dict[str, Any]) -> list[list[str]]:
    """The section's rows of the figures table."""
    rows = [["daily", "window", f"{d['window_days']} days of ~{d['rows_per_day']:,} rows"]]
    for key, name in (
        ("prime", "prime (backfill, once)"),
        ("unchanged", "window, nothing changed"),
        ("changed", f"window, every day {d['change_share']:.0%} changed"),
        ("one_day", "1 day (today's schedule)"),
    ):
        r = d[key]
        rows.append(
            [
                "daily",
                name,
                f"{r['wall_s']:.1f} s (fetch {r['fetch_s']:.1f}, land {r['land_s']:.1f}, match "
                f"{r['match_s']:.1f}, publish {r['publish_s']:.1f}), {r['pendo_requests']} Pendo "
                f"requests, {r['items_sent']:,} items sent, peak RSS {r['peak_rss_mb']:.0f} MB "
                f"(highest step: {_top_step(r)})",
            ]
        )
    return rows


def daily_note(d: dict[str, Any]) -> str:
    """The closing note: the window's wall time beside today's 1-day run."""
    one = d["one_day"]["wall_s"]
    return (
        f"daily: the scheduled {d['window_days']}-day window takes {d['unchanged']['wall_s']:.1f} s "
        f"when nothing changed ({d['unchanged']['items_sent']} items sent) and "
        f"{d['changed']['wall_s']:.1f} s with every day {d['change_share']:.0%} changed, against "
        f"{one:.1f} s for today's 1-day run (x{d['unchanged']['wall_s'] / one:.1f} and "
        f"x{d['changed']['wall_s'] / one:.1f})"
    )


# --------------------------------------------------------------------------------------------
# One measured run (this file as a script)
# --------------------------------------------------------------------------------------------


class RssSampler:
    """This process's resident set every 50 ms, in a thread, to tell which step peaks."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        while not self._stop.is_set():
            with open("/proc/self/statm", encoding="ascii") as statm:
                self.samples.append((time.time(), int(statm.read().split()[1]) * page_mb))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, spans: dict[str, tuple[float, float]]) -> dict[str, float]:
        """The highest sample within each step's span (first sample at or after its start)."""
        out = {}
        for step, (first, last) in sorted(spans.items(), key=lambda kv: kv[1]):
            inside = [mb for t, mb in self.samples if first <= t <= last]
            out[step] = round(max(inside, default=0.0), 1)
        return out


def step_spans(run_id: str) -> dict[str, tuple[float, float]]:
    """Per step: wall-clock start and end (seconds since the epoch), from the run's event log."""
    import dagster as dg

    spans: dict[str, tuple[float, float]] = {}
    for entry in dg.DagsterInstance.get().all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            spans[entry.step_key] = (entry.timestamp, entry.timestamp)
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            spans[entry.step_key] = (spans[entry.step_key][0], entry.timestamp)
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--start", required=True, type=date.fromisoformat)
    parser.add_argument("--end", required=True, type=date.fromisoformat)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    import json

    from backfill import TIMERS, _instrument, step_compute_seconds

    env = json.loads(Path(args.port_file).read_text(encoding="utf-8"))["env"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    os.environ["PENDO_PLANHAT_CONFIG"] = args.config
    os.environ["PENDO_PLANHAT_WAREHOUSE"] = str(args.workdir / "warehouse.duckdb")
    os.environ["DAGSTER_HOME"] = str((args.workdir / "dagster_home").resolve())

    _instrument()
    from pendo_assets.config import load_config
    from pendo_assets.runner import run_sync

    config = load_config(args.config)
    rss = RssSampler()
    started = time.perf_counter()
    outcome = run_sync(config=config, start=args.start, end=args.end)
    wall = time.perf_counter() - started
    rss.stop()
    if not outcome.success:
        raise SystemExit(f"the run failed: {outcome.failure}")
    assert outcome.run_id is not None
    steps = step_compute_seconds(outcome.run_id)
    write_result(
        args.result,
        {
            "days": len(outcome.days),
            "wall_s": round(wall, 2),
            "fetch_s": round(TIMERS["fetch"], 2),
            "land_s": round(TIMERS["land"], 2),
            "match_s": round(
                steps.get("matched_activities", 0.0) + steps.get("matched_metrics", 0.0), 2
            ),
            "publish_s": round(steps.get("planhat_publish", 0.0), 2),
            "steps": {k: round(v, 2) for k, v in sorted(steps.items())},
            "step_peak_rss_mb": rss.peaks(step_spans(outcome.run_id)),
            "summary": outcome.summary,
        },
    )


if __name__ == "__main__":
    main()
