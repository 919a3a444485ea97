"""Shared type aliases and closed sets."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

__all__ = [
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

REGIONS: tuple[Region, ...] = ("us", "us1", "eu", "jpn", "au")
MODELS: tuple[Model, ...] = ("Company", "Asset", "Project", "EndUser")
