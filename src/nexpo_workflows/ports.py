"""Checking that a TCP port is free before a server is started on it."""

from __future__ import annotations

import asyncio
import socket


class PortInUseError(Exception):
    pass


def ensure_free(host: str, port: int, purpose: str) -> None:
    """Fail with a message naming the port: some servers would otherwise attach to its holder."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortInUseError(
                f"port {port} on {host} ({purpose}) is already in use: {error.strerror}"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def accepts_connections(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` now (a server that is still starting)."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True
