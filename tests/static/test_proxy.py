"""proxy/haproxy.cfg, the front door natively and in compose, keeps its limits and routing.

HAProxy's own parser checks the file (`haproxy -c`) in both of its modes; the rest reads
the directives that carry a guarantee (docs/operations.md#front-door).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from devstack.proxy import CONFIG, config_default
from feedsvc.config import Settings

pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="static checks run in native mode, not inside the test container",
)


def directives() -> list[str]:
    """The config's lines without comments, blank lines or indentation."""
    lines = (line.split("#", 1)[0].strip() for line in CONFIG.read_text().splitlines())
    return [line for line in lines if line]


def default_of(directive: str) -> str:
    """The default of the "${VAR-default}" a directive's value is, or its plain value."""
    found = [line for line in directives() if line.startswith(directive + " ")]
    assert len(found) == 1, (directive, found)
    value = found[0].removeprefix(directive + " ")
    substituted = re.fullmatch(r'"\$\{\w+-([^}]*)\}"', value)
    return substituted.group(1) if substituted else value


def seconds(duration: str) -> float:
    """An HAProxy time (`45s`, `500ms`, `1m`) in seconds."""
    found = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert found, duration
    return int(found.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[found.group(2)]


@pytest.mark.parametrize("mode", ["native", "compose"])
def test_haproxy_accepts_the_config(mode: str, tmp_path: Path) -> None:
    """`haproxy -c` passes natively (with devstack's servers file) and as compose runs it."""
    argv = ["haproxy", "-c", "-f", str(CONFIG)]
    env = {"PATH": os.environ["PATH"] + ":/usr/sbin"}
    if mode == "native":
        servers = tmp_path / "servers.cfg"
        servers.write_text("backend api\n    server api 127.0.0.1:8000\n")
        argv += ["-f", str(servers)]
    else:
        env["FEEDSVC_PROXY_REPLICAS_DNS"] = "api:8000"
        env["FEEDSVC_PROXY_INTERNAL_BIND"] = ":8002"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_streams_outlive_the_idle_timeouts_by_their_heartbeats() -> None:
    """A quiet feed stream sends a heartbeat at least twice within each inactivity timeout."""
    heartbeat = Settings().heartbeat_s
    for directive in ("timeout client", "timeout server"):
        assert seconds(default_of(directive)) >= 2 * heartbeat, directive


def test_slow_heads_and_bodies_are_cut_before_a_replica_sees_them() -> None:
    """The head and body must arrive within `timeout http-request`, buffered by the proxy."""
    assert seconds(default_of("timeout http-request")) <= 30
    assert "option http-buffer-request" in directives()


def test_heads_and_connections_are_capped() -> None:
    """A request head fits in bufsize - maxrewrite; the proxy holds maxconn connections."""
    head = int(default_of("tune.bufsize")) - int(default_of("tune.maxrewrite"))
    assert 8 * 1024 <= head <= 32 * 1024
    assert int(default_of("maxconn")) > 0


def test_only_ready_replicas_get_traffic() -> None:
    """Replicas are checked on /health/ready, and only a 200 counts."""
    assert "option httpchk GET /health/ready" in directives()
    assert "http-check expect status 200" in directives()
    assert default_of("default-server").startswith("check ")


def test_a_vanished_client_is_let_go_at_once() -> None:
    """A client's close aborts the request at the replica too, not at its next heartbeat."""
    assert "option abortonclose" in directives()


def test_every_write_is_sent_at_once() -> None:
    """Frames are not held back for more data (http-no-delay): an SSE event is not delayed."""
    assert "option http-no-delay" in directives()


def test_nothing_buffers_or_compresses_the_event_stream() -> None:
    """No compression and no response buffering: SSE frames pass as the api writes them."""
    assert not [d for d in directives() if d.split()[0] in ("compression", "filter")]


# --- Fair share (docs/fair-share.md) ---

FAIR_SHARE = (
    "FEEDSVC_PROXY_POST_RATE",
    "FEEDSVC_PROXY_POST_INFLIGHT",
    "FEEDSVC_PROXY_STREAMS",
    "FEEDSVC_PROXY_TRUSTED_XFF",
    "FEEDSVC_PROXY_TRUSTED_PROXY_PROTOCOL",
)
ROOT = CONFIG.parents[1]


@pytest.mark.parametrize("variable", FAIR_SHARE)
def test_fair_share_settings_are_set_in_compose_and_documented(variable: str) -> None:
    """Each limit has one default, passed by compose with it, in .env.example and the docs."""
    default = config_default(variable)
    compose = (ROOT / "compose.yaml").read_text()
    assert f"{variable}: ${{{variable}:-{default}}}" in compose
    example = (ROOT / ".env.example").read_text()
    assert re.search(rf"^{variable}={re.escape(default)}$", example, re.MULTILINE)
    assert f"`{variable}`" in (ROOT / "docs" / "fair-share.md").read_text()


def test_one_address_holds_a_small_part_of_a_replicas_streams() -> None:
    """The per-address stream cap is at most 2 % of what one api process serves."""
    streams = config_default("FEEDSVC_PROXY_STREAMS")
    assert 1 <= int(streams) <= Settings().max_subscribers // 50


def test_the_api_is_told_one_client_address_the_proxy_chose() -> None:
    """X-Forwarded-For is set to the client the limits are keyed by, never appended to."""
    assert "http-request set-header X-Forwarded-For %[src]" in directives()
    assert "option forwardfor" not in directives()


def test_every_refusal_says_when_to_come_back() -> None:
    """Each per-client refusal has Retry-After; a POST's 429 also the IETF RateLimit fields."""
    refusals = [d for d in directives() if d.startswith("http-request return") and "sc" in d]
    assert len(refusals) == 3
    for refusal in refusals:
        assert "hdr Retry-After " in refusal
        if "status 429" in refusal:
            assert "hdr RateLimit-Policy " in refusal and "hdr RateLimit " in refusal
            assert '\\"error\\":\\"too_many_requests\\"' in refusal
        else:  # the feed: never an error status, which EventSource would not retry
            assert "status 200 content-type text/event-stream" in refusal
            assert 'string "retry: ' in refusal


def section(name: str) -> list[str]:
    """The directives of one section (`frontend internal`), up to the next section."""
    lines, inside = [], False
    for line in directives():
        if re.match(r"(frontend|backend|defaults|global|resolvers|listen|\.if|\.endif)\b", line):
            inside = line == name
        elif inside:
            lines.append(line)
    return lines


def test_the_internal_entrance_has_no_per_address_quota() -> None:
    """The internal entrance (compose's bot's, tests/static/test_topology.py) tracks no one."""
    internal = section("frontend internal")
    assert 'bind "${FEEDSVC_PROXY_INTERNAL_BIND}"' in internal
    assert "default_backend api" in internal
    assert not [d for d in internal if "track-sc" in d or d.startswith("http-request return")]
