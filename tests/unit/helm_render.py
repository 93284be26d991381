"""A strict renderer of the Go-template subset the chart in deploy/helm/sfu/ uses.

Helm is not installable here (neither Debian nor PyPI ship it), so the chart's tests render
it with this instead. It is stricter than Helm where Helm hides mistakes: a ``.Values`` path
that does not exist raises (Helm prints ``<no value>``), and so does any action outside the
subset (so a template that grows past it fails its test rather than rendering wrongly).

Subset: ``{{ PIPELINE }}``, ``{{ if PIPELINE }}`` / ``{{ else }}`` / ``{{ end }}``,
``{{ range $k, $v := PIPELINE }}`` over a mapping (sorted keys, as Go does), ``{{- `` and
`` -}}`` whitespace trimming; pipelines of a value (``.Values.a.b``, ``.Release.Name``,
``$var``, a string or integer literal) through ``quote``, ``toYaml`` and ``nindent N``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["TemplateError", "render"]

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_RANGE = re.compile(r"range\s+\$(\w+)\s*,\s*\$(\w+)\s*:=\s*(.+)", re.DOTALL)


class TemplateError(Exception):
    """The template uses something outside the subset, or names a value that is missing."""


@dataclass
class _Node:
    kind: str  # "text", "out", "if", "range"
    text: str = ""
    expr: str = ""
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)
    names: tuple[str, str] = ("", "")


def _tokens(source: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, with ``{{-`` / ``-}}`` trimming applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def _parse(pieces: list[tuple[str, str]]) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    for kind, value in pieces:
        target = stack[-1][1]
        if kind == "text":
            if value:
                target.append(_Node("text", text=value))
            continue
        if value.startswith("/*"):
            continue
        word = value.split(None, 1)[0] if value else ""
        if word == "if":
            node = _Node("if", expr=value[2:].strip())
            target.append(node)
            stack.append((node, node.body))
        elif word == "range":
            match = _RANGE.fullmatch(value)
            if match is None:
                raise TemplateError(f"unsupported range form: {value!r}")
            node = _Node("range", expr=match.group(3).strip(), names=match.group(1, 2))
            target.append(node)
            stack.append((node, node.body))
        elif word == "else":
            owner = stack[-1][0]
            if owner is None or owner.kind != "if" or value != "else":
                raise TemplateError(f"unsupported else: {value!r}")
            stack[-1] = (owner, owner.orelse)
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError("end without a block")
            stack.pop()
        elif word in ("with", "define", "template", "include", "block", "tpl"):
            raise TemplateError(f"unsupported action: {value!r}")
        else:
            target.append(_Node("out", expr=value))
    if len(stack) != 1:
        raise TemplateError("unclosed block")
    return root


def _lookup(path: str, context: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
    if path.startswith("$"):
        name, _, rest = path[1:].partition(".")
        if name not in variables:
            raise TemplateError(f"undefined variable ${name}")
        value: Any = variables[name]
        parts = rest.split(".") if rest else []
    elif path.startswith("."):
        value = context
        parts = path[1:].split(".")
    else:
        raise TemplateError(f"not a value: {path!r}")
    walked = ""
    for part in parts:
        walked += "." + part
        if not isinstance(value, Mapping) or part not in value:
            raise TemplateError(f"missing value {walked} (in {path})")
        value = value[part]
    return value


def _literal(token: str) -> tuple[bool, Any]:
    if token.startswith('"'):
        return True, json.loads(token)
    if re.fullmatch(r"-?[0-9]+", token):
        return True, int(token)
    return False, None


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise TemplateError("a nil value would render as <no value>")
    if isinstance(value, Mapping | list):
        raise TemplateError("a map or list printed without toYaml")
    return str(value)


def _to_yaml(value: Any) -> str:
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    return str(yaml.safe_dump(value, default_flow_style=False, sort_keys=True)).rstrip("\n")


def _evaluate(expr: str, context: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
    result: Any = None
    for index, command in enumerate(part.strip() for part in expr.split("|")):
        words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', command)
        if not words:
            raise TemplateError(f"empty command in {expr!r}")
        head, args = words[0], words[1:]
        values = []
        for arg in args:
            is_literal, literal = _literal(arg)
            values.append(literal if is_literal else _lookup(arg, context, variables))
        if index > 0:
            values.append(result)
        if head == "quote":
            (value,) = values
            result = json.dumps(_to_text(value))
        elif head == "toYaml":
            (value,) = values
            result = _to_yaml(value)
        elif head == "nindent":
            width, value = values
            pad = " " * int(width)
            result = "\n" + "\n".join(pad + line if line else line for line in value.split("\n"))
        elif not args and index == 0:
            is_literal, literal = _literal(head)
            result = literal if is_literal else _lookup(head, context, variables)
        else:
            raise TemplateError(f"unsupported function {head!r} in {expr!r}")
    return result


def _truthy(value: Any) -> bool:
    return bool(value)  # Go templates: false, 0, "", nil and empty collections are false


def _run(nodes: list[_Node], context: Mapping[str, Any], variables: dict[str, Any]) -> str:
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "out":
            out.append(_to_text(_evaluate(node.expr, context, variables)))
        elif node.kind == "if":
            branch = node.body if _truthy(_evaluate(node.expr, context, variables)) else node.orelse
            out.append(_run(branch, context, variables))
        else:
            items = _evaluate(node.expr, context, variables)
            if not isinstance(items, Mapping):
                raise TemplateError(f"range over a non-mapping: {node.expr!r}")
            key_name, value_name = node.names
            for key in sorted(items):
                inner = {**variables, key_name: key, value_name: items[key]}
                out.append(_run(node.body, context, inner))
    return "".join(out)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render ``source`` with ``context`` (``{"Values": ..., "Release": ..., "Chart": ...}``)."""
    return _run(_parse(_tokens(source)), context, {})
