"""
Values of XML Schema simple types in JSON: what fits a L{Simple} type (L{lexical}: the text
suds sends, or L{Mismatch} with what was expected), its JSON Schema (L{schema}), and an
answer's value as JSON (L{to_json}).

In JSON, integer types take integers; C{float} and C{double} numbers (or C{"NaN"}, C{"INF"},
C{"-INF"}); C{decimal} numbers or numeric strings; C{boolean} true or false; dates and times
ISO 8601 strings; binary types base64 or hexadecimal strings; lists (C{xsd:list}) JSON lists;
every other type strings.
"""

from __future__ import annotations

import base64
import calendar
import math
import re
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from couchgw.checks import json_kind, short
from couchgw.targets.xsd import Simple, matches

#: The XSD integer types and their ranges (None: unbounded).
INTEGER_RANGES: dict[str, tuple[int | None, int | None]] = {
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
_FLOATS = {"float", "double"}
_SPECIAL_FLOATS = ("NaN", "INF", "-INF")
_DECIMAL = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
_TZ = r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?"
_DAY = r"-?[0-9]{4,}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?|24:00:00(\.0+)?)"
#: The date, time and binary types: the pattern of their text, and how to say it.
TEXT_TYPES: dict[str, tuple[str, str]] = {
    "date": (_DAY + _TZ, "an ISO 8601 date (YYYY-MM-DD)"),
    "dateTime": (_DAY + "T" + _CLOCK + _TZ, "an ISO 8601 date and time (YYYY-MM-DDThh:mm:ss)"),
    "time": (_CLOCK + _TZ, "an ISO 8601 time (hh:mm:ss)"),
    "duration": (
        r"-?P(?=[0-9]|T[0-9])([0-9]+Y)?([0-9]+M)?([0-9]+D)?"
        r"(T(?=[0-9])([0-9]+H)?([0-9]+M)?([0-9]+(\.[0-9]+)?S)?)?",
        "an ISO 8601 duration (PnYnMnDTnHnMnS)",
    ),
    "gYear": (r"-?[0-9]{4,}" + _TZ, "a year (YYYY)"),
    "gYearMonth": (r"-?[0-9]{4,}-(0[1-9]|1[0-2])" + _TZ, "a year and month (YYYY-MM)"),
    "gMonth": (r"--(0[1-9]|1[0-2])" + _TZ, "a month (--MM)"),
    "gMonthDay": (r"--(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])" + _TZ, "a month and day (--MM-DD)"),
    "gDay": (r"---(0[1-9]|[12][0-9]|3[01])" + _TZ, "a day of the month (---DD)"),
    "base64Binary": (
        r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
        "base64 text",
    ),
    "hexBinary": (r"([0-9a-fA-F]{2})*", "hexadecimal text"),
}
_COMPILED = {name: re.compile(pattern) for name, (pattern, _) in TEXT_TYPES.items()}


class Mismatch(Exception):
    """
    A value does not fit a simple type; C{str()} is the end of the reason:
    C{"an integer, not a string"}.
    """


def kind(simple: Simple) -> str:
    """integer, float, decimal, boolean, text (dates, times, binary), list, any or string."""
    base = simple.base
    if base in INTEGER_RANGES:
        return "integer"
    if base in _FLOATS:
        return "float"
    if base in ("decimal", "boolean", "list"):
        return base
    if base in TEXT_TYPES:
        return "text"
    if base == "anySimpleType":
        return "any"
    return "string"


def bounds(simple: Simple) -> tuple[Decimal | None, Decimal | None]:
    """The inclusive range of a type: an integer type's own, narrowed by the facets."""
    low, high = INTEGER_RANGES.get(simple.base, (None, None))
    lows = [Decimal(low) if low is not None else None, simple.minimum]
    highs = [Decimal(high) if high is not None else None, simple.maximum]
    if simple.exclusive_minimum is not None and kind(simple) == "integer":
        lows.append(Decimal(math.floor(simple.exclusive_minimum) + 1))
    if simple.exclusive_maximum is not None and kind(simple) == "integer":
        highs.append(Decimal(math.ceil(simple.exclusive_maximum) - 1))
    present_lows = [Decimal(x) for x in lows if x is not None]
    present_highs = [Decimal(x) for x in highs if x is not None]
    return (
        max(present_lows) if present_lows else None,
        min(present_highs) if present_highs else None,
    )


def expected(simple: Simple) -> str:
    """What a value of this type is, for a reason: C{"an integer from 1 to 99 (Quantity)"}."""
    which = kind(simple)
    if simple.enum:
        text = "one of " + ", ".join(short(_typed(simple, e), 30) for e in simple.enum[:12])
        text += " ..." if len(simple.enum) > 12 else ""
    elif which == "integer":
        text = "an integer" + _range(simple)
    elif which == "float":
        text = "a number" + _range(simple)
    elif which == "decimal":
        text = "a number (or a numeric string)" + _range(simple)
    elif which == "boolean":
        text = "true or false"
    elif which == "text":
        text = TEXT_TYPES[simple.base][1]
    elif which == "list":
        assert simple.items is not None
        text = "a list of " + expected(simple.items).removeprefix("an ").removeprefix("a ")
    elif which == "any":
        text = "a string, a number or a boolean"
    else:
        text = "a string" + _lengths(simple, "characters")
        if simple.patterns:
            text += " matching " + " and ".join(simple.patterns)
    if simple.name != simple.base or (which in ("integer", "float") and simple.base != "integer"):
        text += f" ({simple.name})"
    return text


def _range(simple: Simple) -> str:
    if kind(simple) == "integer":
        low, high = bounds(simple)
        if low is not None and high is not None:
            return f" from {low} to {high}"
        if low is not None:
            return f" of at least {low}"
        return f" of at most {high}" if high is not None else ""
    parts = []
    for value, word in (
        (simple.minimum, "of at least"),
        (simple.exclusive_minimum, "above"),
        (simple.maximum, "of at most"),
        (simple.exclusive_maximum, "below"),
    ):
        if value is not None:
            parts.append(f"{word} {value}")
    return (" " + " and ".join(parts)) if parts else ""


def _lengths(simple: Simple, unit: str) -> str:
    if simple.length is not None:
        return f" of exactly {simple.length} {unit}"
    low, high = simple.min_length, simple.max_length
    if low is not None and high is not None:
        return f" of {low} to {high} {unit}"
    if low is not None:
        return f" of at least {low} {unit}"
    return f" of at most {high} {unit}" if high is not None else ""


def lexical(simple: Simple, value: Any) -> str:
    """
    The text suds sends for a JSON value of this type.

    @raise Mismatch: it does not fit.
    """
    which = kind(simple)
    if which == "list":
        assert simple.items is not None
        if not isinstance(value, list):
            raise Mismatch(f"{expected(simple)}, not {json_kind(value)}")
        _check_length(simple, len(value), value)
        return " ".join(lexical(simple.items, item) for item in value)
    text = _text(simple, which, value)
    if (
        simple.enum
        and text not in simple.enum
        and _typed(simple, text) not in [_typed(simple, e) for e in simple.enum]
    ):
        raise Mismatch(f"{expected(simple)}, not {short(value)}")
    if which == "string":
        _check_length(simple, len(value), value)
        for pattern in simple.patterns:
            if not matches(pattern, value):
                raise Mismatch(f"{expected(simple)}, not {short(value)}")
    if which in ("integer", "float", "decimal") and text not in _SPECIAL_FLOATS:
        _check_number(simple, which, Decimal(text), value)
    return text


def _text(simple: Simple, which: str, value: Any) -> str:
    """The value as text of its kind, before the facets."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if which == "integer":
        if number and (isinstance(value, int) or value.is_integer()):
            return str(int(value))
    elif which == "float":
        if number and math.isfinite(value):
            return repr(float(value))
        if value in _SPECIAL_FLOATS and not _range(simple):
            return str(value)
    elif which == "decimal":
        if number and math.isfinite(value):
            return format(Decimal(repr(value) if isinstance(value, float) else value), "f")
        if isinstance(value, str) and re.fullmatch(_DECIMAL, value):
            return value
    elif which == "boolean":
        if isinstance(value, bool):
            return "true" if value else "false"
    elif which == "text":
        if isinstance(value, str) and _COMPILED[simple.base].fullmatch(value):
            if _real_day(simple.base, value):
                return value
    elif which == "any":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
    elif isinstance(value, str):
        return value
    shown = short(value) if _same(which, value) else json_kind(value)
    raise Mismatch(f"{expected(simple)}, not {shown}")


def _same(which: str, value: Any) -> bool:
    """Whether the value is of the JSON kind the type takes (so what is wrong is the value)."""
    if which in ("integer", "float", "decimal"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number or (which == "decimal" and isinstance(value, str) and value != "")
    return which == "text" and isinstance(value, str) and value != ""


def _real_day(base: str, value: str) -> bool:
    """Whether a date's day exists (the pattern allows 31 days in every month)."""
    if base not in ("date", "dateTime"):
        return True
    found = re.match(r"(-?[0-9]{4,})-([0-9]{2})-([0-9]{2})", value)
    if found is None:
        return False
    year, month, day = (int(part) for part in found.groups())
    leap = calendar.isleap(year) if year > 0 else calendar.isleap(year + 1)
    days = calendar.monthrange(2001, month)[1] + (1 if month == 2 and leap else 0)
    return year != 0 and day <= days


def _check_length(simple: Simple, length: int, value: Any) -> None:
    if (
        (simple.length is not None and length != simple.length)
        or (simple.min_length is not None and length < simple.min_length)
        or (simple.max_length is not None and length > simple.max_length)
    ):
        raise Mismatch(f"{expected(simple)}, not {short(value)}")


def _check_number(simple: Simple, which: str, number: Decimal, value: Any) -> None:
    low, high = bounds(simple)
    wrong = (
        (low is not None and number < low)
        or (high is not None and number > high)
        or (simple.exclusive_minimum is not None and number <= simple.exclusive_minimum)
        or (simple.exclusive_maximum is not None and number >= simple.exclusive_maximum)
    )
    if which == "decimal" and not wrong:
        digits = number.normalize().as_tuple()
        places = max(0, -int(digits.exponent))
        wrong = (simple.fraction_digits is not None and places > simple.fraction_digits) or (
            simple.total_digits is not None
            and max(len(digits.digits), places) > simple.total_digits
        )
    if wrong:
        raise Mismatch(f"{expected(simple)}, not {short(value)}")


def _typed(simple: Simple, text: str) -> Any:
    """An enumeration's value (or a value's text) as JSON: numbers for numeric types."""
    which = kind(simple)
    try:
        if which == "integer":
            return int(text)
        if which in ("float", "decimal"):
            return number_json(Decimal(text))
        if which == "boolean":
            return text in ("true", "1")
    except (ValueError, InvalidOperation):
        pass
    return text


def number_json(number: Decimal) -> Any:
    """A decimal as a JSON number where a double holds it exactly, else as a string."""
    if number.is_finite() and number == number.to_integral_value() and abs(number) < 2**53:
        return int(number)
    as_float = float(number)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == number:
        return as_float
    return str(number)


def schema(simple: Simple) -> dict[str, Any]:
    """The JSON Schema of a value of this type."""
    which = kind(simple)
    described: dict[str, Any] = {"title": simple.name, "description": expected(simple)}
    if which == "list":
        assert simple.items is not None
        described.update(type="array", items=schema(simple.items))
        _lengths_schema(simple, described, "Items")
        return described
    if simple.enum:
        described["enum"] = list(dict.fromkeys(_typed(simple, e) for e in simple.enum))
        return described
    if which == "integer":
        described["type"] = "integer"
        low, high = bounds(simple)
        if low is not None:
            described["minimum"] = int(low)
        if high is not None:
            described["maximum"] = int(high)
    elif which in ("float", "decimal"):
        number: dict[str, Any] = {"type": "number"}
        for facet, keyword in (
            ("minimum", "minimum"),
            ("maximum", "maximum"),
            ("exclusive_minimum", "exclusiveMinimum"),
            ("exclusive_maximum", "exclusiveMaximum"),
        ):
            value = getattr(simple, facet)
            if value is not None:
                number[keyword] = number_json(value)
        if which == "decimal":
            described["anyOf"] = [number, {"type": "string", "pattern": f"^{_DECIMAL}$"}]
        elif _range(simple):
            described.update(number)
        else:
            described["anyOf"] = [number, {"enum": list(_SPECIAL_FLOATS)}]
    elif which == "boolean":
        described["type"] = "boolean"
    elif which == "text":
        described.update(type="string", pattern=f"^(?:{TEXT_TYPES[simple.base][0]})$")
    elif which == "any":
        described["type"] = ["string", "number", "boolean"]
    else:
        described["type"] = "string"
        _lengths_schema(simple, described, "Length")
        patterns = [{"pattern": f"^(?:{p})$"} for p in simple.patterns]
        if len(patterns) == 1:
            described.update(patterns[0])
        elif patterns:
            described["allOf"] = patterns
    return described


def _lengths_schema(simple: Simple, described: dict[str, Any], word: str) -> None:
    low = simple.length if simple.length is not None else simple.min_length
    high = simple.length if simple.length is not None else simple.max_length
    if low is not None:
        described[f"min{word}"] = low
    if high is not None:
        described[f"max{word}"] = high


def to_json(simple: Simple, value: Any) -> Any:
    """An answer's value (as suds read it) as JSON of this type."""
    which = kind(simple)
    try:
        if which == "list":
            assert simple.items is not None
            items = value.split() if isinstance(value, str) else list(value)
            return [to_json(simple.items, item) for item in items]
        if which == "integer":
            return int(str(value).strip())
        if which == "float":
            number = float(value)
            if math.isfinite(number):
                return number
            return "NaN" if math.isnan(number) else ("INF" if number > 0 else "-INF")
        if which == "decimal":
            return number_json(Decimal(str(value).strip()))
        if which == "boolean":
            return value if isinstance(value, bool) else str(value).strip() in ("true", "1")
    except (ValueError, TypeError, InvalidOperation, OverflowError):
        pass
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)
