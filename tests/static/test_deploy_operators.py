"""deploy/operators: the engines' custom resources validate against the operators'
vendored CRDs (as vendored, byte for byte), and say what feedsvc needs: three secure
CockroachDB nodes, three KRaft Kafka nodes, the code's topics at RF 3 with two in
sync, and a Kafka listener open only to feedsvc's and CockroachDB's pods."""

from __future__ import annotations

import hashlib

import jsonschema
import pytest
import yaml

from feedsvc import kafka
from feedsvc.config import load_settings
from tests.static.chart import (
    CRDS,
    DEPLOY,
    OPERATORS,
    Obj,
    crd_schemas,
    custom_resources,
    env_of,
    find,
    native_only,
    patched,
    pod_specs,
    render,
    selects,
)

pytestmark = native_only
MANIFESTS = ("cockroachdb.yaml", "kafka.yaml", "topics.yaml")


def every_resource() -> list[Obj]:
    """deploy/operators' resources, as its kustomization lists them."""
    kustomization = yaml.safe_load((OPERATORS / "kustomization.yaml").read_text())
    assert kustomization["resources"] == list(MANIFESTS)
    return [r for name in MANIFESTS for r in custom_resources(OPERATORS / name)]


def kind_resources() -> list[Obj]:
    """The resources as deploy/kind/kustomization.yaml patches them."""
    kustomization = yaml.safe_load((DEPLOY / "kind" / "kustomization.yaml").read_text())
    # A directory: kustomize refuses a single file outside the kustomization's root.
    assert [(DEPLOY / "kind" / p).resolve() for p in kustomization["resources"]] == [OPERATORS]
    found = []
    for resource in every_resource():
        operations: list[Obj] = []
        for patch in kustomization["patches"]:
            target = patch["target"]
            if (target["kind"], target["name"]) == (resource["kind"], resource["metadata"]["name"]):
                operations += yaml.safe_load(patch["patch"])
        found.append(patched(resource, operations))
    return found


def errors(resource: Obj) -> list[str]:
    schema = crd_schemas()[(resource["apiVersion"], resource["kind"])]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(resource)
    ]


def test_the_vendored_crds_are_the_ones_sources_names() -> None:
    """Every CRD file is listed in crds/SOURCES with its sha256, and every listed file is there."""
    listed = {}
    for line in (CRDS / "SOURCES").read_text().splitlines():
        if line and not line.startswith("#"):
            name, digest, url = line.split()
            assert url.startswith("https://raw.githubusercontent.com/"), url
            listed[name] = digest
    present = {p.name for p in CRDS.glob("*.yaml")}
    assert set(listed) == present
    for name, digest in listed.items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("where", ["operators", "kind"])
def test_every_custom_resource_validates_against_its_crd(where: str) -> None:
    """Each resource, as written and as the kind overlay patches it, is valid for the
    operator's schema, unknown fields refused."""
    resources = every_resource() if where == "operators" else kind_resources()
    assert len(resources) == 6
    for resource in resources:
        assert errors(resource) == [], resource["metadata"]["name"]


def test_a_misspelt_field_is_refused() -> None:
    """The strict validation catches a field the operator would silently drop."""
    (cluster,) = custom_resources(OPERATORS / "cockroachdb.yaml")
    cluster["spec"]["tlsEnabeld"] = True
    assert any("tlsEnabeld" in e for e in errors(cluster))


def test_cockroachdb_has_three_secure_nodes_named_as_the_chart_expects() -> None:
    """Three nodes with TLS, on the same exact CockroachDB release as compose, named as
    the chart's cockroach.cluster (its Secret and Service names follow)."""
    (cluster,) = custom_resources(OPERATORS / "cockroachdb.yaml")
    assert cluster["spec"]["nodes"] == 3 and cluster["spec"]["tlsEnabled"] is True
    compose = (DEPLOY.parent / "compose.yaml").read_text()
    assert f"image: {cluster['spec']['image']['name']}\n" in compose
    values = yaml.safe_load((DEPLOY / "chart" / "feedsvc" / "values.yaml").read_text())
    assert values["cockroach"]["cluster"] == cluster["metadata"]["name"]


def test_kafka_runs_three_kraft_nodes_with_two_copies_in_sync() -> None:
    """Three nodes that are controllers and brokers, RF 3 and min ISR 2 by default, the
    Kafka version compose pins, named as the chart's kafka.cluster."""
    resources = custom_resources(OPERATORS / "kafka.yaml")
    pool = next(r for r in resources if r["kind"] == "KafkaNodePool")
    cluster = next(r for r in resources if r["kind"] == "Kafka")
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
    config = cluster["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3 and config["min.insync.replicas"] == 2
    compose = (DEPLOY.parent / "compose.yaml").read_text()
    assert f"image: apache/kafka:{cluster['spec']['kafka']['version']}\n" in compose
    values = yaml.safe_load((DEPLOY / "chart" / "feedsvc" / "values.yaml").read_text())
    assert values["kafka"]["cluster"] == cluster["metadata"]["name"]


def test_the_topics_are_the_codes_at_rf_3() -> None:
    """KafkaTopic resources give each topic of kafka.topic_partitions its partitions and
    kafka.topic_configs' configs, as setup would with the production settings."""
    setup = find(render("prod"), "Job", "-setup")
    (main,) = setup["spec"]["template"]["spec"]["containers"]
    settings = load_settings(env_of(main))
    topics = {t["metadata"]["name"]: t for t in custom_resources(OPERATORS / "topics.yaml")}
    assert set(topics) == set(kafka.topic_partitions(settings))
    configs = kafka.topic_configs(settings)
    for name, count in kafka.topic_partitions(settings).items():
        spec = topics[name]["spec"]
        assert spec["partitions"] == count, name
        assert spec["replicas"] == settings.topic_replication_factor == 3, name
        assert spec["config"] == configs[name], name


def test_kafka_admits_only_feedsvc_and_cockroachdb_pods() -> None:
    """The plain listener's NetworkPolicy peers match the chart's pods and the
    CockroachDB nodes (the changefeed's sink), and no other pod."""
    cluster = next(r for r in custom_resources(OPERATORS / "kafka.yaml") if r["kind"] == "Kafka")
    (listener,) = cluster["spec"]["kafka"]["listeners"]
    peers = [p["podSelector"] for p in listener["networkPolicyPeers"]]
    assert all(set(p) == {"podSelector"} for p in listener["networkPolicyPeers"])

    def admitted(labels: dict[str, str]) -> bool:
        return any(selects(peer, labels) for peer in peers)

    for where, pod in pod_specs(render("dev")).items():
        assert admitted(pod["metadata"]["labels"]), where
    values = yaml.safe_load((DEPLOY / "chart" / "feedsvc" / "values.yaml").read_text())
    assert admitted(values["cockroach"]["podLabels"])
    assert not admitted({"app": "something-else"})
