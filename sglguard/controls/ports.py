"""Who listens on a target's port: a restart counts only when the server sglguard started is
the one answering, and a port already held by another process is named at once."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

LOCAL_NAMES = {"localhost", "localhost.localdomain", ""}


@dataclass(frozen=True)
class Holder:
    """A process listening on a port (pid None: a socket of another user, not visible)."""

    pid: int | None
    port: int

    def describe(self) -> str:
        if self.pid is None:
            return f"a process of another user (port {self.port})"
        try:
            process = psutil.Process(self.pid)
            command = " ".join(process.cmdline()) or process.name()
            if len(command) > 200:  # keep both ends: the program and what it was asked to do
                command = f"{command[:80]} ... {command[-115:]}"
            return f"pid {self.pid} ({command})"
        except psutil.Error:
            return f"pid {self.pid}"


def local_port(url: str) -> int | None:
    """The port of a target URL served on this host; None for a remote target."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if host in LOCAL_NAMES or host == socket.gethostname().lower():
        return port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return port if address.is_loopback or address.is_unspecified else None


def listeners(port: int) -> list[Holder]:
    """Every process listening on `port` on any address."""
    try:
        found = psutil.net_connections(kind="inet")
    except psutil.Error:
        return []
    seen: dict[int | None, Holder] = {}
    for connection in found:
        if connection.status == psutil.CONN_LISTEN and connection.laddr \
                and connection.laddr.port == port:
            seen.setdefault(connection.pid, Holder(connection.pid, port))
    return list(seen.values())


def family(pid: int) -> set[int]:
    """The process and all its descendants (a server's workers may hold its port)."""
    try:
        process = psutil.Process(pid)
        return {pid, *(child.pid for child in process.children(recursive=True))}
    except psutil.Error:
        return set()


def foreign(port: int, ours: int | None) -> Holder | None:
    """A listener on `port` that is not `ours` (nor one of its descendants), if any."""
    mine = family(ours) if ours is not None else set()
    return next((holder for holder in listeners(port) if holder.pid not in mine), None)
