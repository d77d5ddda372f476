"""helpers.download end to end: real modelscope / huggingface_hub clients against LocalModelHub.

No Internet is used: every hub runs on loopback, and an audit hook fails a test
that connects anywhere else. The command line runs as a real subprocess.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers.download import MARKER_NAME, download_model, hub_endpoint, summarize_model, verify_model_dir
from helpers.download.cli import main
from helpers.errors import DownloadError, ModelFilesError
from helpers.local_hub import LocalModelHub
from helpers.model_config import read_config, stored_dtype, stored_dtype_of

pytest.register_assert_rewrite("hub_fixtures")
from hub_fixtures import CONNECTIONS, MODEL_ID, SHARDS, build_model_dir, cli_env, sha256_tree  # noqa: E402

pytest_plugins = ["hub_fixtures"]
pytestmark = pytest.mark.usefixtures("isolated_env")

CLI = [sys.executable, "-m", "helpers.download"]
PROG = ".venv/bin/python -m helpers.download"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# download_model
# ---------------------------------------------------------------------------
def test_download_copies_every_file_and_writes_marker(hub, source, tmp_path):
    out = download_model(MODEL_ID, tmp_path / "models" / "tiny")
    assert out == (tmp_path / "models" / "tiny").resolve()
    assert sha256_tree(out) == sha256_tree(source)
    marker = json.loads((out / MARKER_NAME).read_text())
    assert (marker["model_id"], marker["hub"], marker["revision"]) == (MODEL_ID, "modelscope", None)
    assert {f["path"] for f in marker["files"]} == set(sha256_tree(source))
    assert not list(out.glob(f"{MARKER_NAME}.*"))  # no temp marker left behind


def test_second_call_is_a_no_op_without_network(hub, tmp_path):
    out = download_model(MODEL_ID, tmp_path / "tiny")
    hub.clear_requests()
    CONNECTIONS.clear()
    assert download_model(MODEL_ID, tmp_path / "tiny") == out
    assert hub.requests == [] and CONNECTIONS == []  # not even the reachability probe


def test_second_call_without_hub_is_still_a_no_op(source, tmp_path, monkeypatch):
    with LocalModelHub({MODEL_ID: source}) as running, running.use():
        download_model(MODEL_ID, tmp_path / "tiny")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert download_model(MODEL_ID, tmp_path / "tiny") == (tmp_path / "tiny").resolve()
    with pytest.raises(DownloadError, match="Cannot reach"):  # other arguments: needs the hub
        download_model(MODEL_ID, tmp_path / "tiny", hub="huggingface")
    assert download_model(MODEL_ID, tmp_path / "tiny") == (tmp_path / "tiny").resolve()  # marker kept


def test_unknown_model_id(hub, tmp_path):
    with pytest.raises(DownloadError) as info:
        download_model("course/Does-Not-Exist", tmp_path / "nope")
    message = str(info.value)
    assert "'course/Does-Not-Exist'" in message and hub.endpoint in message
    assert "spelling" in message and "Qwen/Qwen2.5-7B-Instruct" in message
    assert f"{hub.endpoint}/models/course/Does-Not-Exist" in message
    assert info.value.__cause__ is not None  # the client's own error stays attached
    assert not (tmp_path / "nope").exists()  # no empty folder left behind


def test_malformed_model_id(tmp_path):
    with pytest.raises(DownloadError, match="owner/name"):
        download_model("Qwen2.5-7B-Instruct", tmp_path / "x")


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    port = closed_port()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", endpoint)
    with pytest.raises(DownloadError) as info:
        download_model(MODEL_ID, tmp_path / "tiny")
    assert [address for address in CONNECTIONS if address[1] == port] == [("127.0.0.1", port)]  # one probe, no retries
    assert not (tmp_path / "tiny").exists()
    message = str(info.value)
    assert endpoint in message and "COURSE_PROFILE=smol" in message and "MODELSCOPE_ENDPOINT" in message
    assert "\n" not in message
    assert info.value.__cause__ is not None


def test_truncated_shard_is_repaired(hub, source, tmp_path):
    out = download_model(MODEL_ID, tmp_path / "tiny")
    shard = out / SHARDS[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    (out / MARKER_NAME).unlink()
    with pytest.raises(ModelFilesError):
        verify_model_dir(out)
    hub.clear_requests()
    download_model(MODEL_ID, out)
    assert sha256_tree(out) == sha256_tree(source)
    assert hub.downloaded_files() == [SHARDS[1]]  # the intact files were kept
    assert (out / MARKER_NAME).is_file()


def test_missing_file_is_fetched_even_with_marker(hub, source, tmp_path):
    out = download_model(MODEL_ID, tmp_path / "tiny")
    (out / "tokenizer.json").unlink()
    hub.clear_requests()
    download_model(MODEL_ID, out)
    assert hub.downloaded_files() == ["tokenizer.json"]
    assert sha256_tree(out) == sha256_tree(source)


def test_interrupted_download_resumes(hub, source, tmp_path):
    hub.interrupt(SHARDS[0], after_bytes=4096)
    out = download_model(MODEL_ID, tmp_path / "tiny")
    assert sha256_tree(out) == sha256_tree(source)
    ranges = [r.range for r in hub.request_log if r.query.get("FilePath") == SHARDS[0]]
    assert ranges == [None, "bytes=4096-"]


def test_corrupted_bytes_are_rejected_and_refetched(hub, source, tmp_path):
    hub.corrupt(SHARDS[1], times=1)  # modelscope checks SHA-256 and retries the file
    out = download_model(MODEL_ID, tmp_path / "tiny")
    assert sha256_tree(out) == sha256_tree(source)
    assert hub.downloaded_files().count(SHARDS[1]) == 2


def test_persistently_corrupted_file_names_the_file(hub, tmp_path):
    hub.corrupt("tokenizer.json", times=10)
    with pytest.raises(ModelFilesError) as info:
        download_model(MODEL_ID, tmp_path / "tiny")
    message = str(info.value)
    assert str(tmp_path / "tiny" / "tokenizer.json") in message
    assert "Re-run download_model(" in message and "delete" in message
    assert not (tmp_path / "tiny" / MARKER_NAME).exists()
    hub.clear_faults()
    hub.clear_requests()
    download_model(MODEL_ID, tmp_path / "tiny")  # the mirror is healthy again: only the bad file is fetched
    assert hub.downloaded_files() == ["tokenizer.json"]


def test_incomplete_hub_model_leaves_no_marker(source, tmp_path):
    (source / "tokenizer_config.json").unlink()
    with LocalModelHub({MODEL_ID: source}) as running, running.use(), \
            pytest.raises(ModelFilesError, match=r"tokenizer_config\.json is missing") as info:
        download_model(MODEL_ID, tmp_path / "tiny")
    assert f"download_model('{MODEL_ID}'" in str(info.value)
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert not (tmp_path / "tiny" / MARKER_NAME).exists()


def test_huggingface_hub(source, tmp_path, monkeypatch):
    with LocalModelHub({MODEL_ID: source}) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.endpoint)
        out = download_model(MODEL_ID, tmp_path / "hf", hub="huggingface")
        assert sha256_tree(out) == sha256_tree(source)
        assert json.loads((out / MARKER_NAME).read_text())["hub"] == "huggingface"
        running.clear_requests()
        download_model(MODEL_ID, tmp_path / "hf", hub="huggingface")
        assert running.requests == []
        with pytest.raises(DownloadError, match="not found on Hugging Face"):
            download_model("course/nope", tmp_path / "hf2", hub="huggingface")


def test_unknown_hub_name(tmp_path):
    with pytest.raises(DownloadError, match="modelscope"):
        download_model(MODEL_ID, tmp_path / "x", hub="github")


# ---------------------------------------------------------------------------
# verify_model_dir / summarize_model
# ---------------------------------------------------------------------------
def test_verify_complete_dir(source):
    verified = verify_model_dir(source)
    assert verified.config_file == source / "config.json"
    assert [p.name for p in verified.weight_files] == list(SHARDS)
    assert {p.name for p in verified.tokenizer_files} == {"tokenizer_config.json", "tokenizer.json"}
    assert verified.total_bytes == sum(p.stat().st_size for p in source.iterdir())


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: (d / SHARDS[1]).unlink(), SHARDS[1]),
        (lambda d: (d / SHARDS[0]).write_bytes((d / SHARDS[0]).read_bytes()[:-1]), SHARDS[0]),
        (lambda d: (d / SHARDS[0]).write_bytes((d / SHARDS[0]).read_bytes() + b"\0"), SHARDS[0]),
        (lambda d: (d / SHARDS[1]).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"x" * 64), SHARDS[1]),
        (lambda d: (d / "config.json").unlink(), "config.json"),
        (lambda d: (d / "config.json").write_text('{"model_type": "qwen2", '), "config.json"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json"),
        (lambda d: (d / "tokenizer.json").write_text('{"version": "1.0", "mod'), "tokenizer.json"),
        (lambda d: (d / "tokenizer_config.json").unlink(), "tokenizer_config.json"),
        (lambda d: [(d / s).unlink() for s in (*SHARDS, "model.safetensors.index.json")], "model.safetensors"),
    ],
    ids=["missing-shard", "truncated-shard", "padded-shard", "bad-header", "missing-config", "bad-config",
         "missing-tokenizer", "truncated-tokenizer", "missing-tokenizer-config", "no-weights"],
)
def test_verify_reports_the_broken_file(source, damage, named):
    damage(source)
    with pytest.raises(ModelFilesError) as info:
        verify_model_dir(source)
    message = str(info.value)
    assert named in message
    assert "download_model(" in message and "`.venv/bin/python -m helpers.download " in message
    assert "\n" not in message


def test_verify_accepts_vocab_and_merges_and_single_file(tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    (d / "vocab.json").write_text("{}")
    (d / "merges.txt").write_text("#version: 0.2\n")
    save_file({"w": np.zeros((3, 5), dtype=np.float32)}, str(d / "model.safetensors"))
    verified = verify_model_dir(d)
    assert [p.name for p in verified.weight_files] == ["model.safetensors"]
    assert summarize_model(d)["num_parameters"] == 15


def test_verify_missing_directory(tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist"):
        verify_model_dir(tmp_path / "absent")


def test_error_hint_uses_model_id_from_marker(hub, tmp_path):
    out = download_model(MODEL_ID, tmp_path / "tiny")
    (out / SHARDS[0]).unlink()
    with pytest.raises(ModelFilesError, match=f"download_model\\('{MODEL_ID}'"):
        verify_model_dir(out)


def test_summarize_counts_parameters(tmp_path):
    sizes = build_model_dir(tmp_path / "m")
    summary = summarize_model(tmp_path / "m")
    assert summary["num_parameters"] == sum(sizes.values())
    assert summary["weight_bytes"] == sum((tmp_path / "m" / s).stat().st_size for s in SHARDS)
    assert summary["model_type"] == "qwen2"
    assert summary["architectures"] == ["Qwen2ForCausalLM"]
    assert (summary["num_hidden_layers"], summary["hidden_size"]) == (2, 64)
    assert (summary["num_attention_heads"], summary["num_key_value_heads"], summary["head_dim"]) == (4, 2, 16)
    assert (summary["vocab_size"], summary["max_position_embeddings"]) == (256, 512)
    assert summary["dtype"] == summary["torch_dtype"] == "bfloat16"
    assert summary["parameter_dtypes"]["F16"] == 64


# ---------------------------------------------------------------------------
# config.json and endpoints
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "problem"), [(None, "is missing"), ('{"model_type": ', "not valid JSON"),
                                                  ("[1, 2]", "not a JSON object")])
def test_read_config_says_what_is_wrong(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelFilesError, match=problem) as info:
        read_config(tmp_path, remedy="Do this.")
    assert str(tmp_path / "config.json") in str(info.value) and str(info.value).endswith("Do this.")
    assert stored_dtype_of(tmp_path) is None


@pytest.mark.parametrize(("config", "dtype"), [
    ({"torch_dtype": "bfloat16"}, "bfloat16"),
    ({"dtype": "torch.float16"}, "float16"),
    ({"text_config": {"torch_dtype": "float32"}}, "float32"),
    ({"torch_dtype": None, "text_config": {}}, None),
])
def test_stored_dtype(tmp_path, config, dtype):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert stored_dtype(config) == stored_dtype_of(tmp_path) == dtype


@pytest.mark.parametrize(("env", "hub", "expected"), [
    ({}, "modelscope", "https://modelscope.cn"),
    ({"MODELSCOPE_PREFER_AI_SITE": "true"}, "ms", "https://www.modelscope.ai"),
    ({"MODELSCOPE_DOMAIN": "mirror.example.cn/"}, "modelscope", "https://mirror.example.cn"),
    ({"MODELSCOPE_ENDPOINT": "http://127.0.0.1:9", "MODELSCOPE_DOMAIN": "x.cn"}, "modelscope", "http://127.0.0.1:9"),
    ({}, "Hugging-Face", "https://huggingface.co"),
    ({"HF_ENDPOINT": "https://hf-mirror.com/"}, "hf", "https://hf-mirror.com"),
])
def test_hub_endpoint_reads_the_environment_now(monkeypatch, env, hub, expected):
    monkeypatch.delenv("MODELSCOPE_PREFER_AI_SITE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hub_endpoint(hub) == expected


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env or cli_env(), timeout=120)


def our_lines(stderr: str) -> list[str]:
    """stderr without the ModelScope client's own log records (``date | INFO | modelscope_hub...``)."""
    return [line for line in stderr.splitlines() if line.strip() and " | modelscope" not in line]


def test_cli_downloads_and_summarizes(hub, source, tmp_path, capsys):
    assert main([MODEL_ID, "--local-dir", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "Model   : qwen2 Qwen2ForCausalLM" in out
    assert f"Params  : {summarize_model(source)['num_parameters']:,}" in out
    assert (tmp_path / "cli" / MARKER_NAME).is_file()


def test_cli_unknown_id_is_a_failure_in_one_line(hub, tmp_path):
    result = run_cli("course/Nope", "--local-dir", str(tmp_path / "x"))
    assert result.returncode == 1, result.stderr
    (line,) = our_lines(result.stderr)
    assert line.startswith(f"{PROG}: error: ") and "'course/Nope'" in line and hub.endpoint in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "env", "named"), [
    (["Qwen2.5-7B-Instruct"], {}, "owner/name"),
    ([MODEL_ID, "--hub", "github"], {}, "'github'"),
    ([MODEL_ID, "--local-dir", "{file}"], {}, "is not a folder"),
    ([MODEL_ID, "--unknown-flag"], {}, "--unknown-flag"),
    ([], {"COURSE_PROFILE": "nonsense"}, "COURSE_PROFILE"),
    ([], {"COURSE_PROFILE": "cpu", "COURSE_MAX_MODEL_LEN": "-1"}, "COURSE_MAX_MODEL_LEN"),
], ids=["malformed-id", "unknown-hub", "local-dir-is-a-file", "unknown-flag", "bad-profile", "bad-override"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, env, named):
    (tmp_path / "a-file").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "a-file")) for a in args]
    result = run_cli(*args, env={**cli_env(), **env})
    assert result.returncode == 2, result.stderr
    (line,) = our_lines(result.stderr)
    assert line.startswith(f"{PROG}: error: ") and named in line
    assert result.stdout == ""  # it stopped before announcing a download


def test_cli_help_documents_exit_statuses():
    result = run_cli("--help")
    assert result.returncode == 0
    for code in ("0", "1", "2", "130", "143"):
        assert f"\n  {code} " in result.stdout


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                   (signal.SIGINT, 130, "interrupted (Ctrl+C)")])
def test_cli_signal_during_download_stops_cleanly(hub, source, tmp_path, sig, code, word):
    target = tmp_path / "cli"
    hub.hold(SHARDS[0], after_bytes=4096)  # the first shard stalls mid-body until released
    # A child inherits an ignored SIGINT (pytest run as a background job) and Python then leaves it
    # ignored; with a handler installed here, the child starts with the default disposition.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([*CLI, MODEL_ID, "--local-dir", str(target)], env=cli_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert hub.wait_until_held(timeout=120), "the download never reached the first shard"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        hub.release()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    (line,) = our_lines(stderr)
    assert line.startswith(f"{PROG}: {word}") and "run it again to resume" in line
    # Nothing half-done looks complete: no marker, the shard is not under its own name, the folder fails.
    assert not (target / MARKER_NAME).exists()
    assert not (target / SHARDS[0]).exists()
    with pytest.raises(ModelFilesError):
        verify_model_dir(target)
    # ... and the same command finishes the job.
    assert main([MODEL_ID, "--local-dir", str(target)]) == 0
    assert sha256_tree(target) == sha256_tree(source)
