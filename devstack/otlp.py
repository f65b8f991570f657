"""An OTLP/HTTP trace receiver: the test-side stand-in for an OpenTelemetry Collector.

It decodes each `ExportTraceServiceRequest` (protobuf, as the SDK's OTLP/HTTP exporter
sends it) and keeps the spans for a test to read. A Collector's binary cannot be
installed here; this speaks the same protocol on the same path
(https://opentelemetry.io/docs/specs/otlp/#otlphttp-request).

    python -m devstack.otlp [--port 4318] [--count-only]

serves until SIGINT or SIGTERM and prints how many export requests and spans arrived;
`--count-only` skips decoding, so that a benchmark's receiver costs the machine little.
"""

from __future__ import annotations

import argparse
import gzip
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PATH = "/v1/traces"


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Span:
    """One received span; ids in lower-case hex, as in `traceparent`."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: list[Link] = field(default_factory=list)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


def decode(body: bytes) -> list[Span]:
    """The spans of one export request's body."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        service=service,
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        attributes=_attributes(s.attributes),
                        links=[
                            Link(
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                _attributes(link.attributes),
                            )
                            for link in s.links
                        ],
                    )
                )
    return spans


class Receiver:
    """Spans received so far, and how many export requests brought them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.requests = 0
        self.bytes = 0
        self.url = ""
        """The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT` (the SDK adds the path)."""

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def add(self, spans: list[Span], size: int) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self.bytes += size


def _handler(receiver: Receiver, count_only: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != PATH:
                self.send_error(404)
                return
            receiver.add([] if count_only else decode(body), len(body))
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def receiving(
    host: str = "127.0.0.1", port: int = 0, count_only: bool = False
) -> Iterator[Receiver]:
    """A receiver listening on `port` (0: a free one) until the block ends."""
    receiver = Receiver()
    server = ThreadingHTTPServer((host, port), _handler(receiver, count_only))
    receiver.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str]) -> int:
    """Serve until interrupted; then print what arrived."""
    parser = argparse.ArgumentParser(prog="python -m devstack.otlp")
    parser.add_argument("--port", type=int, default=4318, help="4318: OTLP/HTTP's own port")
    parser.add_argument("--count-only", action="store_true", help="count requests, decode none")
    opts = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with receiving(port=opts.port, count_only=opts.count_only) as receiver:
        print(f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}", file=sys.stderr, flush=True)
        stop.wait()
    spans = "not decoded" if opts.count_only else len(receiver.spans)
    print(f"requests={receiver.requests} bytes={receiver.bytes} spans={spans}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
