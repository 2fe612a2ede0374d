"""
The gateway: follows the message database, claims messages, calls their targets, writes back.

L{Gateway} (in L{couchgw.gateway.service}) wires its parts: the intake, the handling of one
message, the dispatch (with each route's circuit breaker), the claims, the members sharing the
database, the routes' readiness, the checkpoint and the callbacks.  Its log lines (but those of
claims, members and callbacks) are in the namespace C{couchgw.gateway}.
"""

from couchgw.gateway.outcomes import Policy
from couchgw.gateway.service import Gateway

__all__ = ["Gateway", "Policy"]
