"""LocalModelHub against the real clients: modelscope 1.40 (modelscope-hub) and huggingface_hub.

Everything runs over loopback HTTP; an audit hook fails a test that opens a
connection anywhere else (e.g. telemetry or a probe of modelscope.cn).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.local_hub import LocalModelHub, pointing_modelscope_at

pytest.register_assert_rewrite("hub_fixtures")
from hub_fixtures import MODEL_ID, SHARDS, build_model_dir, sha256_tree  # noqa: E402

pytest_plugins = ["hub_fixtures"]
pytestmark = pytest.mark.usefixtures("isolated_env")  # no traffic beyond loopback, private caches


@pytest.fixture
def model_dir(tmp_path) -> Path:
    build_model_dir(tmp_path / "source", torch_dtype="float32")
    return tmp_path / "source"


@pytest.fixture
def hub(model_dir):
    with LocalModelHub({MODEL_ID: model_dir}) as running:
        yield running


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


def test_hold_stops_mid_body_until_released(hub, model_dir):
    """The state a signal test waits for: N bytes sent, the connection open and silent."""
    hub.hold(SHARDS[1], after_bytes=1000)
    connection = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    connection.request("GET", f"/api/v1/models/{MODEL_ID}/repo?Revision=master&FilePath={SHARDS[1]}")
    response = connection.getresponse()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(response.read(1000)))
    reader.start()
    assert hub.wait_until_held(timeout=30)
    reader.join(timeout=30)
    assert received == [(model_dir / SHARDS[1]).read_bytes()[:1000]]
    assert [r.bytes_sent for r in hub.request_log] == [1000]
    hub.release()
    with pytest.raises(http.client.IncompleteRead):
        response.read()  # released: the connection ends mid-body
    connection.close()
    assert get(f"{hub.endpoint}/api/v1/models/{MODEL_ID}/repo?Revision=master&FilePath={SHARDS[1]}")[0] == 200


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
        assert os.environ["MODELSCOPE_ENDPOINT"] == hub.endpoint
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
