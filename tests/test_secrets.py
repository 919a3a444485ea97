"""Secrets never leave the environment; TLS stays on; SQL never carries data; loopback only.

The leak test runs ``pendo-planhat sync`` as a user would, in a subprocess, with recognisable
token values, through success and through every error path that prints URLs, statuses or
bodies (retried 5xx and resets; a 503 from Planhat's analytics host, whose URL path holds the
tenant token, that outlasts the retries; a reset leaving a batch in doubt; a 401 and a 403 from
wrong tokens).
Then it looks for the tokens, as given and encoded, everywhere the product writes: stdout,
stderr, every file under DAGSTER_HOME (run and event storage, logs), every file under the data
folder (the warehouse, its exports, staging), and every text column of the warehouse.
"""

from __future__ import annotations

import ast
import base64
import ipaddress
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import dagster as dg
import duckdb
import httpx
import pytest

from pendo_assets.build import build_definitions
from pendo_assets.clients import PendoClient, PlanhatClient
from pendo_assets.sandbox import Sandbox, SandboxSpec, valid_odd_feature_rows
from pendo_assets.sandbox.server import make_server
from pendo_assets.warehouse import Warehouse

from .conftest import FAST_RETRIES, Env, MakeEnv

SPEC = SandboxSpec(seed=11, n_visitors=300, n_accounts=40, rows_per_day=300)
DAYS = [date(2026, 11, 2), date(2026, 11, 3)]
CLI = Path(sys.executable).parent / "pendo-planhat"
PACKAGE = Path(__file__).resolve().parents[1] / "pendo_assets"

# Recognisable, and with characters that URL encoding changes ('/', '+', '=').
PENDO_KEY = "pk/Pendo+SECRET=key-7f3a9c21"
API_TOKEN = "at/Planhat+SECRET=api-4b1d2e83"
TENANT_TOKEN = "tt/Planhat+SECRET=tenant-9e8f7a64"
WRONG_API_TOKEN = "at/Wrong+SECRET=api-00000001"
WRONG_PENDO_KEY = "pk/Wrong+SECRET=key-00000002"
SECRETS = (PENDO_KEY, API_TOKEN, TENANT_TOKEN, WRONG_API_TOKEN, WRONG_PENDO_KEY)


def forms(secret: str) -> set[str]:
    """The ways a secret could be written: as is, URL-encoded, JSON-escaped, base64 (Basic auth),
    and its distinctive middle on its own."""
    core = secret.split("/", 1)[1].rsplit("-", 1)[0]  # e.g. "Pendo+SECRET=key"
    out = set()
    for text in (secret, core):
        out |= {text, quote(text, safe=""), quote(text), quote_plus(text), json.dumps(text)[1:-1]}
    for raw in (secret, f"{secret}:"):
        out |= {
            base64.b64encode(raw.encode()).decode(),
            base64.urlsafe_b64encode(raw.encode()).decode(),
        }
    return out


NEEDLES = sorted(set().union(*(forms(s) for s in SECRETS)), key=len)


def hits(data: bytes) -> list[str]:
    return [n for n in NEEDLES if n.encode() in data]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "sync", "--start", str(DAYS[0]), "--end", str(DAYS[-1]), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_no_secret_reaches_output_logs_run_storage_the_warehouse_or_exports(
    make_env: MakeEnv,
) -> None:
    env = make_env(
        spec=SPEC,
        sync=FAST_RETRIES,
        pendo_key=PENDO_KEY,
        api_token=API_TOKEN,
        tenant_token=TENANT_TOKEN,
    )
    faults, dataset = env.sandbox.faults, env.sandbox.dataset
    base = os.environ.copy()
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    # 1. Success, through retried failures: a 503 from Pendo, a 500 and a reset from Planhat.
    faults.add(
        service="pendo",
        path="/api/v1/aggregation",
        kind="status",
        status=503,
        times=2,
        body="<html><title>503 Service Unavailable</title></html>",
    )
    faults.add(service="planhat_analytics", path="/analytics/bulk", kind="status", status=500)
    faults.add(service="planhat_analytics", path="/dimensiondata", kind="reset")
    runs.append(("success", cli(base)))
    assert runs[-1][1].returncode == 0, runs[-1][1].stdout + runs[-1][1].stderr

    # 2. Planhat's analytics host fails: a reset leaves activities in doubt, metrics answer 503
    #    until the retries run out. Both messages name the URL whose path holds the tenant token.
    for day in DAYS:
        dataset.revise_day(day, grow=True)
    faults.clear()
    faults.add(service="planhat_analytics", path="/analytics/bulk", kind="reset")
    faults.add(
        service="planhat_analytics",
        path="/dimensiondata",
        kind="status",
        status=503,
        times=None,
        body=f"echo: {TENANT_TOKEN}",
    )  # even a body echoing it
    runs.append(("analytics errors", cli(base)))

    # 3. Wrong tokens: Planhat answers 401, Pendo 403.
    faults.clear()
    wrong = {"PLANHAT_API_TOKEN": WRONG_API_TOKEN, "PENDO_INTEGRATION_KEY": WRONG_PENDO_KEY}
    runs.append(("401 and 403", cli({**base, **wrong})))

    for name, result in runs[1:]:
        assert result.returncode == 1, (name, result.stdout[-2000:], result.stderr[-2000:])
        # Deliberate failures read as messages, not crashes.
        assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr, name
    lasts = {name: result.stdout.strip().splitlines()[-1] for name, result in runs}
    assert "Planhat POST /dimensiondata/*** answered 503" in lasts["analytics errors"]
    assert lasts["analytics errors"].endswith(
        "1 batch(es) are in doubt: see `pendo-planhat batches list`"
    )
    assert "Planhat GET /endusers answered 401" in lasts["401 and 403"]
    assert "Pendo GET /api/v1/feature answered 403" in lasts["401 and 403"]

    found: dict[str, list[str]] = {}
    scanned: list[str] = []
    for name, result in runs:
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            scanned.append(f"{name} {stream}")
            if hits(text.encode()):
                found[f"{name} {stream}"] = hits(text.encode())
    files = [p for root in (env.home, env.data_dir) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)  # Dagster's SQLite run and event storage
    assert any(p.name == "warehouse.duckdb" for p in files)
    assert any(p.suffix == ".parquet" for p in files)
    for path in files:
        scanned.append(str(path))
        if hits(path.read_bytes()):
            found[str(path)] = hits(path.read_bytes())
    # DuckDB may compress strings on disk: ask it too, column by column.
    with duckdb.connect(str(env.warehouse.path), read_only=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE data_type = 'VARCHAR' AND table_schema = 'main'"
        ).fetchall()
        for table, column in columns:  # (names from the catalogue, quoted)
            scanned.append(f"{table}.{column}")
            values = conn.execute(f'SELECT DISTINCT "{column}" FROM "{table}"').fetchall()
            text = "\n".join(v for (v,) in values if v is not None).encode()
            if hits(text):
                found[f"{table}.{column}"] = hits(text)
    assert len(columns) > 30 and len(files) > 10
    assert found == {}, found
    # The scan looks where the error texts went (so it would have seen a token there) ...
    assert any(b"answered 401" in p.read_bytes() for p in files if p.is_relative_to(env.home))
    assert env.sql("SELECT COUNT(*) FROM outbox_batches WHERE note LIKE '%/***%'")[0][0] >= 1
    # ... and would recognise one.
    assert hits(f"x{quote(TENANT_TOKEN, safe='')}y".encode()) and hits(
        base64.b64encode(f"{API_TOKEN}:".encode())
    )
    # Messages point at endpoints without the token.
    assert "/analytics/bulk/***" in " ".join(r.stdout + r.stderr for _, r in runs)


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def _transports(client: httpx.Client) -> list[httpx.BaseTransport]:
    return [client._transport, *(t for t in client._mounts.values() if t is not None)]


def test_both_clients_keep_tls_verification_on(make_env: MakeEnv) -> None:
    env = make_env(spec=SPEC)
    defs = build_definitions(env.config)
    with dg.build_resources(
        {name: defs.resources[name] for name in ("pendo", "planhat")}
    ) as resources:  # as a run resolves them, from the environment
        built = [
            resources.pendo.get_client(),
            resources.planhat.get_client(),
            PendoClient(integration_key="k"),
            PlanhatClient(api_token="a", tenant_token="t"),
        ]
    for client in built:
        transports = _transports(client._http)
        assert transports
        for transport in transports:
            context = transport._pool._ssl_context  # type: ignore[attr-defined]
            assert context.verify_mode == ssl.CERT_REQUIRED
            assert context.check_hostname is True
        client.close()
    # And nothing in the package turns it off.
    source = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    for switch in (
        "verify=False",
        "CERT_NONE",
        "check_hostname = False",
        "_create_unverified_context",
    ):
        assert switch not in source, switch


# --------------------------------------------------------------------------------------------
# SQL: data values only ever travel as bound parameters
# --------------------------------------------------------------------------------------------

_SQL_WORDS = re.compile(r"\b(SELECT|INSERT|DELETE|UPDATE|COPY|CREATE|DROP|ALTER|PRAGMA|SET)\b")
# Names interpolated into SQL text, each a package constant: a table or view name checked by
# warehouse._check_identifier, a status column, or a WHERE fragment built of ? placeholders.
# Module constants (UPPER_CASE) are trusted too. DuckDB's own SET/RESET statements take no
# parameters and carry settings, not data: they are not checked here.
_TRUSTED = {"table", "view", "where", "extra", "stamp", "in_days"}
_CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")


def _sql_fstrings() -> list[tuple[str, int, str, list[str]]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sandbox" in path.parts:
            continue  # the stand-in runs no SQL
        tree = ast.parse(path.read_text(encoding="utf-8"))
        printed = {  # hints printed for the user to run themselves, never executed here
            id(sub)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "print"
            for sub in ast.walk(call)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.JoinedStr) or id(node) in printed:
                continue
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if not _SQL_WORDS.search(text) or not re.search(
                r"\b(FROM|INTO|SET|WHERE|TABLE)\b", text
            ):
                continue
            names = [ast.unparse(v.value) for v in node.values if isinstance(v, ast.FormattedValue)]
            found.append((str(path.relative_to(PACKAGE.parent)), node.lineno, text, names))
    return found


def test_sql_text_interpolates_only_package_constants() -> None:
    fstrings = _sql_fstrings()
    assert len(fstrings) > 10  # the scan sees the package's SQL
    untrusted = [
        (f, line, names)
        for f, line, text, names in fstrings
        if not re.match(r"\s*(SET|RESET)\b", text)
        and {n for n in names if not _CONSTANT.fullmatch(n)} - _TRUSTED
    ]
    assert untrusted == [], "interpolate identifiers only; pass values as ? parameters"
    # %-formatting and .format() on SQL are not used at all.
    for path in PACKAGE.rglob("*.py"):
        if "sandbox" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mod)
                and isinstance(node.left, ast.Constant)
                and isinstance(node.left.value, str)
            ):
                assert not _SQL_WORDS.search(node.left.value), (path, node.lineno)
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "format"
                and isinstance(node.func.value, ast.Constant)
                and isinstance(node.func.value.value, str)
            ):
                assert not _SQL_WORDS.search(node.func.value.value), (path, node.lineno)


def test_the_warehouse_refuses_identifiers_that_are_not_names(tmp_path: Path) -> None:
    from pendo_assets.queries import export_views, insert_frame, replace_days

    with Warehouse(tmp_path / "w.duckdb").connect() as conn:
        hostile = "landed_days; DROP TABLE landed_days"
        with pytest.raises(ValueError, match="not a table name"):
            replace_days(conn, days=[DAYS[0]], frames={hostile: []})
        with pytest.raises(ValueError, match="not a table name"):
            insert_frame(conn, hostile, __import__("polars").DataFrame({"a": [1]}))
        with pytest.raises(ValueError, match="not a table name"):
            export_views(conn, tmp_path / "exports", views=[hostile])
        assert conn.execute("SELECT COUNT(*) FROM landed_days").fetchone() == (0,)


def test_a_whole_sync_sends_no_data_value_through_sql_text(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env: Env = make_env(spec=SPEC, sync=FAST_RETRIES)
    hostile = "o'brien\"; DROP TABLE raw_feature_events; --"
    feature_id = env.config.features[0].id
    env.sandbox.pendo_rows.add(
        day=DAYS[-1],
        rows=valid_odd_feature_rows(
            day_ms=env.sandbox.dataset.day_start_ms(DAYS[-1]),
            feature_id=feature_id,
            visitors=[hostile],
        ),
    )
    # DuckDB logs the text of every statement each warehouse connection runs.
    logs = tmp_path / "sql-log"
    logs.mkdir()
    counter = itertools.count()
    real_open = Warehouse._open

    def logged(self: Warehouse, *, read_only: bool) -> Any:
        conn = real_open(self, read_only=read_only)
        conn.execute(f"SET log_query_path = '{logs / f'{next(counter)}.sql'}'")  # test's own path
        return conn

    monkeypatch.setattr(Warehouse, "_open", logged)

    outcome = env.sync(DAYS[0], DAYS[-1])
    assert outcome.exit_code == 0, outcome.last_line

    statements = "\n".join(p.read_text(encoding="utf-8") for p in sorted(logs.glob("*.sql")))
    assert "INSERT INTO raw_feature_events" in statements  # the log sees the sync's SQL
    values = {v for (v,) in env.sql("SELECT DISTINCT visitor_id FROM raw_feature_events")}
    values |= {v for (v,) in env.sql("SELECT DISTINCT external_id FROM planhat_objects") if v}
    values |= {a for (a,) in env.sql("SELECT DISTINCT action FROM feature_actions")}
    values |= {f.id for f in env.config.features} | {p.name for p in env.config.pipelines}
    assert hostile in values
    leaked = sorted(v for v in values if len(v) >= 4 and v in statements)
    assert leaked == []
    for day in DAYS:  # dates, run ids and paths are values too
        assert day.isoformat() not in statements
    assert str(outcome.run_id) not in statements and str(env.data_dir) not in statements
    assert "DROP TABLE" not in statements


# --------------------------------------------------------------------------------------------
# The sandbox listens on loopback only
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_the_sandbox_refuses_to_bind_beyond_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback addresses only"):
        Sandbox(SandboxSpec(seed=1, n_visitors=20, n_accounts=10, rows_per_day=50), host=host)
    with pytest.raises(ValueError, match="loopback addresses only"):
        make_server(host, 0, app=None, recorder=None, faults=None, clock=None)  # type: ignore[arg-type]


def test_a_running_sandbox_listens_on_loopback_only() -> None:
    with Sandbox(SandboxSpec(seed=1, n_visitors=20, n_accounts=10, rows_per_day=50)) as sandbox:
        for url in (sandbox.pendo_url, sandbox.planhat_api_url, sandbox.planhat_analytics_url):
            assert ipaddress.ip_address(httpx.URL(url).host).is_loopback


@pytest.mark.slow
def test_the_sandbox_process_refuses_a_public_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pendo_assets.sandbox", "--host", "0.0.0.0", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "loopback addresses only" in result.stderr and "Traceback" not in result.stderr
