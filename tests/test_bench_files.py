"""Benchmark results on disk and the command line that reads them (notebook 04): real files, real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from helpers.bench import BenchConfigError, BenchError, ServeConfig, load_records, run_serving, save_records
from helpers.bench.cli import main as cli_main

pytest.register_assert_rewrite("bench_records")
from bench_records import OFFLINE, SERVING  # noqa: E402


# -- records --------------------------------------------------------------------------------------------
def test_records_round_trip(tmp_path):
    path = save_records(OFFLINE, tmp_path / "sub" / "r.json", kind="offline")
    assert load_records(path) == json.loads(json.dumps(OFFLINE))
    save_records(SERVING, tmp_path / "sub" / "s.json")
    assert len(load_records(tmp_path / "sub")) == len(OFFLINE) + len(SERVING)
    with pytest.raises(BenchConfigError, match="No benchmark results"):
        load_records(tmp_path / "missing.json")


def test_an_interrupted_save_keeps_the_previous_complete_file(tmp_path, monkeypatch):
    from helpers.bench import records as records_module

    path = save_records(OFFLINE, tmp_path / "r.json")
    before = path.read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(records_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_records(OFFLINE[:1], path)
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_damaged_or_foreign_results_are_refused_with_the_file_named(tmp_path):
    truncated = tmp_path / "cut.json"
    truncated.write_text(save_records(OFFLINE, tmp_path / "whole.json").read_text()[:200])
    with pytest.raises(BenchConfigError, match="cut.json is not complete JSON"):
        load_records(truncated)
    foreign = tmp_path / "other.json"
    foreign.write_text(json.dumps({"records": [{"kind": "embedding", "x": 1}]}))
    with pytest.raises(BenchConfigError, match="other.json holds records of kind embedding"):
        load_records(foreign)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"records": OFFLINE[:1] + SERVING[:1]}))
    with pytest.raises(BenchConfigError, match="mixed.json mixes offline and serving records"):
        load_records(mixed)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"records": [{"kind": "serving", "concurrency": 1}]}))
    with pytest.raises(BenchConfigError, match=r"partial.json: record 0 \(serving\) lacks num_requests, completed"):
        load_records(partial)


# -- command line ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["offline", "--num-prompts", "0"],
    ["offline", "--hf-batch-sizes", "8,some"],
    ["offline", "--engines", "vllm,tgi"],
    ["serve", "--concurrency", "1,x"],
    ["nonsense"],
])
def test_cli_invalid_arguments_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_cli_refuses_too_long_requests_exit_2(tiny_model_dir, capsys):
    code = cli_main(["offline", "--profile", "tiny", "--input-len", "2000", "--output-len", "100"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_model_len=2048" in err


def _bench_cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers.bench", *argv], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_cli_show_on_a_folder_of_every_kind_reports_file_by_file(tmp_path):
    folder = tmp_path / "results"
    save_records(OFFLINE, folder / "offline-fixed.json")
    save_records([{**r, "mode": "mixed"} for r in OFFLINE], folder / "offline-mixed.json")
    save_records(SERVING, folder / "serving.json")
    done = _bench_cli("show", str(folder), "--images", str(tmp_path / "img"))
    assert done.returncode == 0 and done.stderr == ""
    for heading in ("== offline-fixed.json: 8 offline records", "== offline-mixed.json: 8 offline records",
                    "== serving.json: 3 serving records"):
        assert heading in done.stdout
    assert (tmp_path / "img" / "bench_offline_throughput-offline-mixed.png").is_file()
    assert (tmp_path / "img" / "bench_latency_e2e-serving.png").is_file()


@pytest.mark.parametrize("name, content, message", [
    ("cut.json", '{"meta": {}, "records": [{"kind": "offl', "cut.json is not complete JSON"),
    ("mixed.json", json.dumps({"records": OFFLINE[:1] + SERVING[:1]}), "mixed.json mixes offline and serving"),
    ("foreign.json", json.dumps({"records": [{"kind": "embedding"}]}), "foreign.json holds records of kind embedding"),
    ("typed.json", json.dumps({"records": [{**SERVING[0], "concurrency": "eight"}, SERVING[1]]}),
     "typed.json: record 0 (serving) has concurrency='eight'"),
])
def test_cli_show_refuses_a_damaged_file_in_one_line_exit_2(tmp_path, name, content, message):
    save_records(SERVING, tmp_path / "good.json")
    (tmp_path / name).write_text(content)
    done = _bench_cli("show", str(tmp_path), "--no-plots")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # every file is checked before anything is printed


def test_cli_show_prints_tables_and_writes_plots(tmp_path, capsys):
    path = save_records(OFFLINE, tmp_path / "o.json")
    assert cli_main(["show", str(path), "--images", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "5.00x" in out
    assert (tmp_path / "img" / "bench_speedup.png").is_file()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(BenchError, match=f"No OpenAI-compatible server answers at {url}/v1/models"):
        run_serving(url, "tiny-qwen2", ServeConfig(concurrency=(1,), requests_per_level=1), vocab_ids=[1, 2, 3])
