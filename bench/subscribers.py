"""
What idle subscribers cost: opens N event streams (GET /messages/<id>/events for messages that
do not exist yet) on a running couchgw, and reports its memory and CPU time before, with them
open, and over an idle minute.

    .venv/bin/python bench/subscribers.py --subscribers 1000 --idle 60
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from processes import couch, demo, gateway

from tests.servers import free_port


def usage(pid: int) -> tuple[float, float]:
    """RSS (MB) and CPU seconds (user + system) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return rss / 1024, ticks / 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds to stay idle")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="couchgw-subscribers-"))
    couch_port, demo_port, api_port = free_port(), free_port(), free_port()
    parts = [couch(folder, couch_port, False), demo(folder, demo_port, 0.1)]
    db = f"http://127.0.0.1:{couch_port}/subscribers"
    gw = gateway(folder, db, demo_port, api_port)
    try:
        for part in [*parts, gw]:
            part.start(wait=True)
        assert gw.process is not None
        pid = gw.process.pid
        time.sleep(2)
        rss0, cpu0 = usage(pid)
        streams = []
        for i in range(args.subscribers):
            s = socket.create_connection(("127.0.0.1", api_port))
            s.sendall(f"GET /messages/idle-{i}/events HTTP/1.0\r\n\r\n".encode())
            streams.append(s)
        for s in streams:  # each answers its headers and a "waiting" comment
            s.settimeout(30)
            data = b""
            while b"waiting for it" not in data:
                data += s.recv(4096)
        rss1, cpu1 = usage(pid)
        time.sleep(args.idle)
        rss2, cpu2 = usage(pid)
        n = args.subscribers
        print(f"{n} idle subscribers on one couchgw process")
        print(
            f"  RSS before: {rss0:.1f} MB; with them open: {rss1:.1f} MB "
            f"(+{(rss1 - rss0) * 1024 / n:.1f} kB each)"
        )
        print(f"  CPU while opening them: {cpu1 - cpu0:.2f} s")
        print(
            f"  CPU over {args.idle:.0f} s idle with them open: {cpu2 - cpu1:.2f} s; "
            f"RSS after: {rss2:.1f} MB"
        )
        for s in streams:
            s.close()
    finally:
        for part in [gw, *reversed(parts)]:
            part.stop()


if __name__ == "__main__":
    main()
