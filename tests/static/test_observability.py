"""observability/: the alert rules check and pass their unit tests, and the dashboard and
Prometheus's configuration name what the processes expose."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "feedsvc.json"
PANELS = {
    "Posts/s by status",
    "429 and 503 per second",
    "Writer backlog (records)",
    "Writer lag (seconds of writing)",
    "Stored/s",
    "Feed streams",
    "Delivery p99",
    "Accepted to stored p99",
    "Changefeed resolved age",
    "Dead letters (5 min)",
}
# The test image holds the code and the tests, not observability/ nor promtool (the
# Dockerfile's test stage; scripts/docker_test_files.py checks that file set).
pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="reads observability/ and runs promtool, which the test image does not have; "
    "checked natively",
)
ALERTS = {
    "FeedsvcWriterLagGrowing",
    "FeedsvcResolvedAgeHigh",
    "FeedsvcDeadLetters",
    "FeedsvcKafka503s",
    "FeedsvcNoReadyApi",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/bootstrap installs Debian's prometheus")
    return subprocess.run(
        ["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_rules_and_the_configuration_are_valid() -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it loads."""
    done = promtool("check", "config", "observability/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_passes_its_unit_tests() -> None:
    """`promtool test rules` passes, and tests every alert of alerts.yml."""
    done = promtool("test", "rules", "observability/alerts-test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tests = (OBSERVABILITY / "alerts-test.yml").read_text()
    # A case that expects the alert to fire: its name, then a non-empty `exp_alerts`.
    tested = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
    alerts = set(re.findall(r"- alert: (\w+)", (OBSERVABILITY / "alerts.yml").read_text()))
    assert tested == alerts == ALERTS


def test_the_dashboard_has_the_panels_operators_asked_for() -> None:
    """Every asked-for panel is on the dashboard, each with a query on the provisioned source."""
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert titles >= PANELS
    datasources = OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml"
    (source,) = re.findall(r"\buid: (\S+)", datasources.read_text())
    for panel in dashboard["panels"]:
        (target,) = panel["targets"]
        assert target["expr"] and target["datasource"]["uid"] == source, panel["title"]


def test_every_metric_queried_is_one_feedsvc_defines() -> None:
    """The dashboard's and the rules' metric names are all declared in feedsvc/metrics."""
    families = (ROOT / "feedsvc" / "metrics" / "families.py").read_text()
    declared = set(re.findall(r'"(feedsvc_[a-z_]+)"', families))
    texts = DASHBOARD.read_text() + (OBSERVABILITY / "alerts.yml").read_text()
    used = set(re.findall(r"\bfeedsvc_[a-z_]+", texts))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    for name in used:
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        assert base in declared, name
