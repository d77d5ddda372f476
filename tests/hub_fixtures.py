"""Set-up shared by the download and local-hub tests (loaded with ``pytest_plugins``).

No Internet is used: while ``isolated_env`` is active an audit hook records every connection
this process opens (:data:`CONNECTIONS`), and the fixture fails a test that left loopback. The fixture is not autouse (a plugin's
autouse fixture would reach every test in the session): modules opt in with
``pytestmark = pytest.mark.usefixtures("isolated_env")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.hubs import forget_modelscope_config

MODEL_ID = "course/tiny-qwen2"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

# ---------------------------------------------------------------------------
# No traffic beyond loopback
# ---------------------------------------------------------------------------
#: Every address this process connected to during the current test (``isolated_env``).
CONNECTIONS: list[tuple] = []
_recording: list[bool] = [False]


def _audit(event: str, args: tuple) -> None:
    if _recording[0] and event == "socket.connect" and isinstance(args[1], tuple) and args[1]:
        CONNECTIONS.append(args[1])


sys.addaudithook(_audit)


def _outside_loopback() -> list[tuple]:
    return [address for address in CONNECTIONS if address[0] not in ("127.0.0.1", "::1", "localhost")]


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Private ModelScope / HF caches, no endpoint variables; assert nothing left loopback."""
    for name in ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "HF_ENDPOINT", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    except ImportError:  # pragma: no cover
        pass
    forget_modelscope_config()
    CONNECTIONS.clear()
    _recording[0] = True
    try:
        yield
    finally:
        _recording[0] = False
        forget_modelscope_config()
    assert not _outside_loopback(), f"connections outside loopback: {_outside_loopback()}"


def cli_env() -> dict[str, str]:
    """The environment for ``python -m helpers...`` run as a subprocess: this one, ``src`` on the
    path, and no progress bars (the hub clients' own output; the tests read the CLI's stderr)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def sha256_tree(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of a model folder's files (not the marker, not ``.cache``)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".course-download.json" and ".cache" not in p.relative_to(root).parts
    }


# ---------------------------------------------------------------------------
# A small but realistic model folder
# ---------------------------------------------------------------------------
def build_model_dir(root: Path, *, torch_dtype: str = "bfloat16") -> dict[str, int]:
    """Qwen2-like tiny model: config, tokenizer, generation config, 2 safetensors shards + index.

    ``torch_dtype`` is only written to ``config.json``: the tensors are float32 except
    ``model.norm.weight``, the one float16 tensor (64 elements). ``SHARDS[0]`` holds the
    embeddings and layer 0 (about 150 kB), ``SHARDS[1]`` the rest.

    Returns ``{tensor name: number of elements}``.
    """
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    hidden, layers, vocab, inter = 64, 2, 256, 128
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 512,
        "torch_dtype": torch_dtype, "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "max_new_tokens": 16}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, "eos_token": "</s>"}))
    (root / "tokenizer.json").write_text(json.dumps(
        {"version": "1.0", "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(vocab)},
                                     "unk_token": "t0"}}))
    rng = np.random.default_rng(0)
    shard1 = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
    shard2 = {"model.norm.weight": np.ones(hidden, dtype=np.float16),
              "lm_head.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
    for i in range(layers):
        target = shard1 if i == 0 else shard2
        target[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((hidden, hidden), dtype=np.float32)
        target[f"model.layers.{i}.self_attn.k_proj.weight"] = rng.standard_normal((32, hidden), dtype=np.float32)
        target[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((inter, hidden), dtype=np.float32)
        target[f"model.layers.{i}.mlp.down_proj.weight"] = rng.standard_normal((hidden, inter), dtype=np.float32)
        target[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    save_file(shard1, str(root / SHARDS[0]), metadata={"format": "pt"})
    save_file(shard2, str(root / SHARDS[1]), metadata={"format": "pt"})
    weight_map = {name: SHARDS[0] for name in shard1} | {name: SHARDS[1] for name in shard2}
    total = sum(a.nbytes for a in (*shard1.values(), *shard2.values()))
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {name: int(a.size) for name, a in (*shard1.items(), *shard2.items())}


@pytest.fixture
def source(tmp_path) -> Path:
    """A small model folder, the local hub's source."""
    build_model_dir(tmp_path / "source")
    return tmp_path / "source"


@pytest.fixture
def hub(source):
    """The local hub serving ``source`` as MODEL_ID, with this process's hub endpoints pointed at it."""
    from helpers.local_hub import LocalModelHub

    with LocalModelHub({MODEL_ID: source}) as running, running.use():
        yield running
