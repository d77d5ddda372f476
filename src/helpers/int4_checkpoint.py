"""Make a 4-bit weight-only copy of a llama-style bf16 checkpoint that vLLM's CPU build serves.

Introduced in notebook ``09_faster_and_smaller``. The method is plain round-to-nearest (RTN):
every weight is divided by its group's scale and rounded, with no calibration data. It is
*not* the GPTQ algorithm (which uses a Hessian from sample activations to correct the
rounding error); it is "RTN int4 in GPTQ's storage format", which vLLM loads as a
``gptq`` checkpoint and runs with its ``CPUWNA16LinearKernel``.

Storage, for each decoder linear (``q/k/v/o_proj``, ``gate/up/down_proj``) whose bf16
weight ``W`` is ``[N out, K in]``, with groups of ``G`` consecutive inputs:

* ``scales`` float16 ``[K/G, N]``: ``max |W| / 7`` over the group (symmetric);
* ``qweight`` int32 ``[K/8, N]``: ``q = round(W / scale) + 8`` in 0..15 ("uint4b8", the real
  value is ``(q - 8) * scale``), eight per word along K: bits ``4j..4j+3`` of word ``r``
  hold input ``k = 8r + j``;
* ``qzeros`` int32 ``[K/G, N/8]`` all ``0x88888888`` and ``g_idx`` int32 ``[K]`` = ``k // G``:
  required by the format, ignored for a symmetric checkpoint.

Embeddings, norms and an untied ``lm_head`` stay bf16; ``config.json`` gains a
``quantization_config``. Group 64, not the usual 128: the group must divide every input size
and SmolLM2-135M's hidden size 576 is 9 x 64. vLLM's CPU kernel also wants input and output
sizes that are multiples of 32; both are checked before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CourseError, ModelFilesError
from .model_build import STAMP_FILE, cached_build, file_digests

FORMAT_VERSION = "rtn-int4-gptq-v1"   # change when the files written below change
DEFAULT_GROUP_SIZE = 64
GROUP_SIZES = (32, 64, 128)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QZEROS_WORD = -2004318072             # 0x88888888 as int32: zero point 8 in all 8 slots
KERNEL_MULTIPLE = 32                  # CPUWNA16LinearKernel: in and out sizes % 32 == 0
REPORT_FILE = "int4_report.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


@dataclass(frozen=True)
class Int4Report:
    """What :func:`quantize_int4` built; errors are ``||W - Wdeq|| / ||W||`` per layer."""

    path: Path
    group_size: int
    quantized_layers: int
    source_bytes: int
    target_bytes: int
    mean_rel_error: float
    max_rel_error: float
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a notebook: sizes, ratio, weight error and time."""
        mb = 1024 * 1024
        return (f"RTN int4 (GPTQ format, group {self.group_size}): {self.quantized_layers} layers, "
                f"{self.source_bytes / mb:.1f} MiB -> {self.target_bytes / mb:.1f} MiB "
                f"({self.source_bytes / max(self.target_bytes, 1):.2f}x smaller), weight error "
                f"mean {self.mean_rel_error:.2%} / max {self.max_rel_error:.2%}, {self.seconds:.1f} s")


def quantize_weight(weight, group_size: int):
    """RTN-quantize one ``[N, K]`` weight: returns ``(qweight int32 [K/8, N], scales fp16 [K/G, N])``."""
    import torch

    w = weight.detach().float()
    n, k = w.shape
    absmax = w.view(n, k // group_size, group_size).abs().amax(dim=-1)    # [N, K/G]
    scales = (absmax / 7).to(torch.float16)
    # fp16 rounding may land just below max/7: step up so that no value is ever clipped.
    low = scales.float() * 7 < absmax
    scales = torch.where(low, torch.nextafter(scales, torch.full_like(scales, float("inf"))), scales)
    scales = torch.where(absmax == 0, torch.ones_like(scales), scales)    # all-zero group
    per_weight = scales.float().repeat_interleave(group_size, dim=1)      # [N, K]
    q = (torch.round(w / per_weight) + 8).clamp(0, 15).to(torch.int64)
    slots = q.t().reshape(k // 8, 8, n)                                   # [K/8, 8 slots, N]
    shifts = (4 * torch.arange(8, dtype=torch.int64)).view(1, 8, 1)
    words = (slots << shifts).sum(dim=1)                                  # in [0, 2**32)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.contiguous(), scales.t().contiguous()


def dequantize(qweight, scales, group_size: int):
    """The inverse of :func:`quantize_weight`: float32 ``[N, K]`` from ``qweight`` and ``scales``."""
    import torch

    shifts = (4 * torch.arange(8, dtype=torch.int32)).view(1, 8, 1)
    q = (qweight.unsqueeze(1) >> shifts) & 0xF                            # [K/8, 8, N]
    q = q.reshape(-1, qweight.shape[1]).float()                           # [K, N]
    per_weight = scales.float().repeat_interleave(group_size, dim=0)      # [K, N]
    return ((q - 8) * per_weight).t().contiguous()


def _is_weight_file(path: Path) -> bool:
    return path.name.endswith(WEIGHT_SUFFIXES)


def _shards(source: Path) -> list[Path]:
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise ModelFilesError(f"No *.safetensors weights in {source}: quantize_int4 reads a "
                              "Hugging Face checkpoint folder saved with safetensors.")
    return shards


def _is_linear(name: str, shape: list[int]) -> bool:
    parts = name.split(".")
    return len(shape) == 2 and len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in LINEARS


def _check_shapes(shards: list[Path], group_size: int) -> None:
    """Raise a CourseError, before anything is written, if a linear cannot be stored."""
    from safetensors import safe_open

    if group_size not in GROUP_SIZES:
        raise CourseError(f"group_size must be one of {', '.join(map(str, GROUP_SIZES))} (the groups vLLM's 4-bit "
                          f"kernels take, on CPU and GPU), not {group_size!r}; use {DEFAULT_GROUP_SIZE}.")
    found = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                shape = list(handle.get_slice(name).get_shape())
                if not _is_linear(name, shape):
                    continue
                found += 1
                (n, k) = shape
                if k % group_size:
                    raise CourseError(
                        f"group_size {group_size} does not divide the input size {k} of {name} "
                        f"(shape [out {n}, in {k}]): every group of {group_size} inputs needs its "
                        f"own scale. Pick a group size that divides it, e.g. {DEFAULT_GROUP_SIZE} or 32.")
                if n % KERNEL_MULTIPLE or k % KERNEL_MULTIPLE:
                    raise CourseError(
                        f"{name} has shape [out {n}, in {k}]; vLLM's CPU int4 kernel "
                        f"(CPUWNA16LinearKernel) needs both sizes to be multiples of "
                        f"{KERNEL_MULTIPLE}, so this model cannot be served in int4 on CPU.")
    if not found:
        raise CourseError(f"No decoder linear ({', '.join(LINEARS)}) found in {shards[0].parent}: "
                          "quantize_int4 expects a llama-style checkpoint.")


def _build_into(staging: Path, source: Path, shards: list[Path], group_size: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors: dict = {}
    for shard in shards:
        tensors.update(load_file(str(shard)))
    out: dict = {}
    errors: list[float] = []
    for name, tensor in tensors.items():
        if not _is_linear(name, list(tensor.shape)):
            out[name] = tensor.contiguous()
            continue
        prefix = name[: -len(".weight")]
        n, k = tensor.shape
        qweight, scales = quantize_weight(tensor, group_size)
        w = tensor.float()
        norm = torch.linalg.norm(w).item()
        diff = torch.linalg.norm(w - dequantize(qweight, scales, group_size)).item()
        errors.append(diff / norm if norm else 0.0)
        out[f"{prefix}.qweight"] = qweight
        out[f"{prefix}.scales"] = scales
        out[f"{prefix}.qzeros"] = torch.full((k // group_size, n // 8), QZEROS_WORD, dtype=torch.int32)
        out[f"{prefix}.g_idx"] = torch.arange(k, dtype=torch.int32) // group_size
    save_file(out, str(staging / "model.safetensors"), metadata={"format": "pt"})

    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size,
                                     "desc_act": False, "sym": True, "lm_head": False}
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for path in sorted(source.iterdir()):
        if path.is_file() and not _is_weight_file(path) and path.name not in (
                STAMP_FILE, "config.json", REPORT_FILE):
            shutil.copyfile(path, staging / path.name)
    report = {"format": FORMAT_VERSION, "group_size": group_size, "quantized_layers": len(errors),
              "source_bytes": sum(s.stat().st_size for s in shards),
              "mean_rel_error": sum(errors) / len(errors), "max_rel_error": max(errors)}
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def quantize_int4(source_dir: str | Path, target_dir: str | Path, group_size: int = DEFAULT_GROUP_SIZE,
                  force: bool = False) -> Int4Report:
    """Write an RTN int4 (GPTQ-format) copy of ``source_dir`` into ``target_dir``; return its report.

    Built atomically and cached (:func:`helpers.model_build.cached_build`): a second call with
    the same source files and group size returns at once. Shapes are checked first and a
    :class:`CourseError` says which layer cannot be stored and why.
    """
    started = time.monotonic()
    source = Path(source_dir).expanduser().resolve()
    target = Path(target_dir).expanduser().resolve()
    if not (source / "config.json").is_file():
        raise ModelFilesError(f"{source} is not a model folder (no config.json).")
    if source == target:
        raise CourseError("quantize_int4 needs a target folder different from its source.")
    if "quantization_config" in json.loads((source / "config.json").read_text()):
        raise CourseError(f"{source} is already quantized; start from the bf16 checkpoint.")
    shards = _shards(source)
    _check_shapes(shards, group_size)

    recipe = {"format": FORMAT_VERSION, "group_size": group_size, "files": file_digests(source)}
    fingerprint = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cached_build(target, fingerprint,
                        lambda staging: _build_into(staging, source, shards, group_size), force=force)
    stats = json.loads((path / REPORT_FILE).read_text())
    return Int4Report(path=path, group_size=group_size, quantized_layers=stats["quantized_layers"],
                      source_bytes=stats["source_bytes"],
                      target_bytes=(path / "model.safetensors").stat().st_size,
                      mean_rel_error=stats["mean_rel_error"], max_rel_error=stats["max_rel_error"],
                      seconds=time.monotonic() - started)
