"""The Kubernetes deployment as objects: the chart rendered by Helm, the operators'
custom resources, and their CRDs' schemas (for tests/static/test_deploy_*.py)."""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "chart" / "feedsvc"
OPERATORS = DEPLOY / "operators"
CRDS = OPERATORS / "crds"
# Each rendering the chart must pass: the defaults (dev), production, kind.
VALUES = {
    "dev": (),
    "prod": (CHART / "values-prod.yaml",),
    "kind": (DEPLOY / "kind" / "values.yaml",),
}
NAMESPACE = "feedsvc"

# The test image holds the code and the tests, not deploy/ nor Helm (the Dockerfile's
# test stage; scripts/docker_test_files.py checks that file set).
native_only = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="reads deploy/ and runs Helm, which the test image does not have; checked natively",
)

Obj = dict[str, Any]


@functools.cache
def helm() -> str:
    """Helm: the one scripts/check-static builds from the Go module proxy (first use: ~3 min)."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "check-static"), "--helm-bin"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        pytest.fail(f"no Helm: {done.stderr.strip()}")
    return done.stdout.strip()


def template(
    values: tuple[Path, ...] = (), *sets: str, upgrade: bool = False
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with values files and `--set` pairs, as for an install
    (or an upgrade)."""
    command = [helm(), "template", "feedsvc", str(CHART), "--namespace", NAMESPACE]
    if upgrade:
        command.append("--is-upgrade")
    for path in values:
        command += ["-f", str(path)]
    for pair in sets:
        command += ["--set", pair]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@functools.cache
def render(name: str, *sets: str, upgrade: bool = False) -> list[Obj]:
    """Every object one rendering makes (hooks included)."""
    done = template(VALUES[name], *sets, upgrade=upgrade)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def find(objects: list[Obj], kind: str, suffix: str) -> Obj:
    """The one object of `kind` whose name ends with `suffix`."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {len(found)} found"
    return found[0]


def pod_specs(objects: list[Obj]) -> dict[str, Obj]:
    """Each workload's pod template, by `<kind>/<name>`."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]
        for o in objects
        if o["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}
    }


def env_of(container: Obj) -> dict[str, str]:
    """A container's plain environment values (secret references left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In/NotIn) matches `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        match expression["operator"]:
            case "In":
                if value not in expression["values"]:
                    return False
            case "NotIn":
                if value in expression["values"]:
                    return False
            case "Exists":
                if value is None:
                    return False
            case "DoesNotExist":
                if value is not None:
                    return False
    return True


def front_door_default(variable: str) -> str:
    """A setting's default in compose's front door, proxy/haproxy.cfg ("${VARIABLE-default}")."""
    config = (ROOT / "proxy" / "haproxy.cfg").read_text()
    found = re.search(rf'"\$\{{{variable}-([^}}]+)\}}"', config)
    assert found, variable
    return found.group(1)


def custom_resources(path: Path) -> list[Obj]:
    """The objects of one manifest file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """Each vendored CRD version's openAPIV3Schema by (apiVersion, kind), made strict."""
    schemas: dict[tuple[str, str], Obj] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in custom_resources(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def strict(schema: Obj) -> Obj:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` does.

    Note: the API server prunes an unknown field of a structural schema silently, so a
    misspelt field would otherwise pass; fields under x-kubernetes-preserve-unknown-fields
    or an explicit additionalProperties stay open.
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # metadata is typed `object` with no properties in a CRD: the API server checks it.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return schema


def patched(obj: Obj, operations: list[Obj]) -> Obj:
    """`obj` with JSON-patch `replace` operations applied (what deploy/kind uses)."""
    obj = copy.deepcopy(obj)
    for operation in operations:
        assert operation["op"] == "replace", operation
        *parents, last = operation["path"].strip("/").split("/")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = operation["value"]
        else:
            assert last in node, f"{operation['path']} is not in the object"
            node[last] = operation["value"]
    return obj
