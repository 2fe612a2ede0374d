"""
Log observers for twistd's C{--logger} option.

    twistd --logger couchgw.logs.json -n couchgw ...

writes one JSON object per line to standard output (C{twisted.logger}'s own event format: the
format string, its fields, C{log_level}, C{log_namespace}, C{log_time}), for journald, a
container runtime or a log shipper.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def json() -> FileLogObserver:
    """JSON lines on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
