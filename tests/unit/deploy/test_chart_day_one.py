"""The chart's day-one knobs: identity, gated models, a model cache the chart creates,
drains and autoscaling suited to long loads, the Gateway API route, `helm test`, runbooks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import start_gateway
from tests.unit.deploy.test_deploy import CHART, ROOT, render

POOL_API = ["inference.networking.k8s.io/v1/InferencePool"]


def pods(docs: dict) -> list[dict]:
    """Every pod spec the chart renders for serving (the Deployment's, or the leader's and
    the workers' of the LeaderWorkerSet)."""
    if "deployment.yaml" in docs:
        return [docs["deployment.yaml"][0]["spec"]["template"]["spec"]]
    lws = docs["leaderworkerset.yaml"][0]["spec"]["leaderWorkerTemplate"]
    return [lws["leaderTemplate"]["spec"], lws["workerTemplate"]["spec"]]


def test_service_account_hub_token_and_created_model_cache_reach_every_pod():
    values = {
        "serviceAccount": {"create": True, "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}},
        "hubToken": {"secretName": "hf", "key": "token"},
        "modelCache": {"create": {"enabled": True, "size": "300Gi", "storageClassName": "fast"}},
    }
    docs = render(values)
    (account,) = docs["serviceaccount.yaml"]
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    (claim,) = docs["pvc.yaml"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # weights survive uninstall
    assert claim["spec"]["resources"]["requests"]["storage"] == "300Gi"
    assert claim["spec"]["storageClassName"] == "fast" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    shared = {**values, "modelCache": {"create": {"enabled": True, "accessModes": ["ReadWriteMany"]}}}
    multi = render(shared, files=("values-multinode.yaml",))
    for spec in pods(docs) + pods(multi):
        assert spec["serviceAccountName"] == "gw-llm-gateway" and spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "gw-llm-gateway-model-cache"}
        for c in spec["containers"]:
            token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
            assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}  # never a value
            assert {"name": "model-cache", "mountPath": "/code/models"} in c["volumeMounts"]
    # an existing account by name (and the older serviceAccountName), none by default
    (spec,) = pods(render({"serviceAccount": {"name": "team-sa"}}))
    assert spec["serviceAccountName"] == "team-sa" and "serviceaccount.yaml" not in render()
    (spec,) = pods(render({"serviceAccountName": "old-sa"}))
    assert spec["serviceAccountName"] == "old-sa"
    (spec,) = pods(render())
    assert "serviceAccountName" not in spec and not any(e["name"] == "HF_TOKEN" for e in spec["containers"][0]["env"])


@pytest.mark.parametrize(
    ("values", "files", "named"),
    [
        ({"replicaCount": 2}, (), "ReadWriteMany"),
        ({"autoscaling": {"enabled": True}}, (), "ReadWriteMany"),
        ({}, ("values-multinode.yaml",), "ReadWriteMany"),
        ({"modelCache": {"persistentVolumeClaim": "mine"}}, (), "alternatives"),
    ],
    ids=["replicas", "autoscaling", "multinode", "both-claims"],
)
def test_a_created_cache_claim_that_would_leave_pods_pending_is_refused(values, files, named):
    values = {**values, "modelCache": {"create": {"enabled": True}, **values.get("modelCache", {})}}
    with pytest.raises(Exception, match=named):
        render(values, files=files)


def test_loading_pods_can_be_drained_and_autoscalers_add_pods_at_the_pace_of_a_load():
    (pdb,) = render()["pdb.yaml"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a loading pod never blocks a drain
    (hpa,) = render({"autoscaling": {"enabled": True}})["hpa.yaml"]
    up, down = hpa["spec"]["behavior"]["scaleUp"], hpa["spec"]["behavior"]["scaleDown"]
    assert up["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 600}]
    assert down["stabilizationWindowSeconds"] >= 1800
    keda = {"autoscaling": {"keda": {"enabled": True, "prometheusAddress": "http://prom:9090"}}}
    (scaled,) = render(keda)["scaledobject.yaml"]
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    (plain,) = render({"autoscaling": {"enabled": True, "behavior": None}})["hpa.yaml"]
    assert "behavior" not in plain["spec"]  # null: Kubernetes' defaults
    with pytest.raises(Exception, match="behavior"):
        render({"autoscaling": {"behavior": {"scaleSideways": {}}}})


def test_the_http_route_is_streaming_safe_and_pairs_with_the_inference_pool():
    route_values = {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw", "namespace": "gateway-system"}],
                                  "hostnames": ["llm.example.com"]}}  # fmt: skip
    (route,) = render(route_values)["httproute.yaml"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "gateway-system"}]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    by_path = {r["matches"][0]["path"]["value"]: r for r in route["spec"]["rules"]}
    assert by_path["/v1"]["backendRefs"] == [{"name": "gw-llm-gateway", "port": 3003}]
    assert by_path["/"]["backendRefs"] == [{"name": "gw-llm-gateway", "port": 3000}]
    for rule in by_path.values():  # an hour for a stream, as the Ingress's read timeout
        assert rule["timeouts"] == {"request": "3600s", "backendRequest": "3600s"}
    # only the inference ports: the management port stays inside the cluster
    ports = {b.get("port") for r in route["spec"]["rules"] for b in r["backendRefs"]}
    assert 3001 not in ports
    pool = {"inferencePool": {"enabled": True, "endpointPicker": "epp"}, "config": {"metrics_on_main_port": True}}
    (route,) = render({**route_values, **pool}, api_versions=POOL_API)["httproute.yaml"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "gw-llm-gateway"}
    ]
    with pytest.raises(Exception, match="parentRefs"):
        render({"httpRoute": {"enabled": True}})
    with pytest.raises(Exception, match="request"):
        render({"httpRoute": {**route_values["httpRoute"], "timeouts": {"request": "an hour"}}})


def test_the_helm_test_pod_calls_readyz_and_models_with_a_key_of_the_release():
    docs = render()
    (pod,) = docs["test-api.yaml"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (svc,) = docs["service.yaml"]
    selector = svc["spec"]["selector"]
    # the Service, the PDB and the NetworkPolicy never take it for a gateway pod
    assert not selector.items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PROBE_URL"] == "http://gw-llm-gateway:3002" and env["API_URL"] == "http://gw-llm-gateway:3003"
    assert env["KEYS_FILE"] == "/etc/llm-gateway/keys/keys" and env["KEYS_FORMAT"] == "lines"
    assert c["command"][:2] == ["python3", "-c"] and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["volumes"] == [{"name": "keys", "secret": {"secretName": "gw-llm-gateway-keys"}}]
    # a keys file of digests: a Secret with one plain key
    named = render({"helmTest": {"apiKeySecret": {"name": "probe-key"}}})["test-api.yaml"][0]["spec"]
    (c,) = named["containers"]
    key = next(e for e in c["env"] if e["name"] == "API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "probe-key", "key": "api-key"} and "volumes" not in named
    assert "test-api.yaml" not in render({"helmTest": {"enabled": False}})


@pytest.fixture(scope="module")
def scripted_gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("helm-test")
    keys = folder / "keys.yaml"
    keys.write_text(
        "keys:\n"
        "  - {name: ops, key: sk-ops-0123456789abcdef, permissions: [admin]}\n"
        "  - {name: team, key: sk-team-0123456789abcdef}\n"
    )
    env = {"GATEWAY_API_KEYS_FILE": str(keys), "GATEWAY_API_KEYS_FILE_FORMAT": "yaml"}
    gw = start_gateway(folder / "gateway.log", config="configs/scripted.yaml", env=env)
    yield gw, folder
    gw.stop()


def run_helm_test(gw, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = (CHART / "files" / "helm-test.py").read_text()
    base = {"PROBE_URL": f"http://127.0.0.1:{gw.port}", "API_URL": f"http://127.0.0.1:{gw.openai_port}"}
    return subprocess.run(
        [sys.executable, "-c", script], env={**base, **env}, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_the_helm_test_script_passes_against_a_gateway_and_fails_with_the_reason(scripted_gateway, tmp_path):
    gw, folder = scripted_gateway
    # the yaml file: the first key allowed inference (not the admin-only one)
    ok = run_helm_test(gw, {"KEYS_FILE": str(folder / "keys.yaml"), "KEYS_FORMAT": "yaml"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok: /readyz 200" in ok.stdout and re.search(r"ok: /v1/models \S", ok.stdout)
    lines = tmp_path / "keys"
    lines.write_text("# the chart's own Secret\nsk-team-0123456789abcdef\n")
    assert run_helm_test(gw, {"KEYS_FILE": str(lines), "KEYS_FORMAT": "lines"}).returncode == 0
    wrong = run_helm_test(gw, {"API_KEY": "sk-not-a-key-0123456789"})
    assert wrong.returncode == 1 and "/v1/models answered 401" in wrong.stderr
    digests = tmp_path / "digests.yaml"
    digests.write_text("keys:\n  - {name: a, sha256: " + "ab" * 32 + "}\n")
    none = run_helm_test(gw, {"KEYS_FILE": str(digests), "KEYS_FORMAT": "yaml"})
    assert none.returncode == 1 and "helmTest.apiKeySecret" in none.stderr
    closed = run_helm_test(gw, {"API_KEY": "k", "PROBE_URL": "http://127.0.0.1:9"})
    assert closed.returncode == 1 and "FAIL: http://127.0.0.1:9/readyz" in closed.stderr


def test_every_alert_links_its_runbook():
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"][0]["rules"]
    lines = (ROOT / "docs" / "runbooks.md").read_text().splitlines()
    headings = {line[3:].strip().lower() for line in lines if line.startswith("## ")}
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks.md#{rule['alert'].lower()}" and rule["alert"].lower() in headings
    base = "https://wiki.example.com/llm/runbooks"
    values = {"metrics": {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}}}
    (rule,) = render(values)["prometheusrule.yaml"]
    urls = [r["annotations"]["runbook_url"] for r in rule["spec"]["groups"][0]["rules"]]
    assert urls and all(u.startswith(base + "#gateway") for u in urls)


def test_the_new_resources_are_valid_kubernetes():
    import kubernetes_validate

    values = {
        "serviceAccount": {"create": True},
        "modelCache": {"create": {"enabled": True}},
        "hubToken": {"secretName": "hf"},
        "autoscaling": {"enabled": True},
    }
    values["modelCache"]["create"]["accessModes"] = ["ReadWriteMany"]
    docs = render(values)
    for name in ("serviceaccount.yaml", "pvc.yaml", "test-api.yaml", "pdb.yaml", "hpa.yaml", "deployment.yaml"):
        for d in docs[name]:
            kubernetes_validate.validate(d, "1.30.0", strict=True)
    assert Path(CHART / "templates" / "tests" / "test-api.yaml").exists()


def test_the_chart_readme_is_written_from_the_values_comments():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "helm" / "values_readme.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values:  # every top-level value has its row
        assert f"| `{key}" in readme, key
    assert '| `hubToken.secretName` | `""` |' in readme
    assert re.search(r"\| `modelCache\.create` \|  \| or a claim the chart creates", readme)


def test_the_kserve_runtime_serves_the_mounted_model_on_one_port(monkeypatch):
    import kubernetes_validate

    from gateway.cli import add_setting_flags
    from gateway.cli_vllm import translate
    from gateway.settings import load_settings

    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "cluster-serving-runtime.yaml").read_text())
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ClusterServingRuntime"
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor into
    # KServe puts the InferenceService's name where {{.Name}} is
    args = [a.replace("{{.Name}}", "my-llm") for a in container["args"]]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    found = translate(args, add_setting_flags)  # the image's entrypoint runs `gateway serve ARGS`
    assert found.args.model == "/mnt/models"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["VLLM_API_KEY"] = "sk-kserve-0123456789abcdef"  # from the Secret the manifest names
    for name, value in {**env, **found.env, "GATEWAY_MODEL": found.args.model}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(found.settings_file)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert [p["containerPort"] for p in container["ports"]] == [settings.port]
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == settings.port
    assert settings.metrics_on_main_port is True and settings.effective_management_port == 8081
    assert settings.openai_port is None  # one port: Takeoff's separate OpenAI port is off
    assert settings.management_host == "127.0.0.1"  # the management API is not on the routed port
    (reader,) = settings.readers
    assert reader.model == "/mnt/models" and reader.served_model_names == ["my-llm"]
    assert [k.get_secret_value() for k in settings.api_keys] == ["sk-kserve-0123456789abcdef"]
