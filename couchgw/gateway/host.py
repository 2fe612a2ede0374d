"""
Processes of this host: a gateway restarted on the same host can tell that its predecessor's
process ended, and take its claims over at once.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def _home() -> str | None:
    """
    What a process on this host shares with this one when their pids can be compared: the
    boot and the pid namespace (None where that cannot be told: pids are then never compared).
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{socket.gethostname()} {boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


HOME = _home()


def ended(home: Any, pid: Any) -> bool:
    """Whether C{pid} in C{home} (as L{HOME} says it) is a process of this host that ended."""
    if HOME is None or home != HOME or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's)
    return False
