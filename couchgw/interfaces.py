"""
The target interfaces under the name route-kind plugins import them by; they live in
L{couchgw.targets.interfaces}.
"""

from couchgw.targets.interfaces import (
    BaseTarget,
    Fault,
    IRunner,
    ITarget,
    ITargetFactory,
    Outage,
    Transient,
    Unreachable,
    target_url,
)

__all__ = [
    "BaseTarget",
    "Fault",
    "IRunner",
    "ITarget",
    "ITargetFactory",
    "Outage",
    "Transient",
    "Unreachable",
    "target_url",
]
