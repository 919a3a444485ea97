"""YAML checked against pydantic models, every problem worded for people and placed on its line.

:func:`check` is the whole of it: the composed YAML nodes become plain Python (:class:`Reader`),
recording each key path's lines and refusing what YAML allows but a config file should not
(duplicate keys, secret-looking keys, whose values are never read, unsupported tags, bad ``<<``
merges); the model validates that; and each pydantic error becomes a ``file:line: key.path:
message`` line, worded from the field's description, ``Literal`` choices, bounds and default
(:func:`_message`). Field checks raise their own wording with :func:`fail`. The result is one
:class:`ConfigError` listing every problem, sorted by line.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NoReturn, TypeAlias, TypeVar, cast

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError

__all__ = [
    "FLOAT",
    "INT",
    "NULL",
    "STR",
    "TIMESTAMP",
    "Handler",
    "Loc",
    "Reader",
    "Scalar",
    "check",
    "fail",
    "path",
    "repeats",
    "show",
    "suggest",
    "validate_with",
]

Loc: TypeAlias = tuple[str | int, ...]  # a key path, as pydantic's error ``loc``
Handler: TypeAlias = Callable[[Any], Any]  # pydantic's own validation, in a wrap validator
_Problem: TypeAlias = tuple[int, str, str]  # line, key path, message
_M = TypeVar("_M", bound=BaseModel)

_MAX_DEPTH: Final = 64
# Key names (lowercased, letters and digits only) that mean a secret, and endings that do. Broad
# on purpose: a false alarm costs a rename, a miss leaks a key into git.
_SECRET_NAMES: Final = frozenset({"token", "password", "passwd", "secret", "credentials"})
_SECRET_ENDINGS: Final = ("token", "password", "secret", "apikey", "integrationkey")
STR, INT, FLOAT, NULL, TIMESTAMP, _MERGE = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "null", "timestamp", "merge")
)
_SCALAR_TAGS: Final = frozenset({STR, INT, FLOAT, "tag:yaml.org,2002:bool", NULL, TIMESTAMP})


class Scalar(str):
    """A YAML scalar other than a string: its text as written, and the ``value`` YAML read.

    So a field can take ``12345`` or ``yes`` as written (an id, a name) or as read (a number).
    """

    tag: str
    value: object

    def __new__(cls, text: str, tag: str, value: object) -> Scalar:
        scalar = super().__new__(cls, text)
        scalar.tag, scalar.value = tag, value
        return scalar


def check(
    text: str, model: type[_M], *, source: str, empty: str, secret: str, context: dict[str, Any]
) -> _M:
    """Validate a YAML document against ``model``.

    Args:
        text: The YAML document.
        model: The root model.
        source: What messages call the document, usually its path.
        empty: The message for a document with nothing in it.
        secret: The message for a secret-looking key (its value is never shown).
        context: Passed to the model's validators, with ``lines`` added: key path -> line.

    Returns:
        The validated model.

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
        raise ConfigError(_format(source, [(line, "", message)])) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: cannot parse the YAML ({type(exc).__name__})") from None
    if root is None:
        raise ConfigError(f"{source}: {empty}")
    reader = Reader(secret)
    data = reader.read(root, ())
    try:
        result = model.model_validate(data, context={**context, "lines": reader.lines})
    except ValidationError as exc:
        # Not chained: the pydantic error holds the input values.
        problems = reader.problems + _problems(exc, reader, model)
        raise ConfigError(_format(source, problems)) from None
    if reader.problems:
        raise ConfigError(_format(source, reader.problems))
    return result


def fail(problems: str | Sequence[tuple[Loc, str]]) -> NoReturn:
    """Raise a message, or (place below the field, message) pairs, as one pydantic error."""
    problems = [((), problems)] if isinstance(problems, str) else list(problems)
    raise PydanticCustomError("config", "; ".join(m for _, m in problems), {"problems": problems})


def validate_with(
    handler: Handler, data: Any, problems: Sequence[tuple[Loc, str]], *, skip: Loc = ()
) -> Any:
    """Run pydantic's validation of ``data``; raise its errors and ``problems`` together.

    ``problems`` are (place in this model, message) pairs; errors at or below ``skip`` are dropped.
    """
    errors: list[Any] = []
    try:
        result = handler(data)
    except ValidationError as exc:
        for e in exc.errors():
            if not skip or e["loc"][: len(skip)] != skip:
                error = PydanticCustomError(e["type"], e["msg"], e.get("ctx"))
                errors.append({"type": error, "loc": e["loc"], "input": e["input"]})
    for loc, message in problems:
        error = PydanticCustomError("config", message, {"problems": [((), message)]})
        errors.append({"type": error, "loc": loc, "input": None})
    if errors:
        raise ValidationError.from_exception_data("Config", errors)
    return result


def repeats(
    entries: Sequence[tuple[Loc, str, str]], info: ValidationInfo, noun: str, verb: str
) -> list[tuple[Loc, str]]:
    """Report each (place, owner, value) whose value an earlier entry has already."""
    lines: Mapping[Loc, int] = (info.context or {}).get("lines", {})
    seen: dict[str, tuple[Loc, str]] = {}
    problems: list[tuple[Loc, str]] = []
    for loc, owner, value in entries:
        if value in seen:
            first, other = seen[value]
            line = lines.get((str(info.field_name), *first))
            where = f"{other} (line {line})" if line else other
            message = f"{noun} {show(value)} is already {verb} {where}; each {noun} may appear once"
            problems.append((loc, message))
        seen.setdefault(value, (loc, owner))
    return problems


def path(loc: Loc) -> str:
    """``("pipelines", 0, "metrics", "a b")`` -> ``pipelines[0].metrics["a b"]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def show(value: object) -> str:
    """A value as messages quote it: ``'usa'``, ``a list``, ``an empty value``."""
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, list(value)[:5]))
        return f"a mapping with {len(value)} keys ({keys})" if value else "an empty mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, str) and value:
        return repr(str(value) if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, str):
        return "an empty text"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "an empty value" if value is None else repr(value)


def suggest(value: str, choices: Sequence[str] | frozenset[str]) -> str:
    """Return ``"did you mean 'X'? "`` for a case-only difference or a close typo, else ``""``."""
    by_case = {c.casefold(): c for c in choices}
    close = [by_case[value.casefold()]] if value.casefold() in by_case else []
    close = close or difflib.get_close_matches(value, list(choices), n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}? " if close else ""


class Reader:
    """Turns a composed YAML node tree into plain Python, recording each key path's lines.

    Scalars other than strings become :class:`Scalar`, so that a field can take them as written
    (an id) or as YAML read them (a number). What YAML allows but the config does not is reported
    here, in :attr:`problems`; a bad scalar's path goes in :attr:`replaced`, so that what the
    model then says about its stand-in value is not reported twice.
    """

    def __init__(self, secret: str) -> None:
        self._secret = secret  # the message for a secret-looking key
        self.problems: list[_Problem] = []
        self.lines: dict[Loc, int] = {(): 1}  # key path -> the line its value starts on
        self.anchors: dict[Loc, int] = {(): 1}  # key path -> the line of its key or list item
        self.replaced: set[Loc] = set()  # paths whose value was reported here and replaced
        self._loader = yaml.SafeLoader("")
        self._open: set[int] = set()  # id() of the nodes being read: an alias loop comes back

    def read(self, node: Node, loc: Loc) -> Any:
        """Return ``node`` as plain Python; ``loc`` is its key path."""
        self.lines[loc] = _line(node)
        if id(node) in self._open:
            self.replaced.add(loc)
            self._bad(node, loc, "is an alias of a node that holds it; remove the loop")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                for index, item in enumerate(node.value):
                    self.anchors[(*loc, index)] = _line(item)
                return [self.read(item, (*loc, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, loc)
            return self._scalar(cast(ScalarNode, node), loc)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        own: dict[str, int] = {}  # key -> line; a key merged in with `<<` may be overridden
        for key_node, value_node, merged in self._pairs(node, loc, 0):
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS - {NULL}:
                self._bad(key_node, loc, "keys must be text, e.g. `name: value`")
                continue
            key = str(key_node.value)
            where = (*loc, key)
            if _is_secret_key(key):
                self._bad(key_node, where, self._secret)
                continue  # never look into, let alone echo, the secret's value
            if not merged:
                if key in own:
                    self._bad(key_node, where, f"duplicate key (first on line {own[key]})")
                    continue
                own[key] = _line(key_node)
            self.anchors[where] = _line(key_node)
            result[key] = self.read(value_node, where)
        return result

    def _pairs(self, node: MappingNode, loc: Loc, depth: int) -> list[tuple[Node, Node, bool]]:
        """Return the (key, value, came from a ``<<`` merge) pairs, merges expanded first."""
        merged: list[tuple[Node, Node, bool]] = []
        own: list[tuple[Node, Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            if depth > _MAX_DEPTH or not all(isinstance(s, MappingNode) for s in sources):
                self._bad(key_node, loc, "`<<` must merge other mappings: one, or a list of them")
                continue
            for source in reversed(sources):  # the first mapping listed wins, so it comes last
                merged.extend((k, v, True) for k, v, _ in self._pairs(source, loc, depth + 1))
        return merged + own

    def _scalar(self, node: ScalarNode, loc: Loc) -> object:
        if node.tag in (STR, NULL):
            return None if node.tag == NULL else node.value
        if node.tag not in _SCALAR_TAGS:
            self.replaced.add(loc)
            message = (
                f"uses the YAML tag {node.tag!r}, which the config does not support; remove it"
            )
            self._bad(node, loc, message)
            return node.value
        value: object = node.value  # a date is checked from its text; JSON has no dates
        if node.tag != TIMESTAMP:
            with contextlib.suppress(yaml.YAMLError, ValueError):  # odd text: keep the text
                value = self._loader.construct_object(node, deep=True)
        return Scalar(node.value, node.tag, value)

    def _bad(self, node: Node, loc: Loc, message: str) -> None:
        self.problems.append((_line(node), path(loc), message))


def _line(node: Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 1


def _is_secret_key(key: str) -> bool:
    normalised = re.sub(r"[^a-z0-9]", "", key.lower())
    return normalised in _SECRET_NAMES or normalised.endswith(_SECRET_ENDINGS)


def _problems(exc: ValidationError, reader: Reader, root: type[BaseModel]) -> list[_Problem]:
    """Turn pydantic's errors into problems, each with its line, key path and message."""
    found: list[_Problem] = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        if any(loc[: len(done)] == done for done in reader.replaced):
            continue  # the reader reported it
        if error["type"] == "config":
            items = [((*loc, *at), message) for at, message in error["ctx"]["problems"]]
        else:
            items = [
                (loc, _message(error["type"], root, loc, error["input"], error.get("ctx") or {}))
            ]
        for where, message in items:
            lines = reader.anchors if error["type"] == "extra_forbidden" else reader.lines
            line, parent = lines.get(where), where
            while line is None:  # a missing key, or a place inside a value: its parent's line
                parent = parent[:-1]
                line = reader.anchors.get(parent)
            found.append((line, path(where), message))
    return found


def _message(kind: str, root: type[BaseModel], loc: Loc, value: Any, ctx: dict[str, Any]) -> str:
    model, field = _field_at(root, loc)
    what = field.description if field is not None else "a mapping"
    match kind:
        case "extra_forbidden":
            allowed, key = list(_fields(_field_at(root, loc[:-1])[0])), str(loc[-1])
            hint = f"{suggest(key, allowed)}allowed keys here: {', '.join(allowed)}"
            return f"unknown key {key!r}; {hint}"
        case "missing":
            return f"is required but missing; expected {what}"
        case "model_type" | "model_attributes_type":
            return f"must be a mapping with the keys {', '.join(_fields(model))}; got {show(value)}"
        case "literal_error" if field is not None:
            choices = [str(choice) for choice in typing.get_args(field.annotation)]
            one_of = "expected one of: " + ", ".join(choices)
            if isinstance(value, str):
                return f"{show(value)} is not a valid {what}; {suggest(value, choices)}{one_of}"
            return f"must be a {what}; {one_of}; got {show(value)}"
        case "finite_number" if field is not None:
            return f"must be a finite number: {_hint(field)}"
        case "greater_than_equal" | "less_than_equal" if field is not None:
            return f"{value!r} is out of range: {_hint(field)}"
        case "int_type" if field is not None and isinstance(value, float):
            return f"must be a whole number: {_hint(field)}; got {value!r}"
        case "int_type" | "float_type" if field is not None:
            return f"must be {_hint(field)}; got {show(value)}"
        case "string_too_long" | "too_long":
            return f"is {len(value)} characters long; the most allowed is {ctx['max_length']}"
        case "string_pattern_mismatch":
            return f"{show(value)} is not {what}"
    return f"must be {what}; got {show(value)}"  # a wrong type, or empty


def _field_at(root: type[BaseModel], loc: Loc) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """Return the model at ``loc`` (None inside a field's value) and the field holding it."""
    model: type[BaseModel] | None = root
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, str):  # an item of a list keeps the list's model
            if part not in _fields(model):
                return None, field
            field = _fields(model)[part]
            model = _model_in(field.annotation)
    return model, field


def _fields(model: type[BaseModel] | None) -> dict[str, FieldInfo]:
    """A model's fields by the key the file uses for them."""
    fields = model.model_fields.items() if model is not None else ()
    return {info.alias or name: info for name, info in fields}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is None and isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _hint(field: FieldInfo) -> str:
    """What a number field takes, e.g. ``seconds to wait from 1 to 3600 (default 60)``."""
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    span = f" from {_plain(low)} to {_plain(high)}" if high is not None else ""
    span = f" ≥ {_plain(low)}" if low is not None and high is None else span
    default = "" if field.default is PydanticUndefined else f" (default {_plain(field.default)})"
    return f"{field.description}{span}{default}"


def _format(source: str, problems: Sequence[_Problem]) -> str:
    ordered = sorted(problems, key=lambda p: p[0])  # stable: same-line problems keep order
    lines = [f"{source}: {len(ordered)} problem{'s' * (len(ordered) != 1)} in the config file:"]
    lines += [
        f"  {source}:{line}: {where or '(top level)'}: {text}" for line, where, text in ordered
    ]
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
    return (line, "", message)


def _plain(number: object) -> str:
    """1000000 rather than 1e+06 or 1000000.0 in messages."""
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)
