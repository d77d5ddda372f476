"""The course's two values files for its chart, written from the course's settings (notebook 10).

``deploy/helm/values-gpu-3090.yaml``: the ``gpu`` profile (Qwen2.5-7B-Instruct) on two nodes
with one RTX 3090 each; ``deploy/helm/values-cpu-smol.yaml``: the ``smol`` profile on CPU nodes.
The engine arguments and environment are :meth:`helpers.settings.Settings.llm_kwargs` and
``vllm_environment()`` of that profile, the same ones the notebooks, the launcher and compose
use; ``.venv/bin/python -m helpers.kube values gpu-3090 > deploy/helm/values-gpu-3090.yaml`` rewrites a file
after the settings change, and ``tests/test_kube.py`` fails until it is rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..server_command import cli_args
from .chart import ROOT

VALUES_FILES = {"gpu-3090": ROOT / "deploy" / "helm" / "values-gpu-3090.yaml",
                "cpu-smol": ROOT / "deploy" / "helm" / "values-cpu-smol.yaml"}

_PROFILES = {"gpu-3090": ("gpu", "cuda"), "cpu-smol": ("smol", "cpu")}

_HEADER = {
    "gpu-3090": """\
# Qwen2.5-7B-Instruct on two nodes with one RTX 3090 (24 GB) each: one replica per node, vLLM's
# router in front (cache-aware), the course's gateway optional. Written by
#   .venv/bin/python -m helpers.kube values gpu-3090 > deploy/helm/values-gpu-3090.yaml
# from the course's gpu profile; edit the lines marked EDIT, rewrite the rest with that command.
#   .venv/bin/python -m helpers.kube render deploy/helm/values-gpu-3090.yaml      # offline, no cluster
#   helm install course deploy/helm/vllm-hands-on -f deploy/helm/values-gpu-3090.yaml -n vllm --create-namespace
""",
    "cpu-smol": """\
# SmolLM2-135M-Instruct on CPU nodes (no GPU): two small replicas behind vLLM's router, for a
# laptop cluster (kind, k3d, minikube) or a CPU-only one. Written by
#   .venv/bin/python -m helpers.kube values cpu-smol > deploy/helm/values-cpu-smol.yaml
# from the course's smol profile; edit the lines marked EDIT, rewrite the rest with that command.
#   .venv/bin/python -m helpers.kube render deploy/helm/values-cpu-smol.yaml
#   helm install course deploy/helm/vllm-hands-on -f deploy/helm/values-cpu-smol.yaml -n vllm --create-namespace
""",
}


def course_values(kind: str) -> dict[str, Any]:
    """The values of ``kind`` (a key of :data:`VALUES_FILES`), engine arguments from the settings."""
    from ..settings import get_settings

    if kind not in _PROFILES:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(_PROFILES)}")
    profile, device = _PROFILES[kind]
    settings = get_settings(profile, env={"COURSE_DEVICE": device}, check_hardware=False)
    kwargs = {key: value for key, value in settings.llm_kwargs().items() if key not in ("model", "served_model_name")}
    gpu = device == "cuda"
    vllm: dict[str, Any] = {
        "image": "vllm/vllm-openai:v0.32.0" if gpu else "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0",
        "replicas": 2,
        "args": cli_args(kwargs),
        "env": {**settings.vllm_environment(), **({} if gpu else {"OMP_NUM_THREADS": "2"})},
        # CPU: requests = limits in whole cores (Guaranteed; with the kubelet's static CPU manager the
        # cores are the replica's alone) and as many OpenMP threads: replicas must not share cores.
        "resources": ({"requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"nvidia.com/gpu": 1, "memory": "32Gi"}}
                      if gpu else {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}),
        "shmSize": "4Gi" if gpu else "1Gi",
        "cache": {"size": "40Gi" if gpu else "2Gi", "storageClassName": "", "mountPath": "/root/.cache/huggingface"},
        "probes": {"startupSeconds": 1800 if gpu else 600, "periodSeconds": 10},
        "onePerNode": gpu,
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3090"} if gpu else {},
    }
    return {"model": {"name": settings.model_id, "servedName": settings.served_model_name},
            "vllm": vllm,
            "router": {"policy": "cache_aware"},
            "gateway": {"enabled": False},
            # one replica per GPU node: two nodes, at most two replicas
            "autoscaling": {"enabled": False, "minReplicas": 1, "maxReplicas": 2 if gpu else 4}}


_COMMENTS = {
    "vllm:": "# EDIT: image (your vLLM version), replicas, resources, nodeSelector (kubectl get nodes -L nvidia.com/gpu.product)",
    "router:": "# EDIT: policy (round_robin, cache_aware, ...); chapter 10 measures the two",
    "gateway:": "# EDIT: enabled: true with gateway.image (deploy/helm/gateway.Dockerfile) and apiKeySecret",
    "autoscaling:": "# EDIT: enabled: true needs prometheus-adapter (templates/autoscaling.yaml has its rule); max = your nodes",
}


def values_text(kind: str) -> str:
    """The file :data:`VALUES_FILES` ``[kind]`` holds: a header, then the values with a comment per section."""
    body = yaml.safe_dump(course_values(kind), sort_keys=False, default_flow_style=False, width=100)
    lines = []
    for line in body.splitlines():
        if line in _COMMENTS:
            lines.append(_COMMENTS[line])
        lines.append(line)
    return _HEADER[kind] + "\n".join(lines) + "\n"


def write_values(kind: str, path: str | Path | None = None) -> Path:
    target = Path(path) if path is not None else VALUES_FILES[kind]
    target.write_text(values_text(kind), encoding="utf-8")
    return target
