"""Time budgets from the model and the device, not constants (notebooks 00, 03).

A server start is: read the weights from disk, build the model, (on a GPU without
``enforce_eager``) compile and capture CUDA graphs, then allocate the KV cache. A 135M model
on two CPU cores is ready in ~20 s; a 7B model on an RTX 3090 from AutoDL's network disk can
take several minutes. One fixed timeout would either fail the 7B start or make a broken
135M start wait minutes, and in notebooks 06/07 a timeout would hide the error vLLM was
about to print. :func:`startup_budget_s` scales with the weights instead.
"""

from __future__ import annotations

#: Interpreter, CUDA or CPU backend and tokenizer start-up, API server start: before any weight is read.
BASE_S = 120.0
#: Seconds per GB of weights: a cold read at ~100 MB/s (AutoDL's data disk can be that slow) plus building the model.
PER_WEIGHT_GB_S = 10.0
#: torch.compile and CUDA-graph capture on a GPU (skipped with ``enforce_eager``); ~1-3 min for a 7B model.
GPU_COMPILE_S = 180.0
#: No start is given less: the course's stored runs start in 20-40 s on 2 cores.
FLOOR_S = 180.0


def startup_budget_s(weight_bytes: int, device: str, enforce_eager: bool) -> float:
    """Seconds a vLLM server start may take before it is called failed.

    ``BASE_S + PER_WEIGHT_GB_S x GB of weights (+ GPU_COMPILE_S on cuda without enforce_eager)``,
    at least ``FLOOR_S``: 180 s for SmolLM2 on a CPU, ~450 s for Qwen2.5-7B on a 3090.
    """
    budget = BASE_S + PER_WEIGHT_GB_S * weight_bytes / 1e9
    if device == "cuda" and not enforce_eager:
        budget += GPU_COMPILE_S
    return float(max(FLOOR_S, round(budget)))
