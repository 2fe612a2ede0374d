"""
A small CouchDB client on treq: just what the gateway needs.

Documents, C{_bulk_docs}, views, C{_local} documents, database and design-document creation,
the server's welcome document and the continuous changes feed.  Errors become the typed
exceptions of L{couchgw.couch.errors}.  Credentials are sent as HTTP basic auth and never appear
in C{repr}, logs or exception messages.

Requests go straight through the agent, answers are read with treq: CouchDB's API needs no
cookies, redirects or compression (a gzipped continuous feed is even held back by the server's
compressor), and what treq's client does for them costs about a third of a request's CPU here.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from couchgw.connections import Body, basic_auth, split_credentials
from couchgw.couch.errors import NotFound, PreconditionFailed, Undecodable, error_for

Doc = dict[str, Any]


def supports_selector(welcome: Mapping[str, Any]) -> bool:
    """Whether the server is Apache CouchDB 2 or later (PouchDB Server is not: never send it)."""
    if welcome.get("couchdb") != "Welcome":
        return False
    try:
        return int(str(welcome.get("version", "0")).split(".")[0]) >= 2
    except ValueError:
        return False


def rescans_filtered_feeds(welcome: Mapping[str, Any]) -> bool:
    """
    Whether the server resumes the scan behind a filtered continuous feed from the last change
    it I{sent} (PouchDB Server): each write the filter passes over is then scanned again on
    every later write, until one passes.
    """
    return "express-pouchdb" in welcome


def check_access(
    url: str,
    timeout: float = 5.0,
    ca: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> None:
    """
    Ask the database once, blocking (at start-up, before the reactor runs), whether it lets
    these credentials in.

    @raise Unauthorized: CouchDB refused the credentials (401).
    @raise Forbidden: it knows them but they may not use the database (403).
    Anything else (CouchDB down, the database missing) is left for the running service.
    """
    import urllib.error
    import urllib.request

    clean, auth = split_credentials(url)
    auth = credentials or auth
    request = urllib.request.Request(clean, headers={"Accept": "application/json"})
    if auth is not None:
        request.add_header("Authorization", basic_auth(*auth))
    try:
        context = ssl.create_default_context(cafile=ca) if ca else None
        with urllib.request.urlopen(request, timeout=timeout, context=context):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            try:
                body = json.loads(e.read())
            except ValueError:
                body = None
            raise error_for(e.code, body, f"GET {urlsplit(clean).path or '/'}") from None
    except (OSError, ValueError):
        return


def doc_path(doc_id: str) -> str:
    """The URL path of a document id, keeping the C{_design/} and C{_local/} prefixes."""
    for prefix in ("_design/", "_local/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix) :], safe="")
    return quote(doc_id, safe="")


def _query(params: Mapping[str, Any]) -> str:
    """Query string: booleans and numbers as JSON, view keys JSON-encoded, strings as they are."""
    items = []
    for key, value in params.items():
        if value is None:
            continue
        if key in ("key", "keys", "startkey", "endkey", "start_key", "end_key") or not isinstance(
            value, str
        ):
            value = json.dumps(value)
        items.append((key, value))
    return ("?" + urlencode(items)) if items else ""


@lru_cache(maxsize=16)
def _request_headers(auth: tuple[str, str] | None) -> tuple[Headers, Headers]:
    """
    The headers of a request without a body and of one with a JSON body, made once for all the
    databases asked with the same credentials (the agent copies them to add its own).
    """
    headers = {b"Accept": [b"application/json"]}
    if auth is not None:
        headers[b"Authorization"] = [basic_auth(*auth).encode("ascii")]
    return Headers(headers), Headers({**headers, b"Content-Type": [b"application/json"]})


class Database:
    """
    One CouchDB database.

    @param url: the database URL, with or without credentials in its user info.
    @param agent: the L{IAgent} requests go through (for instance one with a persistent
        connection pool, or a L{treq.testing.RequestTraversalAgent} in tests).
    """

    def __init__(
        self,
        url: str,
        agent: IAgent,
        credentials: tuple[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        clean, from_url = split_credentials(url)
        clean = clean.rstrip("/")
        self.url = clean
        self.name = unquote(clean.rsplit("/", 1)[-1])
        self.server_url = clean.rsplit("/", 1)[0]
        self._auth = credentials or from_url
        self._agent = agent
        self._timeout = timeout
        #: The headers of a request without a body and of one with a JSON body.
        self._headers, self._json_headers = _request_headers(self._auth)
        #: Why CouchDB refuses the credentials (its last 401), until a request succeeds again.
        self.refused: str | None = None

    def __repr__(self) -> str:
        return f"<Database {self.url}>"

    def sibling(self, name: str) -> Database:
        """Another database of the same server, asked as this one is."""
        return Database(
            f"{self.server_url}/{quote(name, safe='')}", self._agent, self._auth, self._timeout
        )

    @inlineCallbacks
    def all_dbs(self) -> Any:
        """The names of the server's databases (C{GET /_all_dbs})."""
        names = yield self.json("GET", "/_all_dbs", timeout=max(self._timeout, 120.0))
        return [str(name) for name in names or []]

    def as_user(self, user: str, password: str) -> Database:
        """The same database, asked with other credentials (over the same connections)."""
        return Database(self.url, self._agent, (user, password), self._timeout)

    def probe(self) -> Database:
        """
        The same database with the same credentials (over the same connections), whose 401s are
        its own: for requests that a user who is not a server admin may be refused.
        """
        return Database(self.url, self._agent, self._auth, self._timeout)

    def anonymous(self) -> Database:
        """The same database, asked without credentials (over the same connections)."""
        return Database(self.url, self._agent, None, self._timeout)

    @property
    def user(self) -> str | None:
        return self._auth[0] if self._auth else None

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        """The URL of a path relative to the database (C{/...} for the server)."""
        if path.startswith("/"):
            url = self.server_url + path
        else:
            url = f"{self.url}/{path}" if path else self.url
        return url + _query(params or {})

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Deferred[IResponse]:
        """
        Send one request; answers the response with its body unread (L{answer} reads it).  It
        is given up on (cancelled) when its headers take longer than C{timeout} seconds.
        """
        return self._send(method, path, body, params, timeout or self._timeout)

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> Deferred[IResponse]:
        if body is None:
            headers, producer = self._headers, None
        else:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers, producer = self._json_headers, Body(data)
        url = self._url(path, params).encode("utf-8")
        d = self._agent.request(method.encode("ascii"), url, headers, producer)
        if timeout:
            from twisted.internet import reactor

            late = reactor.callLater(timeout, d.cancel)  # type: ignore[attr-defined]

            def answered(result: Any) -> Any:
                if late.active():
                    late.cancel()
                return result

            d.addBoth(answered)
        return d

    def json(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """Send one request and decode the JSON answer; an error status raises L{CouchError}."""
        return self.answer(method, path, body, params, timeout).addCallback(lambda a: a[1])

    @inlineCallbacks
    def answer(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Like L{json}, but answers C{(status, decoded)}: e.g. 201 or 202 for a write."""
        response = yield self.request(method, path, body, params, timeout)
        content = yield treq.content(response)
        try:
            decoded = json.loads(content) if content else None
        except RecursionError:
            raise Undecodable(
                response.code, "undecodable", "nested too deeply", f"{method} {path}"
            ) from None
        except ValueError:
            decoded = None
        if response.code >= 400:
            error = error_for(response.code, decoded, f"{method} {path or self.name}")
            if response.code == 401:
                self.refused = str(error)
            raise error
        self.refused = None
        return response.code, decoded

    def welcome(self) -> Deferred[Doc]:
        """The server's welcome document (C{GET /})."""
        return self.json("GET", "/")

    def info(self) -> Deferred[Doc]:
        return self.json("GET", "")

    @inlineCallbacks
    def create(self) -> Any:
        """
        Create the database; return C{True} if it was created, C{False} if it existed.  It is
        read first: a user who is not a server admin may use a database but not create one.
        """
        try:
            yield self.info()
            return False
        except NotFound:
            pass
        try:
            yield self.json("PUT", "")
        except PreconditionFailed:
            return False
        return True

    def get(self, doc_id: str, **params: Any) -> Deferred[Doc]:
        return self.json("GET", doc_path(doc_id), params=params)

    def put(self, doc: Doc) -> Deferred[Doc]:
        """Write C{doc} (its C{_rev} must be current); answers C{{"ok", "id", "rev"}}."""
        return self.json("PUT", doc_path(doc["_id"]), doc)

    def write(self, doc: Doc, **params: Any) -> Deferred[tuple[int, Doc]]:
        """
        Write C{doc} with parameters (e.g. C{w}); answers C{(status, {"ok", "id", "rev"})}.
        On a cluster, 201 means C{w} copies took the revision, 202 that fewer did.
        """
        return self.answer("PUT", doc_path(doc["_id"]), doc, params)

    def bulk_docs(self, docs: list[Doc], **options: Any) -> Deferred[list[Doc]]:
        """Write many documents; the answer holds one result (or error) per document."""
        return self.json("POST", "_bulk_docs", {"docs": docs, **options})

    def all_docs(self, keys: list[str], **params: Any) -> Deferred[Doc]:
        """C{_all_docs} for the given ids (with C{include_docs=True}, their documents)."""
        return self.json("POST", "_all_docs", {"keys": keys}, params)

    def update(
        self, ddoc: str, handler: str, doc_id: str, body: Any, **params: Any
    ) -> Deferred[Any]:
        """Call a design document's update handler on a document (it changes it in place)."""
        return self.json(
            "PUT",
            f"_design/{quote(ddoc, safe='')}/_update/{quote(handler, safe='')}/" + doc_path(doc_id),
            body,
            params,
        )

    def view(
        self, ddoc: str, view: str, timeout: float | None = None, **params: Any
    ) -> Deferred[Doc]:
        """
        Query a view.  C{timeout} may be longer than the others': a view's index is brought up
        to date first, which takes a while on a large database that changed a lot.
        """
        return self.json(
            "GET",
            f"_design/{quote(ddoc, safe='')}/_view/{quote(view, safe='')}",
            params=params,
            timeout=timeout,
        )

    def changes(
        self, params: Mapping[str, Any], body: Any = None, path: str = "_changes"
    ) -> Deferred[IResponse]:
        """
        Open the changes feed (or another continuous feed: C{/_db_updates}); answers the
        unread response (C{deliverBody} reads it).

        With a C{body}, the request is a POST (C{filter=_selector} takes its selector there).
        It has no timeout: a feed is answered when it has something to say.
        """
        return self._send("GET" if body is None else "POST", path, body, params, None)
