"""free_port: ports for the dev stack's servers that no outgoing connection can take first."""

from __future__ import annotations

from pathlib import Path

from devstack import free_port


def test_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    """The kernel gives outgoing connections source ports from the ephemeral range; a
    server port from there can be taken between choosing and binding it."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= port < ephemeral_low for port in ports), ports
    assert len(set(ports)) == len(ports)
