"""
Traces of messages through OpenTelemetry: where the time between a client's write and the
target's answer went.

Each attempt of a message gives four spans: C{couchgw.wait} (from when the message was written,
or its retry came due, to its claim), C{couchgw.claim} (the claim's write), C{couchgw.call} (the
call, with its route, operation and attempt) and C{couchgw.write} (the outcome's write).  They
continue the trace of the message's C{traceparent} (and C{tracestate}), a W3C trace context a
client may write; a message without one gets a trace of its own: its first C{couchgw.wait} span
is the root, and couchgw keeps that span's context in the message's C{trace} field, so that
every later attempt, by any gateway, joins the same trace.  The call's context goes on to the
target as a C{traceparent} header (HTTP routes, and the HTTP request of a SOAP call); while
tracing is off, the message's own (L{passed_on}).

Tracing is on when the standard C{OTEL_*} environment variables name an exporter
(L{from_environment}); off, nothing is recorded and nothing is exported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from couchgw.checks import Plan
from couchgw.message import Doc

#: Environment variables that name where spans go.
_EXPORTER_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
_PROPAGATOR = TraceContextTextMapPropagator()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def exporter_kind(environ: Mapping[str, str]) -> str | None:
    """
    The exporter the C{OTEL_*} variables ask for: C{"otlp"} (OTLP over HTTP with protobuf,
    C{OTEL_TRACES_EXPORTER=otlp}, the default once an OTLP endpoint is set), C{"console"}, or
    None (C{none}, nothing set, or C{OTEL_SDK_DISABLED=true}).

    @raise ValueError: an exporter or protocol couchgw does not have, in one line.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not any(environ.get(name, "").strip() for name in _EXPORTER_VARIABLES):
        return None
    kind = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if kind == "none":
        return None
    if kind not in ("otlp", "console"):
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={kind} is not an exporter couchgw has (otlp, console, none)"
        )
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if kind == "otlp" and protocol not in ("", "http/protobuf"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not one couchgw exports with "
            "(http/protobuf)"
        )
    return kind


def resource_from_environment() -> Resource:
    """
    What the spans say of their service: C{OTEL_SERVICE_NAME} and C{OTEL_RESOURCE_ATTRIBUTES}
    as the SDK reads them, with C{service.name} C{couchgw} where they name none.
    """
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "couchgw"}))
    return resource


def passed_on(plan: Plan) -> dict[str, str]:
    """
    The headers that pass a message's own trace context (C{traceparent}, and C{tracestate}
    with it) on to its target as it is, for a call no span records (tracing off): what
    OpenTelemetry's propagator writes of the context it reads, so that the client's trace goes
    on past couchgw.
    """
    if not plan.traceparent:
        return {}
    carrier = {"traceparent": plan.traceparent}
    if plan.tracestate:
        carrier["tracestate"] = plan.tracestate
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers, context=_PROPAGATOR.extract(carrier))
    return headers


class Tracing:
    """
    The spans of messages, recorded through C{provider} (None: tracing is off, and nothing is
    recorded at all).
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer = None if provider is None else provider.get_tracer("couchgw")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the C{OTEL_*} environment variables configure it (off when they do not)."""
        environ = os.environ if environ is None else environ
        kind = exporter_kind(environ)
        exporter: SpanExporter
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from the OTEL_* variables
        elif kind == "console":
            exporter = ConsoleSpanExporter()
        else:
            return cls()
        provider = TracerProvider(resource=resource_from_environment())
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @property
    def on(self) -> bool:
        return self._tracer is not None

    def describe(self) -> str:
        return "on" if self.on else "off"

    def attempt(self, doc: Doc, plan: Plan, waiting_since: float) -> Attempt | None:
        """
        The spans of one attempt of a message, from the time it began to wait (None: tracing
        is off).
        """
        if self._tracer is None:
            return None
        carrier = {"traceparent": plan.traceparent or doc.get("trace") or ""}
        if plan.traceparent and plan.tracestate:
            carrier["tracestate"] = plan.tracestate
        parent = _PROPAGATOR.extract(carrier) if carrier["traceparent"] else None
        return Attempt(self._tracer, doc["_id"], parent, _ns(waiting_since))

    def shutdown(self) -> None:
        """Export what is left (blocking: call it off the reactor thread)."""
        if self.provider is not None:
            self.provider.shutdown()


class TracingService(Service):
    """Exports the spans left when couchgw stops (in a thread: export may wait on the network)."""

    def __init__(self, tracing: Tracing, reactor: Any) -> None:
        self.tracing = tracing
        self.reactor = reactor

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if not self.tracing.on:
            return None
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.tracing.shutdown)


@dataclass
class Attempt:
    """The spans of one attempt of one message."""

    tracer: trace.Tracer
    message_id: str
    #: The context the spans continue (None: the message has no trace yet: C{wait} starts one).
    parent: otel_context.Context | None
    waiting_since: int
    #: Fields for the claim to write: the C{trace} of a message that had none.
    claim_fields: dict[str, Any] = field(default_factory=dict)
    _open: dict[str, Span] = field(default_factory=dict)

    def claiming(self, now: float) -> None:
        """The wait ended, the claim begins."""
        wait = self.tracer.start_span(
            "couchgw.wait",
            context=self.parent,
            start_time=min(self.waiting_since, _ns(now)),
            attributes={"couchgw.message": self.message_id},
        )
        wait.end(_ns(now))
        if self.parent is None:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(wait))
            self.claim_fields = {"trace": carrier["traceparent"]}
            self.parent = trace.set_span_in_context(wait)
        self._start("claim", now)

    def claimed(self, now: float, taken: bool) -> None:
        self._end("claim", now, None if taken else "the claim was lost")

    def calling(
        self, now: float, route: str, operation: str | None, attempt: Any
    ) -> dict[str, str]:
        """The call begins: answers the headers that carry its context to the target."""
        span = self._start("call", now, SpanKind.CLIENT)
        span.set_attribute("couchgw.route", route)
        if isinstance(operation, str):
            span.set_attribute("couchgw.operation", operation)
        if isinstance(attempt, int):
            span.set_attribute("couchgw.attempt", attempt)
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        return headers

    def called(self, now: float, status: str, error: str | None = None) -> None:
        span = self._open.get("call")
        if span is not None:
            span.set_attribute("couchgw.status", status)
        self._end("call", now, error)

    def writing(self, now: float, status: str) -> None:
        self._start("write", now).set_attribute("couchgw.status", status)

    def written(self, now: float, error: str | None = None) -> None:
        self._end("write", now, error)

    def end(self, now: float) -> None:
        """End whatever span is still open (the attempt stopped short)."""
        for step in list(self._open):
            self._end(step, now, None)

    def _start(self, step: str, now: float, kind: SpanKind = SpanKind.INTERNAL) -> Span:
        span = self.tracer.start_span(
            f"couchgw.{step}",
            context=self.parent,
            kind=kind,
            start_time=_ns(now),
            attributes={"couchgw.message": self.message_id},
        )
        self._open[step] = span
        return span

    def _end(self, step: str, now: float, error: str | None) -> None:
        span = self._open.pop(step, None)
        if span is None:
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(_ns(now))
