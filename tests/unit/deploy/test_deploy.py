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
    (wheel,) = tmp_path.glob("llm_serving_gateway-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert "gateway/server.py" in names and "engine_adapters/vllm_engine.py" in names
    assert not any(n.startswith("tests/") for n in names)
    # the licence travels with it, and both commands are installed
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = archive.read(meta).decode()
    assert "License-Expression: Apache-2.0" in metadata and any(n.endswith("/licenses/LICENSE") for n in names)
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = archive.read(entry).decode()
    assert "gateway = gateway.cli:main" in scripts and "llm-serving-gateway = gateway.cli:main" in scripts


# Kubernetes versions the chart is validated against: its floor, a middle one, and the newest
# the validator knows (kubernetes-validate ships the schemas).
K8S_VERSIONS = ["1.28.0", "1.30.0", "newest"]
OPERATOR_APIS = [
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
]
IMAGE = {"image": {"repository": "registry.example.com/llm-gateway"}}


def k8s(version: str) -> str:
    import kubernetes_validate

    return kubernetes_validate.latest_version() if version == "newest" else version


def render(
    values: dict | None = None,
    files: tuple[str, ...] = (),
    kube_version: str = K8S,
    api_versions: list[str] | None = None,
    keys: bool = True,
) -> dict[str, list[dict]]:
    """helm template offline, with the cluster's version and APIs as `helm template
    --kube-version --api-versions` would give them (helm-python's native options)."""
    import helm_python as helm
    from helm_python import _native

    merged: dict = dict(IMAGE)
    for f in files:
        merged = _merge(merged, yaml.safe_load((CHART / f).read_text()))
    if keys:
        merged = _merge(merged, {"apiKeys": {"keys": ["sk-test-key-0123456789"]}})  # the chart requires keys
    merged = _merge(merged, values or {})
    opts = {"name": "gw", "namespace": "llm", "kube_version": kube_version, "api_versions": api_versions or []}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(merged)
        out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(merged), json.dumps(opts)))
    docs: dict[str, list[dict]] = {}
    for name, text in out.items():
        if name.endswith(".yaml"):
            found = [d for d in yaml.safe_load_all(text) if d]
            if found:
                docs[name.rsplit("/", 1)[-1]] = found
    return docs


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_helm_lint_has_no_errors():
    import helm_python as helm

    for version in K8S_VERSIONS:
        result = helm.lint(
            str(CHART), {**IMAGE, "apiKeys": {"keys": ["sk-1-long-key-0123456789"]}}, kube_version=k8s(version)
        )
        assert not result["errors"], (version, result)
        assert all(m["severity"] < 2 for m in result["messages"]), result["messages"]  # info only


PRESETS = [(), ("values-cpu.yaml",), ("values-gpu-tp.yaml",), ("values-multinode.yaml",)]
PRESET_IDS = ["default", "cpu", "gpu-tp", "multinode"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("operators", [False, True], ids=["plain-cluster", "prometheus-operator"])
@pytest.mark.parametrize("files", PRESETS, ids=PRESET_IDS)
def test_rendered_manifests_are_valid_kubernetes(files, operators, version):
    import kubernetes_validate

    everything = {
        "apiKeys": {"keys": ["sk-1-long-key-0123456789", "sk-2-long-key-0123456789"]},
        "ingress": {"enabled": True},
    }
    if "values-multinode.yaml" not in files:
        everything["autoscaling"] = {"enabled": True}
    docs = render(everything, files, kube_version=k8s(version), api_versions=OPERATOR_APIS if operators else [])
    kinds = {d["kind"] for ds in docs.values() for d in ds}
    expected = {"Service", "Ingress", "ConfigMap", "Secret", "NetworkPolicy"}
    expected |= {"LeaderWorkerSet"} if "values-multinode.yaml" in files else {"Deployment", "HorizontalPodAutoscaler"}
    assert expected <= kinds
    # the operator's resources only where its API exists: `helm install` on a plain cluster works
    assert ({"ServiceMonitor", "PrometheusRule"} <= kinds) is operators
    assert not ({"ServiceMonitor", "PrometheusRule"} & kinds) or operators
    for ds in docs.values():
        for d in ds:
            group = d["apiVersion"].split("/")[0]
            if group in ("monitoring.coreos.com", "leaderworkerset.x-k8s.io"):
                assert d["spec"]  # CRDs: no schema here; promtool checks the rules below
                continue
            kubernetes_validate.validate(d, k8s(version), strict=True)


def test_operator_resources_can_be_forced_or_refused_and_carry_extra_labels():
    labels = {"release": "kube-prometheus-stack"}
    forced = render(
        {"metrics": {"labels": labels, "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    )
    (sm,) = forced["servicemonitor.yaml"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert forced["prometheusrule.yaml"][0]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    off = render({"metrics": {"serviceMonitor": {"enabled": False}}}, api_versions=OPERATOR_APIS)
    assert "servicemonitor.yaml" not in off and "prometheusrule.yaml" in off


def test_the_image_repository_must_be_set():
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception, match=r"image\.repository"):
        chart.render({"apiKeys": {"keys": ["sk-1-long-key-0123456789"]}}, name="gw", namespace="llm")


@pytest.mark.parametrize(
    "values, field",
    [
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"replicas": 2}, "replicas"),  # a typo of replicaCount
        ({"resources": {"limits": {"memory": None}}}, "memory"),
        ({"config": {"port": 70000, "readers": [{"id": "a", "model": "m"}]}}, "port"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "enabled"),
    ],
)
def test_the_values_schema_names_the_bad_value(values, field):
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception, match=field):
        chart.validate_schema(_merge(chart.values, values))


def test_probes_ports_drain_security_and_gpus():
    docs = render(files=("values-gpu-tp.yaml",))
    (deploy,) = docs["deployment.yaml"]
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    # a busy event loop (probes answered in up to 2 s under a 1024-stream burst) keeps the pod in
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["timeoutSeconds"] >= 5, probe
    assert c["readinessProbe"]["failureThreshold"] >= 3
    assert [p["containerPort"] for p in c["ports"]] == [3000, 3001, 3003, 3002]
    # probes go to the thread-served probe port: a busy event loop does not fail them
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "probes", probe
    drain = int(next(e["value"] for e in c["env"] if e["name"] == "GATEWAY_DRAIN_TIMEOUT_SECONDS"))
    assert pod["terminationGracePeriodSeconds"] > drain + c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    # the "restricted" Pod Security level, a read-only root with writable /tmp and model cache
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/code/models"]]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"].startswith("/tmp/") and env["XDG_CACHE_HOME"].startswith("/tmp/")
    (svc,) = docs["service.yaml"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [3000, 3001, 3003, 3002]  # probes: for `helm test`


def test_pre_stop_falls_back_to_exec_before_kubernetes_1_30():
    for version, action in (("1.28.0", "exec"), ("1.29.5", "exec"), ("1.30.0", "sleep")):
        (deploy,) = render(kube_version=version)["deployment.yaml"]
        hook = deploy["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
        assert list(hook) == [action], version
    assert hook["sleep"]["seconds"] == 5
    # `helm install` refuses older clusters (preStop needs at least the exec form's API)
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"] == ">=1.28.0-0"


@pytest.mark.parametrize("files", PRESETS, ids=PRESET_IDS)
def test_every_preset_sets_memory_requests_and_limits(files):
    docs = render(files=files)
    kind = "leaderworkerset.yaml" if files == ("values-multinode.yaml",) else "deployment.yaml"
    (workload,) = docs[kind]
    text = json.dumps(workload)
    for c in re.findall(r'"resources": (\{.*?\}\})', text):
        res = json.loads(c)
        assert res["requests"]["memory"] and res["limits"]["memory"]
    assert re.findall(r'"resources"', text)


# the `helm test` pod, admitted beside the peers the NetworkPolicy names
HELM_TEST_PEER = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "gw", "llm-gateway/role": "helm-test"}}}


def test_ports_come_from_the_config():
    docs = render({"config": {"port": 8080, "management_port": 8081, "openai_port": 8083}})
    (c,) = docs["deployment.yaml"][0]["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in c["ports"]] == [8080, 8081, 8083, 3002]
    (svc,) = docs["service.yaml"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080, 8081, 8083, 3002]
    (cm,) = docs["configmap.yaml"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["port"] == 8080
    # without a probe port, the probes use the http port
    (deploy,) = render({"config": {"probe_port": None}})["deployment.yaml"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["port"] == "http" and len(c["ports"]) == 3


def test_network_policy_keeps_the_management_port_to_the_named_peers():
    (policy,) = render()["networkpolicy.yaml"]
    rules = policy["spec"]["ingress"]
    inference = next(r for r in rules if {p["port"] for p in r["ports"]} == {"http", "openai", "probes"})
    management = next(r for r in rules if [p["port"] for p in r["ports"]] == ["management"])
    assert "from" not in inference  # the ingress controller, wherever it runs
    assert management["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    peers = [{"podSelector": {"matchLabels": {"app": "ops-console"}}}]
    (policy,) = render({"networkPolicy": {"managementFrom": peers}})["networkpolicy.yaml"]
    assert next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "management")["from"] == peers
    with pytest.raises(Exception, match="managementFrom"):
        render({"networkPolicy": {"managementFrom": []}})


def test_the_probe_port_can_be_kept_to_the_nodes():
    nodes = [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    (policy,) = render({"networkPolicy": {"probesFrom": nodes}})["networkpolicy.yaml"]
    rules = policy["spec"]["ingress"]
    inference = next(r for r in rules if "http" in {p["port"] for p in r["ports"]})
    probes = next(r for r in rules if [p["port"] for p in r["ports"]] == ["probes"])
    assert "probes" not in {p["port"] for p in inference["ports"]} and probes["from"] == [*nodes, HELM_TEST_PEER]
    # without `helm test`, the nodes alone
    (policy,) = render({"networkPolicy": {"probesFrom": nodes}, "helmTest": {"enabled": False}})["networkpolicy.yaml"]
    probes = next(r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "probes", "protocol": "TCP"}])
    assert probes["from"] == nodes


def test_ingress_is_streaming_safe_and_keeps_management_inside():
    (ing,) = render({"ingress": {"enabled": True}})["ingress.yaml"]
    a = ing["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(a["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in a
    ports = {p["backend"]["service"]["port"]["name"] for p in ing["spec"]["rules"][0]["http"]["paths"]}
    assert ports == {"http", "openai"}
    (ing,) = render({"ingress": {"enabled": True, "affinityHeader": "X-Session-Id"}})["ingress.yaml"]
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_x_session_id"


def test_autoscaling_targets_half_the_readers_limit_with_the_hpa_or_keda():
    (hpa,) = render({"autoscaling": {"enabled": True}})["hpa.yaml"]
    target = hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert target == "128"  # max_in_flight 256 of the default reader
    (hpa,) = render({"autoscaling": {"enabled": True, "targetRequestsInFlight": 40}})["hpa.yaml"]
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "40"
    keda = {"keda": {"enabled": True, "prometheusAddress": "http://prometheus-operated.monitoring:9090"}}
    docs = render({"autoscaling": keda}, files=("values-cpu.yaml",))
    (so,) = docs["scaledobject.yaml"]
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "16"  # half of 32
    assert (
        'job="gw-llm-gateway"' in trigger["metadata"]["query"]
        and "gateway_requests_in_flight" in trigger["metadata"]["query"]
    )
    assert "replicas" not in docs["deployment.yaml"][0]["spec"] and "hpa.yaml" not in docs
    with pytest.raises(Exception, match="alternatives"):
        render({"autoscaling": {"enabled": True, **keda}})
    adapter = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert "gateway_requests_in_flight" in rule["seriesQuery"] and rule["name"]["as"] == "gateway_requests_in_flight"


def test_grafana_dashboard_config_map_for_the_sidecar():
    (cm,) = render({"grafanaDashboard": {"enabled": True}})["dashboard.yaml"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["llm-gateway.json"])["panels"]


def test_multi_node_is_a_leader_worker_set_whose_leader_the_service_selects():
    docs = render(files=("values-multinode.yaml",))
    assert "deployment.yaml" not in docs
    (lws,) = docs["leaderworkerset.yaml"]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    leader = template["leaderTemplate"]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    assert "ray start --head" in leader["spec"]["containers"][0]["args"][0]
    assert "gateway serve" in leader["spec"]["containers"][0]["args"][0]
    assert "$(LWS_LEADER_ADDRESS)" in worker["args"][0]
    (svc,) = docs["service.yaml"]
    assert svc["spec"]["selector"].items() <= leader["metadata"]["labels"].items()
    worker_labels = template["workerTemplate"].get("metadata", {}).get("labels", {})
    assert not svc["spec"]["selector"].items() <= worker_labels.items()
    (cm,) = docs["configmap.yaml"]
    reader = yaml.safe_load(cm["data"]["config.yaml"])["readers"][0]
    assert reader["engine_args"]["distributed_executor_backend"] == "ray"


def test_inference_pool_targets_the_pods_and_needs_metrics_on_the_main_port():
    pool = {"inferencePool": {"enabled": True, "endpointPicker": "gw-epp"}}
    with pytest.raises(Exception, match="metrics_on_main_port"):
        render(pool)
    (ip,) = render({**pool, "config": {"metrics_on_main_port": True}})["inferencepool.yaml"]
    assert ip["spec"]["targetPorts"] == [{"number": 3000}]
    assert ip["spec"]["endpointPickerRef"] == {"name": "gw-epp", "port": {"number": 9002}}
    assert ip["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "gw"
    auto = {"inferencePool": {"enabled": "auto", "endpointPicker": "gw-epp"}, "config": {"metrics_on_main_port": True}}
    assert "inferencepool.yaml" not in render(auto)
    assert "inferencepool.yaml" in render(auto, api_versions=["inference.networking.k8s.io/v1/InferencePool"])


@pytest.mark.parametrize("files", PRESETS, ids=PRESET_IDS)
def test_the_charts_config_is_valid_gateway_settings(files, tmp_path, monkeypatch):
    from gateway.settings import load_settings

    (cm,) = render(files=files)["configmap.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    for key in [k for k in __import__("os").environ if k.startswith(("GATEWAY_", "TAKEOFF_"))]:
        monkeypatch.delenv(key)
    settings = load_settings(path)
    assert settings.host == "0.0.0.0" and settings.metrics_public
    # the ServiceMonitor scrapes the management port from another pod
    assert settings.management_host == "0.0.0.0"


def test_alert_rules_pass_promtool(tmp_path):
    proc = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert proc.returncode == 0 and "SUCCESS: 6 rules found" in proc.stdout, proc.stdout + proc.stderr
    (rule,) = render(api_versions=OPERATOR_APIS)["prometheusrule.yaml"]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    assert subprocess.run([tool("promtool"), "check", "rules", str(rendered)], capture_output=True).returncode == 0
    # scoped to this release's scrape job (the Service's name), never "any job named *gateway*"
    text = rendered.read_text()
    assert 'job="gw-llm-gateway"' in text and 'job="llm-gateway"' not in text and "=~" not in text.split("up{")[1][:40]


def test_alerts_fire_on_failed_readers_not_loading_ones_and_only_on_their_job(tmp_path):
    """promtool's rule unit tests: series in, alerts out."""
    cases = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # a slow model load: loading for an hour, never failed
                    {
                        "series": 'gateway_reader_state{job="llm-gateway",instance="a",group="primary",reader="big",state="loading"}',  # noqa: E501
                        "values": "1x60",
                    },
                    {
                        "series": 'gateway_reader_state{job="llm-gateway",instance="a",group="primary",reader="big",state="failed"}',  # noqa: E501
                        "values": "0x60",
                    },
                    {
                        "series": 'gateway_reader_up{job="llm-gateway",instance="a",group="primary",reader="big"}',
                        "values": "0x60",
                    },
                    # a reader whose engine died
                    {
                        "series": 'gateway_reader_state{job="llm-gateway",instance="b",group="primary",reader="p0",state="dead"}',  # noqa: E501
                        "values": "0 0 1x58",
                    },
                    # someone else's job with "gateway" in its name is down
                    {"series": 'up{job="istio-ingressgateway",instance="c"}', "values": "0x60"},
                    {"series": 'up{job="llm-gateway",instance="a"}', "values": "1x60"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "GatewayEngineDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "llm-gateway",
                                    "instance": "b",
                                    "group": "primary",
                                    "reader": "p0",
                                },
                                "exp_annotations": {
                                    "summary": "Reader p0 on b failed or its engine died",
                                    "runbook_url": "docs/runbooks.md#gatewayenginedown",
                                },
                            }
                        ],
                    },
                    {"eval_time": "30m", "alertname": "GatewayReaderLoadingLong", "exp_alerts": []},
                    {
                        "eval_time": "59m",
                        "alertname": "GatewayReaderLoadingLong",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": "llm-gateway",
                                    "instance": "a",
                                    "group": "primary",
                                    "reader": "big",
                                },
                                "exp_annotations": {
                                    "summary": "Reader big on a has been loading for 45 minutes",
                                    "runbook_url": "docs/runbooks.md#gatewayreaderloadinglong",
                                },
                            }
                        ],
                    },
                    {"eval_time": "30m", "alertname": "GatewayDown", "exp_alerts": []},
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(cases))
    proc = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_name_real_series():
    from prometheus_client import REGISTRY

    from gateway.runtime import Runtime
    from gateway.settings import Settings

    Runtime.create(Settings())  # attaches the scrape-time gauges (readers, store)
    known = set()
    for collector_metrics in REGISTRY.collect():
        known.add(collector_metrics.name)
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
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
    with pytest.raises(Exception, match="apiKeys"):
        render(keys=False)
    # keyless mode is for a trusted network: the NetworkPolicy must say who may connect
    for open_to_all in ({}, {"networkPolicy": {"enabled": False}}):
        with pytest.raises(Exception, match="inferenceFrom"):
            render({"allowUnauthenticated": True, **open_to_all}, keys=False)
    clients = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}}}]
    rendered = render({"allowUnauthenticated": True, "networkPolicy": {"inferenceFrom": clients}}, keys=False)
    (deploy,) = rendered["deployment.yaml"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_ALLOW_UNAUTHENTICATED"] == "true"
    (policy,) = rendered["networkpolicy.yaml"]
    assert policy["spec"]["ingress"][0]["from"] == [*clients, HELM_TEST_PEER]


def test_the_keys_file_format_is_said_never_guessed():
    def env_of(values: dict) -> dict[str, str]:
        (deploy,) = render(values)["deployment.yaml"]
        (c,) = deploy["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}

    assert env_of({})["GATEWAY_API_KEYS_FILE_FORMAT"] == "lines"  # the chart's own Secret: a key per line
    own = env_of({"apiKeys": {"existingSecret": "team-keys", "keys": []}})
    assert own["GATEWAY_API_KEYS_FILE_FORMAT"] == "yaml"
    lines = env_of({"apiKeys": {"existingSecret": "team-keys", "keys": [], "format": "lines"}})
    assert lines["GATEWAY_API_KEYS_FILE_FORMAT"] == "lines"
    with pytest.raises(Exception, match=r"minLength|16|keys"):
        render({"apiKeys": {"keys": ["short"]}})


@pytest.mark.parametrize(
    ("args", "mounted", "runs"),
    [
        ([], False, ["serve", "--config", "configs/default.yaml"]),  # the image's preset
        ([], True, ["serve", "--config", "MOUNT"]),  # Takeoff's place for its config.yaml
        (
            ["/models/m", "--max-num-seqs", "8"],
            True,
            ["serve", "--config", "MOUNT", "/models/m", "--max-num-seqs", "8"],
        ),
        (["/models/m", "-tp", "2"], False, ["serve", "/models/m", "-tp", "2"]),  # as `vllm serve` takes them
        (["--config", "/etc/c.yaml"], True, ["serve", "--config", "/etc/c.yaml"]),  # the chart's: as given
        (["-c", "/etc/c.yaml"], False, ["serve", "-c", "/etc/c.yaml"]),
    ],
)
def test_the_image_entrypoint_picks_the_settings_file(tmp_path, args, mounted, runs):
    fake = tmp_path / "bin" / "gateway"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    mount = tmp_path / "config.yaml"
    if mounted:
        mount.write_text("takeoff: {}\n")
    env = {
        "PATH": f"{fake.parent}:/usr/bin:/bin",
        "GATEWAY_PRESET": "configs/default.yaml",
        "GATEWAY_CONFIG_MOUNT": str(mount),
    }
    out = subprocess.run(
        ["sh", str(ROOT / "deploy" / "docker" / "entrypoint.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [str(mount) if a == "MOUNT" else a for a in runs]


def test_the_images_use_the_entrypoint_and_the_cuda_preset_allows_hub_ids():
    for accel, preset in (("cpu", "default.yaml"), ("cuda", "gpu.yaml")):
        text = (ROOT / "deploy" / "docker" / f"Dockerfile.{accel}").read_text()
        assert 'ENTRYPOINT ["/usr/local/bin/gateway-entrypoint"]' in text and "CMD []" in text
        assert f"GATEWAY_PRESET=configs/{preset}" in text
    assert "!deploy/docker/entrypoint.sh" in (ROOT / ".dockerignore").read_text()
    # `-e TAKEOFF_MODEL_NAME=org/model` on the CUDA image: offline only by default, so a hub id loads
    assert "offline" not in yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())


def test_tracing_points_both_paths_at_the_collector():
    def env_of(doc: dict) -> dict[str, str]:
        spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else (
            doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
        )  # fmt: skip
        return {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}

    (plain,) = render()["deployment.yaml"]
    assert "GATEWAY_TRACING" not in env_of(plain)  # off by default
    with pytest.raises(Exception, match=r"tracing\.endpoint"):
        render({"tracing": {"enabled": True}})
    on = {"tracing": {"enabled": True, "endpoint": "http://otel.monitoring:4317", "protocol": "grpc"}}
    (deploy,) = render(on)["deployment.yaml"]
    env = env_of(deploy)
    assert env["GATEWAY_TRACING"] == "true" and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.monitoring:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc" and env["OTEL_SERVICE_NAME"] == "llm-gateway"
    with pytest.raises(Exception, match="protocol"):
        render({"tracing": {"enabled": True, "endpoint": "http://x", "protocol": "thrift"}})
    (lws,) = render(on, files=("values-multinode.yaml",))["leaderworkerset.yaml"]
    assert env_of(lws)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.monitoring:4317"


def test_batches_mount_a_volume_and_refuse_replicas_that_could_not_share_it():
    def pod(doc: dict) -> dict:
        return doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else (
            doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
        )  # fmt: skip

    def mounted(doc: dict) -> tuple[dict[str, str], dict[str, str], dict[str, dict]]:
        spec = pod(doc)
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        return env, mounts, {v["name"]: v for v in spec["volumes"]}

    (plain,) = render()["deployment.yaml"]
    env, mounts, volumes = mounted(plain)
    assert "GATEWAY_BATCHES__ENABLED" not in env and "batch-files" not in volumes  # off by default
    (one,) = render({"batches": {"enabled": True}})["deployment.yaml"]
    env, mounts, volumes = mounted(one)
    assert env["GATEWAY_BATCHES__ENABLED"] == "true"
    assert env["GATEWAY_BATCHES__DIRECTORY"] == mounts["batch-files"] == "/var/lib/llm-gateway/batches"
    assert volumes["batch-files"]["emptyDir"] == {"sizeLimit": "50Gi"}
    # two replicas: a shared claim and Redis, or no render at all
    with pytest.raises(Exception, match="persistentVolumeClaim"):
        render({"batches": {"enabled": True}, "replicaCount": 2})
    with pytest.raises(Exception, match=r"continuation\.backend: redis"):
        render({"batches": {"enabled": True, "persistentVolumeClaim": "batch-rwx"}, "autoscaling": {"enabled": True}})
    shared = {"batches": {"enabled": True, "persistentVolumeClaim": "batch-rwx"}, "replicaCount": 2,
              "config": {"continuation": {"backend": "redis", "redis_url": "redis://redis:6379/0"}}}  # fmt: skip
    (two,) = render(shared)["deployment.yaml"]
    assert mounted(two)[2]["batch-files"]["persistentVolumeClaim"] == {"claimName": "batch-rwx"}
    (lws,) = render({"batches": {"enabled": True}}, files=("values-multinode.yaml",))["leaderworkerset.yaml"]
    env, mounts, volumes = mounted(lws)
    assert env["GATEWAY_BATCHES__ENABLED"] == "true" and "batch-files" in mounts and "batch-files" in volumes
    with pytest.raises(Exception, match="enabled"):
        render({"batches": {"enabled": "yes"}})


def test_day_one_knobs_reach_both_paths_and_service_links_are_off():
    def pod(doc: dict) -> dict:
        return doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else (
            doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
        )  # fmt: skip

    knobs = {
        "imagePullSecrets": [{"name": "my-registry"}],
        "runtimeClassName": "nvidia",
        "priorityClassName": "inference-high",
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
        "global": {"imageRegistry": "ignored.example"},  # as a subchart
    }  # fmt: skip
    (deploy,) = render(knobs)["deployment.yaml"]
    (lws,) = render(knobs, files=("values-multinode.yaml",))["leaderworkerset.yaml"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    for spec in (pod(deploy), pod(lws), worker):
        assert spec["enableServiceLinks"] is False  # a Service named gateway or vllm injects nothing
        assert spec["imagePullSecrets"] == [{"name": "my-registry"}]
        assert spec["runtimeClassName"] == "nvidia" and spec["priorityClassName"] == "inference-high"
        for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
            assert spec[key] == knobs[key], key
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert deploy["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    leader = pod(lws)["containers"][0]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(leader)  # as the Deployment's
    # rollouts: no surge (a single-GPU node never needs a second GPU), a deadline past the load
    (plain,) = render()["deployment.yaml"]
    assert plain["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert plain["spec"]["progressDeadlineSeconds"] > 1800
    assert "enableServiceLinks" in pod(plain) and "imagePullSecrets" not in pod(plain)
    labels = plain["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/component"] == "gateway"
    (named,) = render({"fullnameOverride": "inference"})["deployment.yaml"]
    assert named["metadata"]["name"] == "inference"
    # the autoscalers scale what exists: the LeaderWorkerSet on the multi-node path
    auto = {"autoscaling": {"enabled": True}}
    (hpa,) = render(auto, files=("values-multinode.yaml",))["hpa.yaml"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    (hpa,) = render(auto)["hpa.yaml"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    with pytest.raises(Exception, match="imagePullSecrets"):
        render({"imagePullSecrets": ["my-registry"]})
