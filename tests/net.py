"""Ports on 127.0.0.1 for the real servers the tests start (GCS emulator, Prefect, Dask, TF workers)."""

from __future__ import annotations

import socket


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct ports that were free a moment ago (all held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port that was free a moment ago."""
    return free_ports(1)[0]
