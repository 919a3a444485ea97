"""The :class:`Sandbox`: three loopback servers around one :class:`Dataset`."""

from __future__ import annotations

import json
import shlex
import sys
import threading
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from pendo_assets.types import JSONDict

from ._time import as_date
from .faults import Faults
from .generator import Dataset, SandboxSpec
from .pipeline import PipelineRunner
from .recorder import Recorder
from .rows import PendoRows
from .server import (
    MAX_ANALYTICS_BODY,
    App,
    ControlApp,
    PendoApp,
    PlanhatAnalyticsApp,
    PlanhatApiApp,
    RateLimiter,
    make_server,
    require_loopback,
)

__all__ = [
    "DEFAULT_API_TOKEN",
    "DEFAULT_PENDO_KEY",
    "DEFAULT_TENANT_TOKEN",
    "Sandbox",
    "serve_forever",
]

DEFAULT_PENDO_KEY = "sandbox-pendo-key"
DEFAULT_API_TOKEN = "sandbox-planhat-api-token"
DEFAULT_TENANT_TOKEN = "5a4d1b9e-0000-4000-8000-5a4db0c5e7e1"


def _merge(base: JSONDict, overrides: Mapping[str, Any]) -> JSONDict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class Sandbox:
    """Local Pendo and Planhat stand-ins on 127.0.0.1, started on construction.

    Args:
        spec: what to generate (defaults to a small demo data set).
        pendo_key: the accepted ``x-pendo-integration-key``.
        api_token: the accepted Planhat Bearer token.
        tenant_token: the Planhat tenant token of the analytics URLs.
        now: a fixed clock for ``now()`` (None follows the wall clock).
        planhat_rate_limit: ``(requests, per_seconds)`` for the Planhat main API, or None.
        host: a loopback address.
        ports: ``(pendo, planhat_api, planhat_analytics)``; 0 picks a free port.
        max_analytics_body: largest analytics body in bytes before Planhat's 413 (32 MB like
            Planhat; tests lower it to see real 413s without building 32 MB bodies).

    Raises:
        ValueError: ``host`` is not a loopback address.

    Example::

        with Sandbox(now=datetime(2026, 11, 3, 12, tzinfo=UTC)) as sb:
            httpx.get(f"{sb.pendo_url}/api/v1/feature", headers={"x-pendo-integration-key": sb.pendo_key})
    """

    def __init__(
        self,
        spec: SandboxSpec | None = None,
        *,
        pendo_key: str = DEFAULT_PENDO_KEY,
        api_token: str = DEFAULT_API_TOKEN,
        tenant_token: str = DEFAULT_TENANT_TOKEN,
        now: datetime | date | None = None,
        planhat_rate_limit: tuple[int, float] | None = None,
        host: str = "127.0.0.1",
        ports: tuple[int, int, int] = (0, 0, 0),
        max_analytics_body: int = MAX_ANALYTICS_BODY,
    ) -> None:
        require_loopback(host)
        self.spec = spec or SandboxSpec()
        self.pendo_key = pendo_key
        self.api_token = api_token
        self.tenant_token = tenant_token
        self.host = host
        self.dataset = Dataset(self.spec, now=now)  # type: ignore[arg-type]
        self.received = Recorder()
        self.faults = Faults()
        #: Extra or altered Pendo rows for chosen days (see `pendo_assets.sandbox.rows`).
        self.pendo_rows = PendoRows(self.dataset.day_start_ms)
        self._runner = PipelineRunner(self.dataset, cache_rows=self.spec.cache_budget)
        self._api = PlanhatApiApp(dataset=self.dataset, token=api_token, recorder=self.received)
        self.planhat_rate_limit = planhat_rate_limit
        analytics = PlanhatAnalyticsApp(
            dataset=self.dataset,
            tenant=tenant_token,
            recorder=self.received,
            faults=self.faults,
        )
        analytics.max_body = max_analytics_body
        apps: tuple[App, App, App] = (
            PendoApp(
                dataset=self.dataset, runner=self._runner, key=pendo_key, rows=self.pendo_rows
            ),
            self._api,
            analytics,
        )
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        control = ControlApp(dataset=self.dataset, recorder=self.received, faults=self.faults)
        try:
            for app, port in zip(apps, ports, strict=True):
                self._servers.append(
                    make_server(
                        host,
                        port,
                        app=app,
                        recorder=self.received,
                        faults=self.faults,
                        clock=lambda: self.dataset.now,
                        control=control,
                    )
                )
        except BaseException:
            self.close()
            raise
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
                name=f"sandbox-{server.server_address[1]}",
            )
            thread.start()
            self._threads.append(thread)

    # ------------------------------------------------------------------ addresses

    def _url(self, index: int) -> str:
        port = self._servers[index].server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    @property
    def pendo_url(self) -> str:
        """Base URL of the Pendo stand-in (the product appends ``/api/v1/...``)."""
        return self._url(0)

    @property
    def planhat_api_url(self) -> str:
        """Base URL of the Planhat main API stand-in."""
        return self._url(1)

    @property
    def planhat_analytics_url(self) -> str:
        """Base URL of the Planhat analytics stand-in."""
        return self._url(2)

    @property
    def ports(self) -> tuple[int, int, int]:
        """The bound ports (pendo, planhat_api, planhat_analytics)."""
        a, b, c = (int(s.server_address[1]) for s in self._servers)
        return a, b, c

    def env(self) -> dict[str, str]:
        """Environment variables that point the product at this sandbox."""
        return {
            "PENDO_INTEGRATION_KEY": self.pendo_key,
            "PENDO_BASE_URL": self.pendo_url,
            "PLANHAT_API_TOKEN": self.api_token,
            "PLANHAT_TENANT_TOKEN": self.tenant_token,
            "PLANHAT_API_URL": self.planhat_api_url,
            "PLANHAT_ANALYTICS_URL": self.planhat_analytics_url,
        }

    def day_marker(self, day: date | str) -> str:
        """Text found in the body of every Pendo aggregation over ``day`` (and no other day).

        For ``faults.add(..., body_contains=sandbox.day_marker(day))``: the product sends the
        day window as ``"timeSeries":{"period":"dayRange","first":<local midnight ms>,...}``.
        """
        return f'"first":{self.dataset.day_start_ms(day)},'

    # ------------------------------------------------------------------ knobs

    @property
    def now(self) -> datetime:
        """The sandbox clock; assign a datetime, a date (local noon) or None (wall clock)."""
        return self.dataset.now

    @now.setter
    def now(self, value: datetime | date | None) -> None:
        self.dataset.now = value

    @property
    def planhat_rate_limit(self) -> tuple[int, float] | None:
        """``(requests, per_seconds)`` on the Planhat main API, or None for no limit."""
        limiter = self._api.rate_limit
        return None if limiter is None else (limiter.requests, limiter.per_seconds)

    @planhat_rate_limit.setter
    def planhat_rate_limit(self, value: tuple[int, float] | None) -> None:
        self._api.rate_limit = (
            None if value is None else RateLimiter(int(value[0]), float(value[1]))
        )

    def demo_config(self, *, start_date: date | str, **overrides: Any) -> JSONDict:
        """:meth:`Dataset.demo_config` with top-level keys replaced (mappings merged)."""
        return _merge(self.dataset.demo_config(start_date=start_date), overrides)

    def write_config(self, path: str | Path, *, start_date: date | str, **overrides: Any) -> Path:
        """Write the demo config as YAML (DESIGN.md section 5 format).

        Args:
            path: where to write it.
            start_date: the first partition.
            **overrides: top-level config keys to replace; mappings are merged (e.g.
                ``pendo={"app_ids": [-323232]}``).

        Returns:
            The path written.
        """
        config = self.demo_config(start_date=start_date, **overrides)
        pendo = dict(config["pendo"])
        if isinstance(pendo.get("start_date"), str):
            pendo["start_date"] = date.fromisoformat(pendo["start_date"])  # unquoted in YAML
        config["pendo"] = pendo
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8"
        )
        return target

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the servers and free their ports (idempotent)."""
        for server in self._servers:
            if any(t.is_alive() for t in self._threads):
                server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._servers.clear()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_forever(
    spec: SandboxSpec | None = None,
    *,
    ports: tuple[int, int, int] = (0, 0, 0),
    host: str = "127.0.0.1",
    print_env: bool = True,
    config_path: str | Path | None = None,
    start_date: date | str | None = None,
    port_file: str | Path | None = None,
    stream: IO[str] | None = None,
    stop: threading.Event | None = None,
    **sandbox_kwargs: Any,
) -> None:
    """Run a sandbox until Ctrl-C (or until ``stop`` is set), for ``pendo-planhat sandbox``.

    Args:
        spec: what to generate.
        ports: ``(pendo, planhat_api, planhat_analytics)``; 0 picks free ports.
        host: a loopback address.
        print_env: print ``export NAME=value`` lines for the product and ``dagster dev``.
        config_path: also write the demo config here (and export ``PENDO_PLANHAT_CONFIG``).
        start_date: the config's first partition; default 90 days before today.
        port_file: write ``{"pendo_url", "planhat_api_url", "planhat_analytics_url", "env"}`` as
            JSON here once listening (for benchmarks that start the sandbox as a process).
        stream: where to print (stdout by default).
        stop: an event that ends the loop when set.
        **sandbox_kwargs: passed to :class:`Sandbox` (``pendo_key``, ``now``, ...).
    """
    out = stream or sys.stdout
    with Sandbox(spec, host=host, ports=ports, **sandbox_kwargs) as sandbox:
        env = sandbox.env()
        if config_path is not None:
            first = (
                as_date(start_date)
                if start_date is not None
                else sandbox.dataset.today() - timedelta(days=90)
            )
            env["PENDO_PLANHAT_CONFIG"] = str(
                sandbox.write_config(config_path, start_date=first).resolve()
            )
        if port_file is not None:
            info = {
                "pendo_url": sandbox.pendo_url,
                "planhat_api_url": sandbox.planhat_api_url,
                "planhat_analytics_url": sandbox.planhat_analytics_url,
                "env": env,
            }
            tmp = Path(f"{port_file}.tmp")
            tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
            tmp.replace(port_file)  # atomic: readers never see a half-written file
        if print_env:
            print(
                "# Pendo and Planhat sandbox listening on 127.0.0.1; press Ctrl-C to stop.",
                file=out,
            )
            for name, value in env.items():
                print(f"export {name}={shlex.quote(value)}", file=out)
            out.flush()
        event = stop or threading.Event()
        try:
            while not event.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
