"""
A WSDL's operations as couchgw calls them: each operation's parameters and answer as a tree of
XML Schema types (L{couchgw.targets.xsd}); a message's arguments, in natural JSON, checked whole
against that tree and turned into the shape suds sends (L{check_arguments}); and the answer
turned back into natural JSON (L{answer_json}).

Natural JSON: an object for a complex type, a JSON list for a repeated element and for an
array type (suds' own form of an array type, an object holding the list under the repeated
element's name, is taken too), an attribute by its name, and a type with simple content as its
value alone or as an object with C{value} and the attributes.  Null is as absent.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from suds.client import Client
from suds.sudsobject import Factory, Property
from suds.sudsobject import Object as SudsObject

from couchgw.checks import Rejected, json_kind, short
from couchgw.targets import values
from couchgw.targets.values import Mismatch
from couchgw.targets.xsd import Complex, Field, Reader, Simple

SOAP12_BINDING_NS = "http://schemas.xmlsoap.org/wsdl/soap12/"


@dataclass(eq=False)
class Operation:
    """An operation: its parameters (the fields of C{params}) and what it answers."""

    name: str
    params: Complex
    returns: list[Field] = field(default_factory=list)

    def describe(self) -> list[dict[str, Any]]:
        """Each parameter: name, type name, whether required and repeated."""
        return [
            {"name": p.name, "type": type_name(p.type), "required": p.required, "many": p.many}
            for p in self.params.fields
        ]


def type_name(model: Simple | Complex) -> str:
    if isinstance(model, Simple):
        return model.name
    if model.items is not None and model.name is None:
        return type_name(model.items.type) + "[]"
    return model.name or "object"


class SoapVersionError(ValueError):
    """The WSDL offers no binding that suds speaks (SOAP 1.1)."""


def soap11_port(client: Client) -> Any:
    """
    The first port of the WSDL's services with a SOAP 1.1 binding.

    @raise SoapVersionError: there is none (suds speaks SOAP 1.1 alone).
    """
    found = []
    for service in client.wsdl.services:
        for port in service.ports:
            if port.binding.root.getChild("binding", ns=(None, SOAP12_BINDING_NS)) is None:
                return port
            found.append(port.name)
    if found:
        raise SoapVersionError(
            f"the WSDL offers only SOAP 1.2 bindings (port {', '.join(found)}); "
            "couchgw calls services over SOAP 1.1"
        )
    raise SoapVersionError("the WSDL names no service port")


def operations_of(client: Client, port: Any) -> dict[str, Operation]:
    """Each operation of a port, with its parameters and answer read from the WSDL's schema."""
    reader = Reader()
    operations = {}
    for name, method in port.methods.items():
        binding = method.binding.input
        if method.soap.input.body.wrapped:
            wrapper = reader.type_of(binding.bodypart_types(method)[0][1])
            assert isinstance(wrapper, Complex)
            params = Complex(
                None,
                fields=[f for f in wrapper.fields if not f.attribute],
                choices=wrapper.choices,
            )
        else:
            params = Complex(
                None,
                fields=[reader.field(d[1], name=str(d[0])) for d in binding.param_defs(method)],
            )
        returns = [reader.field(rt) for rt in method.binding.output.returned_types(method)]
        operations[str(name)] = Operation(str(name), params, returns)
    return operations


def check_arguments(operation: Operation, args: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """
    A message's arguments by parameter name, in the shape suds sends, once every value in them
    fits the operation's parameters.

    @raise Rejected: what does not fit, with the path to it, in one line.
    """
    params = operation.params.fields
    names = [p.name for p in params]
    takes = ", ".join(names) or "no arguments"
    quoted = repr(operation.name)
    if isinstance(args, list):
        if len(args) > len(params):
            raise Rejected(
                f"operation {quoted} takes at most {len(params)} argument(s) "
                f"({takes}), got {len(args)}"
            )
        named = dict(zip(names, args, strict=False))
    else:
        unknown = [key for key in args if key not in names]
        if unknown:
            listed = ", ".join(short(k, 40) for k in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise Rejected(
                f"operation {quoted} takes no argument {listed}{more} (it takes: {takes})"
            )
        named = dict(args)
    missing = [p.name for p in params if p.required and named.get(p.name) is None]
    if missing:
        raise Rejected(f"operation {quoted} needs argument(s) {', '.join(map(repr, missing))}")
    _check_choices(operation.params, named, f"operation {quoted}")
    return {
        p.key: field_value(p, named[p.name], p.name)
        for p in params
        if named.get(p.name) is not None
    }


def field_value(param: Field, value: Any, path: str) -> Any:
    """A field's JSON value (not null) in the shape suds sends."""
    if not param.many:
        return _value(param.type, value, path)
    if not isinstance(value, list):
        raise Rejected(f"{path} must be a list of {type_name(param.type)}, not {json_kind(value)}")
    _check_count(param, value, path)
    return [_item(param, item, f"{path}[{i}]") for i, item in enumerate(value)]


def _item(param: Field, value: Any, path: str) -> Any:
    if value is None:
        if param.nillable:
            return None
        raise Rejected(f"{path} must be {_described(param.type)}, not null")
    return _value(param.type, value, path)


def _check_count(param: Field, items: list[Any], path: str) -> None:
    most = param.max_items
    if len(items) < param.min_items or (most is not None and len(items) > most):
        wanted = (
            f"at least {param.min_items}"
            if most is None
            else (f"{param.min_items} to {most}" if param.min_items != most else f"exactly {most}")
        )
        raise Rejected(f"{path} must hold {wanted} item(s), not {len(items)}")


def _described(model: Simple | Complex) -> str:
    if isinstance(model, Simple):
        return values.expected(model)
    if model.anything:
        return "any value"
    if model.items is not None:
        return f"a list of {type_name(model.items.type)}"
    return f"an object ({model.name})" if model.name else "an object"


def _value(model: Simple | Complex, value: Any, path: str) -> Any:
    if isinstance(model, Simple):
        try:
            return values.lexical(model, value)
        except Mismatch as e:
            raise Rejected(f"{path} must be {e}") from None
    if model.anything:
        return value
    if model.items is not None:
        return _array(model, model.items, value, path)
    if model.text is not None and not isinstance(value, dict):
        attributes = [f for f in model.fields if f.attribute and f.required]
        if not attributes:
            return _text(model, {"value": value}, path)
    if not isinstance(value, dict):
        raise Rejected(f"{path} must be {_described(model)}, not {json_kind(value)}")
    known = {f.name for f in model.fields} | ({"value"} if model.text is not None else set())
    unknown = [key for key in value if key not in known]
    if unknown and not model.open:
        it_has = ", ".join(f.name for f in model.fields) or "none"
        raise Rejected(f"{path} has no field {short(unknown[0], 40)} (it has: {it_has})")
    for f in model.fields:
        if f.required and value.get(f.name) is None:
            raise Rejected(f"{path}.{f.name} is required ({_described(f.type)})")
    _check_choices(model, value, path)
    if model.text is not None:
        return _text(model, value, path)
    built = {
        f.key: field_value(f, value[f.name], f"{path}.{f.name}")
        for f in model.fields
        if value.get(f.name) is not None
    }
    built.update((key, value[key]) for key in unknown)
    return built


def _array(model: Complex, items: Field, value: Any, path: str) -> Any:
    """An array type: a JSON list, or (suds' form) an object holding the list."""
    if isinstance(value, dict) and not model.encoded and set(value) <= {items.name}:
        value = value.get(items.name)
        value = [] if value is None else value
        path = f"{path}.{items.name}"
    if not isinstance(value, list):
        raise Rejected(f"{path} must be {_described(model)}, not {json_kind(value)}")
    _check_count(items, value, path)
    listed = [_item(items, item, f"{path}[{i}]") for i, item in enumerate(value)]
    return listed if model.encoded else {items.key: listed}


def _text(model: Complex, value: dict[str, Any], path: str) -> Property:
    """A type with simple content: its text, with its attributes."""
    assert model.text is not None
    if value.get("value") is None:
        raise Rejected(f"{path}.value is required ({values.expected(model.text)})")
    try:
        text = values.lexical(model.text, value["value"])
    except Mismatch as e:
        raise Rejected(f"{path}.value must be {e}") from None
    made = Factory.property(model.name or "value", text)
    for f in model.fields:
        if value.get(f.name) is not None:
            setattr(made, f.key, field_value(f, value[f.name], f"{path}.{f.name}"))
    return made


def _check_choices(model: Complex, value: dict[str, Any], where: str) -> None:
    for choice in model.choices:
        given = [name for name in choice.names if value.get(name) is not None]
        if len(given) > 1:
            raise Rejected(
                f"{where} takes only one of {', '.join(choice.names)} (given: {', '.join(given)})"
            )
        if choice.required and not given and choice.names:
            raise Rejected(f"{where} needs one of {', '.join(choice.names)}")


def answer_json(operation: Operation, answer: Any) -> Any:
    """A suds answer to the operation as natural JSON, shaped by what the WSDL says it returns."""
    returns = operation.returns
    if len(returns) == 1:
        return _field_json(returns[0], answer)
    if returns and isinstance(answer, SudsObject):
        return _json(Complex(None, fields=returns), answer)
    return to_json(answer)


def _field_json(param: Field, value: Any) -> Any:
    if not param.many:
        return _json(param.type, value)
    items = value if isinstance(value, list) else ([] if value is None else [value])
    return [_json(param.type, item) for item in items]


def _json(model: Simple | Complex, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(model, Simple):
        return to_json(value) if isinstance(value, SudsObject) else values.to_json(model, value)
    if model.anything:
        return to_json(value)
    if model.items is not None:
        if isinstance(value, SudsObject):
            value = getattr(value, model.items.key, None)
        return _field_json(model.items, value)
    if not isinstance(value, SudsObject):
        return values.to_json(model.text, value) if model.text is not None else to_json(value)
    by_key = {f.key: f for f in model.fields}
    answer = {}
    for key, item in value:
        known = by_key.get(key)
        if known is not None:
            answer[known.name] = _field_json(known, item)
        elif key == "value" and isinstance(value, Property) and model.text is not None:
            answer["value"] = values.to_json(model.text, item)
        else:
            answer[str(key)] = to_json(item)
    return answer


def to_json(value: Any) -> Any:
    """Any SOAP answer (suds objects, text, dates, decimals, lists, binary) as plain JSON."""
    if isinstance(value, SudsObject):
        return {str(key): to_json(item) for key, item in value}
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return str(value)  # suds' Text is a str subclass
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return str(value)
