"""helpers.kube: the course's chart rendered offline, every document valid, every mistake one message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers.errors import DeployError
from helpers.kube import VALUES_FILES, load_values, render_chart, values_text
from helpers.kube.chart import ROOT


@pytest.fixture(scope="module")
def charts():
    return {kind: render_chart(path) for kind, path in VALUES_FILES.items()}


@pytest.mark.parametrize("kind", sorted(VALUES_FILES))
def test_each_values_file_renders_valid_documents(charts, kind):
    rendered = charts[kind]
    assert sorted(d["kind"] for d in rendered.documents) == [
        "Deployment", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    replicas = rendered.find("StatefulSet", "-vllm")
    assert replicas["spec"]["replicas"] == 2
    vllm = rendered.container("StatefulSet", "-vllm", "vllm")
    assert {probe for probe in ("startupProbe", "readinessProbe", "livenessProbe") if probe in vllm} == {
        "startupProbe", "readinessProbe", "livenessProbe"}
    mounts = {mount["mountPath"] for mount in vllm["volumeMounts"]}
    assert "/dev/shm" in mounts and "/root/.cache/huggingface" in mounts
    assert replicas["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "model-cache"


def test_the_gpu_values_ask_for_one_gpu_per_replica_on_separate_nodes(charts):
    rendered = charts["gpu-3090"]
    vllm = rendered.container("StatefulSet", "-vllm", "vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = rendered.find("StatefulSet", "-vllm")["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == \
        "kubernetes.io/hostname"
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600   # a 7B start takes minutes
    assert "nvidia.com/gpu" not in str(charts["cpu-smol"].documents)


def test_the_router_lists_every_replica_by_its_stable_name(charts):
    rendered = charts["cpu-smol"]
    args = rendered.container("Deployment", "-router", "router")["args"]
    workers = args[args.index("--worker-urls") + 1:]
    service = rendered.find("Service", "-vllm")
    assert service["spec"]["clusterIP"] == "None"
    name = service["metadata"]["name"]
    assert workers == [f"http://{name}-{i}.{name}.vllm.svc:8000" for i in range(2)]
    assert service["spec"]["publishNotReadyAddresses"] is True        # the router checks health itself
    router = rendered.container("Deployment", "-router", "router")
    assert router["readinessProbe"]["httpGet"]["path"] == "/readiness"  # not /health: 503 when any one is down
    assert args[args.index("--worker-startup-timeout-secs") + 1] == "600"


@pytest.mark.parametrize("kind", sorted(VALUES_FILES))
def test_the_committed_values_files_are_what_the_settings_write(kind):
    assert VALUES_FILES[kind].read_text(encoding="utf-8") == values_text(kind), (
        f"{VALUES_FILES[kind]} is out of date: .venv/bin/python -m helpers.kube values {kind} > {VALUES_FILES[kind]}")


def test_autoscaling_renders_an_hpa_and_service_discovery_with_its_role():
    values = {**load_values(VALUES_FILES["cpu-smol"]), "autoscaling": {"enabled": True, "maxReplicas": 3}}
    rendered = render_chart(values)
    assert {"HorizontalPodAutoscaler", "ServiceAccount", "Role", "RoleBinding"} <= {d["kind"] for d in rendered.documents}
    assert "replicas" not in rendered.find("StatefulSet", "-vllm")["spec"]       # the autoscaler owns the count
    hpa = rendered.find("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet" and hpa["spec"]["maxReplicas"] == 3
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} == {
        "vllm_num_requests_waiting", "vllm_kv_cache_usage_perc"}
    args = rendered.container("Deployment", "-router", "router")["args"]
    assert "--service-discovery" in args and "--worker-urls" not in args
    assert rendered.find("Role")["rules"][0]["resources"] == ["pods"]


def test_the_gateway_goes_in_front_of_the_router():
    values = {**load_values(VALUES_FILES["cpu-smol"]),
              "gateway": {"enabled": True, "image": "registry.example/gateway:1", "apiKeySecret": "gateway-key"}}
    rendered = render_chart(values)
    args = rendered.container("Deployment", "-gateway", "gateway")["args"]
    router = rendered.find("Service", "-router")["metadata"]["name"]
    assert args[args.index("--upstream") + 1] == f"http://{router}:8080"
    assert "--api-key-env" in args


@pytest.mark.parametrize("values, says", [
    ({"router": {"policy": "fastest"}}, "values.schema.json"),
    ({"vllm": {"replicas": 0}}, "replicas"),
    ({"vllm": {"cache": {"size": "lots"}}}, "size"),
    ({"gateway": {"enabled": True}}, "gateway.image is empty"),
    ({"router": {"image": ""}}, "router.image is empty"),
    ({"vllm": {"args": ["--max-model-len", 4096]}}, "args"),
    ({"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}, "minReplicas .3. is above"),
], ids=["unknown-policy", "no-replicas", "bad-size", "gateway-without-image", "router-without-image", "number-arg",
        "min-above-max"])
def test_a_mistake_in_the_values_is_one_message(values, says):
    with pytest.raises(DeployError, match=says) as caught:
        render_chart(values)
    assert "Traceback" not in str(caught.value)


def test_a_values_file_that_is_not_yaml_names_the_line(tmp_path):
    broken = tmp_path / "values.yaml"
    broken.write_text("vllm:\n  replicas: 2\n   image: x\n")
    with pytest.raises(DeployError, match=r"not valid YAML at line 3"):
        render_chart(broken)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DeployError, match="a values file is a mapping"):
        render_chart(tmp_path / "list.yaml")
    with pytest.raises(DeployError, match="cannot read the values file"):
        render_chart(tmp_path / "missing.yaml")


def test_a_template_kubernetes_would_refuse_is_caught(tmp_path):
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: broken\nversion: 0.1.0\n")
    (chart / "templates" / "service.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  portz: []\n")
    with pytest.raises(DeployError, match=r"(?s)would refuse 1 document.*Service/x: spec: .*portz"):
        render_chart({}, chart_dir=chart)
    (chart / "templates" / "service.yaml").write_text("{{ .Values.missing.deeper }}\n")
    with pytest.raises(DeployError, match="failed to render"):
        render_chart({}, chart_dir=chart)


def test_the_command_line_renders_and_refuses_with_exit_2(tmp_path):
    run = [sys.executable, "-m", "helpers.kube"]
    good = subprocess.run([*run, "render", str(VALUES_FILES["cpu-smol"]), "--out", str(tmp_path / "m.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0, good.stderr
    assert "StatefulSet/" in good.stdout and (tmp_path / "m.yaml").read_text().count("\n---\n") >= 4
    (tmp_path / "bad.yaml").write_text("router:\n  policy: fastest\n")
    bad = subprocess.run([*run, "render", str(tmp_path / "bad.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
