"""deploy/chart/feedsvc renders, for the dev, production and kind values, objects that
keep the rules compose keeps: readiness by the readiness rule, a grace period above
FEED_SHUTDOWN_GRACE_S, no replica lost to a rollout or a drain, locked-down pods,
writers within the partitions, closed databases, and an edge fit for SSE."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from feedsvc.config import load_settings
from tests.static.chart import (
    NAMESPACE,
    VALUES,
    Obj,
    env_of,
    find,
    front_door_default,
    native_only,
    pod_specs,
    render,
    selects,
    template,
)

pytestmark = native_only
RENDERINGS = sorted(VALUES)


def api(name: str, *sets: str) -> Obj:
    return find(render(name, *sets), "Deployment", "-api")


def container(pod: Obj) -> Obj:
    only: Obj
    (only,) = pod["spec"]["containers"]
    return only


@pytest.mark.parametrize("name", RENDERINGS)
def test_api_routes_by_readiness_and_restarts_by_liveness(name: str) -> None:
    """Readiness asks /health/ready (200 while only the database is down), liveness
    /health/live, and a startup probe holds liveness off while the feed catches up."""
    api_container = container(api(name)["spec"]["template"])
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api_container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api_container["startupProbe"]["httpGet"]["path"] == "/health/live"


@pytest.mark.parametrize("sets", [(), ("feed.shutdownGraceSeconds=40",)])
@pytest.mark.parametrize("name", RENDERINGS)
def test_the_grace_period_covers_pre_stop_and_the_shutdown_grace(
    name: str, sets: tuple[str, ...]
) -> None:
    """terminationGracePeriodSeconds exceeds the preStop sleep plus FEED_SHUTDOWN_GRACE_S,
    for the api and the writers, whatever the grace is set to."""
    objects = render(name, *sets)
    for suffix in ("-api", "-writer"):
        pod = find(objects, "Deployment", suffix)["spec"]["template"]
        main = container(pod)
        grace = float(env_of(main)["FEED_SHUTDOWN_GRACE_S"])
        pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop["command"][1]) if pre_stop else 0.0
        assert pod["spec"]["terminationGracePeriodSeconds"] > sleep + grace, suffix
    api_main = container(api(name, *sets)["spec"]["template"])
    assert api_main["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


@pytest.mark.parametrize("name", RENDERINGS)
def test_no_rollout_or_drain_takes_the_api_below_what_was_asked(name: str) -> None:
    """Rolling updates surge and never remove a ready replica first; the PDB selects the
    api pods and still lets a node drain (minAvailable below the fewest replicas)."""
    objects = render(name)
    deployment = api(name)
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    pdb = find(objects, "PodDisruptionBudget", "-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"], labels)
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_the_api_scales_on_cpu(name: str) -> None:
    """An HPA scales the api Deployment on CPU; the Deployment starts at the HPA's minimum
    on install and leaves the count to it on upgrade."""
    objects = render(name)
    hpa = find(objects, "HorizontalPodAutoscaler", "-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api(name)["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert api(name)["spec"]["replicas"] == hpa["spec"]["minReplicas"]
    upgraded = find(render(name, upgrade=True), "Deployment", "-api")
    assert "replicas" not in upgraded["spec"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_pod_runs_locked_down(name: str) -> None:
    """Not root, RuntimeDefault seccomp, no escalation, no capabilities, a read-only root,
    requests and limits, and no service-account token, in every pod the chart makes."""
    pods = pod_specs(render(name))
    assert pods
    for where, pod in pods.items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for each in spec["containers"]:
            security = each["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(each["resources"][bound]), where


@pytest.mark.parametrize("name", RENDERINGS)
def test_python_is_never_pid_1(name: str) -> None:
    """Every pod shares its process namespace, so the pause container is PID 1 (as tini
    is in compose) and a SIGTERM before feedsvc's handler still stops the process."""
    for where, pod in pod_specs(render(name)).items():
        assert pod["spec"]["shareProcessNamespace"] is True, where


def test_writers_beyond_the_partitions_are_refused() -> None:
    """More writer replicas than partitions of messages.submitted fails the rendering;
    as many as the partitions renders."""
    refused = template((), "writer.replicas=7", "feed.submittedPartitions=6")
    assert refused.returncode != 0
    assert "more than feed.submittedPartitions" in refused.stderr
    assert template((), "writer.replicas=6", "feed.submittedPartitions=6").returncode == 0


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_process_gets_settings_feedsvc_accepts(name: str) -> None:
    """Each container's FEED_* environment loads (no unknown name, every rule of
    config.py holds), and writers never outnumber the partitions it names."""
    objects = render(name)
    for where, pod in pod_specs(objects).items():
        for each in pod["spec"]["containers"]:
            env = env_of(each)
            if not any(key.startswith("FEED_") for key in env):
                continue  # the bot
            settings = load_settings(env)
            assert settings.database_url, where
    writer = find(objects, "Deployment", "-writer")
    partitions = int(env_of(container(writer["spec"]["template"]))["FEED_SUBMITTED_PARTITIONS"])
    assert writer["spec"]["replicas"] <= partitions


# The names cockroach-operator v2.18.3 puts in every node's certificate for the public
# Service (pkg/actor/generate_cert.go); verify-full fails for any other.
CERTIFIED_HOSTS = (
    "cockroachdb-public",
    f"cockroachdb-public.{NAMESPACE}",
    f"cockroachdb-public.{NAMESPACE}.svc.cluster.local",
)


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_database_is_reached_over_verified_tls(name: str) -> None:
    """FEED_DATABASE_URL asks verify-full of a host name the nodes' certificates carry,
    with the CA and client certificate from the operator's root Secret, mounted where
    the URL points."""
    for where, pod in pod_specs(render(name)).items():
        main = container(pod)
        url = env_of(main).get("FEED_DATABASE_URL")
        if url is None:
            continue
        parts = urlsplit(url)
        assert parts.hostname in CERTIFIED_HOSTS, where
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert query["sslmode"] == "verify-full", where
        mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
        secrets = {
            v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v
        }
        assert secrets["certs"] == "cockroachdb-root", where
        for key, file in (("sslrootcert", "ca.crt"), ("sslcert", "tls.crt"), ("sslkey", "tls.key")):
            assert query[key] == f"{mounts['certs']}/{file}", where


@pytest.mark.parametrize("name", ["prod", "kind"])
def test_topics_are_replicated_three_times_with_two_in_sync(name: str) -> None:
    """On three brokers, setup makes topics with RF 3 and min.insync.replicas 2."""
    setup = find(render(name), "Job", "-setup")
    env = env_of(container(setup["spec"]["template"]))
    assert env["FEED_TOPIC_REPLICATION_FACTOR"] == "3"
    assert env["FEED_TOPIC_MIN_INSYNC_REPLICAS"] == "2"


@pytest.mark.parametrize("name", RENDERINGS)
def test_setup_runs_before_every_install_and_upgrade(name: str) -> None:
    """setup is a Helm pre-install and pre-upgrade hook Job that runs `feedsvc setup`,
    and tells CockroachDB where Kafka is for the changefeed."""
    setup = find(render(name), "Job", "-setup")
    hooks = setup["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    main = container(setup["spec"]["template"])
    assert main["command"][-1] == "setup"
    env = env_of(main)
    assert env["FEED_CHANGEFEED_KAFKA"] == env["FEED_KAFKA_BOOTSTRAP"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_long_running_process_is_scraped(name: str) -> None:
    """The api and writer pods carry scrape annotations naming a port they expose."""
    objects = render(name)
    for suffix in ("-api", "-writer"):
        pod = find(objects, "Deployment", suffix)["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        ports = {p["containerPort"] for p in container(pod)["ports"]}
        assert annotations["prometheus.io/scrape"] == "true", suffix
        assert int(annotations["prometheus.io/port"]) in ports, suffix
        assert annotations["prometheus.io/path"] == "/metrics", suffix


def test_the_bot_is_off_in_production() -> None:
    """values-prod.yaml runs no bot; the dev values do."""
    assert not [o for o in render("prod") if o["metadata"]["name"].endswith("-bot")]
    find(render("dev"), "Deployment", "-bot")


@pytest.mark.parametrize("name", RENDERINGS)
def test_only_feedsvc_processes_reach_the_database(name: str) -> None:
    """CockroachDB's SQL port admits the api, writer and setup pods and the other nodes,
    not the bot nor any other pod of the namespace."""
    objects = render(name)
    policy = find(objects, "NetworkPolicy", "-cockroachdb-sql")
    sql = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 26257} in r["ports"]]
    (rule,) = sql
    peers = [p["podSelector"] for p in rule["from"] if "podSelector" in p]
    pods = pod_specs(objects)

    def admitted(labels: dict[str, str]) -> bool:
        return any(selects(peer, labels) for peer in peers)

    for where, pod in pods.items():
        labels = pod["metadata"]["labels"]
        assert admitted(labels) == (labels["app.kubernetes.io/component"] != "bot"), where
    assert admitted(
        {"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/instance": "cockroachdb"}
    )
    assert not admitted({"app": "something-else"})
    assert selects(
        policy["spec"]["podSelector"],
        {"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/instance": "cockroachdb"},
    )


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_the_ingress_passes_sse_as_the_front_door_does(name: str) -> None:
    """The Ingress balances by least connections over ready replicas, keeps a quiet
    stream open as long as the front door does (above two heartbeats), and sets the
    front door's backend options: buffered bodies, abort on close, no delay."""
    ingress = find(render(name), "Ingress", "feedsvc")
    notes = ingress["metadata"]["annotations"]
    assert notes["haproxy.org/load-balance"] == "leastconn"
    assert notes["haproxy.org/check-http"] == "/health/ready"
    assert notes["haproxy.org/timeout-server"] == front_door_default("FEEDSVC_PROXY_STREAM_TIMEOUT")
    heartbeat = load_settings({}).heartbeat_s
    assert int(notes["haproxy.org/timeout-server"].removesuffix("s")) > 2 * heartbeat
    snippet = notes["haproxy.org/backend-config-snippet"].splitlines()
    for option in ("http-buffer-request", "abortonclose", "http-no-delay", "redispatch"):
        assert f"option {option}" in snippet, option
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"]["name"] == api(name)["metadata"]["name"]


def test_production_serves_tls_at_the_ingress() -> None:
    """values-prod.yaml names a TLS Secret for its host."""
    ingress = find(render("prod"), "Ingress", "feedsvc")
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and tls["hosts"] == [ingress["spec"]["rules"][0]["host"]]
