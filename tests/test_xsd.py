"""XML Schema simple values in JSON: the text suds sends, the reasons, the JSON Schema (pure)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from couchgw.targets.values import Mismatch, lexical, schema, to_json
from couchgw.targets.xsd import Simple, portable


@pytest.mark.parametrize(
    ("simple", "value", "text"),
    [
        (Simple("decimal", "decimal"), 1e-7, "0.0000001"),
        (Simple("decimal", "decimal"), 12, "12"),
        (Simple("decimal", "decimal"), "-0.50", "-0.50"),
        (Simple("double", "double"), "INF", "INF"),
        (Simple("double", "double"), 2.5, "2.5"),
        (Simple("int", "int"), 7.0, "7"),
        (Simple("boolean", "boolean"), True, "true"),
        (Simple("date", "date"), "2028-02-29", "2028-02-29"),
        (
            Simple("dateTime", "dateTime"),
            "2026-01-02T03:04:05.5+01:00",
            "2026-01-02T03:04:05.5+01:00",
        ),
        (Simple("gYearMonth", "gYearMonth"), "2026-11", "2026-11"),
        (Simple("hexBinary", "hexBinary"), "0aFF", "0aFF"),
        (Simple("list", "Sizes", items=Simple("int", "int")), [1, 2], "1 2"),
        (Simple("string", "Code", enum=("A", "B")), "B", "B"),
        (Simple("int", "Code", enum=("1", "2")), 2, "2"),
    ],
)
def test_values_fit(simple: Simple, value: Any, text: str) -> None:
    assert lexical(simple, value) == text
    assert jsonschema.Draft202012Validator(schema(simple)).is_valid(value)


@pytest.mark.parametrize(
    ("simple", "value", "reason"),
    [
        (
            Simple("unsignedByte", "unsignedByte"),
            256,
            "an integer from 0 to 255 (unsignedByte), not 256",
        ),
        (Simple("integer", "integer"), True, "an integer, not a boolean"),
        (Simple("decimal", "decimal"), "1e5", "a number (or a numeric string), not '1e5'"),
        (
            Simple("decimal", "Price", maximum=Decimal(10)),
            11,
            "a number (or a numeric string) of at most 10 (Price), not 11",
        ),
        (
            Simple("double", "double", minimum=Decimal(0)),
            "INF",
            "a number of at least 0 (double), not a string",
        ),
        (Simple("date", "date"), "2026-02-29", "an ISO 8601 date (YYYY-MM-DD), not '2026-02-29'"),
        (
            Simple("string", "Code", min_length=2, max_length=3),
            "ABCD",
            "a string of 2 to 3 characters (Code), not 'ABCD'",
        ),
        (Simple("string", "Code", enum=("A", "B")), "C", "one of 'A', 'B' (Code), not 'C'"),
        (Simple("list", "Sizes", items=Simple("int", "int")), "1 2", "a list of integer"),
        (Simple("boolean", "boolean"), "yes", "true or false, not a string"),
    ],
)
def test_values_that_do_not_fit(simple: Simple, value: Any, reason: str) -> None:
    with pytest.raises(Mismatch) as caught:
        lexical(simple, value)
    assert str(caught.value).startswith(reason)


def test_decimal_strings_and_digits_are_checked_beyond_the_schema() -> None:
    """What JSON Schema cannot say of a decimal: the bounds of a string, its digits."""
    price = Simple("decimal", "Price", maximum=Decimal(10), fraction_digits=2)
    validator = jsonschema.Draft202012Validator(schema(price))
    assert validator.is_valid("11") and validator.is_valid(1.234)
    for value in ("11", 1.234):
        with pytest.raises(Mismatch):
            lexical(price, value)


def test_answers_become_json_of_their_type() -> None:
    assert to_json(Simple("decimal", "decimal"), Decimal("59.97")) == 59.97
    assert to_json(Simple("decimal", "decimal"), Decimal("3")) == 3
    assert to_json(Simple("decimal", "decimal"), Decimal("0.1000000000000000055511")) == (
        "0.1000000000000000055511"  # a double would change it: kept as text
    )
    assert to_json(Simple("double", "double"), float("-inf")) == "-INF"
    assert to_json(Simple("list", "Sizes", items=Simple("int", "int")), "3 4") == [3, 4]
    assert to_json(Simple("long", "long"), "12") == 12


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("[A-Z]{3}-[0-9]{4}", True),
        (r"\d+(\.\d+)?", True),
        (r"\p{Lu}+", False),
        ("[a-z-[aeiou]]", False),
    ],
)
def test_patterns_that_mean_the_same_everywhere(pattern: str, ok: bool) -> None:
    assert portable(pattern) is ok
