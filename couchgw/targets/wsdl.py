"""
A WSDL's operations as couchgw checks a message against them: each parameter's name, XML
Schema type, whether it is required or repeated; the check of a message's arguments; and a SOAP
answer turned into plain JSON.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from suds.client import Client
from suds.sudsobject import Object as SudsObject

from couchgw.message import Rejected, json_kind, short


def to_json(value: Any) -> Any:
    """A SOAP answer (suds objects, text, dates, decimals, lists, binary) as plain JSON."""
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


_INTEGER = re.compile(r"[+-]?\d+\Z")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
#: The XSD integer types and their ranges (None: unbounded).
_INTEGER_TYPES: dict[str, tuple[int | None, int | None]] = {
    "integer": (None, None),
    "long": (-(2**63), 2**63 - 1),
    "int": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1),
    "byte": (-(2**7), 2**7 - 1),
    "nonNegativeInteger": (0, None),
    "positiveInteger": (1, None),
    "nonPositiveInteger": (None, 0),
    "negativeInteger": (None, -1),
    "unsignedLong": (0, 2**64 - 1),
    "unsignedInt": (0, 2**32 - 1),
    "unsignedShort": (0, 2**16 - 1),
    "unsignedByte": (0, 2**8 - 1),
}
_NUMBER_TYPES = {"float", "double", "decimal"}
_SPECIAL_NUMBERS = {"NaN", "INF", "-INF", "+INF"}
#: The XSD date and time types and how to read their text.
_TIME_TYPES: dict[str, Callable[[str], Any]] = {
    "dateTime": lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")),
    "date": lambda text: date.fromisoformat(text.removesuffix("Z")),
    "time": lambda text: time.fromisoformat(text.replace("Z", "+00:00")),
}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    builtin: bool
    required: bool
    many: bool

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "required": self.required, "many": self.many}

    def check(self, value: Any) -> str | None:
        """Why C{value} cannot be sent as this parameter, or L{None} if it can."""
        if self.many and isinstance(value, list):
            for item in value:
                problem = self._check_one(item)
                if problem:
                    return f"{problem} (in the array)"
            return None
        return self._check_one(value)

    def _check_one(self, value: Any) -> str | None:
        if value is None:
            return None
        if not self.builtin or self.type == "anyType":
            return None if isinstance(value, (dict, list, str, int, float)) else "a value"
        if self.type in _INTEGER_TYPES:
            return _check_integer(value, self.type)
        if self.type in _NUMBER_TYPES:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
                isinstance(value, str)
                and (bool(_NUMBER.match(value.strip())) or value.strip() in _SPECIAL_NUMBERS)
            )
            return None if ok else f"a number ({self.type})"
        if self.type == "boolean":
            ok = isinstance(value, bool) or value in ("true", "false", "1", "0")
            return None if ok else "a boolean"
        if self.type in _TIME_TYPES:
            try:
                _TIME_TYPES[self.type](value if isinstance(value, str) else "")
            except ValueError:
                return f"an ISO-8601 {self.type} text"
            return None
        ok = isinstance(value, str) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        return None if ok else f"a string ({self.type})"


def _check_integer(value: Any, kind: str) -> str | None:
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        return f"an integer ({kind})"
    low, high = _INTEGER_TYPES[kind]
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (
            f"from {low} to {high}"
            if low is not None and high is not None
            else (f"at least {low}" if low is not None else f"at most {high}")
        )
        return f"an integer {bounds} ({kind})"
    return None


def operations_of(client: Client) -> dict[str, list[Param]]:
    """Each operation of the client's default port, with its parameters."""
    _port, methods = client.sd[0].ports[0]
    operations = {}
    for method in methods:
        name, params = method[0], method[1]
        described = []
        for param in params:
            element = param[1]
            resolved = element.resolve()
            maximum = element.max
            many = maximum is not None and (maximum == "unbounded" or int(maximum) > 1)
            described.append(
                Param(
                    name=str(param[0]),
                    type=str(resolved.name),
                    builtin=bool(resolved.builtin()),
                    required=bool(element.required()),
                    many=many,
                )
            )
        operations[str(name)] = described
    return operations


def check_arguments(
    operation: str, params: list[Param], args: list[Any] | dict[str, Any]
) -> dict[str, Any]:
    """
    A message's arguments by parameter name, once they fit the operation's parameters.

    @raise Rejected: what does not fit, in one line.
    """
    names = [p.name for p in params]
    takes = ", ".join(names) or "no arguments"
    if isinstance(args, list):
        if len(args) > len(params):
            raise Rejected(
                f"operation {operation!r} takes at most {len(params)} argument(s) "
                f"({takes}), got {len(args)}"
            )
        named = dict(zip(names, args, strict=False))
    else:
        unknown = [key for key in args if key not in names]
        if unknown:
            listed = ", ".join(short(k, 40) for k in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise Rejected(
                f"operation {operation!r} takes no argument {listed}{more} (it takes: {takes})"
            )
        named = dict(args)
    missing = [p.name for p in params if p.required and named.get(p.name) is None]
    if missing:
        raise Rejected(
            f"operation {operation!r} needs argument(s) {', '.join(repr(m) for m in missing)}"
        )
    for param in params:
        if param.name in named:
            problem = param.check(named[param.name])
            if problem:
                raise Rejected(
                    f"argument {param.name!r} of operation {operation!r} must be {problem}, "
                    f"not {json_kind(named[param.name])}"
                )
    return named
