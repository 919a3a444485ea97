"""``python -m pendo_assets.sandbox``: run the sandbox as a process (demo, benchmarks)."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import datetime

from .generator import SandboxSpec
from .sandbox import serve_forever
from .server import require_loopback

__all__ = ["main"]


def _rate(value: str) -> tuple[int, float]:
    requests, _, seconds = value.partition("/")
    try:
        return int(requests), float(seconds or 60)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("use REQUESTS/SECONDS, e.g. 200/60") from exc


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m pendo_assets.sandbox", description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rows-per-day", type=int, default=5000, help="approximate feature-event rows per day"
    )
    parser.add_argument(
        "--visitors", type=int, help="identified visitors (default: scaled to --rows-per-day)"
    )
    parser.add_argument("--accounts", type=int, help="accounts (default: scaled to the visitors)")
    parser.add_argument(
        "--endusers", type=int, help="size the Planhat tenant instead (with --companies)"
    )
    parser.add_argument("--companies", type=int, help="Planhat Companies (with --endusers)")
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--timezone", default="America/New_York")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--ports", type=int, nargs=3, default=(0, 0, 0), metavar=("PENDO", "API", "ANALYTICS")
    )
    parser.add_argument("--port-file", help="write the URLs and env as JSON here once listening")
    parser.add_argument("--config", help="also write the demo config YAML here")
    parser.add_argument("--start-date", help="first partition of the demo config (YYYY-MM-DD)")
    parser.add_argument(
        "--now", help="fix the clock (ISO datetime), e.g. 2026-11-03T12:00:00+00:00"
    )
    parser.add_argument("--rate-limit", type=_rate, help="Planhat main API limit REQUESTS/SECONDS")
    parser.add_argument(
        "--identity",
        action="store_true",
        help="visitor emails and End Users matched by email only (SandboxSpec.identity)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the environment")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {
        "seed": args.seed,
        "n_features": args.features,
        "timezone": args.timezone,
        "identity": args.identity,
    }
    if args.visitors is not None:
        overrides["n_visitors"] = args.visitors
    if args.accounts is not None:
        overrides["n_accounts"] = args.accounts
    try:
        if (args.endusers is None) != (args.companies is None):
            raise ValueError("--endusers and --companies go together")
        if args.endusers is not None:
            spec = SandboxSpec.for_tenant(
                endusers=args.endusers,
                companies=args.companies,
                rows_per_day=args.rows_per_day,
                **overrides,
            )
        else:
            spec = SandboxSpec.for_rows(args.rows_per_day, **overrides)
        now = datetime.fromisoformat(args.now) if args.now else None
        require_loopback(args.host)
    except ValueError as exc:
        parser.error(str(exc))
    # Background jobs of a non-interactive shell ignore SIGINT: stop cleanly on SIGTERM too.
    signal.signal(signal.SIGTERM, _interrupt)
    serve_forever(
        spec,
        ports=tuple(args.ports),
        host=args.host,
        print_env=not args.quiet,
        config_path=args.config,
        start_date=args.start_date,
        port_file=args.port_file,
        now=now,
        planhat_rate_limit=args.rate_limit,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
