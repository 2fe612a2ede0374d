"""
The JSON Schema (draft 2020-12) of an operation's arguments, from the same tree of types the
gateway checks them with (L{couchgw.targets.wsdl}): a message's C{args} as an object
(keyword arguments) or an array (positional ones), each named complex type once under
C{$defs}.

The gateway checks a little more than the schema can say: the bounds of a decimal given as a
string, C{totalDigits} and C{fractionDigits}, and that a date's day exists in its month.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from couchgw.targets import values
from couchgw.targets.wsdl import Operation
from couchgw.targets.xsd import Complex, Field, Simple

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_NOT_NULL = {"not": {"type": "null"}}


def arguments_schema(operation: Operation) -> dict[str, Any]:
    """The JSON Schema of a message's C{args} for this operation."""
    writer = _Writer()
    params = operation.params
    as_object = writer.object(params)
    required = [i for i, p in enumerate(params.fields) if p.required]
    as_array: dict[str, Any] = {
        "type": "array",
        "prefixItems": [writer.field(p) for p in params.fields],
        "items": False,
    }
    if required:
        as_array["minItems"] = required[-1] + 1
    described: dict[str, Any] = {
        "$schema": DIALECT,
        "title": f"the arguments of {operation.name}",
        "anyOf": [as_object, as_array],
    }
    if writer.defs:
        described["$defs"] = writer.defs
    return described


class _Writer:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}
        self._named: dict[int, str] = {}

    def field(self, param: Field) -> dict[str, Any]:
        """A field's schema: its type's, as a list if it repeats, null allowed unless required."""
        described = self.type(param.type)
        if param.many:
            described = self.items(param, described)
        return described if param.required else _nullable(described)

    def items(self, param: Field, item: dict[str, Any]) -> dict[str, Any]:
        if param.nillable:
            item = _nullable(item)
        listed: dict[str, Any] = {"type": "array", "items": item}
        if param.min_items:
            listed["minItems"] = param.min_items
        if param.max_items is not None:
            listed["maxItems"] = param.max_items
        return listed

    def type(self, model: Simple | Complex) -> dict[str, Any]:
        if isinstance(model, Simple):
            return values.schema(model)
        if model.anything:
            return {}
        if model.name is None:
            return self.complex(model)
        name = self._named.get(id(model))
        if name is None:
            name = model.name
            while name in self.defs:
                name += "_"
            self._named[id(model)] = name
            self.defs[name] = {}  # a type met again within itself refers to this
            self.defs[name] = self.complex(model)
        return {"$ref": f"#/$defs/{name}"}

    def complex(self, model: Complex) -> dict[str, Any]:
        if model.items is not None:
            listed = self.items(model.items, self.type(model.items.type))
            if model.encoded:
                return {**listed, "title": model.name or "array"}
            inner = _nullable(listed)
            wrapper: dict[str, Any] = {"type": "object", "additionalProperties": False}
            if model.items.min_items:
                inner = listed
                wrapper["required"] = [model.items.name]
            wrapper["properties"] = {model.items.name: inner}
            return {"title": model.name or "array", "anyOf": [listed, wrapper]}
        described = self.object(model)
        if model.text is not None:
            text = values.schema(model.text)
            if any(f.required for f in model.fields):
                return described
            return {"title": described.get("title"), "anyOf": [text, described]}
        return described

    def object(self, model: Complex) -> dict[str, Any]:
        properties = {f.name: self.field(f) for f in model.fields}
        required = [f.name for f in model.fields if f.required]
        if model.text is not None:
            properties["value"] = values.schema(model.text)
            required.insert(0, "value")
        described: dict[str, Any] = {"type": "object"}
        if model.name:
            described["title"] = model.name
        described["properties"] = properties
        if required:
            described["required"] = required
        if not model.open:
            described["additionalProperties"] = False
        rules: list[dict[str, Any]] = []
        for choice in model.choices:
            names = choice.names
            if len(names) > 1:
                both = [_given(a, b) for a, b in combinations(names, 2)]
                rules.append({"not": {"anyOf": both}})
            if choice.required and names:
                rules.append({"anyOf": [_given(name) for name in names]})
        if rules:
            described["allOf"] = rules
        return described


def _nullable(described: dict[str, Any]) -> dict[str, Any]:
    """The schema, or null."""
    if "enum" in described:
        return {**described, "enum": [*described["enum"], None]}
    if isinstance(described.get("type"), str) and "anyOf" not in described:
        return {**described, "type": [described["type"], "null"]}
    return {"anyOf": [described, {"type": "null"}]}


def _given(*names: str) -> dict[str, Any]:
    """Each of these keys is there, and not null."""
    return {"required": list(names), "properties": {name: _NOT_NULL for name in names}}


# -- the same, for people (couchgw routes) ---------------------------------------------------


def arguments_tree(schema: Any) -> list[str]:
    """
    The fields of an operation's complex arguments, from its JSON Schema, one a line and
    indented by depth: C{name?: type}, C{[]} after a list, the constraints after.
    """
    if not isinstance(schema, dict) or not schema.get("anyOf"):
        return []
    defs = schema.get("$defs", {})
    lines: list[str] = []
    _fields(schema["anyOf"][0], defs, 0, lines, [])
    return lines


def _resolved(node: Any, defs: dict[str, Any]) -> tuple[dict[str, Any], str | None, bool]:
    """A property's schema without null, $ref and list: (schema, its $defs name, a list)."""
    many = False
    named = None
    for _ in range(6):
        if not isinstance(node, dict):
            return {}, named, many
        options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
        if "description" in node:
            return node, named, many
        if "$ref" in node:
            named = node["$ref"].rsplit("/", 1)[-1]
            node = defs.get(named, {})
        elif node.get("type") == "array" or node.get("type") == ["array", "null"]:
            many = True
            node = node.get("items", {})
        elif options and "type" not in node:
            node = options[0]
        else:
            return node, named, many
    return node, named, many


def _label(node: dict[str, Any], named: str | None) -> str:
    """A simple type as its schema describes it, a complex one by its name."""
    return str(node.get("description") or node.get("title") or named or node.get("type") or "any")


def _fields(
    node: dict[str, Any], defs: dict[str, Any], depth: int, lines: list[str], seen: list[str]
) -> None:
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        inner, named, many = _resolved(prop, defs)
        mark = "" if name in required else "?"
        lines.append(f"{'  ' * depth}{name}{mark}: {_label(inner, named)}{'[]' if many else ''}")
        if inner.get("properties") and named not in seen:
            _fields(inner, defs, depth + 1, lines, [*seen, *(n for n in [named] if n)])
        elif named in seen:
            lines[-1] += " (as above)"
