"""deploy/ingress/haproxy-values.yaml gives the HAProxy ingress controller compose's front
door limits: the head (and body) timeout, the idle keep-alive, the stream timeout and the
connection cap are the defaults of proxy/haproxy.cfg."""

from __future__ import annotations

import yaml

from tests.static.chart import DEPLOY, front_door_default, native_only, render

pytestmark = native_only
VALUES = DEPLOY / "ingress" / "haproxy-values.yaml"


def controller_config() -> dict[str, str]:
    config: dict[str, str] = yaml.safe_load(VALUES.read_text())["controller"]["config"]
    return config


def test_the_controller_applies_the_front_doors_limits() -> None:
    """Each controller-wide limit equals its front door default."""
    config = controller_config()
    assert config["timeout-http-request"] == front_door_default("FEEDSVC_PROXY_HEAD_TIMEOUT")
    assert config["timeout-http-keep-alive"] == front_door_default("FEEDSVC_PROXY_IDLE_TIMEOUT")
    assert config["timeout-client"] == front_door_default("FEEDSVC_PROXY_STREAM_TIMEOUT")
    assert config["maxconn"] == front_door_default("FEEDSVC_PROXY_MAXCONN")


def test_the_chart_ingress_uses_this_controller() -> None:
    """The chart's Ingress names the class this controller serves."""
    values = yaml.safe_load(VALUES.read_text())["controller"]
    ingress = next(o for o in render("dev") if o["kind"] == "Ingress")
    assert ingress["spec"]["ingressClassName"] == values["ingressClass"]
    assert values["ingressClassResource"]["name"] == values["ingressClass"]
