"""Shared type aliases and closed sets."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "PENDO_HOSTS",
    "SERVICE_NAMES",
    "Aggregation",
    "BatchKind",
    "HttpMethod",
    "JSONDict",
    "Model",
    "Region",
    "Service",
]

JSONDict: TypeAlias = dict[str, Any]
HttpMethod: TypeAlias = Literal["GET", "POST", "PUT", "DELETE"]
Service: TypeAlias = Literal["pendo", "planhat"]
Region: TypeAlias = Literal["us", "us1", "eu", "jpn", "au"]
Model: TypeAlias = Literal["Company", "Asset", "Project", "EndUser"]
Aggregation: TypeAlias = Literal["last", "sum"]
BatchKind: TypeAlias = Literal["activities", "metrics"]

MODELS: tuple[Model, ...] = ("Company", "Asset", "Project", "EndUser")

#: Pendo's API host per region (DESIGN.md section 5); a key is valid on one of them only.
PENDO_HOSTS: Final[Mapping[Region, str]] = MappingProxyType(
    {
        "us": "app.pendo.io",
        "us1": "us1.app.pendo.io",
        "eu": "app.eu.pendo.io",
        "jpn": "app.jpn.pendo.io",
        "au": "app.au.pendo.io",
    }
)
#: How errors and logs name each service.
SERVICE_NAMES: Final[Mapping[Service, str]] = MappingProxyType(
    {"pendo": "Pendo", "planhat": "Planhat"}
)
