"""
What a CouchDB server runs design functions in: JavaScript on every server, and Erlang where
every node enables CouchDB's native query server (C{[native_query_servers]
enable_erlang_query_server = true} in its ini files: Erlang design functions then run inside
CouchDB itself, with no trip to a JavaScript process; only server admins can enable it).

Read from each node's configuration (C{GET /_membership}, then C{GET
/_node/<name>/_config/native_query_servers}), which only a server admin may read.  A node that
enables Erlang beside one that does not would fail every write that reaches it with an Erlang
design function: Erlang is chosen only where every node says it enables it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import inlineCallbacks

from couchgw.couch.client import Database, rescans_filtered_feeds, supports_selector
from couchgw.couch.errors import Forbidden, Unauthorized
from couchgw.errors import describe_error

#: How CouchDB itself starts the Erlang query server under its older setting, C{erlang = ...}.
LEGACY_ERLANG = "{couch_native_process, start_link, []}"


@dataclass(frozen=True)
class Engines:
    """
    @ivar erlang: whether every node runs Erlang design functions.
    @ivar javascript: the JavaScript engine the nodes run (C{spidermonkey}, C{quickjs}), where
        they say and agree; None otherwise.
    @ivar why: the reason, in one line.
    """

    erlang: bool
    javascript: str | None
    why: str


def erlang_enabled(section: Mapping[str, Any]) -> bool:
    """Whether a node's C{[native_query_servers]} section enables Erlang design functions."""
    enabled = str(section.get("enable_erlang_query_server", "")).strip() == "true"
    return enabled or str(section.get("erlang", "")).strip() == LEGACY_ERLANG


def decide(
    nodes: Mapping[str, Mapping[str, Any] | str],
    javascript: str | None = None,
    otp: Mapping[str, str | None] | None = None,
) -> Engines:
    """
    Erlang or not, from each node's C{[native_query_servers]} section (or why it could not be
    read), and each node's Erlang/OTP release (C{otp}, where known: the guard needs 25 or
    later).
    """
    unread = {name: why for name, why in nodes.items() if isinstance(why, str)}
    if not nodes:
        return Engines(False, javascript, "the server names no nodes (GET /_membership)")
    if unread:
        name, why = sorted(unread.items())[0]
        return Engines(False, javascript, f"node {name}'s configuration cannot be read ({why})")
    enabling = sorted(
        name
        for name, section in nodes.items()
        if not isinstance(section, str) and erlang_enabled(section)
    )
    if not enabling:
        where = "the server does not" if len(nodes) == 1 else f"none of its {len(nodes)} nodes"
        return Engines(False, javascript, f"{where} enable the Erlang query server")
    if len(enabling) < len(nodes):
        return Engines(
            False,
            javascript,
            f"only {len(enabling)} of {len(nodes)} nodes enable the Erlang query server "
            f"({', '.join(enabling)}); JavaScript runs on every node",
        )
    if otp is not None:
        old = sorted(name for name in nodes if not _at_least(otp.get(name), 25))
        if old:
            release = otp.get(old[0]) or "an Erlang/OTP release it does not say"
            return Engines(
                False,
                javascript,
                f"node {old[0]} runs {release}; the Erlang guard needs Erlang/OTP 25 or later",
            )
    which = enabling[0] if len(enabling) == 1 else f"all {len(enabling)} nodes"
    return Engines(True, javascript, f"the Erlang query server is enabled ({which})")


def _at_least(release: str | None, major: int) -> bool:
    try:
        return release is not None and int(release.split(".")[0]) >= major
    except ValueError:
        return False


def node_names(membership: Mapping[str, Any]) -> list[str]:
    """The nodes a server names in its answer to C{GET /_membership}."""
    return sorted(
        {str(n) for key in ("all_nodes", "cluster_nodes") for n in membership.get(key) or []}
    )


def node_path(name: str) -> str:
    """A node's own API (C{/_node/<name>})."""
    return f"/_node/{quote(name, safe='@')}"


@inlineCallbacks
def read(db: Database) -> Any:
    """The L{Engines} of C{db}'s server (a L{Deferred}); never fails: JavaScript when unsure."""
    db = db.probe()
    try:
        welcome = yield db.welcome()
    except Exception as e:
        return Engines(False, None, f"the server cannot be read ({describe_error(e)})")
    if not supports_selector(welcome):
        named = "PouchDB Server" if rescans_filtered_feeds(welcome) else "this server"
        return Engines(False, None, f"{named} runs design functions in JavaScript alone")
    try:
        membership = yield db.json("GET", "/_membership")
    except (Unauthorized, Forbidden):
        return Engines(
            False,
            None,
            "couchgw may not read the server's configuration (it is not a server admin)",
        )
    except Exception as e:
        return Engines(False, None, f"the server's nodes cannot be read ({describe_error(e)})")
    names = node_names(membership)
    nodes: dict[str, Mapping[str, Any] | str] = {}
    otp: dict[str, str | None] = {}
    engines: set[str] = set()
    for name in names:
        node = node_path(name)
        try:
            section = yield db.json("GET", f"{node}/_config/native_query_servers")
        except Exception as e:
            nodes[name] = describe_error(e)
            continue
        nodes[name] = section if isinstance(section, Mapping) else {}
        try:  # CouchDB 3.4 and later say which engines they run
            versions = yield db.json("GET", f"{node}/_versions")
        except Exception:
            versions = {}
        engine = (versions.get("javascript_engine") or {}).get("name")
        engines.add(str(engine) if engine else "")
        otp[name] = (versions.get("erlang") or {}).get("version")
    javascript = engines.pop() if len(engines) == 1 and "" not in engines else None
    return decide(nodes, javascript, otp)
