"""
Routes: the systems messages go to.  A message names its route with C{target}; C{--target} is
the route named C{default}, and a C{--routes} file (TOML) names more::

    [routes.billing]
    kind = "soap"          # soap (the default), http, or a kind a plugin supplies
    url = "https://billing.example/Service?wsdl"   # "demo": the bundled demo service
    concurrency = 20       # soap: threads of its own; http: requests at once
    timeout = 120          # seconds a call may take
    retries = 3            # calls before a transient error is final
    backoff = 2.0          # seconds: the first retry waits up to this, each next one twice as long
    operation = "activate" # for messages that name none
    rate = 5               # calls per second at most
    inflight = 40          # messages this route handles at once (its share of --max-inflight)
    retry_for = "1h"       # retry transient failures for this long (instead of `retries` times)
    backoff_max = 300      # seconds: the longest wait between retries, and between probes

Keys other than these are the kind's own (in L{RouteConfig.options}, L{couchgw.targets.interfaces}).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from twisted.plugin import getPlugins

from couchgw.message import DEFAULT_ROUTE
from couchgw.targets.interfaces import ITarget, ITargetFactory, RouteConfig

COMMON = frozenset(
    {
        "kind",
        "url",
        "concurrency",
        "timeout",
        "retries",
        "backoff",
        "operation",
        "rate",
        "inflight",
        "retry_for",
        "backoff_max",
    }
)


class RoutesError(ValueError):
    """A routes file that cannot be used; C{str()} says why in one line."""


def kinds() -> dict[str, ITargetFactory]:
    """The kinds of route: couchgw's own, then those Twisted plugins supply."""
    from couchgw.targets.http import HttpKind
    from couchgw.targets.soap import SoapKind

    found: dict[str, ITargetFactory] = {"soap": SoapKind(), "http": HttpKind()}
    for factory in getPlugins(ITargetFactory):
        found.setdefault(factory.kind, factory)
    return found


def load(path: str, defaults: RouteConfig, known: Mapping[str, Any]) -> list[RouteConfig]:
    """Read a routes file; L{RoutesError} says what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise RoutesError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RoutesError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse(data, defaults, known)
    except RoutesError as e:
        raise RoutesError(f"{path}: {e}") from None


def parse(
    data: Mapping[str, Any], defaults: RouteConfig, known: Mapping[str, Any]
) -> list[RouteConfig]:
    """
    The routes a routes file's data names.

    @param defaults: the values of keys a route leaves out (from the command line).
    @param known: the kinds there are, by name.
    """
    extra = sorted(set(data) - {"routes"})
    if extra:
        raise RoutesError(
            f"unknown top-level key(s) {', '.join(map(repr, extra))} (only [routes.NAME] tables)"
        )
    routes = data.get("routes")
    if not isinstance(routes, dict) or not routes:
        raise RoutesError("no routes: write at least one [routes.NAME] table")
    configs = []
    for name, table in routes.items():
        if name == DEFAULT_ROUTE:
            raise RoutesError(f"route {name!r} is --target's; give this route another name")
        if not isinstance(table, dict):
            raise RoutesError(f"routes.{name} must be a table")
        configs.append(_route(name, table, defaults, known))
    return configs


def _route(
    name: str, table: Mapping[str, Any], defaults: RouteConfig, known: Mapping[str, Any]
) -> RouteConfig:
    def fail(text: str) -> RoutesError:
        return RoutesError(f"route {name!r}: {text}")

    kind = table.get("kind", "soap")
    if kind not in known:
        raise fail(f"unknown kind {kind!r} (kinds: {', '.join(sorted(known))})")
    url = table.get("url")
    if url is not None and (not isinstance(url, str) or not url):
        raise fail("url must be a non-empty string")
    operation = table.get("operation")
    if operation is not None and (not isinstance(operation, str) or not operation):
        raise fail("operation must be a non-empty string")
    default_concurrency = getattr(known[kind], "default_concurrency", None)
    concurrency = _number(table, "concurrency", int, 1, 10000, fail)
    if concurrency is None:
        concurrency = default_concurrency or defaults.concurrency
    inflight = _number(table, "inflight", int, 1, 100000, fail)
    return RouteConfig(
        name=name,
        kind=kind,
        url=url,
        concurrency=concurrency,
        timeout=_or(_number(table, "timeout", float, 0.1, None, fail), defaults.timeout),
        retries=_or(_number(table, "retries", int, 1, 1000, fail), defaults.retries),
        backoff=_or(_number(table, "backoff", float, 0.01, 3600, fail), defaults.backoff),
        operation=operation,
        rate=_number(table, "rate", float, 0.001, None, fail),
        inflight=inflight if inflight is not None else max(10, 2 * concurrency),
        retry_for=_duration(table, "retry_for", fail),
        backoff_max=_or(_number(table, "backoff_max", float, 0.01, None, fail), 300.0),
        options={k: v for k, v in table.items() if k not in COMMON},
        ca=defaults.ca,
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _number(
    table: Mapping[str, Any],
    key: str,
    kind: type,
    low: float,
    high: float | None,
    fail: Callable[[str], RoutesError],
) -> Any:
    if key not in table:
        return None
    value = table[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value < low or (high is not None and value > high):
        noun = "a whole number" if kind is int else "a number"
        bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise fail(f"{key} must be {noun} {bound}, not {value!r}")
    return kind(value)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(
    table: Mapping[str, Any], key: str, fail: Callable[[str], RoutesError]
) -> float | None:
    """Seconds, given as a number or as a text such as C{"90s"}, C{"30m"}, C{"1h"}, C{"2d"}."""
    if key not in table:
        return None
    value = table[key]
    seconds = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value[-1:] in _UNITS:
        try:
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        except ValueError:
            seconds = None
    if seconds is None or not seconds > 0:
        raise fail(
            f"{key} must be a positive duration (seconds, or a text such as '90s', '30m', "
            f"'1h', '2d'), not {value!r}"
        )
    return seconds


def build(
    configs: list[RouteConfig], reactor: Any, parent: Any, known: Mapping[str, Any]
) -> dict[str, ITarget]:
    """The targets of these routes; L{RoutesError} if a kind refuses its configuration."""
    targets = {}
    for config in configs:
        try:
            targets[config.name] = known[config.kind].build(config, reactor, parent)
        except ValueError as e:
            raise RoutesError(f"route {config.name!r}: {e}") from None
    return targets
