"""The api's listening sockets: one per worker, sharing a port (SO_REUSEPORT)."""

from __future__ import annotations

import socket


def listener(host: str, port: int, sndbuf: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket on (host, port); with `reuse_port`, one of a group sharing the port.

    Note: a feed client that stops reading is detected only once our writes to it
    block, i.e. once its socket's send buffer is full; a fixed buffer (instead of
    autotuning up to 4 MiB) makes that prompt and bounds the memory it pins. Accepted
    sockets inherit it from the listener.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048, reuse_port=reuse_port)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.set_inheritable(True)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT but not listening.

    Note: it fails at once when another program holds the port, resolves port 0 to one
    port for every worker, and takes no connections itself (only listening sockets do).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock
