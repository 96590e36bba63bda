"""Strict YAML -> pydantic loading with compiler-style error messages.

Every problem in a file is reported on one line as ``file:line: field: message``, e.g.::

    experiments/electronic_digits.yaml:12: training.lr: Input should be greater than 0
    experiments/electronic_digits.yaml:14: training.lrr: unknown field (did you mean 'lr'?)
    experiments/electronic_digits.yaml:20: network.layers[1].outputs: Field required

The line is that of the offending key (or list item); for a missing field it is the line of the deepest
enclosing section that exists. A validator that checks several fields together points at one of them by raising a
ValueError with a ``field`` attribute, a dotted path relative to the model it validates (``drivers.setups.FieldError``).
Values changed by command-line overrides (``training.epochs=3``) have no line and are reported as
``file: field: message``.

Only ``yaml.SafeLoader`` is used: a YAML file can never construct Python objects or run code.
"""

from __future__ import annotations

import difflib
import logging
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, RootModel, ValidationError

log = logging.getLogger(__name__)

FieldPath = tuple[str | int, ...]
Problem = tuple[str, int | None, str, str]  # (file, line or None, dotted field, message)
_Entry = tuple[FieldPath, yaml.Node, yaml.Node]  # (path, parent node, key node or list item node)


class ConfigError(ValueError):
    """One or more problems in a configuration file; ``str()`` gives one ``file:line: field: message`` per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(self.problems)  # keeps the error picklable

    def __str__(self) -> str:
        return "\n".join(format_problem(*p) for p in self.problems)


def format_problem(file: str, line: int | None, field: str, message: str) -> str:
    """``file:line: field: message``; the line and the field are left out when unknown/empty."""
    where = f"{file}:{line}" if line is not None else file
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def dotted(path: Sequence[str | int]) -> str:
    """('network', 'layers', 1, 'outputs') -> 'network.layers[1].outputs'."""
    out = ""
    for item in path:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out


def parse_dotted(text: str) -> FieldPath:
    """'network.layers[1].outputs' (or 'network.layers.1.outputs') -> ('network', 'layers', 1, 'outputs')."""
    path: list[str | int] = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        if not name and not rest:
            raise ValueError(f"empty name in field path '{text}'")
        if name:
            path.append(int(name) if name.isdigit() else name)
        for index in filter(None, rest.replace("]", "").split("[")) if rest else ():
            if not index.isdigit():
                raise ValueError(f"list index must be a number in field path '{text}'")
            path.append(int(index))
    return tuple(path)


def parse_override(text: str) -> tuple[str, Any]:
    """'training.epochs=3' -> ('training.epochs', 3); the value is read as YAML (safe loader)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override '{text}' is not of the form section.field=value")
    return key.strip(), yaml.safe_load(value)


def set_by_path(d: dict, dotted_path: str, value: Any) -> None:
    """Set ``d['a']['b'][2]['c'] = value`` for ``dotted_path='a.b[2].c'``; missing sections are created.

    Raises ValueError if the path runs through a value that is not a section/list or past the end of a list.
    """
    path = parse_dotted(dotted_path)
    node: Any = d
    for i, key in enumerate(path):
        last = i == len(path) - 1
        where = dotted(path[:i]) or "the top level"
        if isinstance(node, list):
            if not isinstance(key, int) or not -len(node) <= key < len(node):
                raise ValueError(f"{where} is a list of {len(node)} items; cannot set '{dotted_path}'")
        elif isinstance(node, dict):
            key = str(key)
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            raise ValueError(f"{where} is not a section; cannot set '{dotted_path}'")
        if last:
            node[key] = value
        else:
            node = node[key]


# ---------------------------------------------------------------------------------------------------------------
# YAML nodes: lines and duplicate keys


def line_map(root: yaml.Node | None) -> dict[FieldPath, int]:
    """Map every field path in a composed YAML document to its 1-based line.

    Mapping entries map to the line of their key, list items to the line of the item. For a key given twice,
    the last one counts (as it does for the loaded values).
    """
    return {path: marker.start_mark.line + 1 for path, _parent, marker in _walk(root)}


def duplicate_keys(root: yaml.Node | None) -> list[tuple[FieldPath, int, int]]:
    """(path, line, line of the first occurrence) for every key repeated within one mapping."""
    found, reported = [], set()
    for path, parent, marker in _walk(root):
        if isinstance(parent, yaml.MappingNode) and id(marker) not in reported:
            first = next(k for k, _ in parent.value if isinstance(k, yaml.ScalarNode) and k.value == path[-1])
            if first is not marker:
                reported.add(id(marker))
                found.append((path, marker.start_mark.line + 1, first.start_mark.line + 1))
    return found


_MAX_WALK = 100_000  # entries; a document built from nested aliases can expand beyond any real configuration


def _walk(root: yaml.Node | None) -> Iterator[_Entry]:
    """Yield (path, parent node, key node or list item node) in document order.

    Aliases are followed (an aliased section gets the lines where it is written), cycles are not; only the last
    of repeated keys is descended into.
    """
    budget = _MAX_WALK

    def visit(path: FieldPath, node: yaml.Node, ancestors: frozenset[int]) -> Iterator[_Entry]:
        nonlocal budget
        if id(node) in ancestors or budget <= 0:
            return
        ancestors |= {id(node)}
        if isinstance(node, yaml.MappingNode):
            entries = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE]
            last = {k.value: v for k, v in entries}
            children = [(path + (k.value,), k, v, last[k.value] is v) for k, v in entries]
        elif isinstance(node, yaml.SequenceNode):
            children = [(path + (i,), item, item, True) for i, item in enumerate(node.value)]
        else:
            return
        for child_path, marker, value, descend in children:
            budget -= 1
            yield child_path, node, marker
            if descend:
                yield from visit(child_path, value, ancestors)

    if root is not None:
        yield from visit((), root, frozenset())


_MERGE = "tag:yaml.org,2002:merge"


def field_line(path: str | Path, field: str) -> int | None:
    """The line of ``field`` (dotted) in a YAML file, else of its deepest enclosing section there; None if the file
    cannot be read or parsed."""
    try:
        lines = line_map(yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    parts = parse_dotted(field)
    return next((lines[parts[:n]] for n in range(len(parts), 0, -1) if parts[:n] in lines), None)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_yaml_model(path: str | Path, model: type[BaseModel], *, overrides: dict | None = None) -> BaseModel:
    """Read a YAML file with the safe loader and validate it against a pydantic model.

    Args:
        path: the YAML file.
        model: the pydantic model of the whole file (sections should use ``extra="forbid"``).
        overrides: ``{"training.epochs": "3", ...}`` applied before validation; string values are read as
            YAML (so ``"3"`` is the number 3 and ``"[1, 2]"`` a list), other values are used as they are.
    Raises:
        ConfigError: listing every problem as ``file:line: field: message``.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([(file, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(file, None, "", f"cannot read file: {exc}")]) from None

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines = line_map(root)
        problems: list[Problem] = [
            (file, line, dotted(p), f"duplicate key (first given on line {first}; only one is allowed)")
            for p, line, first in duplicate_keys(root)
        ]
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "unreadable YAML"
        if exc.context and exc.problem and exc.context_mark:
            message += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise ConfigError([(file, mark.line + 1 if mark else None, "", f"YAML syntax error: {message}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(file, None, "", f"YAML syntax error: {exc}")]) from None
    finally:
        loader.dispose()

    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping of sections"
        line = root.start_mark.line + 1 if root is not None else None
        raise ConfigError(problems + [(file, line, "", f"the file is {what} (expected 'key: value' lines)")])

    overridden: list[FieldPath] = []
    for key, value in (overrides or {}).items():
        try:
            set_by_path(data, key, yaml.safe_load(value) if isinstance(value, str) else value)
            overridden.append(parse_dotted(key))
        except (ValueError, yaml.YAMLError) as exc:
            problems.append((file, None, key, f"cannot apply override: {exc}"))

    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        problems += _validation_problems(file, exc, data, model, lines, overridden)
    if problems:
        problems.sort(key=lambda p: (p[1] is None, p[1] or 0))
        raise ConfigError(problems)
    log.debug("loaded %s as %s", file, model.__name__)
    return result


def _validation_problems(file: str, exc: ValidationError, data: dict, model: type[BaseModel],
                         lines: dict[FieldPath, int], overridden: list[FieldPath]) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _data_path(loc, data, err["type"])
        message = err["msg"]
        error = err.get("ctx", {}).get("error")
        if isinstance(error, Exception):  # a validator's own message, without pydantic's "Value error, "
            message = str(error)
            if isinstance(getattr(error, "field", None), str):
                path = path + parse_dotted(error.field)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):  # e.g. an unknown ``setup``: name that field
            path = path + (str(err.get("ctx", {}).get("discriminator", "")).strip("'\""),)
            message = (f"must be one of {err['ctx']['expected_tags']}" if err["type"] == "union_tag_invalid"
                       else "missing (it selects the rest of the file's layout)")
        if err["type"] == "extra_forbidden":
            message = _unknown_field_message(str(path[-1]), _allowed_names(model, loc[:-1]))
        if any(path[:len(o)] == o for o in overridden):
            line = None  # the value came from the command line
        else:
            line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
        problem = (file, line, dotted(path), message)
        if problem in problems:
            continue
        # a plain union reports an unknown key once per member; keep the most helpful message
        same = [i for i, p in enumerate(problems) if p[:3] == problem[:3] and p[3].startswith("unknown field")]
        if same and err["type"] == "extra_forbidden":
            if "did you mean" in message:
                problems[same[0]] = problem
            continue
        # a value no member of a plain union accepts (``50 | 'INF'``): one problem naming what each would take
        same = [i for i, p in enumerate(problems) if p[:3] == problem[:3]]
        if same:
            problems[same[0]] = problem[:3] + (_either(problems[same[0]][3], message),)
            continue
        problems.append(problem)
    return problems


def _either(first: str, second: str) -> str:
    """'Input should be a finite number' + 'Input should be 'INF'' -> 'Input should be a finite number or 'INF''."""
    lead = "Input should be "
    if first.startswith(lead) and second.startswith(lead):
        return f"{first} or {second[len(lead):]}"
    return f"{first}; or: {second}"


def _data_path(loc: FieldPath, data: Any, error_type: str) -> FieldPath:
    """Keep the parts of a pydantic error location that exist in the data.

    Pydantic adds union member names or discriminator tags (``layers.1.electronic.gain``) which are not keys of
    the file; they are dropped. The last part is kept for missing fields.
    """
    path: list[str | int] = []
    node = data
    for i, item in enumerate(loc):
        if isinstance(node, Mapping) and item in node:
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and -len(node) <= item < len(node):
            node = node[item]
        elif not (i == len(loc) - 1 and error_type == "missing"):
            continue
        path.append(item)
    return tuple(path)


def _unknown_field_message(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown field (did you mean '{close[0]}'?)"
    if allowed:
        return f"unknown field (allowed: {', '.join(allowed)})"
    return "unknown field"


def _allowed_names(model: type[BaseModel], loc: FieldPath) -> list[str]:
    """Field names (and aliases) of the model(s) found at ``loc`` (a pydantic error location) inside ``model``."""
    candidates: list[Any] = _expand(model)
    for item in loc:
        step: list[Any] = []
        for tp in candidates:
            origin = typing.get_origin(tp)
            if _is_model(tp):
                fields = {f.alias or name: f for name, f in tp.model_fields.items()} | tp.model_fields
                if item in fields:
                    step += _expand(fields[item].annotation)
                elif item == tp.__name__ or item in _literal_tags(tp):
                    step.append(tp)  # a union member chosen by name or discriminator tag
            elif origin in (list, tuple, set, frozenset, Sequence):
                args = [a for a in typing.get_args(tp) if a is not Ellipsis]
                if isinstance(item, int) and args:
                    step += _expand(args[min(item, len(args) - 1)] if origin is tuple else args[0])
            elif origin in (dict, Mapping) and len(typing.get_args(tp)) == 2:
                step += _expand(typing.get_args(tp)[1])
        candidates = list(dict.fromkeys(step))
    names: list[str] = []
    for tp in candidates:
        if _is_model(tp):
            names += [f.alias or name for name, f in tp.model_fields.items()]
    return list(dict.fromkeys(names))


def _expand(tp: Any) -> list[Any]:
    """Unwrap Annotated, Optional/Union and root models into the list of concrete annotations."""
    if isinstance(tp, type) and issubclass(tp, RootModel):
        return _expand(tp.model_fields["root"].annotation)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _expand(typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(tp) for t in _expand(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _literal_tags(model: type[BaseModel]) -> set[Any]:
    """Values of the model's Literal fields (the possible discriminator tags)."""
    tags: set[Any] = set()
    for field in model.model_fields.values():
        for tp in _expand(field.annotation):
            if typing.get_origin(tp) is typing.Literal:
                tags.update(typing.get_args(tp))
    return tags


__all__ = ["ConfigError", "load_yaml_model", "set_by_path", "parse_override", "parse_dotted", "dotted",
           "format_problem", "line_map", "duplicate_keys", "field_line"]
