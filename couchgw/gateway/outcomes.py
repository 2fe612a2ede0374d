"""
What a call's answer or error makes of a message: the fields written (forwarded, retrying
after a backoff, failed, rejected, expired), by each route's policy, and the line logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw import checks, message
from couchgw.checks import Rejected
from couchgw.couch.client import Doc
from couchgw.errors import describe_error
from couchgw.metrics import Metrics
from couchgw.targets.interfaces import Fault, Transient
from couchgw.timing import Backoff

log = Logger(namespace="couchgw.gateway")


@dataclass(frozen=True)
class Policy:
    """How the gateway treats one route's messages (None: the gateway's own setting)."""

    #: Calls made for one message before a transient error is final.
    retries: int | None = None
    #: Seconds the first retry may wait; each next one up to twice as long (capped at 300).
    backoff: float | None = None
    #: Calls per second at most.
    rate: float | None = None
    #: Messages of this route handled at once; more wait in CouchDB, submitted as it drains.
    inflight: int | None = None
    #: Seconds a message keeps retrying from its first transient failure (instead of counting).
    retry_for: float | None = None
    #: The longest wait between retries, and between probes of the route when it is out.
    backoff_max: float = 300.0


class Outcomes:
    """
    @param retries: calls made for one message before a transient error is final (a route's
        policy may say otherwise).
    @param retry_backoff: the waits between retries (a route's policy may say otherwise).
    """

    def __init__(
        self,
        clock: IReactorTime,
        policies: Mapping[str, Policy],
        metrics: Metrics,
        *,
        retries: int,
        retry_backoff: Backoff,
    ) -> None:
        self.clock = clock
        self.policies = policies
        self.metrics = metrics
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._backoffs = {
            name: Backoff(
                base=policy.backoff, cap=policy.backoff_max, floor=min(1.0, policy.backoff)
            )
            for name, policy in policies.items()
            if policy.backoff is not None
        }

    def retries_of(self, route: str) -> int:
        return self.policies[route].retries or self.retries

    def too_late(self, doc: Doc, route: str) -> bool:
        """Whether a message's failures began C{retry_for} ago (its route's setting) or more."""
        retry_for = self.policies[route].retry_for
        since = _first_failure(doc)
        return (
            retry_for is not None
            and since is not None
            and self.clock.seconds() - since >= retry_for
        )

    def of_error(self, doc: Doc, error: Exception, route: str) -> dict[str, Any]:
        """The fields a failed call writes: final, or C{retrying} after a backoff."""
        now = self.clock.seconds()
        if isinstance(error, Fault):
            return message.failed("fault", str(error), now)
        if isinstance(error, Rejected):
            return message.rejected(str(error), now)
        if isinstance(error, Transient):
            attempts = int(doc.get("attempts") or 1)
            since = _first_failure(doc) or now
            retry_for = self.policies[route].retry_for
            if retry_for is None:
                again = attempts < self.retries_of(route)
            else:
                again = now - since < retry_for
            if again:
                delay = self._backoffs.get(route, self.retry_backoff).delay(attempts - 1)
                if checks.has_expired(doc, now + delay):
                    return message.expired(doc, now, f"its next attempt would come later: {error}")
                return message.retrying("transient", str(error), now, delay, since)
            return message.failed(
                "transient",
                f"{error} (after {attempts} attempts in {now - since:.0f}s)",
                now,
            )
        return message.failed("error", describe_error(error), now)

    def log(self, doc: Doc, fields: dict[str, Any], route: str, duration: float) -> None:
        """One line per outcome: info when forwarded, a warning with the cause otherwise."""
        status = fields["status"]
        common = {"id": doc["_id"], "status": status, "route": route, "duration": duration}
        if status == "forwarded":
            log.info("{id} {status} on route {route} after {duration:.3f}s", **common)
            return
        error = fields.get("error") or {}
        if status == "retrying":
            self.metrics.retries.labels(route).inc()
            log.warn(
                "{id} {status} on route {route} after {duration:.3f}s (attempt {attempt} of "
                "{retries}, again from {at}): {error}",
                attempt=doc.get("attempts"),
                retries=self.retries_of(route),
                at=fields.get("next_attempt_at"),
                error=error.get("message"),
                **common,
            )
        else:
            log.error(
                "{id} {status} on route {route} after {duration:.3f}s ({kind}): {error}",
                kind=error.get("kind"),
                error=error.get("message"),
                **common,
            )


def _first_failure(doc: Doc) -> float | None:
    """When the transient failures of a message that is being retried began."""
    error = doc.get("error")
    if not isinstance(error, dict) or error.get("kind") != "transient":
        return None
    return message.parse_time(error.get("since"))
