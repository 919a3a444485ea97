"""Load and validate the pendo-planhat YAML config (DESIGN.md §5) into frozen, typed objects.

Validation collects every problem in the file and raises one :class:`ConfigError` that lists
them, one per line, each naming the file, the line, the key path and what to change::

    pendo_planhat.yaml: 2 problems in the config file:
      pendo_planhat.yaml:2: pendo.region: 'usa' is not a valid Pendo region; did you mean 'us'? ...
      pendo_planhat.yaml:12: pipelines[0].model: 'company' is not a valid Planhat model; did you ...

Line numbers come from the YAML node marks (``yaml.compose``): the file is checked as written,
before PyYAML turns it into plain Python objects. Secrets never live in the file; a
secret-looking key is rejected and its value is never echoed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError
from .types import MODELS, REGIONS, Aggregation, JSONDict, Model, Region

__all__ = [
    "AGGREGATIONS",
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
    "app_id_param",
    "config_path_from_env",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH: Final = "pendo_planhat.yaml"
CONFIG_ENV_VAR: Final = "PENDO_PLANHAT_CONFIG"
SECRET_ENV_VARS: Final = ("PENDO_INTEGRATION_KEY", "PLANHAT_API_TOKEN", "PLANHAT_TENANT_TOKEN")
AGGREGATIONS: Final[tuple[Aggregation, ...]] = ("last", "sum")
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

_HASH_VERSION: Final = 1
_MAX_ACTION_LENGTH: Final = 255
_MAX_DEPTH: Final = 64
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_PLAIN_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_STR: Final = "tag:yaml.org,2002:str"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_BOOL: Final = "tag:yaml.org,2002:bool"
_NULL: Final = "tag:yaml.org,2002:null"
_TIMESTAMP: Final = "tag:yaml.org,2002:timestamp"
_MERGE: Final = "tag:yaml.org,2002:merge"
_SCALAR_TAGS: Final = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP})

# Key names (lowercased, letters and digits only) that mean a secret, and endings that do. Broad
# on purpose: a false alarm costs a rename, a miss leaks a key into git.
_SECRET_NAMES: Final = frozenset({"token", "password", "passwd", "secret", "credentials"})
_SECRET_ENDINGS: Final = ("token", "password", "secret", "apikey", "integrationkey")

_ROOT_KEYS: Final = ("pendo", "features", "pipelines", "sync")
_PENDO_KEYS: Final = ("region", "timezone", "start_date", "app_ids")
_FEATURE_KEYS: Final = ("id", "action", "weight")
_PIPELINE_KEYS: Final = (
    "name",
    "model",
    "id_field",
    "metrics",
    "aggregation",
    "pipeline",
    "pipeline_file",
)
#: ``sync:`` key -> (lowest, highest, whole number, what it is).
_SYNC_RANGES: Final[Mapping[str, tuple[float, float, bool, str]]] = MappingProxyType(
    {
        "min_match_rate": (0, 1, False, "the share of identified events that must match"),
        "max_quarantine_share": (
            0,
            1,
            False,
            "the largest share of a day's rows that may be quarantined",
        ),
        "page_size": (1000, 1_000_000, True, "Pendo rows per request, a whole number"),
        "request_timeout_seconds": (1, 3600, False, "seconds to wait for an answer"),
        "retry_attempts": (1, 20, True, "attempts per request, a whole number"),
        "retry_backoff_seconds": (
            0,
            60,
            False,
            "the first wait between attempts, doubled each time",
        ),
        "retry_max_delay_seconds": (0, 3600, False, "the longest wait between attempts"),
    }
)
_SYNC_KEYS: Final = tuple(_SYNC_RANGES)


def _plain(number: float) -> str:
    """1000000 rather than 1e+06 in messages."""
    return str(int(number)) if float(number).is_integer() else str(number)


_SOURCE_EXAMPLE: Final = (
    "{source: {featureEvents: null, timeSeries: {period: dayRange, first: now(), count: -1}}}"
)
_SECRET_MESSAGE: Final = (
    "looks like a secret, and secrets never go in the config file. Delete this line (its value "
    "is not shown here) and set the secret in the environment or a .env file instead: "
    + ", ".join(SECRET_ENV_VARS)
)


# --------------------------------------------------------------------------------------------
# The typed config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PendoSettings:
    """The ``pendo:`` section: which Pendo subscription to read, from which day."""

    region: Region = "us"
    timezone: str
    start_date: date
    app_ids: AppIds = "all"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The subscription's time zone; partitions are its days."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def host(self) -> str:
        """The Pendo host for ``region``, e.g. ``app.eu.pendo.io``."""
        return PENDO_HOSTS[self.region]

    @property
    def app_id_param(self) -> str | int | list[int]:
        """``app_ids`` as a row-source ``appId`` parameter (see :func:`app_id_param`)."""
        return app_id_param(self.app_ids)


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """A Pendo feature whose events become Planhat User Activities."""

    id: str
    action: str | None = None
    weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class PipelineSpec:
    """A Pendo aggregation pipeline whose result rows become Planhat Custom Metrics.

    ``metrics`` maps a result field to a Planhat dimensionId. ``stages`` is the Pendo pipeline;
    its first stage is the source, whose ``timeSeries`` :meth:`request_body` sets per partition.
    Both are copied on construction; treat ``stages`` as read-only.
    """

    name: str
    model: Model
    id_field: str = "accountId"
    metrics: Mapping[str, str]
    aggregation: Aggregation = "last"
    stages: tuple[JSONDict, ...]

    def __post_init__(self) -> None:
        # Never aliased with the caller's objects; metrics is read-only as well.
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "stages", tuple(copy.deepcopy(list(self.stages))))

    def __hash__(self) -> int:
        return hash(_canonical_json(self._normalised()))

    @property
    def row_source(self) -> str:
        """The source stage's row source, e.g. ``featureEvents``."""
        return _row_source_name(self._source(self.stages))

    def request_body(
        self, *, first_ms: int, count: int = 1, app_ids: AppIds | None = None
    ) -> JSONDict:
        """Build the Pendo aggregation request body for a window of days.

        Args:
            first_ms: Start of the first day: the subscription's local midnight as UTC epoch ms.
            count: Number of ``dayRange`` periods from ``first_ms``.
            app_ids: When given, set the row source's ``appId`` from it, unless the pipeline
                already sets one.

        Returns:
            ``{"response": {...}, "request": {"requestId": name, "pipeline": [...]}}`` whose
            source stage has ``timeSeries`` = ``{"period": "dayRange", "first": first_ms,
            "count": count}``. A fresh copy: the spec is never modified.

        Raises:
            ConfigError: The spec was built by hand without a source stage first.
        """
        stages = copy.deepcopy(list(self.stages))
        source = self._source(stages)
        source["timeSeries"] = {"period": "dayRange", "first": first_ms, "count": count}
        if app_ids is not None:
            row_source = _row_source_name(source)
            params = source[row_source]
            if params is None:
                source[row_source] = {"appId": app_id_param(app_ids)}
            elif isinstance(params, dict):
                params.setdefault("appId", app_id_param(app_ids))
        return {
            "response": {"mimeType": "application/json"},
            "request": {"requestId": self.name, "pipeline": stages},
        }

    def _source(self, stages: Sequence[JSONDict]) -> JSONDict:
        source = _source_args(stages[0]) if stages else None
        if source is None or not any(key != "timeSeries" for key in source):
            raise ConfigError(f"pipeline {self.name!r} does not start with a source stage")
        return source

    def _normalised(self) -> JSONDict:
        return {
            "name": self.name,
            "model": self.model,
            "id_field": self.id_field,
            "metrics": dict(sorted(self.metrics.items())),
            "aggregation": self.aggregation,
            "stages": list(self.stages),
        }


@dataclass(frozen=True, kw_only=True)
class SyncSettings:
    """The optional ``sync:`` section (an extension of DESIGN.md §5): thresholds and paging."""

    min_match_rate: float = 0.5
    max_quarantine_share: float = 0.01
    page_size: int = 100_000
    request_timeout_seconds: float = 60.0
    retry_attempts: int = 5
    retry_backoff_seconds: float = 1.0
    retry_max_delay_seconds: float = 300.0


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated config. Equality and :meth:`config_hash` ignore ``source``."""

    pendo: PendoSettings
    features: tuple[FeatureSpec, ...] = ()
    pipelines: tuple[PipelineSpec, ...] = ()
    sync: SyncSettings = field(default_factory=SyncSettings)
    source: str = field(default="<string>", compare=False)

    def config_hash(self) -> str:
        """Return a stable sha256 hex digest of the normalised content.

        Comments, key order, feature and pipeline order, ``pipeline`` versus ``pipeline_file``
        and the file's path leave it unchanged; any value that changes what is synced changes it.
        """
        return hashlib.sha256(_canonical_json(self.as_dict()).encode("utf-8")).hexdigest()

    def as_dict(self) -> JSONDict:
        """Return the normalised, JSON-ready content that :meth:`config_hash` digests."""
        pendo, sync = self.pendo, self.sync
        return {
            "version": _HASH_VERSION,
            "pendo": {
                "region": pendo.region,
                "timezone": pendo.timezone,
                "start_date": pendo.start_date.isoformat(),
                "app_ids": pendo.app_ids if pendo.app_ids == "all" else list(pendo.app_ids),
            },
            "features": [
                {"id": f.id, "action": f.action, "weight": float(f.weight)}
                for f in sorted(self.features, key=lambda f: f.id)
            ],
            "pipelines": [p._normalised() for p in sorted(self.pipelines, key=lambda p: p.name)],
            "sync": {
                "min_match_rate": float(sync.min_match_rate),
                "max_quarantine_share": float(sync.max_quarantine_share),
                "page_size": sync.page_size,
            },
            # Timeouts and retries change how, not what, is synced: not part of the hash.
        }

    @property
    def dimension_ids(self) -> tuple[str, ...]:
        """Every Planhat dimensionId the pipelines feed, in config order."""
        return tuple(d for p in self.pipelines for d in p.metrics.values())

    def pipeline(self, name: str) -> PipelineSpec:
        """Return the pipeline called ``name``.

        Raises:
            KeyError: No pipeline has that name.
        """
        for spec in self.pipelines:
            if spec.name == name:
                return spec
        raise KeyError(name)


def app_id_param(app_ids: AppIds) -> str | int | list[int]:
    """Encode ``pendo.app_ids`` as a row-source ``appId``: ``expandAppIds("*")``, an id or ids."""
    if app_ids == "all":
        return ALL_APPS
    return app_ids[0] if len(app_ids) == 1 else list(app_ids)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """Return ``$PENDO_PLANHAT_CONFIG`` when set, else ``pendo_planhat.yaml`` (working dir)."""
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
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # `from None` here and below: PyYAML's own text quotes the offending line, which may
        # hold a secret, and a chained exception would print it in the traceback.
        raise ConfigError(_format(source, [_syntax_problem(exc)])) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        message = f"the file contains a character YAML does not allow (#x{code:04x}); remove it"
        raise ConfigError(_format(source, [_Problem(line, "", message)])) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: cannot parse the YAML ({type(exc).__name__})") from None
    if root is None:
        raise ConfigError(
            f"{source}: the config file is empty; it needs a `pendo:` section (timezone, "
            "start_date) and at least one entry under `features:` or `pipelines:`"
        )
    parser = _Parser(source=source, base_dir=base_dir)
    config = parser.parse(root)
    if parser.problems or config is None:
        raise ConfigError(_format(source, parser.problems))
    return config


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    line: int
    path: str
    message: str


class _Invalid:
    """The type of :data:`_INVALID`, a value already reported as a problem."""


_INVALID: Final = _Invalid()


def _format(source: str, problems: Sequence[_Problem]) -> str:
    ordered = sorted(problems, key=lambda p: p.line)  # stable: same-line problems keep order
    lines = [f"{source}: {len(ordered)} problem{'s' * (len(ordered) != 1)} in the config file:"]
    for p in ordered:
        lines.append(f"  {source}:{p.line}: {p.path + ': ' if p.path else ''}{p.message}")
    return "\n".join(lines)


def _syntax_problem(exc: yaml.MarkedYAMLError) -> _Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = exc.problem or "invalid YAML"
    if exc.context:
        where = f" (line {exc.context_mark.line + 1})" if exc.context_mark is not None else ""
        problem = f"{exc.context}{where}, {problem}"
    message = f"YAML syntax error at line {line}, column {column}: {problem}"
    if "'\\t'" in problem:
        message += "; indent with spaces, YAML does not allow tabs"
    elif "<block end>" in problem or "<block mapping start>" in problem:
        message += "; check this line's indentation against the lines above it"
    return _Problem(line, "", message)


def _line(node: Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 1


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    return "an empty value" if value is None else repr(value)


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "an empty value" if node.tag == _NULL else _show(str(node.value))


def _describe(value: object) -> str:
    if isinstance(value, dict):
        keys = ", ".join(map(str, list(value)[:5]))
        return f"a mapping with {len(value)} keys ({keys})" if value else "an empty mapping"
    return "a list" if isinstance(value, list) else _show(value)


def _one_of(values: Sequence[str]) -> str:
    return "expected one of: " + ", ".join(values)


def _suggest(value: str, choices: Sequence[str] | frozenset[str]) -> str:
    """Return ``"did you mean 'X'? "`` for a case-only difference or a close typo, else ``""``."""
    by_case = {c.casefold(): c for c in choices}
    close = [by_case[value.casefold()]] if value.casefold() in by_case else []
    close = close or difflib.get_close_matches(value, list(choices), n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}? " if close else ""


def _is_secret_key(key: str) -> bool:
    normalised = re.sub(r"[^a-z0-9]", "", key.lower())
    return normalised in _SECRET_NAMES or normalised.endswith(_SECRET_ENDINGS)


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _is_zone(name: str) -> bool:
    # Membership first: on a case-insensitive file system "america/new_york" loads, but Pendo
    # and everything downstream expect the canonical spelling.
    if _zone_names() and name not in _zone_names():
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _source_args(stage: object) -> JSONDict | None:
    if isinstance(stage, dict) and len(stage) == 1 and isinstance(stage.get("source"), dict):
        return cast(JSONDict, stage["source"])
    return None


def _row_source_name(source: Mapping[str, Any]) -> str:
    return next(key for key in source if key != "timeSeries")


def _canonical_json(value: object) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


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
                    f"identified: accountId); got {_describe(stage)}",
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


# --------------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------------


class _Parser:
    """Walks the composed YAML node tree, collecting problems and building the config."""

    def __init__(self, *, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[_Problem] = []
        self._loader = yaml.SafeLoader("")
        self._secret_keys: set[int] = set()  # id() of key nodes already reported as secrets
        self._key_lines: dict[str, int] = {}  # key path -> its line, for "missing" problems
        self._dimension_ids: dict[str, tuple[str, int]] = {}  # -> (key path, line)

    def bad(self, where: Node | int, path: str, message: str) -> _Invalid:
        """Record a problem at a node (or line) and return :data:`_INVALID`."""
        line = where if isinstance(where, int) else _line(where)
        self.problems.append(_Problem(line, path, message))
        return _INVALID

    # -- sections -----------------------------------------------------------------------------

    def parse(self, root: Node) -> Config | None:
        self._scan_secrets(root, "", set())
        fields = self._fields(root, "", _ROOT_KEYS, required=("pendo",), line=1)
        if fields is None:
            return None
        pendo = self._pendo(fields["pendo"]) if "pendo" in fields else None
        features = self._features(fields["features"]) if "features" in fields else ()
        pipelines = self._pipelines(fields["pipelines"]) if "pipelines" in fields else ()
        sync = self._sync(fields["sync"]) if "sync" in fields else SyncSettings()
        # Counted on the nodes, so that a list whose items all failed still counts.
        if not any(
            isinstance(node, SequenceNode) and node.value
            for node in (fields.get("features"), fields.get("pipelines"))
        ):
            line = self._key_lines.get("features", self._key_lines.get("pipelines", 1))
            self.bad(
                line,
                "features",
                "nothing to sync: list at least one feature under "
                "`features:` or one pipeline under `pipelines:`",
            )
        if pendo is None or features is None or pipelines is None or sync is None:
            return None
        return Config(
            pendo=pendo, features=features, pipelines=pipelines, sync=sync, source=self.source
        )

    def _pendo(self, node: Node) -> PendoSettings | None:
        line = self._key_lines["pendo"]
        fields = self._fields(node, "pendo", _PENDO_KEYS, ("timezone", "start_date"), line=line)
        if fields is None:
            return None
        region: str | _Invalid = "us"
        if "region" in fields:
            region = self._choice(fields["region"], "pendo.region", REGIONS, "Pendo region")
        timezone = self._timezone(fields["timezone"]) if "timezone" in fields else _INVALID
        start = (
            self._date(fields["start_date"], "pendo.start_date")
            if "start_date" in fields
            else _INVALID
        )
        app_ids = self._app_ids(fields["app_ids"]) if "app_ids" in fields else "all"
        if not (isinstance(region, str) and isinstance(timezone, str) and isinstance(start, date)):
            return None
        if isinstance(app_ids, _Invalid):
            return None
        return PendoSettings(
            region=cast(Region, region), timezone=timezone, start_date=start, app_ids=app_ids
        )

    def _features(self, node: Node) -> tuple[FeatureSpec, ...] | None:
        items = self._list(node, "features", "a list of features, each `- id: <feature id>`")
        if items is None:
            return None
        specs: list[FeatureSpec] = []
        seen: dict[str, tuple[str, int]] = {}
        for index, item in enumerate(items):
            path = f"features[{index}]"
            fields = self._fields(item, path, _FEATURE_KEYS, required=("id",), line=_line(item))
            if fields is None:
                continue
            feature_id: str | _Invalid = _INVALID
            if "id" in fields:
                feature_id = self._unique(
                    fields["id"], f"{path}.id", seen, "a Pendo feature id", "feature id"
                )
            action: str | _Invalid | None = None
            if "action" in fields:
                action = self._text(
                    fields["action"],
                    f"{path}.action",
                    "the activity name in Planhat (leave the key out to use the feature's name)",
                )
                if isinstance(action, str) and len(action) > _MAX_ACTION_LENGTH:
                    action = self.bad(
                        fields["action"],
                        f"{path}.action",
                        f"is {len(action)} "
                        f"characters long; the most Planhat takes is {_MAX_ACTION_LENGTH}",
                    )
            weight: float | _Invalid = 1.0
            if "weight" in fields:
                weight = self._number(
                    fields["weight"],
                    f"{path}.weight",
                    low=0.0,
                    hint="a Planhat activity weight, a number ≥ 0 (default 1)",
                )
            if (
                isinstance(feature_id, str)
                and not isinstance(action, _Invalid)
                and not isinstance(weight, _Invalid)
            ):
                specs.append(FeatureSpec(id=feature_id, action=action, weight=float(weight)))
        return tuple(specs) if len(specs) == len(items) else None

    def _pipelines(self, node: Node) -> tuple[PipelineSpec, ...] | None:
        items = self._list(node, "pipelines", "a list of pipelines, each `- name: <name>`")
        if items is None:
            return None
        names: dict[str, tuple[str, int]] = {}
        specs = [self._pipeline(item, f"pipelines[{i}]", names) for i, item in enumerate(items)]
        valid = [spec for spec in specs if spec is not None]
        return tuple(valid) if len(valid) == len(specs) else None

    def _pipeline(
        self, node: Node, path: str, names: dict[str, tuple[str, int]]
    ) -> PipelineSpec | None:
        required = ("name", "model", "metrics")
        fields = self._fields(node, path, _PIPELINE_KEYS, required, line=_line(node))
        if fields is None:
            return None
        name: str | _Invalid = _INVALID
        if "name" in fields:
            name = self._unique(
                fields["name"],
                f"{path}.name",
                names,
                "a name (letters, digits, _ and -)",
                "pipeline name",
                pattern=True,
            )
        model: str | _Invalid = _INVALID
        if "model" in fields:
            model = self._choice(fields["model"], f"{path}.model", MODELS, "Planhat model")
        id_field: str | _Invalid = "accountId"
        if "id_field" in fields:
            id_field = self._text(
                fields["id_field"],
                f"{path}.id_field",
                "the result field matched to externalId (default accountId)",
            )
        metrics = (
            self._metrics(fields["metrics"], f"{path}.metrics") if "metrics" in fields else None
        )
        aggregation: str | _Invalid = "last"
        if "aggregation" in fields:
            aggregation = self._choice(
                fields["aggregation"], f"{path}.aggregation", AGGREGATIONS, "aggregation"
            )
        stages = self._stages(fields, path, line=_line(node))
        values = (name, model, id_field, aggregation)
        if any(isinstance(v, _Invalid) for v in values) or metrics is None or stages is None:
            return None
        return PipelineSpec(
            name=cast(str, name),
            model=cast(Model, model),
            id_field=cast(str, id_field),
            metrics=metrics,
            aggregation=cast(Aggregation, aggregation),
            stages=tuple(stages),
        )

    def _metrics(self, node: Node, path: str) -> dict[str, str] | None:
        if not isinstance(node, MappingNode) or not node.value:
            self.bad(
                node,
                path,
                "must map at least one result field to a Planhat dimensionId, "
                f"e.g. `totalEvents: pendo_clicks`; got {_kind(node)}",
            )
            return None
        metrics: dict[str, str] = {}
        own: dict[str, int] = {}
        ok = True
        for key_node, value_node, merged in self._pairs(node, path):
            if id(key_node) in self._secret_keys:
                ok = False
                continue
            result_field = self._text(key_node, path, "a result field name")
            if isinstance(result_field, _Invalid):
                ok = False
                continue
            item_path = _join(path, result_field)
            if not merged:
                if result_field in own:
                    self.bad(
                        key_node,
                        item_path,
                        f"duplicate key (first on line "
                        f"{own[result_field]}); give each result field once",
                    )
                    ok = False
                    continue
                own[result_field] = _line(key_node)
            dimension = self._text(value_node, item_path, "a Planhat dimensionId")
            if isinstance(dimension, str) and not _NAME_RE.fullmatch(dimension):
                dimension = self.bad(
                    value_node,
                    item_path,
                    f"dimensionId {_show(dimension)} may "
                    "contain only letters, digits, _ and - (no spaces), as "
                    "Planhat documents",
                )
            if isinstance(dimension, str) and dimension in self._dimension_ids:
                other, other_line = self._dimension_ids[dimension]
                if other != item_path:  # the same node reached twice through a YAML merge
                    dimension = self.bad(
                        value_node,
                        item_path,
                        f"dimensionId {_show(dimension)} is already fed "
                        f"by {other} (line {other_line}); each Planhat dimensionId may come "
                        "from one metric only",
                    )
            if isinstance(dimension, _Invalid):
                ok = False
                continue
            self._dimension_ids[dimension] = (item_path, _line(value_node))
            metrics[result_field] = dimension
        return metrics if ok else None

    def _stages(self, fields: dict[str, Node], path: str, *, line: int) -> list[Any] | None:
        if "pipeline" in fields and "pipeline_file" in fields:
            self.bad(
                fields["pipeline_file"],
                f"{path}.pipeline_file",
                "give either `pipeline` (the stages inline) or `pipeline_file`, not both",
            )
            return None
        if "pipeline_file" in fields:
            return self._stages_from_file(fields["pipeline_file"], f"{path}.pipeline_file")
        if "pipeline" not in fields:
            self.bad(
                line,
                f"{path}.pipeline",
                "is required: give the Pendo pipeline as "
                "`pipeline:` (a list of stages) or `pipeline_file:` (a JSON file)",
            )
            return None
        node, stages_path = fields["pipeline"], f"{path}.pipeline"
        if not isinstance(node, SequenceNode):
            self.bad(
                node,
                stages_path,
                f"must be a list of Pendo pipeline stages, the first a source; got {_kind(node)}",
            )
            return None
        before = len(self.problems)
        stages = [self._json(item, f"{stages_path}[{i}]", 0) for i, item in enumerate(node.value)]
        if len(self.problems) == before:
            for index, message in _stage_problems(stages):
                at = node if index is None else node.value[index]
                self.bad(at, stages_path if index is None else f"{stages_path}[{index}]", message)
        return stages if len(self.problems) == before else None

    def _stages_from_file(self, node: Node, path: str) -> list[Any] | None:
        name = self._text(node, path, "the path of a JSON file holding the Pendo pipeline")
        if isinstance(name, _Invalid):
            return None
        file = Path(name).expanduser()
        if not file.is_absolute() and self.base_dir is not None:
            file = self.base_dir / file
        try:
            data = _strict_json(file.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            self.bad(
                node,
                path,
                f"pipeline file not found: {file} (looked for "
                f"{file.absolute()}; a relative path is read from the config's directory)",
            )
            return None
        except IsADirectoryError:
            self.bad(node, path, f"{file} is a directory, not a JSON pipeline file")
            return None
        except UnicodeDecodeError:
            self.bad(node, path, f"{file} is not UTF-8 text")
            return None
        except OSError as exc:
            self.bad(node, path, f"cannot read {file}: {exc.strerror}")
            return None
        except json.JSONDecodeError as exc:
            self.bad(
                node,
                path,
                f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            )
            return None
        except ValueError as exc:
            self.bad(node, path, f"{file} is not valid JSON: {exc}")
            return None
        stages = data
        if isinstance(data, dict):  # a whole aggregation request body: keep only its pipeline
            request = data.get("request")
            stages = request.get("pipeline") if isinstance(request, dict) else None
        if not isinstance(stages, list):
            self.bad(
                node,
                path,
                f"{file} must hold a list of pipeline stages or a whole Pendo "
                'aggregation body {"response": ..., "request": {"pipeline": [...]}}; got '
                f"{_describe(data)}",
            )
            return None
        problems = _stage_problems(stages)
        for index, message in problems:
            self.bad(node, path + ("" if index is None else f"[{index}]"), f"in {file}: {message}")
        return None if problems else stages

    def _sync(self, node: Node) -> SyncSettings | None:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return SyncSettings()
        fields = self._fields(node, "sync", _SYNC_KEYS, required=(), line=self._key_lines["sync"])
        if fields is None:
            return None
        default = SyncSettings()
        values: dict[str, float | int] = {}
        invalid = False
        for key, (low, high, integer, meaning) in _SYNC_RANGES.items():
            if key not in fields:
                continue
            value = self._number(
                fields[key],
                f"sync.{key}",
                low=low,
                high=high,
                integer=integer,
                hint=f"{meaning} from {_plain(low)} to {_plain(high)} (default {getattr(default, key)})",
            )
            if isinstance(value, _Invalid):
                invalid = True
            else:
                values[key] = int(value) if integer else float(value)
        return None if invalid else SyncSettings(**values)  # type: ignore[arg-type]

    # -- structure ----------------------------------------------------------------------------

    def _scan_secrets(self, node: Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, ScalarNode) else None
                if isinstance(key, str) and _is_secret_key(key):
                    self._secret_keys.add(id(key_node))
                    self.bad(key_node, _join(path, key), _SECRET_MESSAGE)
                    continue  # never look into, let alone echo, the secret's value
                self._scan_secrets(
                    value_node, _join(path, key) if isinstance(key, str) else path, seen
                )
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self._scan_secrets(item, f"{path}[{index}]", seen)

    def _pairs(self, node: MappingNode, path: str, depth: int = 0) -> list[tuple[Node, Node, bool]]:
        """Return the (key, value, came from a ``<<`` merge) pairs, merges expanded first."""
        merged: list[tuple[Node, Node, bool]] = []
        own: list[tuple[Node, Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            if depth > _MAX_DEPTH or not all(isinstance(s, MappingNode) for s in sources):
                self.bad(key_node, path, "`<<` must merge a mapping or a list of mappings")
                continue
            for source in reversed(sources):  # the first mapping listed wins, so it comes last
                merged.extend((k, v, True) for k, v, _ in self._pairs(source, path, depth + 1))
        return merged + own

    def _fields(
        self, node: Node, path: str, allowed: Sequence[str], required: Sequence[str], *, line: int
    ) -> dict[str, Node] | None:
        """Check a mapping's keys; return its value nodes by key, or None if not a mapping."""
        if not isinstance(node, MappingNode):
            self.bad(
                node,
                path or "(top level)",
                f"must be a mapping with the keys {', '.join(allowed)}; got {_kind(node)}",
            )
            return None
        values: dict[str, Node] = {}
        own: dict[str, int] = {}
        for key_node, value_node, merged in self._pairs(node, path):
            if id(key_node) in self._secret_keys:
                continue
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str) or key_node.tag == _NULL:
                self.bad(
                    key_node,
                    path or "(top level)",
                    f"keys must be plain names: {', '.join(allowed)}",
                )
                continue
            key_path = _join(path, key)
            if key not in allowed:
                self.bad(
                    key_node,
                    key_path,
                    f"unknown key {key!r}; {_suggest(key, allowed)}"
                    f"allowed keys here: {', '.join(allowed)}",
                )
                continue
            if not merged:
                if key in own:
                    self.bad(key_node, key_path, f"duplicate key (first on line {own[key]})")
                    continue
                own[key] = _line(key_node)
            values[key] = value_node
            self._key_lines[key_path] = _line(key_node)
        for key in required:
            if key not in values:
                self.bad(line, _join(path, key), "is required but missing")
        return values

    def _list(self, node: Node, path: str, what: str) -> list[Node] | None:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []
        if not isinstance(node, SequenceNode):
            self.bad(node, path, f"must be {what}; got {_kind(node)}")
            return None
        return list(node.value)

    def _json(self, node: Node, path: str, depth: int) -> Any:
        """Turn a pipeline-stage node into JSON-ready Python, reporting what JSON cannot hold."""
        if depth > _MAX_DEPTH:
            return self.bad(node, path, f"is nested over {_MAX_DEPTH} levels (a recursive alias?)")
        if isinstance(node, SequenceNode):
            return [
                self._json(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value)
            ]
        if isinstance(node, MappingNode):
            result: JSONDict = {}
            own: dict[str, int] = {}
            for key_node, value_node, merged in self._pairs(node, path):
                if id(key_node) in self._secret_keys:
                    continue
                if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS - {
                    _NULL
                }:
                    self.bad(key_node, path, "keys in a pipeline stage must be text")
                    continue
                key_path = _join(path, str(key_node.value))
                if not merged:
                    if key_node.value in own:
                        self.bad(
                            key_node,
                            key_path,
                            f"duplicate key (first on line {own[key_node.value]})",
                        )
                        continue
                    own[key_node.value] = _line(key_node)
                result[str(key_node.value)] = self._json(value_node, key_path, depth + 1)
            return result
        value = self._scalar(cast(ScalarNode, node), path)
        if isinstance(value, float) and not math.isfinite(value):
            return self.bad(node, path, f"{node.value} is not a JSON number")
        return value

    # -- values -------------------------------------------------------------------------------

    def _scalar(self, node: ScalarNode, path: str) -> object:
        if node.tag not in _SCALAR_TAGS:
            return self.bad(
                node,
                path,
                f"uses the YAML tag {node.tag!r}, which the config does not support; remove it",
            )
        if node.tag == _TIMESTAMP:
            return str(node.value)  # dates are checked from their text; JSON has no dates
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError):
            return str(node.value)

    def _text(self, node: Node, path: str, what: str) -> str | _Invalid:
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            return self.bad(node, path, f"must be {what}; got {_kind(node)}")
        if node.tag not in _SCALAR_TAGS:
            self._scalar(node, path)  # reports the unsupported tag
            return _INVALID
        # A plain scalar such as 123, yes or 2026-01-01 is taken as written: an id or a name is
        # text even where YAML would read a number, a boolean or a date.
        text = str(node.value)
        if not text.strip():
            return self.bad(node, path, f"must be {what}; got an empty text")
        if text != text.strip():
            return self.bad(node, path, f"{_show(text)} starts or ends with spaces; remove them")
        return text

    def _unique(
        self,
        node: Node,
        path: str,
        seen: dict[str, tuple[str, int]],
        what: str,
        noun: str,
        *,
        pattern: bool = False,
    ) -> str | _Invalid:
        value = self._text(node, path, what)
        if isinstance(value, _Invalid):
            return value
        if pattern and not _NAME_RE.fullmatch(value):
            return self.bad(node, path, f"{_show(value)} may contain only letters, digits, _ and -")
        if value in seen:
            other, other_line = seen[value]
            return self.bad(
                node,
                path,
                f"{noun} {_show(value)} is already used by {other} "
                f"(line {other_line}); each {noun} may appear once",
            )
        seen[value] = (path.rsplit(".", 1)[0], _line(node))
        return value

    def _choice(self, node: Node, path: str, choices: Sequence[str], what: str) -> str | _Invalid:
        value = self._text(node, path, f"a {what}; {_one_of(choices)}")
        if isinstance(value, str) and value not in choices:
            return self.bad(
                node,
                path,
                f"{_show(value)} is not a valid {what}; "
                f"{_suggest(value, choices)}{_one_of(choices)}",
            )
        return value

    def _timezone(self, node: Node) -> str | _Invalid:
        path = "pendo.timezone"
        value = self._text(node, path, "an IANA time zone name such as America/New_York")
        if isinstance(value, str) and not _is_zone(value):
            return self.bad(
                node,
                path,
                f"{_show(value)} is not an IANA time zone; "
                f"{_suggest(value, _zone_names())}use your Pendo subscription's "
                "zone, e.g. America/New_York, Europe/Berlin or UTC",
            )
        return value

    def _date(self, node: Node, path: str) -> date | _Invalid:
        hint = "a date written YYYY-MM-DD, e.g. 2026-09-01"
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            return self.bad(node, path, f"must be {hint}; got {_kind(node)}")
        text = str(node.value).strip()
        if not _DATE_RE.fullmatch(text):
            if node.tag == _TIMESTAMP:
                return self.bad(node, path, f"{_show(text)} has a time; give only {hint}")
            return self.bad(node, path, f"{_show(text)} is not {hint}")
        try:
            return date.fromisoformat(text)
        except ValueError:
            return self.bad(node, path, f"{_show(text)} is not a real date (check month and day)")

    def _app_ids(self, node: Node) -> AppIds | _Invalid:
        path = "pendo.app_ids"
        hint = "`all` or a list of Pendo app ids (integers), e.g. [-323232]"
        if isinstance(node, ScalarNode):
            if node.tag == _STR and node.value == "all":
                return "all"
            if node.tag == _INT:
                return self.bad(
                    node, path, f"must be {hint}; write one app id as a list: [{node.value}]"
                )
            suggestion = _suggest(str(node.value), ("all",)) if node.tag == _STR else ""
            return self.bad(node, path, f"must be {hint}; {suggestion}got {_kind(node)}")
        if not isinstance(node, SequenceNode):
            return self.bad(node, path, f"must be {hint}; got {_kind(node)}")
        if not node.value:
            return self.bad(
                node, path, "is an empty list; use `all` for every app, or list at least one app id"
            )
        ids: dict[int, int] = {}  # app id -> line
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            value = self._scalar(item, item_path) if isinstance(item, ScalarNode) else None
            if isinstance(value, _Invalid):
                continue
            if item.tag != _INT or not isinstance(value, int):
                quoted = item.tag == _STR and re.fullmatch(r"-?\d+", str(item.value))
                self.bad(
                    item,
                    item_path,
                    "must be an integer Pendo app id, e.g. -323232; got "
                    f"{_kind(item)}{'; write it without quotes' if quoted else ''}",
                )
            elif value in ids:
                self.bad(
                    item, item_path, f"app id {value} is listed twice (also on line {ids[value]})"
                )
            else:
                ids[value] = _line(item)
        return tuple(ids) if len(ids) == len(node.value) else _INVALID

    def _number(
        self,
        node: Node,
        path: str,
        *,
        hint: str,
        low: float,
        high: float | None = None,
        integer: bool = False,
    ) -> float | _Invalid:
        value = self._scalar(node, path) if isinstance(node, ScalarNode) else None
        if isinstance(value, _Invalid):
            return value
        if node.tag not in (_INT, _FLOAT) or not isinstance(value, (int, float)):
            return self.bad(node, path, f"must be {hint}; got {_kind(node)}")
        if not math.isfinite(value):
            return self.bad(node, path, f"must be a finite number: {hint}")
        if integer and not isinstance(value, int):
            return self.bad(node, path, f"must be a whole number: {hint}; got {value!r}")
        if value < low or (high is not None and value > high):
            return self.bad(node, path, f"{value!r} is out of range: {hint}")
        return value
