"""The twistd plugin: options and the service tree, on a memory reactor."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins

from couchgw.connections import split_credentials
from couchgw.couch.client import rescans_filtered_feeds, supports_selector
from couchgw.demo import DemoService
from couchgw.embedded import EmbeddedCouch
from couchgw.gateway import Gateway
from couchgw.tap import Options, makeService
from couchgw.targets.threads import ThreadPoolService
from couchgw.tracing import Tracing, TracingService, exporter_kind, resource_from_environment


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_plugin_is_found() -> None:
    import twisted.plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    assert makers["couchgw"].options is Options


def test_defaults() -> None:
    options = parse("--couch", "http://127.0.0.1:5984/messages")
    assert options["target"] == "demo"
    assert options["http"] == "tcp:8470:interface=127.0.0.1"
    assert options["threads"] == 10
    assert options["timeout"] < options["lease"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--threads", "0"], "--threads must be a whole number from 1 to 1000, not '0'"),
        (["--threads", "many"], "--threads must be a whole number from 1 to 1000, not 'many'"),
        (["--timeout", "-1"], "--timeout must be a number at least 0.1, not '-1'"),
        (["--grace", "-1"], "--grace must be a number at least 0, not '-1'"),
        (
            ["--max-message-bytes", "10"],
            "--max-message-bytes must be a whole number from 1024 to 67108864, not '10'",
        ),
        (["--couch", "ftp://x/db"], "--couch must be an http:// or https:// URL"),
        (["--couch", "http://127.0.0.1:5984"], "--couch names a server: name the database too"),
        (
            ["--databases", "userdb-*"],
            "--databases needs --couch to name the server, e.g. http://127.0.0.1:5984, not the "
            "database 'messages'",
        ),
        (["--databases", " , "], "--databases needs at least one pattern"),
        (["--databases", "_users"], "CouchDB's own databases (_users, _replicator, ...)"),
        (["--max-feeds", "0"], "--max-feeds must be a whole number from 1 to 100000"),
        (["--target", "nonsense"], "--target must be a WSDL URL or 'demo', not 'nonsense'"),
        (["--http", "tcp:notaport"], "--http 'tcp:notaport' is not a valid endpoint"),
        (["--bogus"], "option --bogus not recognized"),
        (
            ["--http", "tcp:8470"],
            "--http 'tcp:8470' listens beyond this machine: add --http-auth",
        ),
        (
            ["--http", "tcp:8470:interface=0.0.0.0"],
            "--http 'tcp:8470:interface=0.0.0.0' listens beyond this machine",
        ),
        (["--callback-secret-file", "/nonexistent"], "--callback-secret-file '/nonexistent'"),
        (
            ["--callback-secret-file", "/dev/null"],
            "--callback-secret-file '/dev/null' is empty",
        ),
    ],
)
def test_bad_option_is_one_line(args: list[str], error: str) -> None:
    with pytest.raises(SystemExit) as raised:
        parse("--couch", "http://127.0.0.1:5984/messages", *args)
    text = str(raised.value)
    assert text.startswith("twistd couchgw: ")
    assert error in text
    assert "\n" not in text


def test_a_server_and_its_databases() -> None:
    options = parse("--couch", "http://127.0.0.1:5984/", "--databases", "userdb-*, tenant-*")
    assert options["patterns"] == ("userdb-*", "tenant-*")
    assert options["max-feeds"] == 100
    top = makeService(options, reactor=MemoryReactorClock())
    gateway = next(s for s in services(top) if isinstance(s, Gateway))
    assert gateway.fleet is not None and gateway.one is None
    assert gateway.fleet.coordination.url == "http://127.0.0.1:5984/couchgw-gateways"
    assert gateway.fleet.discovery.matches("userdb-616c696365")
    assert not gateway.fleet.discovery.matches("couchgw-gateways")
    assert not gateway.fleet.discovery.matches("_users") and not gateway.fleet.discovery.matches(
        "x"
    )
    # every route bounded, so that the databases share it
    assert gateway.dispatch.bounds["default"] == 20


def test_beyond_loopback_with_auth_or_said_so() -> None:
    couch = ("--couch", "http://127.0.0.1:5984/messages")
    assert parse(*couch, "--http", "tcp:8470", "--http-auth")["http-auth"]
    assert parse(*couch, "--http", "tcp:8470", "--http-public")["http-public"]
    assert parse(*couch, "--http", "unix:/tmp/couchgw.sock")["http"] == "unix:/tmp/couchgw.sock"
    assert parse(*couch, "--http", "tcp:8470:interface=\\:\\:1")


def test_secrets_from_files_and_warnings_for_the_command_line(tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\nignored\n")
    password = tmp_path / "password"
    password.write_text("pw\n")
    options = parse(
        "--couch",
        "http://gw@127.0.0.1:5984/messages",
        "--couch-password-file",
        str(password),
        "--callback-secret-file",
        str(secret),
    )
    assert options["callback-secret"] == "s3cret"
    assert options["couch-credentials"] == ("gw", "pw")
    assert options["warnings"] == []
    said = parse("--couch", "http://gw:pw@127.0.0.1:5984/messages", "--callback-secret", "x")
    assert said["callback-secret"] == "x"
    assert len(said["warnings"]) == 2
    assert all("process list" in warning for warning in said["warnings"])
    assert all("pw" not in warning for warning in said["warnings"])
    with pytest.raises(SystemExit, match="name the user in the --couch URL"):
        parse("--couch", "http://127.0.0.1:5984/m", "--couch-password-file", str(password))


def services(top: Any) -> list[Any]:
    return list(top)


def test_service_tree_with_external_couch() -> None:
    options = parse(
        "--couch",
        "http://user:secret@db.example:5984/msgs",
        "--target",
        "http://soap.example/?wsdl",
    )
    top = makeService(options, reactor=MemoryReactorClock())
    kinds = [type(s) for s in services(top)]
    assert EmbeddedCouch not in kinds and DemoService not in kinds
    assert ThreadPoolService in kinds
    gateway = next(s for s in services(top) if isinstance(s, Gateway))
    assert gateway.db.url == "http://db.example:5984/msgs"
    assert "secret" not in repr(gateway.db)
    assert gateway.targets["default"].url == "http://soap.example/?wsdl"


def test_service_tree_on_embedded_defaults(tmp_path: Any) -> None:
    options = parse("--data", str(tmp_path), "--embedded-port", "5999")
    top = makeService(options, reactor=MemoryReactorClock())
    kinds = [type(s) for s in services(top)]
    # Started in this order, stopped in the reverse one: the embedded CouchDB stops last.
    assert kinds[0] is EmbeddedCouch
    assert kinds.index(DemoService) < kinds.index(Gateway)
    gateway = next(s for s in services(top) if isinstance(s, Gateway))
    assert gateway.db.url == "http://127.0.0.1:5999/messages"


def test_credentials_from_url_or_environment() -> None:
    assert split_credentials("http://a%40b:p%3Ass@h:1/db", {}) == ("http://h:1/db", ("a@b", "p:ss"))
    env = {"COUCHGW_COUCH_USER": "gw", "COUCHGW_COUCH_PASSWORD": "pw"}
    assert split_credentials("https://h/db/", env) == ("https://h/db/", ("gw", "pw"))
    assert split_credentials("http://h:5984/db", {}) == ("http://h:5984/db", None)


def test_selector_only_on_apache_couchdb_2_and_later() -> None:
    assert supports_selector({"couchdb": "Welcome", "version": "3.5.0"})
    assert not supports_selector({"couchdb": "Welcome", "version": "1.7.2"})
    assert not supports_selector({"express-pouchdb": "Welcome!", "version": "4.2.0"})


def test_pouchdb_server_rescans_filtered_feeds() -> None:
    assert rescans_filtered_feeds({"express-pouchdb": "Welcome!", "version": "4.2.0"})
    assert not rescans_filtered_feeds({"couchdb": "Welcome", "version": "3.5.0"})


def test_a_taken_embedded_port_is_one_line(tmp_path: Any) -> None:
    """Without --couch, a port some other server listens on is refused at once, in one line."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(SystemExit) as raised:
            parse("--data", str(tmp_path), "--embedded-port", str(port))
        text = str(raised.value)
        assert f"--embedded-port {port} is taken on 127.0.0.1" in text
        assert f"--couch=http://127.0.0.1:{port}/messages" in text
        assert "\n" not in text
        with pytest.raises(SystemExit) as raised:
            parse("--couch", "http://127.0.0.1:9/messages", "--demo-port", str(port))
        assert f"--demo-port {port} is taken on 127.0.0.1" in str(raised.value)


def test_a_bad_tracing_environment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(SystemExit) as raised:
        parse("--couch", "http://127.0.0.1:5984/messages")
    text = str(raised.value)
    assert text == (
        "twistd couchgw: OTEL_TRACES_EXPORTER=zipkin is not an exporter couchgw has "
        "(otlp, console, none) (see twistd couchgw --help)"
    )


@pytest.mark.parametrize(
    ("environ", "kind"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "gw"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_tracing_is_on_only_where_the_environment_says(
    environ: dict[str, str], kind: str | None
) -> None:
    assert exporter_kind(environ) == kind
    tracing = Tracing.from_environment(environ)
    assert tracing.on is (kind is not None)
    tracing.shutdown()


def test_an_otlp_protocol_couchgw_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not one"):
        exporter_kind({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_tracing_stops_after_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    top = makeService(
        parse("--couch", "http://127.0.0.1:5984/messages"), reactor=MemoryReactorClock()
    )
    kinds = [type(s) for s in services(top)]
    assert kinds.index(TracingService) < kinds.index(Gateway)  # stopped in the reverse order
    gateway = next(s for s in services(top) if isinstance(s, Gateway))
    assert gateway.dispatch.tracing.on


def test_the_service_is_named_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert resource_from_environment().attributes["service.name"] == "couchgw"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "couchgw-north")
    assert resource_from_environment().attributes["service.name"] == "couchgw-north"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=south,region=eu")
    attributes = resource_from_environment().attributes
    assert (attributes["service.name"], attributes["region"]) == ("south", "eu")
