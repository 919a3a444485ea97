"""Pendo's visitors (for matching by email) and the End Users created for unmatched visitors."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg
import duckdb
import polars as pl

from .. import queries
from ..clients._visitor_rows import VISITOR_SCHEMA, decode_visitors
from ..clients.planhat import MAX_UPSERT_ITEMS
from ..config import Config
from ..errors import ApiError, DeliveryUnknownError
from ..identity import creation_candidates, resolve_visitors
from ..landing import configured_items
from ..models import EVENT_SOURCES, RejectedRow
from ..resources import PendoResource, PlanhatResource, WarehouseResource
from ._common import WAREHOUSE_POOL, daily_asset, open_warehouse, reread, run_days, window


class EndUsersConfig(dg.Config):
    dry_run: bool = False


def build_identity_assets(
    config: Config,
    partitions: dg.DailyPartitionsDefinition,
    *,
    events: Sequence[dg.AssetsDefinition],
    snapshot: dg.AssetsDefinition,
) -> list[dg.AssetsDefinition]:
    """``pendo_visitors`` when matching needs emails, and ``planhat_end_users`` when End Users
    are created (``matching:``); none by default."""
    matching = config.matching
    if not matching.needs_visitors:
        return []
    email_field = matching.visitor_email_field

    @dg.asset(
        name="pendo_visitors",
        group_name="pendo_raw",
        kinds={"pendo", "duckdb"},
        pool=WAREHOUSE_POOL,
        description=(
            "Grain: one row per identified Pendo visitor (visitor_id, the email at "
            f"{email_field}, its account ids) in table pendo_visitors, read whole at every sync "
            "(not partitioned); malformed rows go to quarantine_visitors with the reason. "
            "If it fails: the previous visitors are kept; a 403: check PENDO_INTEGRATION_KEY; "
            "too many malformed rows: see quarantine_visitors (sync.max_quarantine_share)."
        ),
    )
    def pendo_visitors(
        context: dg.AssetExecutionContext, pendo: PendoResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        def read() -> tuple[pl.DataFrame, list[RejectedRow]]:
            frames: list[pl.DataFrame] = [pl.DataFrame(schema=VISITOR_SCHEMA)]
            rejects: list[RejectedRow] = []
            for page in client.visitor_pages():
                good, bad = decode_visitors(page, email_field=email_field)
                frames.append(good)
                rejects.extend(bad)
            return pl.concat(frames), rejects

        try:
            with pendo.get_client() as client:
                visitors, rejects = reread(read, retry=pendo.retry(), what="Pendo visitors")
        except ApiError as exc:
            raise dg.Failure(
                description=f"Pendo visitors could not be read: {exc}; the previous visitors "
                "are kept",
                allow_retries=False,
            ) from None
        repeated = visitors.height - visitors["visitor_id"].n_unique()
        visitors = visitors.unique("visitor_id", keep="first", maintain_order=True)
        total = visitors.height + len(rejects)
        share = len(rejects) / total if total else 0.0
        if share > config.sync.max_quarantine_share:
            raise dg.Failure(
                description=f"{len(rejects)} of {total} Pendo visitors are malformed "
                f"({share:.1%}, more than sync.max_quarantine_share "
                f"{config.sync.max_quarantine_share:.1%}), e.g. {rejects[0].reason}; the previous "
                "visitors are kept",
                allow_retries=False,
            )
        now = datetime.now(UTC).replace(tzinfo=None)
        quarantined = pl.DataFrame(
            {"reason": [r.reason for r in rejects], "raw": [r.raw for r in rejects]},
            schema={"reason": pl.String, "raw": pl.String},
        ).with_columns(pl.lit(now).alias("landed_at"))
        with open_warehouse(warehouse) as conn:
            queries.replace_visitors(
                conn,
                visitors=visitors.with_columns(pl.lit(now).alias("landed_at")),
                rejects=quarantined,
            )
        with_email = int(visitors["email"].str.strip_chars().str.len_chars().gt(0).sum())
        metadata = {
            "visitors": visitors.height,
            "visitors with an email": with_email,
            "quarantined": len(rejects),
            "repeated visitorIds dropped": repeated,
        }
        context.log.info("Pendo visitors: " + ", ".join(f"{k} {v}" for k, v in metadata.items()))
        return dg.MaterializeResult(metadata=metadata)

    if not matching.create_end_users:
        return [pendo_visitors]
    # The visitors of the run's activities: of features (not `as: metric`), pages, track types.
    item_ids = {
        source: [i.id for i in configured_items(config, source) if not i.is_metric]
        for source in EVENT_SOURCES.values()
    }

    @daily_asset(
        partitions,
        name="planhat_end_users",
        group_name="planhat",
        kinds={"planhat", "duckdb"},
        deps=[*events, snapshot, pendo_visitors],
        description=(
            "Grain: one row per End User asked of Planhat in end_user_creations (with its "
            "status), for the run's identified visitors that match no End User "
            "(matching.create_end_users): a visitor with an email whose account is the "
            "externalId of exactly one Company, through PUT /endusers (at most 5,000 a "
            "request, one at a time); created_end_users lists those created, planned_end_users "
            "what a --dry-run would create. If it fails or is stopped: a request without an "
            "answer is settled by the next run reading the End User back (never by creating it "
            "twice); a refusal is in end_user_creations.error (e.g. a Company id Planhat lacks)."
        ),
    )
    def planhat_end_users(
        context: dg.AssetExecutionContext,
        config: EndUsersConfig,
        planhat: PlanhatResource,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        days = run_days(context)
        run_id = context.run.run_id
        with open_warehouse(warehouse) as conn:
            objects = queries.select_planhat_objects(conn)
            settled = _settle_pending(conn, objects)
            if settled:
                objects = queries.select_planhat_objects(conn)
            pairs = queries.select_usage_pairs(conn, days=days, item_ids=item_ids)
            visitors = queries.select_visitors(conn, visitor_ids=pairs["visitor_id"].unique())
            listed = visitors.select("visitor_id", pl.col("account_ids").alias("account_id"))
            pairs = pl.concat([pairs, listed.explode("account_id")]).unique()
            resolved = resolve_visitors(
                pairs.lazy(),
                objects.lazy(),
                keys=matching.end_user_keys,
                visitor_emails=visitors.select("visitor_id", "email").lazy(),
            )
            wanted = creation_candidates(resolved, visitors.lazy(), objects.lazy()).collect()
            if config.dry_run:
                queries.replace_planned_end_users(conn, planned=wanted)
                context.log.info(
                    f"{window(days)}: dry run: would create {wanted.height} End Users "
                    "(see planned_end_users); created none"
                )
                return dg.MaterializeResult(
                    metadata={"would create": wanted.height, "settled from before": settled}
                )
            counts = _create(context, conn, planhat, wanted, run_id)
        counts["settled from before"] = settled
        context.log.info(
            f"{window(days)}: End Users: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
        return dg.MaterializeResult(metadata=dict(counts))

    return [pendo_visitors, planhat_end_users]


_OUTCOME_SCHEMA = {
    "external_id": pl.String,
    "status": pl.String,
    "enduser_id": pl.String,
    "error": pl.String,
}


def _settle_pending(conn: duckdb.DuckDBPyConnection, objects: pl.DataFrame) -> int:
    """Settle creations whose answer never came by reading the End Users back from the
    snapshot this run just read: there, ``created``; absent, ``not_created`` (asked again)."""
    pending = queries.select_pending_creations(conn)
    if not pending.height:
        return 0
    endusers = objects.filter(pl.col("model") == "EndUser").unique("external_id", keep="first")
    outcomes = pending.join(
        endusers.select("external_id", pl.col("object_id").alias("enduser_id")),
        on="external_id",
        how="left",
    ).select(
        "external_id",
        pl.when(pl.col("enduser_id").is_null())
        .then(pl.lit("not_created"))
        .otherwise(pl.lit("created"))
        .alias("status"),
        "enduser_id",
        pl.lit(None, pl.String).alias("error"),
    )
    queries.settle_creations(conn, outcomes=outcomes, objects=objects.clear())
    return pending.height


def _create(
    context: dg.AssetExecutionContext,
    conn: duckdb.DuckDBPyConnection,
    planhat: PlanhatResource,
    wanted: pl.DataFrame,
    run_id: str,
) -> dict[str, int]:
    """Ask Planhat for ``wanted`` End Users, at most `MAX_UPSERT_ITEMS` a request, one request
    at a time; each request is recorded before it is sent and settled by its answer."""
    counts = {"to create": wanted.height, "created": 0, "existed": 0, "refused": 0, "in doubt": 0}
    if not wanted.height:
        return counts
    with planhat.get_client() as client:
        for start in range(0, wanted.height, MAX_UPSERT_ITEMS):
            chunk = wanted.slice(start, MAX_UPSERT_ITEMS)
            queries.insert_creations(conn, items=chunk, run_id=run_id)
            items = chunk.select(
                pl.col("external_id").alias("externalId"),
                "email",
                pl.col("company_id").alias("companyId"),
            ).to_dicts()
            try:
                result = client.upsert_end_users(items)
            except DeliveryUnknownError as exc:
                counts["in doubt"] += chunk.height
                context.log.warning(
                    f"{chunk.height} End Users may or may not have been created ({exc}); the "
                    "next run reads them back, and creates none twice"
                )
                break
            except ApiError as exc:
                outcomes = chunk.select(
                    "external_id",
                    pl.lit("failed").alias("status"),
                    pl.lit(None, pl.String).alias("enduser_id"),
                    pl.lit(str(exc)[:500]).alias("error"),
                )
                queries.settle_creations(conn, outcomes=outcomes, objects=_objects(chunk, {}))
                counts["refused"] += chunk.height
                context.log.warning(f"Planhat refused {chunk.height} End Users: {exc}")
                break
            known = {**result.existed, **result.created}
            rows = [
                (ext, "created", result.created[ext], None)
                if ext in result.created
                else (ext, "existed", result.existed[ext], None)
                if ext in result.existed
                else (ext, "failed", None, result.errors[ext])
                for ext in chunk["external_id"]
                if ext in known or ext in result.errors
            ]
            outcomes = pl.DataFrame(rows, schema=_OUTCOME_SCHEMA, orient="row")
            queries.settle_creations(conn, outcomes=outcomes, objects=_objects(chunk, known))
            counts["created"] += len(result.created)
            counts["existed"] += len(result.existed)
            counts["refused"] += sum(1 for ext in chunk["external_id"] if ext in result.errors)
            unsettled = chunk.height - outcomes.height
            counts["in doubt"] += unsettled
            for ext, error in list(result.errors.items())[:3]:
                context.log.warning(f"Planhat refused End User {ext!r}: {error}")
    return counts


def _objects(chunk: pl.DataFrame, ids: dict[str, str]) -> pl.DataFrame:
    """``planhat_objects`` rows for the End Users of ``chunk`` Planhat gave an ``_id``."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return chunk.filter(pl.col("external_id").is_in(list(ids))).select(
        pl.lit("EndUser").alias("model"),
        pl.col("external_id").replace_strict(ids, default=None).alias("object_id"),
        "external_id",
        "email",
        "company_id",
        "company_external_id",
        pl.lit(None, pl.String).alias("name"),
        pl.lit(now).alias("snapshot_at"),
    )
