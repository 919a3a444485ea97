"""The config's building blocks, and its Pendo sources: features, pages and track events.

`config` builds the whole config from these. A feature becomes User Activities (``as:
activity``, the default) or a daily count as a Custom Metric (``as: metric`` with its
``metric:``); pages and track events become User Activities (DESIGN.md section 5, *More Pendo
sources and per-feature choice*).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Final, Literal, NoReturn, Self, TypeAlias

import pydantic as pd
from pydantic import Field
from pydantic_core import PydanticCustomError

from ._config_yaml import Loc, show, value_of

__all__ = ["FeatureMetric", "FeatureSpec", "ItemSpec", "MetricModel", "SourceSection"]

_Problems: TypeAlias = list[tuple[Loc, str]]  # (place, message) pairs
_NAME: Final = r"^[A-Za-z0-9_-]+$"

#: The models a feature's daily count may be sent to: per visitor or per account.
MetricModel: TypeAlias = Literal["EndUser", "Company"]
#: The config sections listing Pendo sources of User Activities.
SourceSection: TypeAlias = Literal["features", "pages", "track_events"]


def _fail(problems: str | _Problems) -> NoReturn:
    """Raise a message, or (place below the field, message) pairs, as one pydantic error."""
    problems = [((), problems)] if isinstance(problems, str) else problems
    raise PydanticCustomError("config", "; ".join(m for _, m in problems), {"problems": problems})


def _text(value: object) -> object:
    if isinstance(value, str) and value != value.strip():
        _fail(f"{show(value)} starts or ends with spaces; remove them")
    return value


def _dimension_id(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(_NAME, value):
        rule = "letters, digits, _ and - only (no spaces), as Planhat documents"
        _fail(f"must be a Planhat dimensionId of {rule}; got {show(value)}")
    return value


# A field's description words its problems (see `_config_yaml.message`): a noun phrase.

_Text = Annotated[str, pd.BeforeValidator(_text), Field(min_length=1)]  # as written
_Number = Annotated[float, pd.BeforeValidator(value_of), Field(strict=True, allow_inf_nan=False)]
_DimensionId = Annotated[str, pd.BeforeValidator(_dimension_id)]


class _Model(pd.BaseModel):
    model_config = pd.ConfigDict(frozen=True, extra="forbid")

    def __eq__(self, other: object) -> bool:  # fields only: Config's `source` aside
        return isinstance(other, type(self)) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))


class ItemSpec(_Model):
    """A Pendo page or track type (``pages:``, ``track_events:``) whose events become Planhat
    User Activities; the keys of a feature."""

    id: _Text = Field(description="a Pendo id")
    action: _Text | None = Field(
        default=None,
        max_length=255,  # the longest activity name Planhat takes
        description="the activity name in Planhat (leave the key out to use the name in Pendo)",
    )
    weight: _Number = Field(default=1.0, ge=0, description="a Planhat activity weight, a number")

    @property
    def is_metric(self) -> bool:
        """True when the item's events become a Custom Metric (an ``as: metric`` feature)."""
        return False


class FeatureMetric(_Model):
    """Where an ``as: metric`` feature's daily event count goes: a Planhat Custom Metric."""

    dimension_id: _DimensionId = Field(description="a Planhat dimensionId")
    model: MetricModel = Field(
        description="Planhat model of the count (EndUser: per visitor, Company: per accountId)"
    )


class FeatureSpec(ItemSpec):
    """A Pendo feature whose events become Planhat User Activities, or a daily Custom Metric."""

    id: _Text = Field(description="a Pendo feature id")
    as_: Literal["activity", "metric"] = Field(
        default="activity", alias="as", description="`as:` value"
    )
    metric: FeatureMetric | None = Field(
        default=None, description="the Custom Metric of an `as: metric` feature"
    )

    @pd.model_validator(mode="after")
    def _metric_with_as(self) -> Self:
        if self.as_ == "metric" and self.metric is None:
            example = "metric: {dimension_id: export_uses, model: EndUser}"
            _fail([(("as",), f"`as: metric` needs the metric to feed; add {example}")])
        if self.as_ != "metric" and self.metric is not None:
            _fail([(("metric",), "is read only with `as: metric`; add it, or remove `metric:`")])
        return self

    @property
    def is_metric(self) -> bool:
        return self.as_ == "metric"
