"""The chart's Grafana dashboard and PrometheusRule: every metric and label they read is one a live router
exports, the rules parse (and fire) with promtool, and both are rendered where the operator's tools look."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import helm_python as helm
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helm.test_chart import CHART_DIR, REQUIRED_SECRETS, _merge, _schema_error, chart, render  # noqa: F401
from tests.router.conftest import (  # noqa: F401 - fixtures
    ControlPlaneStub,
    RouterProcess,
    backends,
    control_plane,
    infer,
    model_spec,
    router_env,
    routers,
    snapshot,
    start_backend,
)

DASHBOARD = CHART_DIR / "dashboards" / "grayroute.json"
ENABLED = _merge(REQUIRED_SECRETS, {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}})


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def _rule_groups(chart: helm.Chart) -> dict[str, Any]:  # noqa: F811
    (rule,) = render(chart, ENABLED).of_kind("PrometheusRule")
    return rule["spec"]


def _rule_exprs(chart: helm.Chart) -> list[str]:  # noqa: F811
    return [rule["expr"] for group in _rule_groups(chart)["groups"] for rule in group["rules"]]


_METRIC = re.compile(r"\b(grayroute_[a-z0-9_]+)")
_BY = re.compile(r"\bby \(([^)]*)\)")
_MATCHER = re.compile(r"[{,]\s*([a-z_]+)\s*(?:=~|!~|!=|=)")


async def test_every_metric_and_label_the_dashboard_and_rules_read_is_exported(
    chart: helm.Chart, backends: dict, control_plane: ControlPlaneStub, routers: list,  # noqa: F811
) -> None:
    # traffic that touches every family: served, failed (5xx), refused (connect), fallen back
    await start_backend(backends, "3", "3")
    failing = await start_backend(backends, "4", "4", status=500)
    gone = await start_backend(backends, "5", "5")
    await gone.stop()
    spec = model_spec({v: [backends[v].url] for v in ("3", "4", "5")}, [("3", 80), ("4", 10), ("5", 10)],
                      default_version="3")
    control_plane.set(snapshot(1, resnet50=spec))
    router = RouterProcess("--control-plane", control_plane.url, env=router_env()).start()
    routers.append(router)
    await router.wait_ready(1)
    async with aiohttp.ClientSession() as session:
        for i in range(200):
            await infer(session, router, f"user-{i}")
        async with session.get(router.url + "/metrics") as response:
            text = await response.text()
    assert failing.behaviour.version == "4"
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    exprs = _dashboard_exprs() + _rule_exprs(chart)
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert {"grayroute_assigned_requests_total", "grayroute_request_duration_seconds_bucket",
            "grayroute_default_version"} <= used
    assert sorted(used - set(labels)) == []
    for expr in exprs:
        names = set(_METRIC.findall(expr))
        if not names:
            continue  # reads recording rules only
        known = set().union(*(labels[n] for n in names)) | {"le"}
        read = {label.strip() for group in _BY.findall(expr) for label in group.split(",") if label.strip()}
        read |= set(_MATCHER.findall(expr))
        # label_replace makes assigned_version out of version for the default-version gauge
        if "label_replace" in expr:
            known.add("assigned_version")
        assert read <= known, (expr, read - known)
    # and the figures are the attributed ones: version 5's users fell back, counted as version 5's
    assert re.search(r'grayroute_assigned_requests_total\{assigned_version="5",model="resnet50",'
                     r'outcome="fallback",version="3"\} [1-9]', text), text
    assert 'grayroute_default_version{model="resnet50",version="3"} 1.0' in text


def test_dashboard_configmap_is_what_the_grafana_sidecar_loads(chart: helm.Chart) -> None:  # noqa: F811
    assert not render(chart, REQUIRED_SECRETS).of_kind("PrometheusRule")
    values = _merge(ENABLED, {"grafanaDashboard": {"namespace": "monitoring", "folder": "Inference",
                                                   "label": "grafana_dashboard", "labelValue": "yes"}})
    (configmap,) = [c for c in render(chart, values).of_kind("ConfigMap") if "grayroute.json" in c["data"]]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Inference"}
    assert json.loads(configmap["data"]["grayroute.json"]) == json.loads(DASHBOARD.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p.get("targets", []))


def test_observability_values_are_typed(chart: helm.Chart) -> None:  # noqa: F811
    for bad, where in (({"prometheusRule": {"enabled": True, "failureRatioIncrease": 2}}, "failureRatioIncrease"),
                       ({"prometheusRule": {"enabled": True, "for": "soon"}}, "for"),
                       ({"grafanaDashboard": {"enabled": True, "label": "not a label!"}}, "label"),
                       ({"grafanaDashboard": {"enabled": "yes"}}, "enabled")):
        assert where in _schema_error(chart, _merge(REQUIRED_SECRETS, bad))


_RULE_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # model m: default 3 (100 req/min, 1 error/min); canary 4 (40 req/min, 4 timeouts and 4 fallbacks/min)
      - series: 'grayroute_default_version{model="m",version="3"}'
        values: '1x30'
      - series: 'grayroute_assigned_requests_total{model="m",assigned_version="3",version="3",outcome="ok"}'
        values: '0+99x30'
      - series: 'grayroute_assigned_requests_total{model="m",assigned_version="3",version="3",outcome="http_5xx"}'
        values: '0+1x30'
      - series: 'grayroute_assigned_requests_total{model="m",assigned_version="4",version="4",outcome="ok"}'
        values: '0+32x30'
      - series: 'grayroute_assigned_requests_total{model="m",assigned_version="4",version="4",outcome="timeout"}'
        values: '0+4x30'
      - series: 'grayroute_assigned_requests_total{model="m",assigned_version="4",version="3",outcome="fallback"}'
        values: '0+4x30'
      # model n: a canary no worse than its default stays quiet
      - series: 'grayroute_default_version{model="n",version="1"}'
        values: '1x30'
      - series: 'grayroute_assigned_requests_total{model="n",assigned_version="1",version="1",outcome="ok"}'
        values: '0+99x30'
      - series: 'grayroute_assigned_requests_total{model="n",assigned_version="1",version="1",outcome="http_5xx"}'
        values: '0+1x30'
      - series: 'grayroute_assigned_requests_total{model="n",assigned_version="2",version="2",outcome="ok"}'
        values: '0+99x30'
      - series: 'grayroute_assigned_requests_total{model="n",assigned_version="2",version="2",outcome="http_5xx"}'
        values: '0+1x30'
    alert_rule_test:
      - eval_time: 3m
        alertname: GrayrouteCanaryFailing
        exp_alerts: []
      - eval_time: 15m
        alertname: GrayrouteCanaryFailing
        exp_alerts:
          - exp_labels: {severity: warning, model: m, assigned_version: "4"}
            exp_annotations:
              summary: Canary 4 of m fails more than its baseline
              description: >-
                Requests assigned to version 4 of m failed (errors and fallbacks) 19% more often than the
                default version's over 5 minutes. Roll it back to 0% in the grayroute UI, or look at its
                figures per pool and GPU architecture.
"""


def test_rules_parse_and_fire_under_promtool(chart: helm.Chart, tmp_path: Path) -> None:  # noqa: F811
    groups = _rule_groups(chart)
    assert [r.get("alert") or r.get("record") for g in groups["groups"] for r in g["rules"]] == [
        "grayroute:assigned_failure_ratio:rate5m", "grayroute:assigned_request_rate:rate5m",
        "grayroute:baseline_failure_ratio:rate5m", "GrayrouteCanaryFailing"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    promtool = shutil.which("promtool")
    if promtool is None:
        # no Prometheus tooling here (tests/run.sh installs it): the structure a rule file must have
        for group in groups["groups"]:
            assert set(group) == {"name", "rules"}
            for rule in group["rules"]:
                assert ("record" in rule) != ("alert" in rule) and rule["expr"].strip()
                assert set(rule) <= {"record", "alert", "expr", "for", "labels", "annotations"}
        pytest.skip("promtool not installed: structure checked, expressions not parsed")
    checked = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
    (tmp_path / "tests.yaml").write_text(_RULE_TESTS)
    tested = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # and the test above can fail: a baseline that fails as often as the canary silences the alert
    (tmp_path / "tests.yaml").write_text(_RULE_TESTS.replace(
        'outcome="http_5xx"}\'\n        values: \'0+1x30\'\n      - series: \'grayroute_assigned_requests_total{model="m",'
        'assigned_version="4"', 'outcome="http_5xx"}\'\n        values: \'0+20x30\'\n      - series: '
        '\'grayroute_assigned_requests_total{model="m",assigned_version="4"', 1))
    silenced = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert silenced.returncode != 0 and "GrayrouteCanaryFailing" in silenced.stdout + silenced.stderr
