"""LocalModelHub against the real clients: modelscope 1.40 (modelscope-hub) and huggingface_hub.

Everything runs over loopback HTTP; an audit hook fails a test that opens a
connection anywhere else (e.g. telemetry or a probe of modelscope.cn).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers.local_hub import LocalModelHub, pointing_modelscope_at

MODEL_ID = "course/tiny-qwen2"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")

# ---------------------------------------------------------------------------
# No traffic beyond loopback
# ---------------------------------------------------------------------------
_OUTSIDE: list[object] = []


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address and address[0] not in ("127.0.0.1", "::1", "localhost"):
            _OUTSIDE.append(address)


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Private caches and no hub variables; assert nothing left loopback."""
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
    _forget_modelscope_config()
    _OUTSIDE.clear()
    yield
    _forget_modelscope_config()
    assert not _OUTSIDE, f"connections outside loopback: {_OUTSIDE}"


def _forget_modelscope_config() -> None:
    config = sys.modules.get("modelscope_hub.config")
    if config is not None:
        config.set_default_config(None)


# ---------------------------------------------------------------------------
# A small but realistic model folder
# ---------------------------------------------------------------------------
def build_model_dir(root: Path) -> dict[str, int]:
    """Qwen2-like tiny model: config, tokenizer, generation config, 2 safetensors shards + index.

    Returns ``{tensor name: number of elements}``.
    """
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    hidden, layers, vocab, inter = 64, 2, 256, 128
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 512,
        "torch_dtype": "float32", "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "max_new_tokens": 16}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, "eos_token": "</s>"}))
    (root / "tokenizer.json").write_text(json.dumps(
        {"version": "1.0", "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(vocab)},
                                     "unk_token": "t0"}}))
    rng = np.random.default_rng(0)
    shard1 = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
    shard2 = {"model.norm.weight": np.ones(hidden, dtype=np.float32),
              "lm_head.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
    for i in range(layers):
        target = shard1 if i == 0 else shard2
        target[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((hidden, hidden), dtype=np.float32)
        target[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((inter, hidden), dtype=np.float32)
        target[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float16)
    save_file(shard1, str(root / SHARDS[0]), metadata={"format": "pt"})
    save_file(shard2, str(root / SHARDS[1]), metadata={"format": "pt"})
    weight_map = {name: SHARDS[0] for name in shard1} | {name: SHARDS[1] for name in shard2}
    total = sum(a.nbytes for a in (*shard1.values(), *shard2.values()))
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {name: int(a.size) for name, a in (*shard1.items(), *shard2.items())}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    build_model_dir(tmp_path / "source")
    return tmp_path / "source"


@pytest.fixture
def hub(model_dir):
    with LocalModelHub({MODEL_ID: model_dir}) as running:
        yield running


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# ---------------------------------------------------------------------------
# ModelScope protocol
# ---------------------------------------------------------------------------
def test_listing_matches_modelscope_shape(hub, model_dir):
    status, _, body = get(f"{hub.endpoint}/api/v1/models/{MODEL_ID}/repo/files?Revision=master&Recursive=True")
    assert status == 200
    payload = json.loads(body)
    assert payload["Code"] == 200 and payload["Success"] is True
    files = {f["Path"]: f for f in payload["Data"]["Files"] if f["Type"] == "blob"}
    assert files.keys() == sha256_tree(model_dir).keys()
    for path, entry in files.items():
        assert entry["Size"] == (model_dir / path).stat().st_size
        assert entry["Sha256"] == hashlib.sha256((model_dir / path).read_bytes()).hexdigest()
        assert entry["Name"] == path.rsplit("/", 1)[-1]


def test_snapshot_download_real_client(hub, model_dir, tmp_path):
    from modelscope import snapshot_download

    with hub.use():
        out = snapshot_download(MODEL_ID, local_dir=str(tmp_path / "out"))
    assert Path(out) == tmp_path / "out"
    assert sha256_tree(tmp_path / "out") == sha256_tree(model_dir)
    paths = [path for _, path in hub.requests]
    assert paths[0].startswith(f"/api/v1/models/{MODEL_ID}/repo/files?")
    assert sorted(hub.downloaded_files()) == sorted(sha256_tree(model_dir))  # each file exactly once
    assert not list((tmp_path / "ms-cache").rglob("*.incomplete"))


def test_unknown_model_gives_modelscope_not_found(hub, tmp_path):
    import requests
    from modelscope import snapshot_download

    with hub.use(), pytest.raises(requests.HTTPError) as info:
        snapshot_download("course/does-not-exist", local_dir=str(tmp_path / "nope"))
    assert info.value.response.status_code == 404
    assert "Model does not exist" in str(info.value)  # the client translated the hub's "模型不存在"
    assert hub.downloaded_files() == []


def test_unknown_revision_is_not_found(hub):
    status, _, body = get(f"{hub.endpoint}/api/v1/models/{MODEL_ID}/repo/files?Revision=v9&Recursive=True")
    assert status == 404 and json.loads(body)["Success"] is False


def test_range_requests(hub, model_dir):
    data = (model_dir / SHARDS[1]).read_bytes()
    url = f"{hub.endpoint}/api/v1/models/{MODEL_ID}/repo?Revision=master&FilePath={SHARDS[1]}"
    status, headers, body = get(url, {"Range": "bytes=100-"})
    assert (status, body) == (206, data[100:])
    assert headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    status, _, body = get(url, {"Range": "bytes=10-19"})
    assert (status, body) == (206, data[10:20])
    status, _, body = get(url, {"Range": "bytes=-5"})
    assert (status, body) == (206, data[-5:])
    status, headers, _ = get(url, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = get(url)
    assert (status, body) == (200, data) and headers["Accept-Ranges"] == "bytes"


def test_client_resumes_incomplete_file_with_range(hub, model_dir, tmp_path):
    from modelscope import snapshot_download

    out = tmp_path / "out"
    data = (model_dir / SHARDS[0]).read_bytes()
    out.mkdir()
    (out / f"{SHARDS[0]}.incomplete").write_bytes(data[: len(data) // 2])
    with hub.use():
        snapshot_download(MODEL_ID, local_dir=str(out))
    assert (out / SHARDS[0]).read_bytes() == data
    shard_requests = [r for r in hub.request_log if r.query.get("FilePath") == SHARDS[0]]
    assert [(r.status, r.range) for r in shard_requests] == [(206, f"bytes={len(data) // 2}-")]


def test_client_recovers_from_dropped_connection(hub, model_dir, tmp_path):
    from modelscope import snapshot_download

    hub.interrupt(SHARDS[1], after_bytes=1000)
    with hub.use():
        snapshot_download(MODEL_ID, local_dir=str(tmp_path / "out"))
    assert sha256_tree(tmp_path / "out") == sha256_tree(model_dir)
    shard = [r for r in hub.request_log if r.query.get("FilePath") == SHARDS[1]]
    assert (shard[0].status, shard[0].range, shard[0].bytes_sent) == (200, None, 1000)
    assert shard[1].status == 206 and shard[1].range == "bytes=1000-"


def test_hub_is_quiet(hub, capfd):
    get(f"{hub.endpoint}/api/v1/models/{MODEL_ID}/repo/files?Revision=master")
    get(f"{hub.endpoint}/api/v1/models/nobody/nothing/repo/files")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert len(hub.requests) == 2


def test_env_is_set_and_restored(hub, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "https://example.invalid")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pointing_modelscope_at(hub):
        assert os.environ["MODELSCOPE_ENDPOINT"] == hub.endpoint == hub.env()["MODELSCOPE_ENDPOINT"]
        assert os.environ["HF_ENDPOINT"] == hub.endpoint
        assert "127.0.0.1" in os.environ["NO_PROXY"]
    assert os.environ["MODELSCOPE_ENDPOINT"] == "https://example.invalid"
    assert "HF_ENDPOINT" not in os.environ


def test_endpoint_change_after_first_use_is_honoured(model_dir, tmp_path):
    """modelscope-hub caches its config; use() must make it re-read the endpoint."""
    from modelscope import snapshot_download

    with LocalModelHub({MODEL_ID: model_dir}) as first, first.use():
        snapshot_download(MODEL_ID, local_dir=str(tmp_path / "a"))
    with LocalModelHub({MODEL_ID: model_dir}) as second, second.use():
        snapshot_download(MODEL_ID, local_dir=str(tmp_path / "b"))
    assert second.downloaded_files(), "second download went to the first (stopped) hub"


def test_stop_closes_the_port(model_dir):
    hub = LocalModelHub({MODEL_ID: model_dir}).start()
    port = hub.port
    assert get(f"{hub.endpoint}/api/v1/models/{MODEL_ID}")[0] == 200
    hub.stop()
    hub.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_add_model_validates(tmp_path):
    hub = LocalModelHub()
    with pytest.raises(ValueError):
        hub.add_model("no-owner", tmp_path)
    with pytest.raises(FileNotFoundError):
        hub.add_model("a/b", tmp_path / "missing")


# ---------------------------------------------------------------------------
# Hugging Face protocol
# ---------------------------------------------------------------------------
def test_huggingface_snapshot_download_real_client(hub, model_dir, tmp_path):
    from huggingface_hub import snapshot_download

    out = snapshot_download(repo_id=MODEL_ID, local_dir=str(tmp_path / "hf"), endpoint=hub.endpoint)
    assert sha256_tree(Path(out)) == sha256_tree(model_dir)
    assert sorted(hub.downloaded_files()) == sorted(sha256_tree(model_dir))


def test_huggingface_unknown_repo(hub, tmp_path):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(repo_id="course/nope", local_dir=str(tmp_path / "x"), endpoint=hub.endpoint)
