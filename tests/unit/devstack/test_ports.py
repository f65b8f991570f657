"""Ports: free ones for the dev stack's servers, and who listens on one (ready api workers)."""

from __future__ import annotations

import socket
from pathlib import Path

from devstack import free_port
from devstack.procs import listeners
from feedsvc.serving.sockets import listener, reserve_port


def test_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    """The kernel gives outgoing connections source ports from the ephemeral range; a
    server port from there can be taken between choosing and binding it."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= port < ephemeral_low for port in ports), ports
    assert len(set(ports)) == len(ports)


def test_listeners_counts_listening_sockets_only() -> None:
    """The supervisor's reservation (bound, not listening) is not a ready worker, nor is a
    connection; each worker's SO_REUSEPORT listener is."""
    reserved = reserve_port("127.0.0.1", free_port())
    port = reserved.getsockname()[1]
    try:
        assert listeners(port) == 0
        first = listener("127.0.0.1", port, 0, reuse_port=True)
        assert listeners(port) == 1
        second = listener("127.0.0.1", port, 0, reuse_port=True)
        assert listeners(port) == 2
        # Nor is a connection the port has accepted (its local port is the same).
        with socket.create_connection(("127.0.0.1", port)):
            assert listeners(port) == 2
        first.close()
        second.close()
        assert listeners(port) == 0
    finally:
        reserved.close()
