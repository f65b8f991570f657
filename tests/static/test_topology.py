"""compose.yaml and the Dockerfile keep the deployment's invariants.

The compose file is read through the real Compose loader (`config --format json`,
the binary scripts/check-static provides), so interpolation, anchors and defaults
are resolved exactly as `docker compose up` resolves them.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg.conninfo
import pytest
from msgspec.structs import fields

from bot.config import PREFIX as BOT_PREFIX
from bot.config import Settings as BotSettings
from feedsvc.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]

# The static checks run natively (CI, ./test.sh without Docker); the test image of
# scripts/test-in-docker has neither the compose files nor a Compose CLI.
pytestmark = [
    pytest.mark.skipif(
        os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
        reason="static checks run in native mode, not inside the test container",
    ),
    # On a fresh machine the first test waits for check-static to build Compose.
    pytest.mark.timeout(900),
]
ROACHES = ("roach1", "roach2", "roach3")
ONE_SHOTS = ("roach-init", "setup")
# name:1.2.3 or name:v1.2.3, optionally with a suffix (-slim-bookworm) and a digest.
PINNED = re.compile(
    r"^[a-z0-9][a-z0-9./_-]*:v?\d+\.\d+\.\d+(?:-[a-z0-9.-]+)?(?:@sha256:[0-9a-f]{64})?$"
)

Config = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The Compose CLI: the docker plugin, or the one check-static builds."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "check-static"), "--compose-bin"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    found = done.stdout.strip()
    return ["docker", "compose"] if found == "docker compose" else [found]


@pytest.fixture(scope="module")
def load(compose: list[str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Load compose.yaml with only the given variables set, as a fresh clone would."""
    empty = tmp_path_factory.mktemp("env") / "empty.env"
    empty.write_text("")

    def run(env_file: Path = empty, profile: str | None = None, **variables: str) -> Config:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **variables}
        argv = [*compose, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml")]
        argv += ["--env-file", str(env_file)]
        if profile:
            argv += ["--profile", profile]
        done = subprocess.run(
            [*argv, "config", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        config: Config = json.loads(done.stdout)
        return config

    return run


@pytest.fixture(scope="module")
def services(load: Any) -> dict[str, Any]:
    """The services of the default (user) stack."""
    return dict(load()["services"])


def flag(args: list[str], name: str) -> str:
    """The value of `--name=value` in a command line."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} appears {len(values)} times in {args}"
    return values[0]


def seconds(duration: str) -> float:
    """A Go duration as Compose prints it (`1m30s`, `30s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_three_nodes_join_each_other(services: dict[str, Any]) -> None:
    """Each node starts insecure, joins all three, and advertises its own name."""
    for name in ROACHES:
        args = services[name]["command"]
        assert args[0] == "start" and "--insecure" in args
        assert sorted(flag(args, "--join").split(",")) == [f"{r}:26257" for r in ROACHES]
        assert flag(args, "--advertise-addr") == f"{name}:26257"
        assert flag(args, "--cache") and flag(args, "--max-sql-memory")


def test_each_node_keeps_its_data_in_its_own_named_volume(services: dict[str, Any]) -> None:
    """Node data lives in named volumes (never bind mounts), one per node."""
    sources = []
    for name in ROACHES:
        data = [v for v in services[name]["volumes"] if v["target"] == "/cockroach/cockroach-data"]
        assert len(data) == 1 and data[0]["type"] == "volume"
        sources.append(data[0]["source"])
    assert len(set(sources)) == len(ROACHES)


def test_init_runs_once_against_one_node_without_waiting_for_health(
    services: dict[str, Any],
) -> None:
    """roach-init runs our script against roach1 as soon as the nodes have started."""
    init = services["roach-init"]
    assert init["depends_on"] == {
        r: {"condition": "service_started", "required": True} for r in ROACHES
    }
    assert init["environment"]["COCKROACH_INIT_HOST"] == "roach1:26257"
    mounts = {v["target"]: v["source"] for v in init["volumes"]}
    script = [t for t in init["entrypoint"] if t in mounts]
    assert len(script) == 1
    assert Path(mounts[script[0]]) == ROOT / "cockroach" / "init-cluster.sh"


def test_setup_waits_for_cluster_init_and_kafka_health(services: dict[str, Any]) -> None:
    """setup starts only after `cockroach init` succeeded and Kafka answers."""
    assert services["setup"]["command"] == ["python", "-m", "feedsvc", "setup"]
    assert services["setup"]["depends_on"] == {
        "roach-init": {"condition": "service_completed_successfully", "required": True},
        "kafka": {"condition": "service_healthy", "required": True},
    }


def test_app_starts_after_setup_and_bot_after_a_healthy_front_door(
    services: dict[str, Any],
) -> None:
    """api and writer wait for setup; the proxy for a healthy api; the bot for the proxy."""
    for name in ("api", "writer"):
        assert services[name]["depends_on"]["setup"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["haproxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["bot"]["depends_on"]["haproxy"]["condition"] == "service_healthy"


def test_users_and_the_bot_reach_the_api_through_the_front_door(load: Any) -> None:
    """The api replicas publish no host port; the proxy publishes the api's, and the bot
    posts through its internal entrance, which no host port reaches."""
    for config in (load(), load(env_file=ROOT / ".env.example")):
        services = config["services"]
        assert not services["api"].get("ports")
        published = [p["published"] for p in services["haproxy"]["ports"]]
        assert published == ["8000"]
        internal = services["haproxy"]["environment"]["FEEDSVC_PROXY_INTERNAL_BIND"]
        assert internal == ":8002"
        assert services["bot"]["environment"]["BOT_API_URL"] == "http://haproxy:8002"
        assert all(p["target"] != 8002 for p in services["haproxy"]["ports"])


def test_api_replicas_follow_feedsvc_api_replicas(load: Any) -> None:
    """compose runs FEEDSVC_API_REPLICAS api containers, 2 by default, all behind the proxy."""
    assert load()["services"]["api"]["deploy"]["replicas"] == 2
    scaled = load(FEEDSVC_API_REPLICAS="3")["services"]
    assert scaled["api"]["deploy"]["replicas"] == 3
    assert int(scaled["haproxy"]["environment"]["FEEDSVC_PROXY_SLOTS"]) >= 3


def test_proxy_runs_the_native_config_read_only(services: dict[str, Any]) -> None:
    """The haproxy service mounts proxy/haproxy.cfg, the file devstack runs, read-only,
    where the image reads it, and fills its backend from the api service's DNS name."""
    proxy = services["haproxy"]
    mounts = {v["target"]: v for v in proxy["volumes"]}
    cfg = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
    assert Path(cfg["source"]) == ROOT / "proxy" / "haproxy.cfg"
    assert cfg["read_only"] is True
    assert proxy["environment"]["FEEDSVC_PROXY_REPLICAS_DNS"] == "api:8000"


def test_proxy_image_is_the_native_haproxy_branch(services: dict[str, Any]) -> None:
    """The image's HAProxy branch (2.6) is the one scripts/bootstrap installs natively, so
    `haproxy -c` here vouches for the config compose runs."""
    image = services["haproxy"]["image"]
    branch = ".".join(image.split(":", 1)[1].split(".")[:2])
    assert branch == "2.6", image
    native = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=True)
    assert f"version {branch}." in native.stdout, native.stdout


def test_one_shots_run_once_and_the_rest_restart(services: dict[str, Any]) -> None:
    """roach-init and setup never restart; every long-running service does."""
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service.get("restart") == "no", name
        else:
            assert service.get("restart") in ("unless-stopped", "always"), name


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    """`up --wait` and depends_on can only trust services that report their health."""
    for name, service in services.items():
        if name in ONE_SHOTS:
            continue
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), name
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_host_ports_bind_to_loopback_only(load: Any) -> None:
    """Every published port, test profile included, is reachable from this host only."""
    for config in (load(), load(profile="test"), load(env_file=ROOT / ".env.example")):
        for name, service in config["services"].items():
            for port in service.get("ports", []):
                assert port.get("host_ip") == "127.0.0.1", (name, port)


def test_test_mode_publishes_no_fixed_port(load: Any) -> None:
    """With the ports scripts/test-in-docker empties, Docker picks free host ports."""
    script = (ROOT / "scripts" / "test-in-docker").read_text()
    compose_text = (ROOT / "compose.yaml").read_text()
    variables = sorted(set(re.findall(r"\$\{(FEEDSVC_\w+_PORT)-", compose_text)))
    assert variables
    for variable in variables:
        assert f'{variable}=""' in script, variable
    config = load(profile="test", **dict.fromkeys(variables, ""))
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert not port.get("published"), (name, port)


def test_every_image_is_pinned_to_an_exact_version(load: Any) -> None:
    """External images name an exact release."""
    for name, service in load(profile="test")["services"].items():
        if "build" not in service:
            assert PINNED.match(service["image"]), (name, service["image"])


def test_built_services_name_no_image(load: Any) -> None:
    """Each built service gets compose's own <project>-<service> image, never a shared tag."""
    built = {n: s for n, s in load(profile="test")["services"].items() if "build" in s}
    assert {"setup", "api", "writer", "bot", "tests"} <= set(built)
    for name, service in built.items():
        assert "image" not in service, (name, service["image"])


def test_dockerfile_bases_are_pinned_and_runtime_is_not_root() -> None:
    """Every FROM is a pinned image or an earlier stage; the last stage runs as a user."""
    stages: list[str] = []
    user = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            base = words[1]
            assert base in stages or PINNED.match(base), base
            stages.append(words[3] if len(words) >= 4 and words[2].upper() == "AS" else base)
            user = ""
        elif words[:1] == ["USER"]:
            user = words[1]
    assert stages[-1] == "runtime"
    assert user and user.split(":")[0] not in ("root", "0")


def test_stop_grace_outlasts_the_graceful_shutdown(load: Any) -> None:
    """Compose waits longer than uvicorn's graceful timeout before it kills the app."""
    for config in (load(), load(env_file=ROOT / ".env.example")):
        for name in ("api", "writer"):
            service = config["services"][name]
            grace = float(service["environment"]["FEED_SHUTDOWN_GRACE_S"])
            assert seconds(service["stop_grace_period"]) >= grace + 10, name


def test_processes_get_only_settings_they_know(load: Any) -> None:
    """feedsvc and the bot refuse unknown FEED_* / BOT_* variables, so compose passes none."""
    for prefix, struct in ((PREFIX, Settings), (BOT_PREFIX, BotSettings)):
        known = {prefix + f.name.upper() for f in fields(struct)}
        for name, service in load(profile="test")["services"].items():
            passed = {k for k in service.get("environment") or {} if k.startswith(prefix)}
            assert passed <= known, (name, passed - known)


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("api", "FEED_DATABASE_URL"),
        ("writer", "FEED_DATABASE_URL"),
        ("setup", "FEED_DATABASE_URL"),
        ("tests", "FEEDSVC_TEST_DATABASE_URL"),
    ],
)
def test_app_reaches_every_node(load: Any, service: str, variable: str) -> None:
    """Every client of the cluster lists all three nodes, so losing one does not stop it."""
    url = load(profile="test")["services"][service]["environment"][variable]
    params = psycopg.conninfo.conninfo_to_dict(url)
    assert str(params["host"]).split(",") == list(ROACHES)
    assert params["dbname"] == "feedsvc"


def test_env_example_names_only_variables_compose_reads(load: Any) -> None:
    """Each knob in .env.example is one compose.yaml reads, and the file loads."""
    text = (ROOT / "compose.yaml").read_text()
    example = (ROOT / ".env.example").read_text()
    names = re.findall(r"^([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE)
    assert names
    for name in names:
        assert re.search(r"\$\{" + name + r"\b", text), name
    proxy = load(env_file=ROOT / ".env.example", FEEDSVC_API_PORT="18000")["services"]["haproxy"]
    assert proxy["ports"][0]["published"] == "18000"


# --- Hardening (issue 11): memory, health probes, disk, volumes, transactions ---

# The VOLUMEs each external image declares; a path not mounted here would get a new
# anonymous volume per container, left behind by every ./stop.sh.
# https://github.com/apache/kafka/blob/trunk/docker/jvm/Dockerfile
# https://github.com/cockroachdb/cockroach/blob/master/build/deploy/Dockerfile (none)
# https://github.com/docker-library/haproxy/blob/master/2.6/Dockerfile (none)
IMAGE_VOLUMES = {
    "apache/kafka": ("/etc/kafka/secrets", "/var/lib/kafka/data", "/mnt/shared/config"),
    "cockroachdb/cockroach": (),
    "haproxy": (),
}
# Concurrent open transactions an unlicensed multi-node cluster allows once its grace
# period is over; https://www.cockroachlabs.com/docs/v25.4/licensing-faqs#throttling
THROTTLED_TRANSACTIONS = 5
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
SIZE_UNITS |= {"g": 1024**3, "gib": 1024**3}


def size(text: str) -> int:
    """Bytes in `256MiB`, `1g`, `-Xmx512m` style sizes."""
    found = re.fullmatch(r"(\d+)([a-zA-Z]*)", text)
    assert found, text
    return int(found.group(1)) * SIZE_UNITS[found.group(2).lower()]


def configs(load: Any) -> list[Config]:
    """The stack as a fresh clone loads it, with .env.example, and with the test profile."""
    return [load(), load(env_file=ROOT / ".env.example"), load(profile="test")]


def test_every_service_has_a_memory_limit_and_no_swap(load: Any) -> None:
    """A service that outgrows its share is stopped clearly instead of swapping the host."""
    for config in configs(load):
        for name, service in config["services"].items():
            limit = int(service.get("mem_limit") or 0)
            assert limit > 0, name
            assert int(service.get("memswap_limit") or 0) == limit, name


def test_node_caches_fit_three_quarters_of_the_node_limit(load: Any) -> None:
    """--cache + --max-sql-memory + --max-tsdb-memory stay within 75% of a node's memory."""
    for config in configs(load):
        for name in ROACHES:
            service = config["services"][name]
            args = service["command"]
            used = sum(size(flag(args, f)) for f in ("--cache", "--max-sql-memory"))
            used += size(flag(args, "--max-tsdb-memory"))
            assert used <= 0.75 * int(service["mem_limit"]), name


def test_kafka_heap_fits_its_limit(load: Any) -> None:
    """The broker's heap leaves a quarter of its limit to the JVM's own memory."""
    for config in configs(load):
        kafka = config["services"]["kafka"]
        heap = re.search(r"-Xmx(\w+)", kafka["environment"]["KAFKA_HEAP_OPTS"])
        assert heap
        assert size(heap.group(1)) <= 0.75 * int(kafka["mem_limit"])


def test_kafka_healthcheck_starts_a_small_jvm(services: dict[str, Any]) -> None:
    """The check's JVM gets its own small heap instead of inheriting the broker's 512 MiB."""
    test = services["kafka"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "env"]
    heap = [t for t in test if t.startswith("KAFKA_HEAP_OPTS=")]
    assert len(heap) == 1
    xmx = re.search(r"-Xmx(\w+)", heap[0])
    xms = re.search(r"-Xms(\w+)", heap[0])
    assert xmx and xms
    assert size(xmx.group(1)) <= 128 * 1024**2 and size(xms.group(1)) <= size(xmx.group(1))
    assert test.index(heap[0]) < test.index("/opt/kafka/bin/kafka-topics.sh")


def test_healthchecks_probe_every_second_while_starting(load: Any) -> None:
    """start_interval (Engine 25+) lets `up --wait` see a ready service within a second."""
    for name, service in load(profile="test")["services"].items():
        check = service.get("healthcheck")
        if not check:
            continue
        assert seconds(check.get("start_interval", "0s")) == 1, name
        assert seconds(check.get("start_period", "0s")) > 0, name


def test_nodes_start_without_a_ballast_file_in_their_data_volume(services: dict[str, Any]) -> None:
    """Each node's store is its data volume, with the emergency ballast off (ballast-size=0)."""
    for name in ROACHES:
        store = dict(
            part.split("=", 1) for part in flag(services[name]["command"], "--store").split(",")
        )
        assert store["ballast-size"] == "0", name
        targets = [v["target"] for v in services[name]["volumes"] if v["type"] == "volume"]
        assert store["path"] in targets, name


def test_every_image_volume_is_a_named_volume(load: Any) -> None:
    """Each VOLUME an image declares is mounted from a named volume, so none is anonymous."""
    for name, service in load(profile="test")["services"].items():
        repository = service.get("image", "").rsplit(":", 1)[0]
        mounted = {v["target"]: v for v in service.get("volumes", [])}
        for path in IMAGE_VOLUMES.get(repository, ()):
            assert path in mounted, (name, path)
            assert mounted[path]["type"] == "volume" and mounted[path]["source"], (name, path)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^\s*VOLUME\b", dockerfile, flags=re.MULTILINE)


def test_external_images_have_known_volumes(load: Any) -> None:
    """A new external image needs its VOLUMEs listed above, or this file cannot vouch for it."""
    for name, service in load(profile="test")["services"].items():
        if "build" not in service:
            assert service["image"].rsplit(":", 1)[0] in IMAGE_VOLUMES, name


def test_pools_fit_the_unlicensed_transaction_limit(load: Any) -> None:
    """api replicas x workers x api pool + writers x writer pool stays below 5, leaving one
    for `cockroach sql`; the api's worker count is fixed (0, one per core, would let the
    host's cores decide)."""
    for config in (load(), load(env_file=ROOT / ".env.example")):
        services = config["services"]
        api = int(services["api"]["environment"]["FEED_DB_POOL_SIZE"])
        workers = int(services["api"]["environment"]["FEED_API_WORKERS"])
        replicas = int(services["api"].get("deploy", {}).get("replicas", 1))
        writer = int(services["writer"]["environment"]["FEED_DB_POOL_SIZE"])
        writers = int(services["writer"].get("deploy", {}).get("replicas", 1))
        assert api >= 1 and writer >= 1 and workers >= 1
        used = replicas * workers * api + writers * writer
        assert used <= THROTTLED_TRANSACTIONS - 1, (replicas, workers, api, writers, writer)


def test_the_memory_table_matches_the_limits(services: dict[str, Any]) -> None:
    """docs/operations.md's memory section lists each service's limit as compose sets it."""
    page = (ROOT / "docs" / "operations.md").read_text()
    section = page.split("## Memory and scaling writers", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)`[^|]*\| ([0-9.]+ [MG]iB) \|", section, re.M))
    assert rows, "no memory table in docs/operations.md"
    for name in services:
        assert ("roach1" if name in ROACHES else name) in rows, name
    for name, text in rows.items():
        number, unit = text.split()
        expected = float(number) * (1024**3 if unit == "GiB" else 1024**2)
        assert int(services[name]["mem_limit"]) == expected, name


# --- The first real Docker run (issue 19): node memory, the node health probe ---

# The least memory a node is given: v25.4 puts its minimum above 1 GiB and calls 2 GiB
# per vCPU a testing size. https://www.cockroachlabs.com/docs/v25.4/recommended-production-settings#memory
NODE_MEMORY = 2 * 1024**3


def test_each_node_gets_at_least_2_gib(load: Any) -> None:
    """A CockroachDB node's limit is at least the 2 GiB v25.4 allows for testing."""
    for config in configs(load):
        for name in ROACHES:
            assert int(config["services"][name]["mem_limit"]) >= NODE_MEMORY, name


class _Ready(http.server.BaseHTTPRequestHandler):
    """Answers like a node's HTTP port: `status` for /health?ready=1, 404 otherwise."""

    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health?ready=1" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def _probe(services: dict[str, Any], status: int) -> int:
    """Run roach1's health check in bash against a server answering `status`."""
    test = services["roach1"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], test
    handler = type("Handler", (_Ready,), {"status": status})
    with http.server.HTTPServer(("127.0.0.1", 0), handler) as server:
        port = server.server_address[1]
        script = test[3].replace("$$", "$").replace("/127.0.0.1/8080", f"/127.0.0.1/{port}")
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        done = subprocess.run(["bash", "-c", script], timeout=30, check=False)
        thread.join(timeout=10)
    return done.returncode


def test_node_health_probe_passes_when_the_node_is_ready(services: dict[str, Any]) -> None:
    """The node's check asks GET /health?ready=1 over bash's /dev/tcp and passes on 200."""
    assert _probe(services, 200) == 0


def test_node_health_probe_fails_when_the_node_is_not_ready(services: dict[str, Any]) -> None:
    """A 503 from /health?ready=1 (not initialized, draining) fails the check."""
    assert _probe(services, 503) != 0


def test_the_containers_table_names_every_service(services: dict[str, Any]) -> None:
    """docs/docker.md's containers table has a row for each service of the default stack, and
    none for a service compose does not run."""
    page = (ROOT / "docs" / "docker.md").read_text()
    section = page.split("## Containers", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", section, re.M)[2:]  # the header, then rows
    names = {name for cell in first_cells for name in re.findall(r"`([a-z0-9-]+)`", cell)}
    assert names == set(services), names ^ set(services)


def test_tracing_is_off_unless_an_endpoint_is_set(load: Any) -> None:
    """compose passes OTEL_EXPORTER_OTLP_ENDPOINT to the api and the writer, empty (off) by
    default (docs/tracing.md)."""
    for name in ("api", "writer"):
        assert load()["services"][name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
        on = load(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")["services"][name]
        assert on["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
