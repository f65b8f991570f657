"""The HTTP port of a process without a server of its own (the writer): `/metrics`,
`/health/live`, `/health/ready`, answered from a thread of their own.

The paths and answers are the api's (docs/api.md#health, docs/metrics.md), so one scrape and probe
configuration serves every process. A scrape reads values under the Prometheus client's
locks and `ready` reads plain attributes, so the event loop never waits for a request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

JSON = "application/json"


@contextmanager
def serving(
    host: str, port: int, render: Callable[[], bytes], ready: Callable[[], bool]
) -> Iterator[int]:
    """Serve the three paths on `host:port` meanwhile; yields the port (0: the kernel's)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, render())
            elif path == "/health/live":
                self._answer(200, JSON, b'{"status":"live"}')
            elif path == "/health/ready":
                if ready():
                    self._answer(200, JSON, b'{"status":"ready"}')
                else:
                    self._answer(503, JSON, b'{"status":"not ready"}')
            else:
                self._answer(404, JSON, b'{"detail":"not found"}')

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # A scrape every few seconds is not news; the process logs its own work.
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
