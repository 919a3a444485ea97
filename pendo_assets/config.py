"""Load and validate the pendo-planhat YAML config (DESIGN.md §5) into frozen pydantic models.

Every problem in the file is reported at once, in one :class:`ConfigError`, one per line and
sorted by line, each naming the file, the line, the key path and what to change::

    pendo_planhat.yaml: 2 problems in the config file:
      pendo_planhat.yaml:2: pendo.region: 'usa' is not a valid Pendo region; did you mean 'us'? ...
      pendo_planhat.yaml:12: pipelines[0].model: 'company' is not a valid Planhat model; did you ...

The checking is :func:`._yaml.check`: YAML nodes to plain Python with each key path's line (and
duplicate or secret-looking keys refused), then the models below, whose field descriptions,
``Literal`` choices, bounds and defaults word the messages. So a new key is one field in one
model, plus its line in the README.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import date
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, TypeAlias, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import _yaml
from ._yaml import Loc, Scalar, fail, show
from .errors import ConfigError
from .types import Aggregation, JSONDict, Model, Region

__all__ = [
    "ALL_APPS",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "PENDO_HOSTS",
    "SECRET_ENV_VARS",
    "AppIds",
    "Config",
    "FeatureSpec",
    "PendoSettings",
    "PipelineSpec",
    "SyncSettings",
    "config_path_from_env",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH: Final = "pendo_planhat.yaml"
CONFIG_ENV_VAR: Final = "PENDO_PLANHAT_CONFIG"
SECRET_ENV_VARS: Final = ("PENDO_INTEGRATION_KEY", "PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN")
#: The row-source ``appId`` meaning every app; without it Pendo answers for the default app only
#: (reference/pendo_api.md §2.2).
ALL_APPS: Final = 'expandAppIds("*")'
#: Host per ``pendo.region`` (DESIGN.md §5); ``PENDO_BASE_URL`` overrides it.
PENDO_HOSTS: Final[Mapping[Region, str]] = MappingProxyType(
    {
        "us": "app.pendo.io",
        "us1": "us1.app.pendo.io",
        "eu": "app.eu.pendo.io",
        "jpn": "app.jpn.pendo.io",
        "au": "app.au.pendo.io",
    }
)

AppIds: TypeAlias = Literal["all"] | tuple[int, ...]

_NAME: Final = r"^[A-Za-z0-9_-]+$"
_SOURCE_EXAMPLE: Final = (
    "{source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}}"
)
_SECRET_MESSAGE: Final = (
    "looks like a secret, and secrets never go in the config file. Delete this line (its value "
    "is not shown here) and set the secret in the environment or a .env file instead: "
    + ", ".join(SECRET_ENV_VARS)
)


# Field checks. Each raises its problems as one pydantic error, at (a place below) the field.


def _text(value: object) -> object:
    # An id or a name is taken as written, even where YAML would read a number or a boolean.
    if isinstance(value, str) and value != value.strip():
        fail(f"{show(value)} starts or ends with spaces; remove them")
    return value


def _number(value: object) -> object:
    """Unwrap a YAML number; anything else is left for the (strict) number field to refuse."""
    if isinstance(value, Scalar) and value.tag in (_yaml.INT, _yaml.FLOAT):
        return value.value
    return value


def _none_as(empty: object) -> BeforeValidator:
    """Read an empty YAML value (``features:`` with nothing after it) as ``empty``."""
    return BeforeValidator(lambda value: empty if value is None else value)


def _timezone(name: str) -> str:
    # Membership first: on a case-insensitive file system "america/new_york" loads, but Pendo
    # and everything downstream expect the canonical spelling.
    with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        if (not _zone_names() or name in _zone_names()) and zoneinfo.ZoneInfo(name):
            return name
    hint = _yaml.suggest(name, _zone_names())
    fail(
        f"{show(name)} is not an IANA time zone; {hint}use your Pendo subscription's zone, e.g. "
        "America/New_York, Europe/Berlin or UTC"
    )


def _date(value: object) -> object:
    if isinstance(value, date) or not isinstance(value, str):
        return value  # a date already, or what pydantic refuses
    text = value.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        has_time = isinstance(value, Scalar) and value.tag == _yaml.TIMESTAMP
        problem = "has a time; give only" if has_time else "is not"
        fail(f"{show(text)} {problem} a date written YYYY-MM-DD, e.g. 2026-09-01")
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"{show(text)} is not a real date (check month and day)")


def _app_ids(value: object) -> object:
    hint = "must be `all` or a list of Pendo app ids (integers), e.g. [-323232]"
    if isinstance(value, Scalar) and value.tag == _yaml.INT:
        fail(f"{hint}; write one app id as a list: [{value}]")
    if value == "all":
        return value
    if not isinstance(value, list | tuple):
        typo = _yaml.suggest(value, ["all"]) if isinstance(value, str) else ""
        fail(f"{hint}; {typo}got {show(value)}")
    if not value:
        fail("is an empty list; use `all` for every app, or list at least one app id")
    ids = [_number(item) for item in value]
    problems: list[tuple[Loc, str]] = []
    for index, (item, app_id) in enumerate(zip(value, ids, strict=True)):
        if isinstance(app_id, bool) or not isinstance(app_id, int):
            quoted = "; write it without quotes" if re.fullmatch(r"-?\d+", str(item)) else ""
            message = f"must be an integer Pendo app id, e.g. -323232; got {show(item)}{quoted}"
            problems.append(((index,), message))
        elif app_id in ids[:index]:
            problems.append(((index,), f"app id {app_id} is listed twice; list each app once"))
    return tuple(ids) if not problems else fail(problems)


def _dimension_id(value: object) -> object:
    rule = "letters, digits, _ and - only (no spaces), as Planhat documents"
    if not isinstance(value, str):
        fail(f"must be a Planhat dimensionId, {rule}; got {show(value)}")
    if not re.fullmatch(_NAME, value):
        fail(f"dimensionId {show(value)} may contain {rule}")
    return value


def _stages(value: object) -> object:
    if not isinstance(value, list | tuple):
        return value  # pydantic refuses it
    problems: list[tuple[Loc, str]] = []
    stages = _json(list(value), (), problems)
    problems = problems or [(() if i is None else (i,), m) for i, m in _stage_problems(stages)]
    return tuple(copy.deepcopy(stages)) if not problems else fail(problems)


def _json(value: object, loc: Loc, problems: list[tuple[Loc, str]]) -> Any:
    """Turn stage data read from YAML into JSON-ready Python, reporting what JSON cannot hold."""
    if isinstance(value, Mapping):
        return {str(k): _json(v, (*loc, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v, (*loc, i), problems) for i, v in enumerate(value)]
    value = value.value if isinstance(value, Scalar) else value
    if isinstance(value, float) and not math.isfinite(value):
        problems.append((loc, f"{value} is not a JSON number"))
    return value


_Text = Annotated[str, BeforeValidator(_text), Field(min_length=1)]
_Number = Annotated[float, BeforeValidator(_number), Field(strict=True, allow_inf_nan=False)]
_WholeNumber = Annotated[int, BeforeValidator(_number), Field(strict=True)]


# The config. A field's description words its problems (see _yaml._message): a noun phrase.


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PendoSettings(_Model):
    """The ``pendo:`` section: which Pendo subscription to read, from which day."""

    region: Region = Field(default="us", description="Pendo region")
    timezone: Annotated[_Text, AfterValidator(_timezone)] = Field(
        description="an IANA time zone name such as America/New_York"
    )
    start_date: Annotated[date, BeforeValidator(_date)] = Field(
        description="a date written YYYY-MM-DD, e.g. 2026-09-01"
    )
    app_ids: Annotated[AppIds, BeforeValidator(_app_ids)] = Field(
        default="all", description="`all` or a list of Pendo app ids (integers)"
    )

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The subscription's time zone; partitions are its days."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def host(self) -> str:
        """The Pendo host for ``region``, e.g. ``app.eu.pendo.io``."""
        return PENDO_HOSTS[self.region]


class FeatureSpec(_Model):
    """A Pendo feature whose events become Planhat User Activities."""

    id: _Text = Field(description="a Pendo feature id")
    action: _Text | None = Field(
        default=None,
        max_length=255,  # the longest activity name Planhat takes
        description="the activity name in Planhat (leave the key out to use the feature's name)",
    )
    weight: _Number = Field(default=1.0, ge=0, description="a Planhat activity weight, a number")


class PipelineSpec(_Model):
    """A Pendo aggregation pipeline whose result rows become Planhat Custom Metrics.

    ``metrics`` maps a result field to a Planhat dimensionId (read-only). ``stages`` is the Pendo
    pipeline, given inline as ``pipeline:`` or read from ``pipeline_file``; its first stage is the
    source, whose ``timeSeries`` the Pendo client sets per partition. Treat it as read-only.
    """

    name: _Text = Field(pattern=_NAME, description="a name of letters, digits, _ and -")
    model: Model = Field(description="Planhat model")
    id_field: _Text = Field(
        default="accountId", description="the result field matched to externalId"
    )
    metrics: Annotated[
        Mapping[str, Annotated[str, BeforeValidator(_dimension_id)]],
        AfterValidator(MappingProxyType),
    ] = Field(
        min_length=1,
        description="at least one result field mapped to a Planhat dimensionId, e.g. "
        "`totalEvents: pendo_clicks`",
    )
    aggregation: Aggregation = Field(default="last", description="aggregation")
    stages: Annotated[tuple[JSONDict, ...], BeforeValidator(_stages)] = Field(
        alias="pipeline",
        description="a list of Pendo pipeline stages, the first a source "
        "(or `pipeline_file:`, a JSON file holding them)",
    )
    pipeline_file: _Text | None = Field(
        default=None, description="the path of a JSON file holding the stages"
    )

    def __hash__(self) -> int:
        return hash(json.dumps([self.name, dict(self.metrics), self.stages], sort_keys=True))

    @property
    def row_source(self) -> str:
        """The source stage's row source, e.g. ``featureEvents``."""
        return next(str(key) for key in self.stages[0]["source"] if key != "timeSeries")

    @model_validator(mode="wrap")
    @classmethod
    def _read_pipeline_file(cls, data: Any, handler: _yaml.Handler, info: ValidationInfo) -> Any:
        name = data.get("pipeline_file") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name.strip():
            return handler(data)
        if "pipeline" in data:
            both = "give either `pipeline` (the stages inline) or `pipeline_file`, not both"
            return _yaml.validate_with(handler, data, [(("pipeline_file",), both)])
        stages, problems = _read_stages_file(name, (info.context or {}).get("base_dir"))
        if stages is None:  # the file's problems say it all; `pipeline` is not also missing
            return _yaml.validate_with(handler, data, problems, skip=("pipeline",))
        return handler({**data, "pipeline": stages})


class SyncSettings(_Model):
    """The optional ``sync:`` section (an extension of DESIGN.md §5): thresholds and paging."""

    min_match_rate: _Number = Field(
        default=0.5, ge=0, le=1, description="the share of identified events that must match"
    )
    max_quarantine_share: _Number = Field(
        default=0.01, ge=0, le=1, description="the largest share of a day's rows to quarantine"
    )
    page_size: _WholeNumber = Field(
        default=100_000, ge=1000, le=1_000_000, description="Pendo rows per request, a whole number"
    )
    request_timeout_seconds: _Number = Field(
        default=60.0, ge=1, le=3600, description="seconds to wait for an answer"
    )
    retry_attempts: _WholeNumber = Field(
        default=5, ge=1, le=20, description="attempts per request, a whole number"
    )
    retry_backoff_seconds: _Number = Field(
        default=1.0, ge=0, le=60, description="the first wait between attempts, doubled each time"
    )
    retry_max_delay_seconds: _Number = Field(
        default=300.0, ge=0, le=3600, description="the longest wait between attempts"
    )


class Config(_Model):
    """The whole validated config. Equality and hashing ignore ``source``."""

    pendo: PendoSettings = Field(description="the `pendo:` section (timezone, start_date)")
    features: Annotated[tuple[FeatureSpec, ...], _none_as(())] = Field(
        default=(), description="a list of features, each `- id: <feature id>`"
    )
    pipelines: Annotated[tuple[PipelineSpec, ...], _none_as(())] = Field(
        default=(), description="a list of pipelines, each `- name: <name>`"
    )
    sync: Annotated[SyncSettings, _none_as({})] = Field(
        default=SyncSettings(), description="the optional `sync:` section"
    )
    _source: str = PrivateAttr(default="<string>")

    @property
    def source(self) -> str:
        """Where the config was read from, usually its path; ``<string>`` for parsed text."""
        return self._source

    def __eq__(self, other: object) -> bool:
        return self._content() == other._content() if isinstance(other, Config) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._content())

    def _content(self) -> tuple[object, ...]:
        return (self.pendo, self.features, self.pipelines, self.sync)

    @field_validator("features")
    @classmethod
    def _unique_ids(cls, features: tuple[FeatureSpec, ...], info: ValidationInfo) -> Any:
        ids = [((i, "id"), f"features[{i}]", f.id) for i, f in enumerate(features)]
        problems = _yaml.repeats(ids, info, "feature id", "used by")
        return features if not problems else fail(problems)

    @field_validator("pipelines")
    @classmethod
    def _unique_names(cls, pipelines: tuple[PipelineSpec, ...], info: ValidationInfo) -> Any:
        names = [((i, "name"), f"pipelines[{i}]", p.name) for i, p in enumerate(pipelines)]
        dimension_ids = [
            ((i, "metrics", key), _yaml.path(("pipelines", i, "metrics", key)), dimension_id)
            for i, p in enumerate(pipelines)
            for key, dimension_id in p.metrics.items()
        ]
        problems = _yaml.repeats(names, info, "pipeline name", "used by")
        problems += _yaml.repeats(dimension_ids, info, "dimensionId", "fed by")
        return pipelines if not problems else fail(problems)

    @model_validator(mode="wrap")
    @classmethod
    def _something_to_sync(cls, data: Any, handler: _yaml.Handler, info: ValidationInfo) -> Any:
        problems: list[tuple[Loc, str]] = []
        # Counted on the input, so that a list whose items all failed still counts.
        if isinstance(data, dict) and not any(
            isinstance(data.get(key), list | tuple) and data[key]
            for key in ("features", "pipelines")
        ):
            nothing = "nothing to sync: list at least one feature under `features:` or one pipeline"
            problems.append((("features",), f"{nothing} under `pipelines:`"))
        config = cast(Config, _yaml.validate_with(handler, data, problems))
        config._source = (info.context or {}).get("source", config._source)
        return config


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """Return ``$PENDO_PLANHAT_CONFIG`` when set, else ``pendo_planhat.yaml`` (working dir).

    Args:
        environ: The environment to read; ``os.environ`` when ``None``.

    Returns:
        The config file's path.
    """
    value = (os.environ if environ is None else environ).get(CONFIG_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else Path(DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the YAML config file.

    Args:
        path: The file; by default :func:`config_path_from_env`. Relative ``pipeline_file``
            paths are read from this file's directory.

    Returns:
        The validated config, its ``source`` being the path as given.

    Raises:
        ConfigError: The file is missing, unreadable or invalid. The message lists every
            problem with its line and key path.
    """
    file = (config_path_from_env() if path is None else Path(path)).expanduser()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        if path is not None:
            where = f"looked for {file.absolute()}"
        elif os.environ.get(CONFIG_ENV_VAR, "").strip():
            where = f"{CONFIG_ENV_VAR} points to {source}, which does not exist"
        else:
            where = f"{CONFIG_ENV_VAR} is not set, so it was looked for in {Path.cwd()}"
        raise ConfigError(
            f"{source}: config file not found ({where}). Create it, or set {CONFIG_ENV_VAR} to "
            f"its path, e.g. export {CONFIG_ENV_VAR}=/path/to/{DEFAULT_CONFIG_PATH}"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{source}: is a directory; {CONFIG_ENV_VAR} must name the YAML file itself"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: is not UTF-8 text (undecodable byte at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, source=source, base_dir=file.parent)


def parse_config(text: str, *, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate config text.

    Args:
        text: The YAML document.
        source: What messages call it, usually its path.
        base_dir: Where relative ``pipeline_file`` paths are read from; the working directory
            when ``None``.

    Returns:
        The validated config.

    Raises:
        ConfigError: Listing every problem found, one per line.
    """
    empty = (
        "the config file is empty; it needs a `pendo:` section (timezone, start_date) and at "
        "least one entry under `features:` or `pipelines:`"
    )
    context = {"source": source, "base_dir": base_dir}
    secret = _SECRET_MESSAGE
    return _yaml.check(text, Config, source=source, empty=empty, secret=secret, context=context)


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


# Pipeline stages


def _stage_problems(stages: Sequence[Any]) -> list[tuple[int | None, str]]:
    """Check a Pendo stage list; return (stage index or None, message) pairs."""
    if not stages:
        return [(None, f"is empty; the first stage must be a source, e.g. {_SOURCE_EXAMPLE}")]
    problems: list[tuple[int | None, str]] = []
    sources = []
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or len(stage) != 1:
            problems.append(
                (
                    index,
                    "each stage must be a mapping with one key, the operator name (e.g. "
                    f"identified: accountId); got {show(stage)}",
                )
            )
        elif "source" in stage:
            sources.append(index)
    if not sources:
        problems.append(
            (0, f"a pipeline without a source stage; the first stage must be {_SOURCE_EXAMPLE}")
        )
    elif sources[0] != 0:
        problems.append((sources[0], "the source stage must be the first stage"))
    problems.extend((i, "only the first stage may be a source") for i in sources[1:])
    if sources and sources[0] == 0:
        problems.extend((0, message) for message in _source_problems(stages[0]["source"]))
    return problems


def _source_problems(args: object) -> list[str]:
    if not isinstance(args, dict):
        return [f"the source must hold one row source and a timeSeries, e.g. {_SOURCE_EXAMPLE}"]
    row_sources = [str(key) for key in args if key != "timeSeries"]
    problems = []
    if not row_sources:
        problems.append("the source names no row source; add one, e.g. featureEvents: null")
    elif len(row_sources) > 1:
        problems.append(
            f"the source names {len(row_sources)} row sources "
            f"({', '.join(row_sources)}); give exactly one"
        )
    if "timeSeries" in args and not isinstance(args["timeSeries"], dict):
        problems.append(
            "source.timeSeries must be a mapping, e.g. {period: dayRange, first: "
            "now(), count: -1} (the sync sets it per partition)"
        )
    return problems


def _read_stages_file(name: str, base_dir: Path | None) -> tuple[Any, list[tuple[Loc, str]]]:
    """Read a ``pipeline_file``: its stages and no problems, or None and the problems."""
    file = Path(name).expanduser()
    file = base_dir / file if base_dir is not None and not file.is_absolute() else file
    at: Loc = ("pipeline_file",)
    try:
        data = _strict_json(file.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        where = f"looked for {file.absolute()}; a relative path is read from the config's directory"
        return None, [(at, f"pipeline file not found: {file} ({where})")]
    except json.JSONDecodeError as exc:
        where = f"at line {exc.lineno}, column {exc.colno}"
        return None, [(at, f"{file} is not valid JSON: {exc.msg} {where}")]
    except UnicodeDecodeError:
        return None, [(at, f"{file} is not UTF-8 text")]
    except ValueError as exc:  # from _strict_json
        return None, [(at, f"{file} is not valid JSON: {exc}")]
    except OSError as exc:
        return None, [(at, f"cannot read {file}: {exc.strerror}")]
    stages = data
    if isinstance(data, dict):  # a whole aggregation request body: keep only its pipeline
        stages = data["request"].get("pipeline") if isinstance(data.get("request"), dict) else None
    if not isinstance(stages, list):
        shapes = 'a whole Pendo aggregation body {"response": ..., "request": {"pipeline": [...]}}'
        return None, [
            (at, f"{file} must hold a list of pipeline stages or {shapes}; got {show(data)}")
        ]
    problems = [
        (at if i is None else (*at, i), f"in {file}: {message}")
        for i, message in _stage_problems(stages)
    ]
    return (None, problems) if problems else (stages, [])


def _strict_json(text: str) -> Any:
    """``json.loads`` that also rejects NaN/Infinity and duplicate keys (as ``ValueError``)."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def unique(pairs: list[tuple[str, Any]]) -> JSONDict:
        result: JSONDict = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {key!r} in a JSON object")
            result[key] = value
        return result

    return json.loads(text, parse_constant=constant, object_pairs_hook=unique)
