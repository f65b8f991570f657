"""The facade: tracing is on only with an OTLP endpoint, and off it loads nothing of the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from feedsvc import tracing

# Builds the api's app and the writer as the roles do, then lists what got imported.
BUILD_AND_LIST = """
import dataclasses, json, os, sys
from typing import Any, cast
import anyio
from feedsvc import roles, tracing
from feedsvc.config import Settings
from feedsvc.http.app import ApiParts, create_app
from feedsvc.ingest.writer import Writer
from feedsvc.metrics import Metrics

async def main() -> None:
    async with (
        tracing.opened(tracing.API, os.environ) as api,
        tracing.opened(tracing.WRITER, os.environ, kafka_spans=True) as writer,
    ):
        unused = {f.name: cast(Any, None) for f in dataclasses.fields(ApiParts)}
        metrics = Metrics()
        create_app(ApiParts(**{**unused, "settings": Settings(), "metrics": metrics}), api)
        none = cast(Any, None)
        Writer(none, none, none, metrics, batch=1, linger_ms=1, kafka_timeout_s=1, tracing=writer)

anyio.run(main)
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "google")))))
"""


def _loaded(env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", BUILD_AND_LIST],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_an_otlp_endpoint_turns_tracing_on(environ: dict[str, str], on: bool) -> None:
    """Either standard endpoint variable turns tracing on, unless the SDK is disabled."""
    assert tracing.configured(environ) is on


# Litestar imports the API and the ASGI instrumentation when they are installed, to look
# for its own tracing middleware (litestar/app.py, `_patch_opentelemetry_middleware`):
# modules, not a provider; nothing of what makes or sends spans.
WORKING_PARTS = ("opentelemetry.sdk", "opentelemetry.exporter", "google.protobuf")
INSTRUMENTATIONS = (
    "opentelemetry.instrumentation.aiokafka",
    "opentelemetry.instrumentation.psycopg",
)


def test_off_no_sdk_exporter_or_instrumentation_is_imported() -> None:
    """With no endpoint, building the api's app and the writer imports no SDK, exporter,
    protobuf or Kafka/database instrumentation."""
    loaded = _loaded({})
    assert not [m for m in loaded if m.startswith(WORKING_PARTS + INSTRUMENTATIONS)]


def test_on_the_sdk_and_exporter_are_imported() -> None:
    """With an endpoint, the same build imports the SDK, the exporter and the instrumentations."""
    # Nothing is exported: no span is made, so the unreachable endpoint is never called.
    loaded = set(_loaded({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}))
    assert {
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.instrumentation.asgi",
        "opentelemetry.instrumentation.aiokafka",
        "opentelemetry.instrumentation.psycopg",
    } <= loaded


async def test_off_every_hook_is_a_no_op() -> None:
    """Off, the app is returned unwrapped and the spans are one shared no-op."""
    async with tracing.opened(tracing.API, {}) as off:
        assert off is tracing.OFF

        async def app(scope: object, receive: object, send: object) -> None: ...

        assert off.around_http(app) is app
        headers: list[tuple[str, bytes]] = []
        assert off.produce("id", "rid", headers) is off.batch([])
        assert headers == []
