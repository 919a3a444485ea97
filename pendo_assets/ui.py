"""``pendo-planhat ui``: the Dagster UI on the demo's data, in one command.

Starts ``dagster dev`` (the webserver and the daemon) on the code location of this package, in
its own process group, waits until the UI answers with the code location loaded, and prints
its URL. Ctrl-C stops the whole group: an interrupt first, then SIGKILL after a grace period
(``dagster dev`` can wait on its children for a minute). It only starts the command and asks
the webserver's GraphQL endpoint when it is ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

import httpx

from .errors import UiError, UsageError
from .runner import DEFAULT_INSTANCE_YAML

__all__ = [
    "DEFAULT_PORT",
    "demo_ready",
    "pick_port",
    "prepare_dagster_home",
    "run_dagster_ui",
    "wait_until_ready",
]

DEFAULT_PORT = 3000
GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 180.0

_LOCATIONS_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename
      ... on PythonError { message errorChain { error { message } } } } } } } }
"""


def demo_ready(demo_dir: Path) -> bool:
    """True when ``demo_dir`` holds what ``pendo-planhat demo`` leaves: the config, the
    warehouse, and the Dagster runs that materialized it (in ``demo_dir/dagster_home``)."""
    return all(
        (demo_dir / name).exists()
        for name in ("pendo_planhat.yaml", "warehouse.duckdb", "dagster_home/history/runs.db")
    )


def prepare_dagster_home(home: Path) -> Path:
    """``home`` (absolute) with the instance settings of `pendo_assets.runner` (one run at a
    time; no telemetry; no newsletter modal on the first visit) in its ``dagster.yaml``."""
    home = home.absolute()
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DEFAULT_INSTANCE_YAML, encoding="utf-8")
    return home


def pick_port(host: str, port: int | None) -> int:
    """``port`` if given (it must be free), else `DEFAULT_PORT` when free, else any free port.

    Raises:
        UsageError: The port asked for is taken.
    """
    for candidate in (DEFAULT_PORT, 0) if port is None else (port,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise UsageError(f"port {port} on {host} is in use: pass another with --port (0: any free)")


def wait_until_ready(
    url: str,
    *,
    alive: Callable[[], bool],
    timeout: float = READY_TIMEOUT_SECONDS,
    log_path: Path | None = None,
) -> None:
    """Wait until the webserver at ``url`` answers GraphQL with every code location loaded.

    Raises:
        UiError: The process ended, the code location failed to load, or ``timeout`` passed.
    """
    log = str(log_path) if log_path else None
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not alive():
                raise UiError("dagster dev stopped before the UI came up", log_path=log)
            with suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                answer = client.post(f"{url}/graphql", json={"query": _LOCATIONS_QUERY})
                entries = answer.json()["data"]["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    for entry in entries:
                        loaded = entry["locationOrLoadError"] or {}
                        if loaded.get("__typename") == "PythonError":
                            chain = [loaded, *(c["error"] for c in loaded.get("errorChain", []))]
                            cause = chain[-1].get("message", "").strip()  # the root cause
                            raise UiError(
                                f"the code location {entry['name']} failed to load: {cause}",
                                log_path=log,
                            )
                    return
            time.sleep(0.5)
    raise UiError(f"the UI did not come up at {url} within {timeout:.0f} s", log_path=log)


def run_dagster_ui(
    env: Mapping[str, str],
    *,
    host: str,
    port: int,
    log_path: Path,
    on_ready: Callable[[str], None],
    stop: threading.Event | None = None,
) -> int:
    """Run ``dagster dev`` on this package's definitions until Ctrl-C (or ``stop``), then stop
    its whole process group. ``env`` is added to this process's environment.

    Returns:
        0 after a stop asked for; ``dagster dev``'s exit code (1 if that is 0) when it ended
        on its own.

    Raises:
        UiError: The UI did not come up (``on_ready`` is then never called).
    """
    url = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "pendo_assets.definitions"]
    cmd += ["-h", host, "-p", str(port), "--code-server-log-level", "warning"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole below
        )
    try:
        wait_until_ready(url, alive=lambda: proc.poll() is None, log_path=log_path)
        on_ready(url)
        while proc.poll() is None and not (stop is not None and stop.is_set()):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
        if proc.returncode is not None:
            return proc.returncode or 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to ``dagster dev``, which then stops its webserver and daemon; SIGKILL to what is
    left of its process group once it has ended, or after `GRACE_SECONDS` (its code servers
    would otherwise wait for a missed heartbeat)."""
    pgid = proc.pid  # start_new_session: the group's id is the leader's pid
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    with suppress(ProcessLookupError):
        os.kill(pgid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE_SECONDS)
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()
