"""The ``pendo-planhat`` command: thin, it delegates to Dagster and the library.

Exit codes: 0 success; 1 a failed day, a batch in doubt, metric items Planhat rejected, the
warehouse held by another process, metric keys Planhat still disagrees on after
``resend-metrics``, or any other failure (the last line says which); 2 usage or configuration
errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, queries
from .errors import ConfigError, PendoAssetsError, UsageError

if TYPE_CHECKING:  # imported at run time only by the commands that use them
    from .config import Config
    from .resources import PendoResource, PlanhatResource

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pendo-planhat",
        description="Exactly-once sync of Pendo product usage into Planhat.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run a 90-day backfill against the local sandbox and summarise it"
    )
    demo.add_argument(
        "--days", type=int, default=90, help="days of history to backfill (default 90)"
    )
    demo.add_argument(
        "--rows-per-day", type=int, default=None, help="sandbox feature-event rows per day"
    )
    demo.add_argument(
        "--dir", type=Path, default=Path("data/demo"), help="where the demo keeps its files"
    )

    ui = sub.add_parser(
        "ui",
        help="the Dagster UI on the demo's data: starts the sandbox, creates the demo data if "
        "missing, prints the URL; Ctrl-C stops it all",
    )
    ui.add_argument(
        "--dir", type=Path, default=Path("data/demo"), help="the demo's files (default data/demo)"
    )
    ui.add_argument(
        "--port", type=int, default=None, help="webserver port (default 3000, or any free one)"
    )
    ui.add_argument("--host", default="127.0.0.1", help="webserver host (default 127.0.0.1)")
    ui.add_argument(
        "--days", type=int, default=90, help="days of history when creating the demo data"
    )
    ui.add_argument(
        "--rows-per-day",
        type=int,
        default=None,
        help="sandbox feature-event rows per day (default: what the demo data was made with)",
    )

    sync = sub.add_parser(
        "sync",
        help="snapshot, land, match and publish every day in a range (default: the "
        "sync.lookback_days days ending yesterday, as the daily schedule does)",
    )
    sync.add_argument(
        "--start",
        type=_date,
        help="first day, YYYY-MM-DD (default: sync.lookback_days - 1 days before --end)",
    )
    sync.add_argument(
        "--end", type=_date, help="last day (inclusive), YYYY-MM-DD (default: yesterday)"
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="compute and store what would be sent; send nothing"
    )

    discover = sub.add_parser(
        "discover",
        help="list the subscription's features with their recent use; write a starter config",
    )
    discover.add_argument(
        "--days", type=int, default=30, help="count events over this many days (default 30)"
    )
    discover.add_argument(
        "--write", type=Path, default=None, help="write a starter config with the most used ones"
    )
    discover.add_argument(
        "--timezone",
        default=None,
        help="the subscription's timezone (default: the config's, else UTC)",
    )
    discover.add_argument(
        "--region", default=None, help="us | us1 | eu | jpn | au (default: the config's, else us)"
    )

    check = sub.add_parser(
        "check",
        help="check the config, both credentials, every id and pipeline, and the match rates",
    )
    check.add_argument(
        "--day", type=_date, default=None, help="the day to try (default: yesterday)"
    )

    sandbox = sub.add_parser(
        "sandbox", help="run the local Pendo and Planhat stand-ins until stopped"
    )
    sandbox.add_argument("--seed", type=int, default=None)
    sandbox.add_argument("--rows-per-day", type=int, default=None)
    sandbox.add_argument("--port", type=int, default=0, help="first port (default: any free ports)")
    sandbox.add_argument(
        "--config-out",
        type=Path,
        default=Path("data/sandbox/pendo_planhat.yaml"),
        help="where to write a config matching the sandbox",
    )

    resend = sub.add_parser(
        "resend-metrics",
        help="make Planhat agree with the ledger on the metric keys listed in metric_drift",
    )
    resend.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD")
    resend.add_argument("--end", type=_date, required=True, help="last day (inclusive), YYYY-MM-DD")
    resend.add_argument("--dimension", default=None, help="this dimensionId only")

    batches = sub.add_parser("batches", help="list or resolve batches whose delivery is in doubt")
    bsub = batches.add_subparsers(dest="batches_command", required=True, metavar="ACTION")
    bsub.add_parser("list", help="batches whose outcome is unknown")
    resolve = bsub.add_parser("resolve", help="settle a batch after checking Planhat")
    resolve.add_argument("batch_id", type=int)
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--delivered", action="store_true", help="Planhat holds it: count it as sent"
    )
    outcome.add_argument(
        "--resend", action="store_true", help="it did not arrive: send its keys again"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    _quiet()
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)  # variables already set win over the file
    try:
        command = {
            "sync": _sync,
            "demo": _demo,
            "ui": _ui,
            "sandbox": _sandbox,
            "batches": _batches,
            "discover": _discover,
            "check": _check,
            "resend-metrics": _resend_metrics,
        }
        return command[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PendoAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED


def _clients(config: Config | None, region: str = "us") -> tuple[PendoResource, PlanhatResource]:
    """Pendo and Planhat resources from the environment, retrying little: a setup command
    should answer in seconds, and a wrong key or host does not get better by waiting."""
    from .resources import PendoResource, PlanhatResource
    from .runner import check_environment

    check_environment()
    quick: dict[str, Any] = {
        "retry_attempts": 2,
        "retry_backoff_seconds": 0.2,
        "retry_max_delay_seconds": 2,
    }
    if config is not None:
        quick["timeout_seconds"] = config.sync.request_timeout_seconds
    pendo = PendoResource(
        integration_key=os.environ["PENDO_INTEGRATION_KEY"],
        region=config.pendo.region if config else region,
        base_url=os.environ.get("PENDO_BASE_URL") or None,
        **quick,
    )
    if os.environ.get("PLANHAT_API_URL"):
        quick["api_url"] = os.environ["PLANHAT_API_URL"]
    planhat = PlanhatResource(
        api_token=os.environ["PLANHAT_API_TOKEN"],
        tenant_token=os.environ["PLANHAT_TENANT_TOKEN"],
        **quick,
    )
    return pendo, planhat


def _discover(args: argparse.Namespace) -> int:
    from .config import config_path_from_env, load_config
    from .discover import discover, format_table, starter_config
    from .partitions import yesterday_in

    logging.getLogger("pendo_assets").setLevel(logging.WARNING)
    if args.days < 1 or args.days > 365:
        raise UsageError(f"--days must be from 1 to 365, got {args.days}")
    path = config_path_from_env()
    config = load_config(path) if path.exists() else None
    timezone = args.timezone or (config.pendo.timezone if config else "UTC")
    region = args.region or (config.pendo.region if config else "us")
    pendo, _ = _clients(None, region)
    end = yesterday_in(timezone)
    with pendo.get_client() as client:
        found = discover(client, timezone=timezone, end=end, days=args.days)
    for line in format_table(found, args.days):
        print(line)
    if args.write:
        if args.write.exists():
            raise UsageError(f"{args.write} exists; not overwriting it (choose another --write)")
        start = end - timedelta(days=89)
        text = starter_config(
            found, timezone=timezone, region=region, start_date=start, days=args.days
        )
        args.write.write_text(text, encoding="utf-8")
        print(
            f"wrote {args.write}: the {text.count('- id:')} most used features; next: pendo-planhat check"
        )
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from .config import load_config
    from .setup_check import format_findings, run_check

    logging.getLogger("pendo_assets").setLevel(logging.WARNING)
    config = load_config()
    pendo, planhat = _clients(config)
    with pendo.get_client() as p, planhat.get_client() as h:
        findings = run_check(config, pendo=p, planhat=h, day=args.day)
    for line in format_findings(findings):
        print(line)
    failed = [f for f in findings if not f.ok]
    print(
        f"{len(findings) - len(failed)} of {len(findings)} checks passed"
        + (
            "; fix the ones marked FAIL and run `pendo-planhat check` again"
            if failed
            else "; ready: `pendo-planhat sync --dry-run` shows what a sync would send"
        )
    )
    return EXIT_FAILED if failed else EXIT_OK


def _quiet() -> None:
    """Progress comes from Dagster's run log; keep library chatter and beta notices out."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pendo_assets").setLevel(logging.INFO)
    logging.getLogger("pendo_assets.clients").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*is currently in beta")
    warnings.filterwarnings("ignore", message=r".*is currently in preview")


def _sync(args: argparse.Namespace) -> int:
    from .config import load_config
    from .demo import print_summary
    from .partitions import sync_window
    from .runner import run_sync

    config = load_config()
    start, end = sync_window(config, start=args.start, end=args.end)
    outcome = run_sync(config=config, start=start, end=end, dry_run=args.dry_run)
    if outcome.run_id is not None:  # None: stopped before a run started (warehouse locked)
        print(f"run {outcome.run_id}" + (" (dry run: nothing sent)" if args.dry_run else ""))
    print_summary(outcome.summary)
    print(outcome.last_line)
    return outcome.exit_code


def _demo(args: argparse.Namespace) -> int:
    from .demo import make_demo

    return make_demo(args.dir, days=args.days, rows_per_day=args.rows_per_day)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ui(args: argparse.Namespace) -> int:
    from .config import load_config
    from .demo import demo_spec, make_demo
    from .sandbox import Sandbox
    from .ui import demo_ready, pick_port, prepare_dagster_home, run_dagster_ui

    demo_dir: Path = args.dir.absolute()
    port = pick_port(args.host, args.port)
    if not demo_ready(demo_dir):
        print(f"No demo data in {demo_dir}: creating it first (pendo-planhat demo).")
        os.environ.pop("DAGSTER_HOME", None)  # the UI shows the demo's own runs
        code = make_demo(demo_dir, days=args.days, rows_per_day=args.rows_per_day)
        if code:
            return code
        print()
    rows = args.rows_per_day
    made_with = demo_dir / "sandbox.json"
    if rows is None and made_with.exists():
        rows = json.loads(made_with.read_text(encoding="utf-8")).get("rows_per_day")
    load_config(demo_dir / "pendo_planhat.yaml")  # a config error stops here, naming its line
    home = prepare_dagster_home(demo_dir / "dagster_home")
    for signum in (signal.SIGINT, signal.SIGTERM):  # stop the UI's processes on `kill` too,
        signal.signal(signum, _interrupt)  # and on Ctrl-C when started with SIGINT ignored
    with Sandbox(demo_spec(rows)) as sandbox:
        env = {
            **sandbox.env(),
            "PENDO_PLANHAT_CONFIG": str(demo_dir / "pendo_planhat.yaml"),
            "PENDO_PLANHAT_WAREHOUSE": str(demo_dir / "warehouse.duckdb"),
            "DAGSTER_HOME": str(home),
        }
        print(f"Starting the Dagster UI on {demo_dir} (DAGSTER_HOME={home}) ...", flush=True)

        def ready(url: str) -> None:
            print(f"Dagster UI: {url}", flush=True)
            print(
                "  the sandbox stands in for Pendo and Planhat; materialize from the UI, or "
                "turn on daily_sync_schedule. Ctrl-C stops everything.",
                flush=True,
            )

        return run_dagster_ui(
            env, host=args.host, port=port, log_path=home / "dagster-dev.log", on_ready=ready
        )


def _sandbox(args: argparse.Namespace) -> int:
    from .sandbox import SandboxSpec, serve_forever

    seed = {} if args.seed is None else {"seed": args.seed}
    rows = args.rows_per_day
    spec = SandboxSpec(**seed) if rows is None else SandboxSpec.for_rows(rows, **seed)
    args.config_out.parent.mkdir(parents=True, exist_ok=True)
    serve_forever(
        spec,
        ports=(args.port, args.port + 1, args.port + 2) if args.port else (0, 0, 0),
        config_path=args.config_out,
    )
    return EXIT_OK


def _resend_metrics(args: argparse.Namespace) -> int:
    """Read back the range, send the repairs of its metric_drift keys, read back again."""
    from datetime import UTC, datetime

    from .config import load_config
    from .errors import UsageError
    from .readback import resend_metrics
    from .resources import PlanhatResource
    from .warehouse import warehouse_from_env

    if args.end < args.start:
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    config = load_config()
    needed = ("PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN")
    missing = [name for name in needed if not os.environ.get(name)]
    if missing:
        raise UsageError(f"missing environment variable(s): {', '.join(missing)}")
    planhat = PlanhatResource(
        api_token=os.environ["PLANHAT_API_TOKEN"],
        tenant_token=os.environ["PLANHAT_TENANT_TOKEN"],
        api_url=os.environ.get("PLANHAT_API_URL") or "https://api.planhat.com",
        analytics_url=os.environ.get("PLANHAT_ANALYTICS_URL") or "https://analytics.planhat.com",
        timeout_seconds=config.sync.request_timeout_seconds,
        retry_attempts=config.sync.retry_attempts,
        retry_backoff_seconds=config.sync.retry_backoff_seconds,
        retry_max_delay_seconds=config.sync.retry_max_delay_seconds,
    )
    days = [args.start + timedelta(days=n) for n in range((args.end - args.start).days + 1)]
    span = f"{args.start}..{args.end}" + (f" ({args.dimension})" if args.dimension else "")
    run_id = f"resend-metrics {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    warehouse = warehouse_from_env()
    # It sends to Planhat: one publisher at a time, as the publish step (Warehouse.publish_lock).
    with warehouse.publish_lock(), planhat.get_client() as client, warehouse.connect() as conn:
        try:
            report = resend_metrics(
                conn, client=client, days=days, dimension_id=args.dimension, run_id=run_id
            )
        finally:
            queries.export_views(conn, warehouse.local_dir / "exports")
    sent = report.publish
    print(f"metric_drift for {span}: {report.drift_before} key(s) where Planhat disagreed")
    print(
        f"  sent again the last value of {report.last_resent} `last` key(s) and the difference "
        f"of {report.sum_differences_sent} `sum` key(s), in {sent.requests} request(s)"
    )
    if report.held:
        print(
            f"  {report.held} key(s) sit in a batch in doubt and were left alone: resolve it "
            "first (`pendo-planhat batches list`)"
        )
    if sent.batches_in_doubt_new:
        print(f"  {sent.batches_in_doubt_new} repair batch(es) are now in doubt")
    print(f"metric_drift for {span} now lists {report.drift_after} key(s)")
    return EXIT_OK if report.drift_after == 0 and not sent.batches_in_doubt_new else EXIT_FAILED


def _batches(args: argparse.Namespace) -> int:
    from .delivery import resolve_batch
    from .warehouse import warehouse_from_env

    with warehouse_from_env().connect() as conn:
        if args.batches_command == "list":
            rows = queries.select_batches_in_doubt(conn)
            if not rows:
                print("no batch is in doubt")
                return EXIT_OK
            print("batch_id  kind        items  sent_at              note")
            for batch_id, kind, agg, items, sent_at, note in rows:
                label = f"{kind}/{agg}" if agg else kind
                print(
                    f"{batch_id:>8}  {label:<10} {items:>6}  {sent_at:%Y-%m-%d %H:%M:%S}  {note or ''}"
                )
            print(
                "Check in Planhat whether each batch arrived, then run "
                "`pendo-planhat batches resolve BATCH_ID --delivered` or `--resend`."
            )
            return EXIT_FAILED
        status = resolve_batch(
            conn, batch_id=args.batch_id, outcome="delivered" if args.delivered else "resend"
        )
        print(f"batch {args.batch_id} is now {status}")
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
