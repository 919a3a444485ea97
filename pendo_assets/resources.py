"""Thin Dagster resources: typed settings plus one method returning a Dagster-free object."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import httpx
from pydantic import Field

from .clients import PendoClient, PlanhatClient, RetryPolicy
from .warehouse import DEFAULT_WAREHOUSE, Warehouse

__all__ = ["PendoResource", "PlanhatResource", "WarehouseResource"]


class _HttpResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Timeout and retry settings shared by both API resources (``sync:`` in the config)."""

    timeout_seconds: float = 60.0
    retry_attempts: int = 5
    retry_backoff_seconds: float = 1.0
    retry_max_delay_seconds: float = 300.0

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(10.0, read=self.timeout_seconds)

    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            backoff_factor=self.retry_backoff_seconds,
            max_delay=self.retry_max_delay_seconds,
        )


class PendoResource(_HttpResource):
    """Pendo's aggregation API. The key comes from ``PENDO_INTEGRATION_KEY`` via ``dg.EnvVar``."""

    integration_key: str = Field(repr=False, description="Pendo integration key (secret)")
    region: str = "us"
    base_url: str | None = None
    page_size: int = 100_000

    def get_client(self) -> PendoClient:
        """A new `PendoClient`; close it (or use it as a context manager) when done."""
        return PendoClient(
            integration_key=self.integration_key,
            region=self.region,
            base_url=self.base_url,
            page_size=self.page_size,
            timeout=self.timeout(),
            retry=self.retry(),
        )


class PlanhatResource(_HttpResource):
    """Planhat's main and analytics APIs. Tokens come from the environment via ``dg.EnvVar``."""

    api_token: str = Field(repr=False, description="Planhat API token (secret)")
    tenant_token: str = Field(repr=False, description="Planhat tenant token (secret)")
    api_url: str = "https://api.planhat.com"
    analytics_url: str = "https://analytics.planhat.com"

    def get_client(self) -> PlanhatClient:
        """A new `PlanhatClient`; close it when done."""
        return PlanhatClient(
            api_token=self.api_token,
            tenant_token=self.tenant_token,
            api_url=self.api_url,
            analytics_url=self.analytics_url,
            timeout=self.timeout(),
            retry=self.retry(),
        )


class WarehouseResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The warehouse (a DuckDB file, or a DuckLake URL and its data path) and the local folders
    beside it."""

    path: str = DEFAULT_WAREHOUSE
    data_path: str | None = None

    @classmethod
    def from_warehouse(cls, warehouse: Warehouse) -> WarehouseResource:
        """The resource naming ``warehouse``."""
        return cls(path=warehouse.target, data_path=warehouse.data_path)

    def get_warehouse(self) -> Warehouse:
        """The `Warehouse` (connections are opened per use, short)."""
        return Warehouse(self.path, data_path=self.data_path)

    @property
    def exports_dir(self) -> Path:
        return self.get_warehouse().local_dir / "exports"

    @property
    def staging_dir(self) -> Path:
        return self.get_warehouse().local_dir / "staging"
