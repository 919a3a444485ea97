"""The Planhat snapshot: every End User, Company, Asset and Project with its externalId."""

# Dagster reads the context annotation unevaluated, so no `from __future__ import annotations`.
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from .. import queries
from ..errors import ApiError
from ..models import PlanhatSnapshot
from ..resources import PlanhatResource, WarehouseResource
from ._common import WAREHOUSE_POOL, open_warehouse, reread

MODEL_NAMES = {
    "endusers": "EndUser",
    "companies": "Company",
    "assets": "Asset",
    "projects": "Project",
}


def snapshot_objects(snapshot: PlanhatSnapshot, *, taken_at: datetime) -> pl.DataFrame:
    """One frame of all models in the ``planhat_objects`` layout, with each object's company
    externalId resolved through its ``companyId``."""
    companies = snapshot.companies.select(
        pl.col("_id").alias("company_id"), pl.col("externalId").alias("company_external_id")
    )
    frames = []
    for attr, model in MODEL_NAMES.items():
        df: pl.DataFrame = getattr(snapshot, attr)

        def col(name: str, df: pl.DataFrame = df) -> pl.Expr:
            return pl.col(name) if name in df.columns else pl.lit(None, pl.String)

        cols = {
            "object_id": pl.col("_id"),
            "external_id": pl.col("externalId"),
            "email": col("email"),
            "company_id": pl.col("_id") if model == "Company" else col("companyId"),
            "name": col("name"),
        }
        frame = df.select(**{k: v.cast(pl.String) for k, v in cols.items()}).join(
            companies, on="company_id", how="left"
        )
        frames.append(frame.with_columns(pl.lit(model).alias("model")))
    return pl.concat(frames, how="diagonal").with_columns(pl.lit(taken_at).alias("snapshot_at"))


def build_planhat_snapshot_asset() -> dg.AssetsDefinition:
    @dg.asset(
        name="planhat_snapshot",
        group_name="planhat",
        kinds={"planhat", "duckdb"},
        pool=WAREHOUSE_POOL,
        description=(
            "Grain: one row per Planhat End User, Company, Asset and Project (object_id, "
            "external_id, email, company links) in table planhat_objects, read whole at every "
            "sync (not partitioned). If it fails: the previous snapshot is kept and nothing is "
            "matched or published; a 401/403: check PLANHAT_API_TOKEN (and PLANHAT_API_URL); "
            "429/5xx: materialize it again later."
        ),
    )
    def planhat_snapshot(
        context: dg.AssetExecutionContext, planhat: PlanhatResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        try:
            with planhat.get_client() as client:
                snapshot = reread(client.snapshot, retry=planhat.retry(), what="Planhat snapshot")
        except ApiError as exc:
            raise dg.Failure(
                description=f"Planhat snapshot failed: {exc}; the previous snapshot is kept and "
                "nothing was matched or published",
                allow_retries=False,
            ) from None
        objects = snapshot_objects(snapshot, taken_at=datetime.now(UTC).replace(tzinfo=None))
        with open_warehouse(warehouse) as conn:
            queries.replace_planhat_objects(conn, objects)
        metadata: dict[str, int] = {}
        for model in MODEL_NAMES.values():
            part = objects.filter(pl.col("model") == model)
            ids = part.filter(pl.col("external_id").is_not_null() & (pl.col("external_id") != ""))
            dup = ids.group_by("external_id").len().filter(pl.col("len") > 1).height
            metadata[f"{model}: objects"] = part.height
            metadata[f"{model}: without externalId"] = part.height - ids.height
            metadata[f"{model}: externalIds shared by 2+ objects"] = dup
        context.log.info(
            "snapshot: "
            + ", ".join(f"{k} {v}" for k, v in metadata.items() if k.endswith("objects"))
        )
        return dg.MaterializeResult(metadata=metadata)

    return planhat_snapshot
