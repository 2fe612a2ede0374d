"""
The checks of C{twistd couchgw}'s option values: numbers in a range, one of a few words, an
endpoint on this machine alone, a secret from a file, a port taken.  Each bad value is one line.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

from twisted.python import usage


def number(
    option: str, kind: Callable[[str], Any], low: float, high: float | None = None
) -> Callable[[str], Any]:
    """A coercer for a numeric option, with an error that names the option and its range."""

    def show(value: float) -> str:
        return str(int(value)) if kind is int else f"{value:g}"

    bound = f"from {show(low)} to {show(high)}" if high is not None else f"at least {show(low)}"
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise ValueError(f"--{option} must be {noun} {bound}, not {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def choice(option: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A coercer for an option that takes one of a few words."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"--{option} must be one of {', '.join(choices)}, not {text!r}")
        return text

    parse.__name__ = "str"
    return parse


def first_line(path: str, option: str) -> str:
    """The first line of a secret's file (a bad file: one line saying so)."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"{option} {path!r} cannot be read: {e}") from None
    if not line:
        raise usage.UsageError(f"{option} {path!r} is empty")
    return line


def loopback(endpoint: str) -> bool:
    """Whether a strports endpoint listens on the loopback interface only (or a UNIX socket)."""
    if endpoint.startswith("unix:"):
        return True
    parts = re.split(r"(?<!\\):", endpoint)
    fields = dict(part.replace("\\:", ":").split("=", 1) for part in parts if "=" in part)
    return fields.get("interface", "") in ("127.0.0.1", "::1", "localhost")


def taken(port: int) -> bool:
    """Whether a server listens on 127.0.0.1:C{port} (so that no child of ours could)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
