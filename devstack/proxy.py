"""The front door natively: Debian's HAProxy with `proxy/haproxy.cfg`, in front of the replicas.

The config is the one compose mounts; what is native is the second file written here,
`backend api` with one server per replica (ARCHITECTURE.md#front-door), and the admin
socket through which devstack reads the servers' states.
"""

from __future__ import annotations

import csv
import re
import resource
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path

from devstack.procs import REPO, Service, StackError

CONFIG = REPO / "proxy" / "haproxy.cfg"
"""The front door's configuration, shared with compose.yaml's `haproxy` service."""


def config_default(variable: str) -> str:
    """The default `proxy/haproxy.cfg` gives `variable` ("${VAR-default}"); one, or it fails."""
    found: set[str] = set(re.findall(r"\$\{" + variable + r"-([^}]*)\}", CONFIG.read_text()))
    if len(found) != 1:
        raise StackError(f"{variable}: {len(found)} defaults in {CONFIG}, expected one")
    return found.pop()


ONE_ADDRESS = {
    "FEEDSVC_PROXY_POST_RATE": "100000000",
    "FEEDSVC_PROXY_POST_INFLIGHT": "1000000",
    "FEEDSVC_PROXY_STREAMS": "1000000",
}
"""Per-address limits out of the way (docs/fair-share.md), for loads that come from one
address but stand for many clients: the tests' shared stack, the benchmarks of capacity."""


def native_maxconn(wanted: int = 10_000) -> int:
    """The config's maxconn, or fewer if this machine's descriptor limit cannot hold it.

    Note: HAProxy needs two descriptors per connection plus a few, and refuses to start
    when the hard limit is below that (ours: 20,000).
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, (hard - 100) // 2)


def haproxy_binary() -> str:
    """Debian's haproxy (scripts/bootstrap installs it)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise StackError("haproxy is not installed: run scripts/bootstrap")
    return found


class Proxy:
    """HAProxy on 127.0.0.1:`port`, forwarding to the api replicas at `replicas` (name → port)."""

    def __init__(
        self,
        root: Path,
        port: int,
        replicas: Mapping[str, int],
        env: Mapping[str, str],
        *,
        pid: int | None = None,
    ) -> None:
        self.root = root
        self.port = port
        self.replicas = dict(replicas)
        self.servers_path = root / "servers.cfg"
        self.socket_path = root / "admin.sock"
        self.service = Service(
            "proxy",
            [haproxy_binary(), "-db", "-f", str(CONFIG), "-f", str(self.servers_path)],
            {
                "FEEDSVC_PROXY_MAXCONN": str(native_maxconn()),
                **env,
                "FEEDSVC_PROXY_BIND": f"127.0.0.1:{port}",
                "FEEDSVC_PROXY_SOCKET": str(self.socket_path),
            },
            root.parent / "logs" / "proxy.log",
            pid=pid,
        )

    @property
    def url(self) -> str:
        """The front door's base URL: what users, tests and benchmarks hit."""
        return f"http://127.0.0.1:{self.port}"

    def servers_cfg(self) -> str:
        """The native half of the config: the `api` backend, one server per replica."""
        lines = ["# Written by devstack/proxy.py: the api replicas of this stack.", "backend api"]
        lines += [f"    server {name} 127.0.0.1:{port}" for name, port in self.replicas.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Write the servers, check the config, start HAProxy (unless it runs)."""
        if self.service.running:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.servers_path.write_text(self.servers_cfg())
        self.service.start()

    def server_states(self) -> dict[str, str]:
        """Each replica's state as the proxy sees it (UP, DOWN, "UP 1/2", ...), by name.

        Note: read from `show stat` on the admin socket; empty while the proxy is not up.
        https://docs.haproxy.org/2.6/management.html#9.3-show%20stat
        """
        try:
            raw = self._command("show stat")
        except OSError:
            return {}
        rows = csv.DictReader(raw.removeprefix("# ").splitlines())
        return {
            row["svname"]: row["status"]
            for row in rows
            if row.get("pxname") == "api" and row.get("svname") in self.replicas
        }

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()
