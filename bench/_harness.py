"""Shared plumbing of the benchmark: the sandbox process, measured subprocesses, statistics.

Every measurement runs in its own Python process under ``/usr/bin/time -v``, so the peak RSS
reported is that measurement's alone; the sandbox serving data runs as a separate process
(started here) and is never counted. Without ``/usr/bin/time`` the child's own rusage
(``os.wait4``) gives the same figure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PYTHON = sys.executable
TIME = shutil.which("time", path="/usr/bin") or shutil.which("time")
#: The sandbox clock for ingest and publish: fixed, so the day served is the same everywhere.
FIXED_NOW = "2026-11-03T12:00:00+00:00"
INGEST_DAY = "2026-11-02"


class MeasurementError(RuntimeError):
    """A measured subprocess failed; the message holds the end of its output."""


# --------------------------------------------------------------------------------------------
# The sandbox as a process
# --------------------------------------------------------------------------------------------


@dataclass
class SandboxProcess:
    """``python -m pendo_assets.sandbox`` in its own process, stopped on exit."""

    workdir: Path
    rows_per_day: int = 5000
    now: str | None = FIXED_NOW
    config_path: Path | None = None
    start_date: str | None = None
    #: More ``python -m pendo_assets.sandbox`` arguments, e.g. ``["--rate-limit", "200/60"]``.
    extra_args: Sequence[str] = ()
    info: dict[str, Any] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SandboxProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port_file = self.workdir / f"sandbox-{os.getpid()}-{time.monotonic_ns()}.json"
        cmd = [
            PYTHON,
            "-m",
            "pendo_assets.sandbox",
            "--rows-per-day",
            str(self.rows_per_day),
            "--port-file",
            str(port_file),
            "--quiet",
        ]
        if self.now:
            cmd += ["--now", self.now]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if self.start_date:
            cmd += ["--start-date", self.start_date]
        cmd += list(self.extra_args)
        log = (self.workdir / "sandbox.log").open("ab")
        self._proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
        started = time.monotonic()
        deadline = started + 300
        while not port_file.exists():
            if self._proc.poll() is not None:
                raise MeasurementError(
                    f"the sandbox exited with {self._proc.returncode}; see {self.workdir}/sandbox.log"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise MeasurementError("the sandbox did not start within 300 s")
            time.sleep(0.05)
        self.info = json.loads(port_file.read_text(encoding="utf-8"))
        self.info["port_file"] = str(port_file)
        self.info["startup_s"] = round(time.monotonic() - started, 2)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def peak_rss_mb(self) -> float | None:
        """The sandbox process's peak resident set so far (Linux), or None."""
        if self._proc is None:
            return None
        try:
            status = Path(f"/proc/{self._proc.pid}/status").read_text(encoding="utf-8")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    @property
    def port_file(self) -> str:
        return str(self.info["port_file"])

    @property
    def env(self) -> dict[str, str]:
        return dict(self.info["env"])

    def control(self, name: str, **params: str) -> Any:
        """GET ``/_sandbox/<name>`` (what the sandbox received, its spec)."""
        url = f"{self.info['planhat_analytics_url']}/_sandbox/{name}"
        response = httpx.get(url, params=params, timeout=600)
        response.raise_for_status()
        return response.json()


# --------------------------------------------------------------------------------------------
# Measured subprocesses
# --------------------------------------------------------------------------------------------


def measure(script: str, args: Sequence[str], *, scratch: Path, label: str) -> dict[str, Any]:
    """Run ``bench/<script> <args> --result F`` in a fresh process and return its result.

    The result is the JSON the script wrote, plus ``peak_rss_mb`` (the process's maximum
    resident set) and ``process_wall_s``.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    stem = f"{label}-{time.monotonic_ns()}"
    result_file = scratch / f"{stem}.result.json"
    time_file = scratch / f"{stem}.time.txt"
    log_file = scratch / f"{stem}.log"
    cmd = [PYTHON, str(BENCH / script), *args, "--result", str(result_file)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    started = time.perf_counter()
    with log_file.open("wb") as log:
        if TIME:
            proc = subprocess.run(
                [TIME, "-v", "-o", str(time_file), *cmd], cwd=REPO, stdout=log, stderr=log, env=env
            )
            returncode = proc.returncode
            peak_kb = _peak_kb(time_file)
        else:  # pragma: no cover - machines without GNU time
            child = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, env=env)
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            returncode = child.returncode
            peak_kb = int(usage.ru_maxrss)
    wall = time.perf_counter() - started
    if returncode != 0 or not result_file.exists():
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise MeasurementError(f"{label} failed (exit {returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    result["peak_rss_mb"] = round(peak_kb / 1024, 1)
    result["process_wall_s"] = round(wall, 2)
    return result


def _peak_kb(time_file: Path) -> int:
    for line in time_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise MeasurementError(f"no peak RSS in {time_file}")


def write_result(path: str, payload: Mapping[str, Any]) -> None:
    """What a measurement script hands back to `measure`."""
    Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Statistics and output
# --------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = [float(v) for v in values]
    return statistics.median(data) if data else 0.0


def medians(samples: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, float]:
    """The median of each numeric key over the samples."""
    return {key: median(s[key] for s in samples if key in s) for key in keys}


def fmt(value: float, digits: int = 2) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:.{digits}f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.{digits}f}"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)
