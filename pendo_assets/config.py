"""Load and validate the pendo-planhat YAML config (DESIGN.md §5) into frozen pydantic models.

Every problem in the file is reported at once, in one :class:`ConfigError`, one per line and
sorted by line, each naming the file, the line, the key path and what to change::

    pendo_planhat.yaml: 2 problems in the config file:
      pendo_planhat.yaml:2: pendo.region: 'usa' is not a valid Pendo region; did you mean 'us'? ...
      pendo_planhat.yaml:12: pipelines[0].model: 'company' is not a valid Planhat model; did you ...

:class:`Loader`, PyYAML's SafeLoader, builds plain Python, keeping each key path's line and
refusing duplicate keys, secret-looking keys (their values unread), unsupported tags and input
past its bounds (size, depth, values with aliases expanded; also for a pipeline file);
:func:`_check_entries` checks what spans entries. The models validate the rest, and
:func:`message` (in ``_config_yaml``) words pydantic's errors from the field's description, ``Literal`` choices,
bounds and default. So a new key is one field in one model (and its line in the README).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, NoReturn

import pydantic as pd
import yaml
from pydantic import Field
from pydantic_core import PydanticUseDefault

from ._config_yaml import (
    TOO_DEEP,
    Loader,
    Loc,
    Refused,
    check_bounds,
    format_problems,
    message,
    path,
    read_bounded,
    show,
    suggest,
    syntax_problem,
    value_of,
)
from .config_sources import (
    _NAME,
    FeatureMetric,
    FeatureSpec,
    ItemSpec,
    _DimensionId,
    _fail,
    _Model,
    _Number,
    _Problems,
    _Text,
)
from .errors import ConfigError
from .types import Aggregation, JSONDict, Model, Region

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "Config",
    "FeatureMetric",
    "FeatureSpec",
    "ItemSpec",
    "MatchingSettings",
    "PendoSettings",
    "PipelineSpec",
    "SyncSettings",
    "config_path_from_env",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH: Final = "pendo_planhat.yaml"
CONFIG_ENV_VAR: Final = "PENDO_PLANHAT_CONFIG"

_SOURCE: Final = (
    "{source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}}"
)
# Field checks. Each raises its problems as one pydantic error, at (a place below) the field.


def _default_if_none(value: object) -> object:  # `features:` with nothing after it
    if value is None:
        raise PydanticUseDefault
    return value


_zone_names = cache(zoneinfo.available_timezones)


def _timezone(name: str) -> str:
    # Membership first: on a case-insensitive file system "america/new_york" loads, but Pendo
    # and everything downstream expect the canonical spelling.
    with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        if (not _zone_names() or name in _zone_names()) and zoneinfo.ZoneInfo(name):
            return name
    zone = "use your Pendo subscription's zone, e.g. America/New_York, Europe/Berlin or UTC"
    _fail(f"{show(name)} is not an IANA time zone; {suggest(name, _zone_names())}{zone}")


def _date(value: object) -> object:
    if not isinstance(value, str):
        return value  # a date already, or what pydantic refuses
    text = value.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        problem = "has a time; give only" if re.match(r"\d{4}-\d{2}-\d{2}[Tt ]", text) else "is not"
        _fail(f"{show(text)} {problem} a date written YYYY-MM-DD, e.g. 2026-09-01")
    try:
        return date.fromisoformat(text)
    except ValueError:
        _fail(f"{show(text)} is not a real date (check month and day)")


def _app_ids(value: object) -> object:
    hint = "must be `all` or a list of Pendo app ids (integers), e.g. [-323232]"
    if type(value_of(value)) is int:
        _fail(f"{hint}; write one app id as a list: [{value}]")
    if value == "all":
        return value
    if not isinstance(value, list | tuple):
        typo = suggest(value, ["all"]) if isinstance(value, str) else ""
        _fail(f"{hint}; {typo}got {show(value)}")
    if not value:
        _fail("is an empty list; use `all` for every app, or list at least one app id")
    ids = [value_of(item) for item in value]
    problems: _Problems = []
    for index, (item, app_id) in enumerate(zip(value, ids, strict=True)):
        if type(app_id) is not int:
            quoted = "; write it without quotes" if re.fullmatch(r"-?\d+", str(item)) else ""
            message = f"must be an integer Pendo app id, e.g. -323232; got {show(item)}{quoted}"
            problems.append(((index,), message))
        elif app_id in ids[:index]:
            problems.append(((index,), f"app id {app_id} is listed twice; list each app once"))
    return tuple(ids) if not problems else _fail(problems)


def _stages(value: object) -> object:
    if not isinstance(value, list | tuple):
        return value  # pydantic refuses it
    problems: _Problems = []
    stages = _json(value, (), problems)
    problems = problems or _stage_problems(stages)
    return tuple(stages) if not problems else _fail(problems)


def _json(value: object, loc: Loc, problems: _Problems) -> Any:
    """Stage data read from YAML as JSON-ready Python, reporting what JSON cannot hold."""
    if isinstance(value, Mapping):
        return {str(k): _json(v, (*loc, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v, (*loc, i), problems) for i, v in enumerate(value)]
    if isinstance(value := value_of(value), float) and not math.isfinite(value):
        problems.append((loc, f"{value} is not a JSON number"))
    return value


def _stage_problems(stages: list[Any]) -> _Problems:
    """Check a Pendo stage list: one-key operators, the first a source naming one row source."""
    if not stages:
        return [((), f"is empty; the first stage must be a source, e.g. {_SOURCE}")]
    ops = [next(iter(s)) if isinstance(s, dict) and len(s) == 1 else None for s in stages]
    shape = (
        "each stage must be a mapping with one key, the operator name (e.g. identified: accountId)"
    )
    problems: _Problems = [
        ((i,), f"{shape}; got {show(s)}") for i, s in enumerate(stages) if not ops[i]
    ]
    sources = [i for i, op in enumerate(ops) if op == "source"]
    if not sources:
        no_source = f"a pipeline without a source stage; the first stage must be {_SOURCE}"
        problems.append(((0,), no_source))
    elif sources[0]:
        problems.append(((sources[0],), "the source stage must be the first stage"))
    problems += [((i,), "only the first stage may be a source") for i in sources[1:]]
    if ops[0] == "source":
        problems += [((0,), message) for message in _source_problems(stages[0]["source"])]
    return problems


def _source_problems(source: object) -> list[str]:
    if not isinstance(source, dict):
        return [f"the source must hold one row source and a timeSeries, e.g. {_SOURCE}"]
    rows = [str(key) for key in source if key != "timeSeries"]
    none = "the source names no row source; add one, e.g. featureEvents: null"
    many = f"the source names {len(rows)} row sources ({', '.join(rows)}); give exactly one"
    problems = [] if len(rows) == 1 else [many if rows else none]
    if not isinstance(source.get("timeSeries", {}), dict):
        example = (
            "e.g. {period: dayRange, first: now(), count: -1} (the sync sets it per partition)"
        )
        problems.append(f"source.timeSeries must be a mapping, {example}")
    return problems


# The config. A field's description words its problems (see message): a noun phrase.

_WholeNumber = Annotated[int, pd.BeforeValidator(value_of), Field(strict=True)]
_Share = Annotated[_Number, Field(ge=0, le=1)]
_OrDefault = pd.BeforeValidator(_default_if_none)


class PendoSettings(_Model):
    """The ``pendo:`` section: which Pendo subscription to read, from which day."""

    region: Region = Field(default="us", description="Pendo region")
    timezone: Annotated[_Text, pd.AfterValidator(_timezone)] = Field(
        description="an IANA time zone name such as America/New_York"
    )
    start_date: Annotated[date, pd.BeforeValidator(_date)] = Field(
        description="a date written YYYY-MM-DD, e.g. 2026-09-01"
    )
    app_ids: Annotated[Literal["all"] | tuple[int, ...], pd.BeforeValidator(_app_ids)] = Field(
        default="all", description="`all` or a list of Pendo app ids (integers)"
    )


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
        Mapping[str, _DimensionId],
        pd.AfterValidator(MappingProxyType),
        pd.PlainSerializer(dict),
    ] = Field(
        min_length=1,
        description="at least one result field mapped to a Planhat dimensionId, e.g. "
        "`totalEvents: pendo_clicks`",
    )
    aggregation: Aggregation = Field(default="last", description="aggregation")
    stages: Annotated[tuple[JSONDict, ...], pd.BeforeValidator(_stages)] = Field(
        alias="pipeline",
        description="a list of Pendo pipeline stages, the first a source "
        "(or `pipeline_file:`, a JSON file holding them)",
    )
    pipeline_file: _Text | None = Field(default=None, description="a JSON file holding the stages")


class SyncSettings(_Model):
    """The optional ``sync:`` section (an extension of DESIGN.md §5): thresholds and paging."""

    min_match_rate: _Share = Field(
        default=0.5, description="the share of identified events that must match"
    )
    max_quarantine_share: _Share = Field(
        default=0.01, description="the largest share of a day's rows to quarantine"
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
    lookback_days: _WholeNumber = Field(
        default=10,
        ge=1,
        le=90,
        description="days ending yesterday that a sync without a range (and the schedule) "
        "re-pulls, since Pendo changes recent days",
    )


def _end_user_keys(value: object) -> object:
    keys, choices = value_of(value), ["externalId", "email"]
    if not isinstance(keys, list):
        return keys  # pydantic words it
    problems: _Problems = [
        (
            (i,),
            f"{show(k)} is not an End User key; {suggest(str(k), choices)}expected one of: "
            + ", ".join(choices),
        )
        for i, k in enumerate(map(value_of, keys))
        if k not in choices
    ]
    if problems:
        _fail(problems)
    if len(set(map(str, keys))) != len(keys):
        _fail("names a key twice; list externalId and/or email once each")
    return [str(k) for k in keys]


class MatchingSettings(_Model):
    """The optional ``matching:`` section: how a Pendo visitor is found among End Users."""

    end_user_keys: Annotated[
        tuple[Literal["externalId", "email"], ...], pd.BeforeValidator(_end_user_keys)
    ] = Field(
        default=("externalId",),
        min_length=1,
        description="a list of End User keys tried in order, externalId and/or email",
    )
    visitor_email_field: _Text = Field(
        default="metadata.agent.email",
        pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$",
        description="the field of Pendo's visitors holding the email, e.g. metadata.agent.email",
    )
    create_end_users: Annotated[bool, pd.BeforeValidator(value_of)] = Field(
        default=False, strict=True, description="true or false: create missing End Users"
    )

    @property
    def needs_visitors(self) -> bool:
        """Whether matching reads Pendo's visitors (their emails)."""
        return "email" in self.end_user_keys or self.create_end_users


class Config(_Model):
    """The whole validated config. Equality and hashing ignore ``source``."""

    pendo: PendoSettings = Field(description="the `pendo:` section (timezone, start_date)")
    features: Annotated[tuple[FeatureSpec, ...], _OrDefault] = Field(
        default=(), description="a list of features, each `- id: <feature id>`"
    )
    pages: Annotated[tuple[ItemSpec, ...], _OrDefault] = Field(
        default=(), description="a list of Pendo pages, each `- id: <page id>`"
    )
    track_events: Annotated[tuple[ItemSpec, ...], _OrDefault] = Field(
        default=(), description="a list of Pendo track types, each `- id: <track type id>`"
    )
    pipelines: Annotated[tuple[PipelineSpec, ...], _OrDefault] = Field(
        default=(), description="a list of pipelines, each `- name: <name>`"
    )
    sync: Annotated[SyncSettings, _OrDefault] = Field(
        default=SyncSettings(), description="the optional `sync:` section"
    )
    matching: Annotated[MatchingSettings, _OrDefault] = Field(
        default=MatchingSettings(), description="the optional `matching:` section"
    )
    _source: str = pd.PrivateAttr(default="<string>")

    @property
    def source(self) -> str:
        """Where the config was read from, usually its path; ``<string>`` for parsed text."""
        return self._source


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``$PENDO_PLANHAT_CONFIG`` in ``environ`` (or ``os.environ``), else ``pendo_planhat.yaml``."""
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
    try:
        text = read_bounded(file)
    except Refused as exc:
        raise ConfigError(format_problems(str(file), [exc.problem])) from None
    except FileNotFoundError:
        if path is not None:
            where = f"looked for {file.absolute()}"
        elif os.environ.get(CONFIG_ENV_VAR, "").strip():
            where = f"{CONFIG_ENV_VAR} points to {file}, which does not exist"
        else:
            where = f"{CONFIG_ENV_VAR} is not set, so it was looked for in {Path.cwd()}"
        example = f"export {CONFIG_ENV_VAR}=/path/to/{DEFAULT_CONFIG_PATH}"
        how = f"set {CONFIG_ENV_VAR} to its path, e.g. {example}"
        problem = f"config file not found ({where}). Create it, or {how}"
    except IsADirectoryError:
        problem = f"is a directory; {CONFIG_ENV_VAR} must name the YAML file itself"
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text (undecodable byte at offset {exc.start})"
    except OSError as exc:
        problem = f"cannot read the config file: {exc.strerror}"
    else:
        return parse_config(text, source=str(file), base_dir=file.parent)
    raise ConfigError(f"{file}: {problem}") from None


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
    # `from None` throughout: PyYAML's text quotes the offending line, which may hold a secret,
    # and pydantic's errors hold the input values; a chained exception would print them.
    try:
        loader = Loader(text)
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(format_problems(source, [syntax_problem(exc)])) from None
    except Refused as exc:
        raise ConfigError(format_problems(source, [exc.problem])) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        bad = f"the file contains a character YAML does not allow (#x{exc.character:04x})"
        raise ConfigError(format_problems(source, [(line, (), f"{bad}; remove it")])) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{source}: cannot parse the YAML ({type(exc).__name__})") from None
    if data is None:
        needs = "a `pendo:` section (timezone, start_date) and at least one entry under `features:`"
        raise ConfigError(f"{source}: the config file is empty; it needs {needs} or `pipelines:`")
    if isinstance(data, dict):
        _check_entries(data, loader, base_dir)
    try:
        config = Config.model_validate(data)
    except pd.ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            if any(loc[: len(done)] == done for done in loader.replaced):
                continue  # the loader said what is wrong there
            if error["type"] == "config":
                for at, problem in error["ctx"]["problems"]:
                    loader.report((*loc, *at), problem)
            else:
                loader.report(loc, message(Config, error["type"], loc, error["input"]))
    if loader.problems:
        raise ConfigError(format_problems(source, loader.problems)) from None
    config._source = source
    return config


def _check_entries(data: dict[str, Any], loader: Loader, base_dir: Path | None) -> None:
    """What spans entries: something to sync, each id used once, ``pipeline_file`` read."""
    sections = ("features", "pages", "track_events", "pipelines")
    lists = {k: v if isinstance(v := data.get(k), list) else [] for k in sections}
    if not any(lists.values()):
        nothing = "list at least one feature under `features:` or one pipeline under `pipelines:`"
        loader.report(("features",), f"nothing to sync: {nothing}")
    unique = [  # (what may appear once, section, key path, noun, verb)
        ("ids", "features", ("id",), "feature id", "used"),
        ("ids", "pages", ("id",), "page id", "used"),
        ("ids", "track_events", ("id",), "track type id", "used"),
        ("names", "pipelines", ("name",), "pipeline name", "used"),
        ("dimensions", "pipelines", ("metrics",), "dimensionId", "fed"),
        ("dimensions", "features", ("metric", "dimension_id"), "dimensionId", "fed"),
    ]
    seen: dict[tuple[str, str], tuple[Loc, Loc]] = {}  # (kind, value) -> its owner and place
    for kind, section, keys, noun, verb in unique:
        for i, item in enumerate(lists[section]):
            loc: Loc = (section, i, *keys)
            value: Any = item
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            places = [(loc, (section, i), value)]
            if isinstance(value, dict):  # dimensionIds: each value of the mapping
                places = [((*loc, k), (*loc, k), v) for k, v in value.items()]
            for at, owner, name in places:
                if isinstance(name, str) and (kind, name) in seen:
                    first = seen[kind, name]
                    where = f"{path(first[0])} (line {loader.line_of(first[1])})"
                    once = f"each {noun} may appear once"
                    loader.report(at, f"{noun} {show(name)} is already {verb} by {where}; {once}")
                elif isinstance(name, str):
                    seen[kind, name] = (owner, at)
    for i, item in enumerate(lists["pipelines"]):
        name = item.get("pipeline_file") if isinstance(item, dict) else None
        at = ("pipelines", i, "pipeline_file")
        if not isinstance(name, str) or not name.strip():
            continue
        if "pipeline" in item:
            both = "give either `pipeline` (the stages inline) or `pipeline_file`, not both"
            loader.report(at, both)
            continue
        stages, problems = _read_stages(name, base_dir)
        for place, problem in problems:
            loader.report((*at, *place), problem)
        if problems:  # they say it all: `pipeline` is not also missing
            loader.replaced.add(("pipelines", i, "pipeline"))
        else:
            lists["pipelines"][i] = {**item, "pipeline": stages}


def _read_stages(name: str, base_dir: Path | None) -> tuple[Any, _Problems]:
    """Read a ``pipeline_file`` (stages, or a whole aggregation body): its stages and problems."""
    file = Path(name).expanduser()
    file = base_dir / file if base_dir is not None and not file.is_absolute() else file
    try:
        text = read_bounded(file)
        data = json.loads(text, parse_constant=_not_json, object_pairs_hook=_unique_keys)
    except Refused as exc:
        problem = f"in {file}, line {exc.problem[0]}: {exc}"
    except RecursionError:
        problem = f"in {file}: the pipeline {TOO_DEEP}"
    except FileNotFoundError:
        relative = "a relative path is read from the config's directory"
        problem = f"pipeline file not found: {file} (looked for {file.absolute()}; {relative})"
    except UnicodeDecodeError:
        problem = f"{file} is not UTF-8 text"
    except json.JSONDecodeError as exc:
        problem = f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except ValueError as exc:  # from _not_json or _unique_keys
        problem = f"{file} is not valid JSON: {exc}"
    except OSError as exc:
        problem = f"cannot read {file}: {exc.strerror}"
    else:
        request = data.get("request") if isinstance(data, dict) else None
        stages = request.get("pipeline") if isinstance(request, dict) else data
        if bounds := check_bounds(stages):
            return None, [((), f"in {file}: the pipeline {bounds}")]
        if isinstance(stages, list):
            return stages, [(loc, f"in {file}: {m}") for loc, m in _stage_problems(stages)]
        body = 'a whole Pendo aggregation body {"response": ..., "request": {"pipeline": [...]}}'
        problem = f"{file} must hold a list of pipeline stages or {body}; got {show(data)}"
    return None, [((), problem)]


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> JSONDict:
    keys = [key for key, _ in pairs]
    if repeated := [key for i, key in enumerate(keys) if key in keys[:i]]:
        raise ValueError(f"duplicate key {repeated[0]!r} in a JSON object")
    return dict(pairs)
