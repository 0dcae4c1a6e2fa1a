"""The deployment files: Dockerfiles linted, the wheel the images install built, the Helm
chart linted and rendered with Helm's own SDK and validated against Kubernetes' schemas,
the alert rules checked by promtool, the dashboard's queries naming real series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "llm-gateway"
ALERTS = CHART / "files" / "alerts.yaml"
K8S = "1.30.0"


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; `make test` installs it")
    return found


def test_dockerfiles_pass_hadolint():
    files = [str(p) for p in sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*"))]
    assert len(files) == 2
    proc = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / "deploy" / "docker" / ".hadolint.yaml"), *files],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for f in files:
        text = Path(f).read_text()
        assert "USER 10001" in text and "HEALTHCHECK" in text and "EXPOSE 3000 3001 3003" in text


def test_images_cache_hub_models_where_takeoff_mounts_them():
    for path in sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*")):
        text = path.read_text()
        # Takeoff's `-v ~/.takeoff_cache:/code/models`; offline is the gateway's own choice
        assert "HF_HUB_CACHE=/code/models" in text and "/code/models" in text.split("chown", 1)[1], path.name
        assert "HF_HUB_OFFLINE" not in text, path.name


def test_the_wheel_the_images_install_builds(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)], check=True
    )
    (wheel,) = tmp_path.glob("llm_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/server.py" in names and "engine_adapters/vllm_engine.py" in names
    assert not any(n.startswith("tests/") for n in names)


def render(values: dict | None = None, files: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    import helm_python as helm

    merged: dict = {}
    for f in files:
        merged = _merge(merged, yaml.safe_load((CHART / f).read_text()))
    merged = _merge(merged, {"apiKeys": {"keys": ["sk-test"]}})  # the chart requires keys
    merged = _merge(merged, values or {})
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(merged, name="gw", namespace="llm")
    docs: dict[str, list[dict]] = {}
    for name, text in out.items():
        if name.endswith(".yaml"):
            docs[name.rsplit("/", 1)[-1]] = [d for d in yaml.safe_load_all(text) if d]
    return docs


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_helm_lint_has_no_errors():
    import helm_python as helm

    result = helm.lint(str(CHART), {"apiKeys": {"keys": ["sk-1"]}})
    assert not result["errors"]
    assert all(m["severity"] < 2 for m in result["messages"]), result["messages"]  # info only


@pytest.mark.parametrize("files", [(), ("values-cpu.yaml",), ("values-gpu-tp.yaml",)], ids=["default", "cpu", "gpu-tp"])
def test_rendered_manifests_are_valid_kubernetes(files):
    import kubernetes_validate

    everything = {"apiKeys": {"keys": ["sk-1", "sk-2"]}, "ingress": {"enabled": True}, "autoscaling": {"enabled": True}}
    docs = render(everything, files)
    kinds = {d["kind"] for ds in docs.values() for d in ds}
    assert {
        "Deployment",
        "Service",
        "Ingress",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    for ds in docs.values():
        for d in ds:
            if d["apiVersion"].startswith("monitoring.coreos.com"):
                assert d["spec"]  # CRDs: no schema here; promtool checks the rules below
                continue
            kubernetes_validate.validate(d, K8S, strict=True)


def test_probes_ports_drain_and_gpus():
    docs = render(files=("values-gpu-tp.yaml",))
    (deploy,) = docs["deployment.yaml"]
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    assert [p["containerPort"] for p in c["ports"]] == [3000, 3001, 3003]
    drain = int(next(e["value"] for e in c["env"] if e["name"] == "GATEWAY_DRAIN_TIMEOUT_SECONDS"))
    assert pod["terminationGracePeriodSeconds"] > drain + c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["securityContext"]["runAsNonRoot"] is True
    (svc,) = docs["service.yaml"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [3000, 3001, 3003]


def test_ingress_is_streaming_safe_and_keeps_management_inside():
    (ing,) = render({"ingress": {"enabled": True}})["ingress.yaml"]
    a = ing["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(a["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    ports = {p["backend"]["service"]["port"]["name"] for p in ing["spec"]["rules"][0]["http"]["paths"]}
    assert ports == {"http", "openai"}


@pytest.mark.parametrize("files", [(), ("values-cpu.yaml",), ("values-gpu-tp.yaml",)], ids=["default", "cpu", "gpu-tp"])
def test_the_charts_config_is_valid_gateway_settings(files, tmp_path, monkeypatch):
    from gateway.settings import load_settings

    (cm,) = render(files=files)["configmap.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    for key in [k for k in __import__("os").environ if k.startswith(("GATEWAY_", "TAKEOFF_"))]:
        monkeypatch.delenv(key)
    settings = load_settings(path)
    assert settings.host == "0.0.0.0" and settings.metrics_public


def test_alert_rules_pass_promtool(tmp_path):
    proc = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert proc.returncode == 0 and "SUCCESS: 5 rules found" in proc.stdout, proc.stdout + proc.stderr
    (rule,) = render()["prometheusrule.yaml"]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    assert subprocess.run([tool("promtool"), "check", "rules", str(rendered)], capture_output=True).returncode == 0


def test_dashboard_queries_name_real_series():
    from prometheus_client import REGISTRY

    from gateway.runtime import Runtime
    from gateway.settings import Settings

    Runtime.create(Settings())  # attaches the scrape-time gauges (readers, store)
    known = set()
    for collector_metrics in REGISTRY.collect():
        known.add(collector_metrics.name)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "llm-gateway.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\b(gateway_[a-z_]+|vllm:[a-z_]+)", target["expr"]))
    assert names
    for name in names:
        if name.startswith("vllm:"):
            continue  # vLLM's own series, read back from a real engine in the Prometheus e2e test
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base in known or name in known, name


def test_the_chart_refuses_to_render_without_keys():
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception, match="apiKeys"):
        chart.render({}, name="gw", namespace="llm")
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render({"allowUnauthenticated": True}, name="gw", namespace="llm")
    deploy = next(yaml.safe_load(t) for n, t in out.items() if n.endswith("deployment.yaml"))
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_ALLOW_UNAUTHENTICATED"] == "true"
