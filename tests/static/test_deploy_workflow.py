"""The kind workflow (.github/workflows/kubernetes.yml) installs what deploy/ pins, and
runs the issue's drill in order: smoke test, an api pod and a CockroachDB pod deleted
while posts flow with no accepted post lost and no gap, then uninstall.

actionlint (scripts/check-static) checks its syntax and shell; it runs only on GitHub."""

from __future__ import annotations

import re

import yaml

from tests.static.chart import CRDS, DEPLOY, ROOT, native_only
from tests.static.steps import assert_in_order

pytestmark = native_only
WORKFLOW = ROOT / ".github" / "workflows" / "kubernetes.yml"


def workflow() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def test_the_pinned_operator_versions_are_those_deploy_vendors() -> None:
    """The operator releases the workflow installs are those whose CRDs deploy/ vendors."""
    env = workflow()["env"]
    assert isinstance(env, dict)
    assert (CRDS / f"cockroach-operator-{env['COCKROACH_OPERATOR']}-crds.yaml").is_file()
    assert list(CRDS.glob(f"strimzi-{env['STRIMZI_VERSION']}-*.yaml"))
    assert re.fullmatch(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}", env["KIND_NODE_IMAGE"])
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["KIND_VERSION"])


def test_the_job_runs_the_drill_in_order() -> None:
    """Cluster, operators, engines, chart, smoke, upgrade, drill, uninstall, in that order."""
    text = WORKFLOW.read_text()
    steps = [
        'kind create cluster --name feedsvc --image "$KIND_NODE_IMAGE"',
        "kind load docker-image feedsvc:ci",
        "cockroach-operator/$COCKROACH_OPERATOR/install/operator.yaml",
        "oci://quay.io/strimzi-helm/strimzi-kafka-operator",
        "apply -k deploy/kind",
        "helm install feedsvc deploy/chart/feedsvc",
        "-f deploy/kind/values.yaml",
        "smoke.py check http://feedsvc-api:8000",
        "helm upgrade feedsvc deploy/chart/feedsvc",
        "smoke.py flow http://feedsvc-api:8000",
        "--no-reset",
        'delete pod "$victim"',
        "delete pod cockroachdb-1",
        'wait "$flow"',
        "helm uninstall feedsvc",
        "delete kafkatopic --all",
        "delete -k deploy/kind",
    ]
    assert_in_order(text, steps)


def test_the_smoke_pod_may_reach_the_api() -> None:
    """The smoke pod carries the label the chart's api NetworkPolicy admits."""
    pod = yaml.safe_load((DEPLOY / "kind" / "smoke.yaml").read_text())
    assert pod["metadata"]["labels"]["feedsvc.io/client"] == "true"
