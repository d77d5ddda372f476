"""helpers.download.compare_with_hub and helpers.connections: the checks notebook 01 prints.

Both must be able to fail: a file that differs from the hub's listing is named, a connection
opened inside the block is counted. The hub is the local one, on loopback.
"""

from __future__ import annotations

import socket
import threading

import pytest

from helpers.download import compare_with_hub, connections_opened, download_model
from helpers.errors import DownloadError

pytest.register_assert_rewrite("hub_fixtures")
from hub_fixtures import MODEL_ID, SHARDS  # noqa: E402

pytest_plugins = ["hub_fixtures"]
pytestmark = pytest.mark.usefixtures("isolated_env")

HUBS = ("modelscope", "huggingface")


@pytest.fixture
def downloaded(hub, tmp_path):
    return download_model(MODEL_ID, tmp_path / "download")


@pytest.mark.parametrize("hub_name", HUBS)
def test_a_fresh_download_is_identical_to_the_listing(hub, source, downloaded, hub_name):
    result = compare_with_hub(downloaded, MODEL_ID, hub=hub_name)
    assert result.identical and result.differing == {}
    assert set(result.listed) == {p.name for p in source.iterdir()}  # not the marker: the hub does not list it
    assert result.hashed_bytes == sum(p.stat().st_size for p in source.iterdir()) and result.size_only == ()


@pytest.mark.parametrize("hub_name", HUBS)  # Hugging Face: sha256 of LFS files, git blob sha1 of the others
def test_missing_resized_and_altered_files_are_named(hub, downloaded, hub_name):
    (downloaded / "generation_config.json").unlink()
    (downloaded / "tokenizer_config.json").write_text("{}")
    weights = downloaded / SHARDS[1]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed: only a hash sees it
    weights.write_bytes(bytes(data))
    config = downloaded / "config.json"
    config.write_text(config.read_text().replace('"qwen2"', '"qwen3"'))  # same size again, a small file
    result = compare_with_hub(downloaded, MODEL_ID, hub=hub_name)
    assert not result.identical
    assert set(result.differing) == {"generation_config.json", "tokenizer_config.json", SHARDS[1], "config.json"}
    assert result.differing["generation_config.json"] == "missing"
    assert "bytes, the hub lists" in result.differing["tokenizer_config.json"]
    assert "differs from the hub's" in result.differing[SHARDS[1]]
    assert "differs from the hub's" in result.differing["config.json"]


def test_an_empty_folder_is_not_identical(hub, tmp_path):
    (tmp_path / "empty").mkdir()
    result = compare_with_hub(tmp_path / "empty", MODEL_ID)
    assert not result.identical and set(result.differing.values()) == {"missing"}


@pytest.mark.parametrize("hub_name", HUBS)
def test_unknown_model_and_unreachable_hub_are_download_errors(hub, downloaded, hub_name, monkeypatch):
    with pytest.raises(DownloadError, match="was not found"):
        compare_with_hub(downloaded, MODEL_ID + "-typo", hub=hub_name)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed)
    monkeypatch.setenv("HF_ENDPOINT", closed)
    with pytest.raises(DownloadError, match="Cannot reach"):
        compare_with_hub(downloaded, MODEL_ID, hub=hub_name)


def test_connections_opened_counts_every_thread_and_only_inside_the_block(hub):
    port = int(hub.endpoint.rsplit(":", 1)[1])

    def connect() -> None:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    with connections_opened() as outer:
        connect()
        with connections_opened() as inner:
            worker = threading.Thread(target=connect)
            worker.start()
            worker.join()
        with connections_opened() as idle:
            pass
    connect()
    assert outer == [("127.0.0.1", port)] * 2 and inner == [("127.0.0.1", port)] and idle == []


def test_a_second_download_opens_no_connection(hub, downloaded):
    with connections_opened() as opened:
        download_model(MODEL_ID, downloaded)
    assert opened == []
    with connections_opened() as opened:
        compare_with_hub(downloaded, MODEL_ID)
    assert opened  # the comparison asks the hub: the counter does see hub traffic
