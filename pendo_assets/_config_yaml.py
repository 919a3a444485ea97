"""Reading the config's YAML with line numbers, and wording its problems (used by `config`).

`Loader`, PyYAML's SafeLoader, builds plain Python, keeping each key path's line and refusing
duplicate keys, secret-looking keys (their values unread), alias loops and unsupported tags. It
stops at the first value past a bound (``MAX_*``), aliases counted as copies: an alias bomb, a huge
or deeply nested file is refused before it is built.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final, TypeAlias

import pydantic as pd
import yaml
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "TOO_DEEP",
    "Loader",
    "Loc",
    "Refused",
    "Scalar",
    "check_bounds",
    "format_problems",
    "message",
    "path",
    "read_bounded",
    "show",
    "suggest",
    "syntax_problem",
    "value_of",
]

Loc: TypeAlias = tuple[str | int, ...]  # a key path, as pydantic's error ``loc``
# Bounds on a config or pipeline file (real ones: a few KB, a few hundred values), such that
# PyYAML refuses the worst of each in half a second.
MAX_BYTES: Final = 256 * 1024
MAX_DEPTH: Final = 64
MAX_VALUES: Final = 10_000
TOO_DEEP: Final = f"nests more than {MAX_DEPTH} levels deep, the most a config may"
TOO_MANY: Final = f"holds more than {MAX_VALUES:,} keys and values, the most a pipeline may"
_TOO_BIG: Final = (
    f"the file is larger than {MAX_BYTES // 1024} KB, the most a config or pipeline file may be"
)
_ALIASES: Final = " (a YAML alias `*name` counts as a copy of what it names)"
_SECRET: Final = (
    "looks like a secret, and secrets never go in the config file. Delete this line (its value is "
    "not shown here) and set the secret in the environment or a .env file instead: "
    "PENDO_INTEGRATION_KEY, PLANHAT_API_TOKEN, PLANHAT_TENANT_TOKEN"
)
# Key names meaning a secret (lowercased, letters and digits only). Broad on purpose: a false alarm
# costs a rename, a miss leaks a key into git.
_SECRET_KEY: Final = re.compile(
    r"^(passwd|credentials)$|(token|password|secret|apikey|integrationkey)$"
)
STR, INT, FLOAT, BOOL, NULL, TIMESTAMP, SEQ, MAP, MERGE = (
    f"tag:yaml.org,2002:{t}"
    for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map", "merge")
)


class Scalar(str):
    """A YAML number or boolean: the text as written (an id, a name), and the ``value`` read."""

    value: object


def value_of(item: object) -> object:
    return item.value if isinstance(item, Scalar) else item


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class Refused(yaml.YAMLError):
    """Input past a bound: ``problem`` is its (line, place, message)."""

    def __init__(self, line: int, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.problem = (line, loc, message)


def read_bounded(file: Path) -> str:
    """A config or pipeline file's text, refused past ``MAX_BYTES`` without reading the rest."""
    with file.open("rb") as stream:
        head = stream.read(MAX_BYTES + 1)
    if len(head) > MAX_BYTES:
        raise Refused(head.count(b"\n", 0, MAX_BYTES) + 1, (), _TOO_BIG)
    return head.decode("utf-8-sig")


def check_bounds(data: object) -> str | None:
    """What makes parsed JSON go past ``MAX_DEPTH`` or ``MAX_VALUES``, if anything."""
    stack, count = [(data, 1)], 0
    while stack:
        item, depth = stack.pop()
        count += 1 + (len(item) if isinstance(item, dict) else 0)  # and its keys
        if depth > MAX_DEPTH or count > MAX_VALUES:
            return TOO_DEEP if depth > MAX_DEPTH else TOO_MANY
        items = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in items)
    return None


class Loader(yaml.SafeLoader):
    """Builds plain Python, keeping each key path's line (that of its key or its list item).

    What a config may not hold goes in ``problems`` as (line, place, message); a place whose
    value was refused goes in ``replaced``, so that what the model says of it is not said twice.
    """

    def __init__(self, text: str) -> None:
        if len(text) > MAX_BYTES:  # as read_bounded; at least as many bytes as characters
            raise Refused(text.count("\n", 0, MAX_BYTES) + 1, (), _TOO_BIG)
        super().__init__(text)
        self.at: Loc = ()  # the key path being read
        self.lines: dict[Loc, int] = {(): 1}
        self.problems: list[tuple[int, Loc, str]] = []
        self.replaced: set[Loc] = set()
        self.values = self.depth = self.deepest = 0  # while composing, aliases expanded
        self.expanded: dict[Node, tuple[int, int]] = {}  # anchored node: its values and height

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Compose, counting values and depth with aliases expanded; refused past a bound."""
        self.check_event()  # reads the node's first event into current_event
        event, outer, values, deepest = self.current_event, self.at, self.values, self.deepest
        if isinstance(index, int | ScalarNode):  # a list item, or a key's value
            self.at = (*outer, index if isinstance(index, int) else index.value)
        alias = self.anchors.get(event.anchor) if isinstance(event, AliasEvent) else None
        count, height = (1, 1) if alias is None else self.expanded.get(alias, (1, 1))
        self.depth, self.values = self.depth + 1, values + count
        self.deepest = self.depth + height - 1  # the deepest in this node, then in its parent
        if self.deepest > MAX_DEPTH or self.values > MAX_VALUES:
            many = f"the config passes {MAX_VALUES:,} keys and values here, the most it may hold"
            problem = TOO_DEEP if self.deepest > MAX_DEPTH else many
            aliases = _ALIASES if self.anchors else ""
            raise Refused(event.start_mark.line + 1, self.at, problem + aliases)
        node = super().compose_node(parent, index)
        if event.anchor is not None and alias is None:
            self.expanded[self.anchors[event.anchor]] = (
                self.values - values,
                self.deepest - self.depth + 1,
            )
        self.depth, self.deepest, self.at = self.depth - 1, max(deepest, self.deepest), outer
        return node

    def line_of(self, loc: Loc) -> int:  # or of its nearest parent present (a missing key)
        while loc not in self.lines:
            loc = loc[:-1]
        return self.lines[loc]

    def report(self, loc: Loc, message: str, line: int | None = None) -> None:
        self.problems.append((line or self.line_of(loc), loc, message))

    def refuse(self, node: Node, message: str) -> None:
        self.report(self.at, message, _line(node))
        self.replaced.add(self.at)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if node not in self.recursive_objects:
            return super().construct_object(node, deep=True)  # depth first, so `at` is right
        self.refuse(node, "is an alias of a node that holds it; remove the loop")

    def _child(self, part: str | int, line: int, node: Node) -> Any:
        outer, self.at = self.at, (*self.at, part)
        self.lines[self.at] = line
        value, self.at = self.construct_object(node), outer
        return value

    def _sequence(self, node: SequenceNode) -> list[Any]:
        return [self._child(i, _line(item), item) for i, item in enumerate(node.value)]

    def _mapping(self, node: MappingNode) -> dict[str, Any]:
        own = {id(pair) for pair in node.value if pair[0].tag != MERGE}  # merged keys yield to own
        try:
            self.flatten_mapping(node)  # merged pairs first
        except yaml.constructor.ConstructorError:
            self.refuse(node, "`<<` must merge other mappings: one, or a list of them")
            node.value = [pair for pair in node.value if pair[0].tag != MERGE]
        result: dict[str, Any] = {}
        first: dict[str, int] = {}
        for pair in node.value:
            (key_node, value_node), key, line = pair, pair[0].value, _line(pair[0])
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (STR, INT, FLOAT, BOOL):
                self.report(self.at, "keys must be text, e.g. `name: value`", line)
            elif _SECRET_KEY.search(re.sub(r"[^a-z0-9]", "", key.lower())):
                self.report((*self.at, key), _SECRET, line)  # and its value is never read
            elif key in first and id(pair) in own:
                self.report((*self.at, key), f"duplicate key (first on line {first[key]})", line)
            else:
                first.update({key: line} if id(pair) in own else {})
                result[key] = self._child(key, line, value_node)
        return result

    def _typed(self, node: ScalarNode) -> object:
        with contextlib.suppress(ValueError, KeyError, yaml.YAMLError):  # `!!int x`: the text
            scalar = Scalar(node.value)
            scalar.value = yaml.SafeLoader.yaml_constructors[node.tag](self, node)
            return scalar
        return node.value

    def _unsupported(self, node: Node) -> None:
        tag = f"uses the YAML tag {node.tag!r}, which the config does not support"
        self.refuse(node, f"{tag}; remove it")

    yaml_constructors: typing.ClassVar[dict[str | None, Any]] = {
        **dict.fromkeys((STR, TIMESTAMP), yaml.SafeLoader.construct_yaml_str),  # dates as text
        **dict.fromkeys((INT, FLOAT, BOOL), _typed),
        NULL: yaml.SafeLoader.construct_yaml_null,
        SEQ: _sequence,
        MAP: _mapping,
        None: _unsupported,
    }


def path(loc: Loc) -> str:
    """``("pipelines", 0, "metrics", "a b")`` -> ``pipelines[0].metrics["a b"]``."""
    key = re.compile(r"[A-Za-z_][\w-]*", re.ASCII)
    parts = (str(p) if key.fullmatch(str(p)) else json.dumps([p], ensure_ascii=False) for p in loc)
    return ".".join(parts).replace(".[", "[")


def show(value: object) -> str:
    """A value as messages quote it: ``'usa'``, ``a list``, ``an empty value``."""
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, list(value)[:5]))
        return f"a mapping with {len(value)} keys ({keys})" if value else "an empty mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, str) and value:
        return repr(str(value) if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, str | bool):
        return str(value).lower() or "an empty text"
    return "an empty value" if value is None else repr(value)


def suggest(value: str, choices: Collection[str]) -> str:
    """``"did you mean 'X'? "`` for a case-only difference or a close typo, else ``""``."""
    by_case = {choice.casefold(): choice for choice in choices}
    close = [by_case[value.casefold()]] if value.casefold() in by_case else []
    close = close or difflib.get_close_matches(value, list(choices), n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}? " if close else ""


def format_problems(source: str, problems: list[tuple[int, Loc, str]]) -> str:
    ordered = sorted(problems, key=lambda problem: problem[0])  # stable: a line keeps its order
    head = f"{source}: {len(ordered)} problem{'s' * (len(ordered) != 1)} in the config file:"
    lines = (f"  {source}:{n}: {path(loc) or '(top level)'}: {text}" for n, loc, text in ordered)
    return "\n".join([head, *lines])


def syntax_problem(exc: yaml.MarkedYAMLError) -> tuple[int, Loc, str]:
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
    return (line, (), message)


# Wording pydantic's errors


def message(root: type[pd.BaseModel], kind: str, loc: Loc, value: Any) -> str:
    """Word a pydantic error from the field's description, choices, bounds and default."""
    model, field, value = *_field_at(root, loc), value_of(value)
    what = field.description if field is not None else "a mapping"
    match kind:
        case "extra_forbidden":
            allowed, key = list(_fields(_field_at(root, loc[:-1])[0])), str(loc[-1])
            hint = f"{suggest(key, allowed)}allowed keys here: {', '.join(allowed)}"
            return f"unknown key {key!r}; {hint}"
        case "missing":
            return f"is required but missing; expected {what}"
        case "model_type" | "model_attributes_type":
            keys = ", ".join(_fields(model))
            return f"must be a mapping with the keys {keys}; got {show(value)}"
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
        case "int_type" | "float_type" if field is not None:
            return f"must be {_hint(field)}; got {show(value)}"
        case "string_too_long" | "too_long" if field is not None:
            most = _bound(field, "max_length")
            return f"is {len(value)} characters long; the most allowed is {most}"
        case "string_pattern_mismatch":
            return f"{show(value)} is not {what}"
    return f"must be {what}; got {show(value)}"  # a wrong type, or empty


def _field_at(
    root: type[pd.BaseModel], loc: Loc
) -> tuple[type[pd.BaseModel] | None, FieldInfo | None]:
    """The model at ``loc`` (None inside a field's value) and the field holding it."""
    model: type[pd.BaseModel] | None = root
    field: FieldInfo | None = None
    for part in (part for part in loc if isinstance(part, str)):  # a list item: the list's model
        if part not in _fields(model):
            return None, field
        field = _fields(model)[part]
        types = (field.annotation, *typing.get_args(field.annotation))
        models = [t for t in types if isinstance(t, type) and issubclass(t, pd.BaseModel)]
        model = models[0] if models else None
    return model, field


def _fields(model: type[pd.BaseModel] | None) -> dict[str, FieldInfo]:
    """A model's fields by the key the file uses for them."""
    fields = model.model_fields if model else {}
    return {info.alias or name: info for name, info in fields.items()}


def _bound(field: FieldInfo, name: str) -> Any:
    return next((getattr(m, name) for m in field.metadata if hasattr(m, name)), None)


def _hint(field: FieldInfo) -> str:
    """What a number field takes, e.g. ``seconds to wait from 1 to 3600 (default 60)``."""
    numbers = (_bound(field, "ge"), _bound(field, "le"), field.default)
    low, high, default = (str(n).removesuffix(".0") for n in numbers)  # 1000000, not 1e+06
    span = f" from {low} to {high}" if high != "None" else f" ≥ {low}" if low != "None" else ""
    default = "" if field.default is PydanticUndefined else f" (default {default})"
    return f"{field.description}{span}{default}"
