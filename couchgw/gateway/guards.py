"""
The guards: the one validate function (L{couchgw.targets.door}) that keeps couchgw's fields to
couchgw and refuses a client's new message that does not fit its route, installed where it
protects something, in Erlang where every node of the server runs Erlang design functions, in
JavaScript elsewhere (L{couchgw.couch.engines}).

CouchDB runs a database's validate functions for every write, in a separate JavaScript process,
and they bind only users who are not admins: on an admin-only database (CouchDB 3's default for
a new database: the member role C{_admin} alone) they protect nothing and cost each write most of
its time.
With C{--guards auto} they are installed while users who are not admins may write to the
database (its security object names members who are not its admins, or no members at all: a
public database), and removed while only admins may, or while CouchDB runs without
authentication (everyone an admin).  The gateway reads the security object again every few
seconds (C{--announce}), so that users granted access later are guarded within that.  C{on}
and C{off} force them.  The language is decided again at each of those looks, from the nodes'
configuration (which only a server admin may read: JavaScript for others).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks
from twisted.logger import Logger

from couchgw.couch import design
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import Conflict, NotFound
from couchgw.errors import describe_error
from couchgw.gateway.facts import ServerFacts
from couchgw.targets import door
from couchgw.targets.interfaces import ITarget

log = Logger(namespace="couchgw.gateway")

MODES = ("auto", "on", "off")


def unbound_writers(security: Mapping[str, Any]) -> list[str]:
    """
    Who may write to the database without being an admin (whom alone a validate function
    binds): everyone when the security object names no members (a public database); otherwise
    the members, names and roles, that are not also the database's admins.  An empty list: only
    admins may write (CouchDB 3 gives a new database the member role C{_admin} alone).
    """
    members = security.get("members") if isinstance(security, Mapping) else None
    admins = security.get("admins") if isinstance(security, Mapping) else None
    members = members if isinstance(members, Mapping) else {}
    admins = admins if isinstance(admins, Mapping) else {}
    names = [str(n) for n in members.get("names") or []]
    roles = [str(r) for r in members.get("roles") or []]
    if not names and not roles:
        return ["everyone: the database names no members"]
    admin_names = {str(n) for n in admins.get("names") or []}
    admin_roles = {str(r) for r in admins.get("roles") or []} | {"_admin"}
    return [n for n in names if n not in admin_names] + [
        f"role {r}" for r in roles if r not in admin_roles
    ]


class Guards:
    """
    @param mode: C{auto}, C{on} or C{off} (see the module).
    @param loaded: whether every route has loaded (the door then checks routes too).
    @param facts: the server's facts (shared with the other databases served).
    """

    def __init__(
        self,
        db: Database,
        targets: Mapping[str, ITarget],
        mode: str,
        *,
        loaded: Callable[[], bool],
        facts: ServerFacts,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"guards must be one of {', '.join(MODES)}, not {mode!r}")
        self.db = db
        self.targets = targets
        self.mode = mode
        self._loaded = loaded
        self._facts = facts
        #: Whether the guard is installed as far as this gateway knows (None: not known yet).
        self.installed: bool | None = None
        #: Why it is, or is not.
        self.reason = "not checked yet"
        #: What the installed guard is written in, and what runs it (None: not installed).
        self.language: str | None = None
        self.engine: str | None = None
        #: Why in that language.
        self.engine_reason = ""
        self._lock = DeferredLock()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "installed": self.installed,
            "why": self.reason,
            "language": self.language,
            "engine": self.engine,
            "engine_why": self.engine_reason,
        }

    def refresh(self, found: Mapping[str, Doc] | None = None) -> Deferred[Any]:
        """
        Decide (from the mode and the security object) and install or remove the guard, one
        refresh at a time.

        @param found: the guard's design documents as just read (L{design.read_ours}; those
            missing are not there), where they were: they are not read again.
        """
        return self._lock.run(self._refresh, found)

    @inlineCallbacks
    def _refresh(self, found: Mapping[str, Doc] | None) -> Any:
        wanted, reason = yield self._wanted()
        language, engine, engine_reason = None, None, ""
        if wanted:
            server = yield self._facts.engines(self.db)
            language = "erlang" if server.erlang else "javascript"
            engine = "erlang" if server.erlang else server.javascript or "javascript"
            engine_reason = server.why
        for _ in range(3):  # another gateway may write it meanwhile: read it again
            try:
                yield self._install(language, found) if language else self._remove(found)
                break
            except Conflict:
                found = None
                continue
        else:
            log.warn(
                "guards: {id} keeps changing under this gateway; do all gateways on this "
                "database have the same --guards and the same CouchDB user?",
                id=door.DOOR_ID,
            )
            return
        if (wanted, reason, engine, engine_reason) != (
            self.installed,
            self.reason,
            self.engine,
            self.engine_reason,
        ):
            if wanted:
                log.info(
                    "guards on: {why}; the guard in {runs}: {engine_why} (database {db})",
                    why=reason,
                    runs=_runs(engine),
                    engine_why=engine_reason,
                    db=self.db.name,
                )
            else:
                log.info("guards off: {why} (database {db})", why=reason, db=self.db.name)
        self.installed, self.reason = wanted, reason
        self.language, self.engine, self.engine_reason = language, engine, engine_reason

    @inlineCallbacks
    def _wanted(self) -> Any:
        if self.mode == "on":
            return True, "--guards on"
        if self.mode == "off":
            return False, "--guards off"
        try:
            session = yield self._facts.session(self.db)
        except Exception as e:
            return True, f"CouchDB's session cannot be read ({describe_error(e)})"
        roles = (session.get("userCtx") or {}).get("roles") or []
        if "_admin" in roles:
            return False, "CouchDB runs without authentication: everyone is an admin"
        try:
            security = yield self.db.get("_security")
        except Exception as e:
            return True, f"the security object cannot be read ({describe_error(e)})"
        writers = unbound_writers(security)
        if writers:
            shown = ", ".join(writers[:5]) + (", ..." if len(writers) > 5 else "")
            return True, f"users who are not admins may write to the database ({shown})"
        return False, "only admins may write to the database"

    @inlineCallbacks
    def _install(self, language: str, found: Mapping[str, Doc] | None) -> Any:
        """
        The door in C{language}, with the routes once all loaded; until then, one that keeps
        what it says.
        """
        current = yield self._current(door.DOOR_ID, found)
        if self._loaded():
            wanted = door.design_docs(self.targets, language)
        elif current is not None and door.is_current(current, language):
            return  # it says at least what this gateway would, for now
        else:
            wanted = door.design_docs(None, language)
        for doc in wanted:  # the door last: what it reads is there before it
            there = (
                current if doc["_id"] == door.DOOR_ID else (yield self._current(doc["_id"], found))
            )
            yield design.write_changed(self.db, doc, there)

    @inlineCallbacks
    def _remove(self, found: Mapping[str, Doc] | None) -> Any:
        current = yield self._current(door.DOOR_ID, found)
        if current is None:
            return
        yield self.db.json("DELETE", door.DOOR_ID, params={"rev": current["_rev"]})
        log.info("design document {id} removed", id=door.DOOR_ID)
        erlang = door.engine_of(current) == "erlang"
        facts = yield self._current(door.FACTS_ID, found) if erlang else None
        if facts is not None:
            yield self.db.json("DELETE", door.FACTS_ID, params={"rev": facts["_rev"]})

    @inlineCallbacks
    def _current(self, doc_id: str, found: Mapping[str, Doc] | None = None) -> Any:
        if found is not None:
            return found.get(doc_id)
        try:
            doc: Doc = yield self.db.get(doc_id)
        except NotFound:
            return None
        return doc


def _runs(engine: str | None) -> str:
    """The language of the guard, and what runs it where known: C{JavaScript (quickjs)}."""
    if engine == "erlang":
        return "Erlang"
    return "JavaScript" if engine in (None, "javascript") else f"JavaScript ({engine})"
