"""The guard's corpus (tests/doorcases.py), continued: routes, operations and arguments."""

from __future__ import annotations

from tests.doorcases import HAS, OWNS, PRIORITY, ROUTES, STRICTER, Case, message


def _calls() -> list[Case]:
    bare = {"type": "message"}
    return [
        Case("ping with text", message()),
        Case("ping with no argument", {**bare, "operation": "ping"}),
        Case("ping with a null argument", {**bare, "operation": "ping", "args": [None]}),
        Case("the route named", message(target="default")),
        Case("no such route", message(target="nope"), f'there is no route "nope" {ROUTES}'),
        Case("a route that is a number", message(target=5), f"there is no route 5 {ROUTES}"),
        Case("a route that is null", message(target=None), f"there is no route null {ROUTES}"),
        Case("a route that is empty", message(target=""), f'there is no route "" {ROUTES}'),
        Case(
            "a route named __proto__",
            message(target="__proto__"),
            f'there is no route "__proto__" {ROUTES}',
        ),
        Case(
            "no operation, no default",
            {**bare, "text": "hi"},
            'operation is missing, and route "default" names no default',
        ),
        Case("no operation, the route's default", {**bare, "target": "named", "text": "hi"}),
        Case(
            "a null operation, the route's default", {**bare, "target": "named", "operation": None}
        ),
        Case(
            "no such operation",
            message(operation="explode"),
            f'route "default" has no operation "explode" {HAS}',
        ),
        Case(
            "an operation that is a number",
            message(operation=5),
            f'route "default" has no operation 5 {HAS}',
        ),
        Case(
            "an empty operation",
            message(operation=""),
            f'route "default" has no operation "" {HAS}',
        ),
        Case(
            "an operation named constructor",
            message(operation="constructor"),
            f'route "default" has no operation "constructor" {HAS}',
        ),
        Case(
            "activate by keyword",
            {**bare, "operation": "activate", "args": {"network": "n", "count": 3}},
        ),
        Case("activate by position", {**bare, "operation": "activate", "args": ["n", 3]}),
        Case(
            "an unknown argument",
            {**bare, "operation": "activate", "args": {"net": "n", "count": 3}},
            'operation "activate" takes no argument "net" (it takes: network, count)',
        ),
        Case(
            "unknown arguments, listed in order",
            {
                **bare,
                "operation": "activate",
                "args": {"zz": 1, "b": 2, "10": 3, "2": 4, "a": 5, "c": 6, "network": "n"},
            },
            'operation "activate" takes no argument "10", "2", "a", "b", "c" (it takes: network, count)',
        ),
        Case(
            "too many arguments",
            {**bare, "operation": "activate", "args": ["n", 3, 4]},
            'operation "activate" takes at most 2 argument(s) (network, count), got 3',
        ),
        Case(
            "a missing argument",
            {**bare, "operation": "activate", "args": {"network": "n"}},
            'operation "activate" needs argument(s) "count"',
        ),
        Case(
            "a null argument is missing",
            {**bare, "operation": "activate", "args": {"network": "n", "count": None}},
            'operation "activate" needs argument(s) "count"',
        ),
        Case(
            "arguments missing, by position",
            {**bare, "operation": "activate", "args": []},
            'operation "activate" needs argument(s) "network", "count"',
        ),
        Case(
            "text as the one argument",
            {**bare, "operation": "activate", "text": "n"},
            'operation "activate" needs argument(s) "count"',
        ),
        Case(
            "args null",
            {**bare, "operation": "ping", "args": None},
            "args must be an object (keyword arguments) or an array (positional arguments)",
        ),
        Case(
            "args a string",
            {**bare, "operation": "ping", "args": "hi"},
            "args must be an object (keyword arguments) or an array (positional arguments)",
        ),
        Case(
            "configure with its one required argument",
            {**bare, "operation": "configure", "args": {"device": "d"}},
        ),
        Case(
            "configure without it",
            {**bare, "operation": "configure", "args": {"port": 1}},
            'operation "configure" needs argument(s) "device"',
        ),
        Case(
            "an http route takes any operation",
            {**bare, "target": "null", "operation": "anything", "args": {"x": 1}},
        ),
        Case(
            "an http route, an operation that is a number",
            {**bare, "target": "null", "operation": 5},
            python=STRICTER,
        ),
        Case(
            "an argument of the wrong type",
            {**bare, "operation": "ping", "text": 5},
            python=STRICTER,
        ),
        Case(
            "before the routes load, no such operation",
            message(operation="explode"),
            loaded=False,
            python=STRICTER,
        ),
        Case(
            "before the routes load, still a client's status",
            message(status="x"),
            f"only couchgw writes status{OWNS}",
            loaded=False,
        ),
        Case(
            "before the routes load, still a priority",
            message(priority="urgent"),
            PRIORITY + '"urgent"',
            loaded=False,
        ),
    ]


ROUTE_CASES: list[Case] = _calls()
