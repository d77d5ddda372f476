"""helpers.scale_out.router: vLLM's Rust router started, used and stopped like every course service."""

from __future__ import annotations

import httpx
import pytest

from helpers.errors import CourseError
from helpers.instant_upstream import InstantUpstream
from helpers.ports import port_is_free
from helpers.scale_out.router import VLLMRouter, installed, router_command

pytestmark = pytest.mark.skipif(not installed(), reason="vllm-router is not installed")


def test_an_unknown_policy_or_no_worker_is_one_clear_error():
    with pytest.raises(CourseError, match="round_robin"):
        VLLMRouter(["http://127.0.0.1:9"], policy="fastest")
    with pytest.raises(CourseError, match="at least one worker"):
        VLLMRouter([])


def test_the_command_names_every_worker_and_the_policy():
    argv = router_command(["http://a:1", "http://b:2"], 9000, policy="cache_aware")
    assert argv[argv.index("--worker-urls") + 1:argv.index("--policy")] == ["http://a:1", "http://b:2"]
    assert argv[argv.index("--policy") + 1] == "cache_aware"


def test_a_stream_through_the_router_and_nothing_left_after_stop():
    with InstantUpstream() as upstream:
        router = VLLMRouter([upstream.base_url + "/v1"]).start()
        try:
            with httpx.stream("POST", router.url_for("v1", "completions"), timeout=30,
                              json={"model": upstream.model, "prompt": "hi", "max_tokens": 5, "stream": True}) as answer:
                events = [line for line in answer.iter_lines() if line.startswith("data: ")]
            assert answer.status_code == 200 and len(events) == 6 and events[-1] == "data: [DONE]"
        finally:
            router.stop()
        assert not router.child.alive() and router.child.members() == [] and port_is_free("127.0.0.1", router.port)


# == every vllm-router command line the course writes, read by vllm-router's own parser ==========
def _router_parse(words):
    from vllm_router.launch_router import parse_router_args

    return parse_router_args([str(word) for word in words])


def test_router_commands_parse_with_the_routers_own_parser():
    from helpers.kube import VALUES_FILES, load_values, render_chart

    parsed = _router_parse(router_command(["http://a:1", "http://b:2"], 9000, policy="cache_aware", metrics_port=9001,
                                          health_check_interval_s=2.0)[3:])
    assert parsed.policy == "cache_aware" and parsed.worker_urls == ["http://a:1", "http://b:2"]
    assert parsed.prometheus_port == 9001 and parsed.health_check_interval_secs == 2
    for values in (load_values(VALUES_FILES["gpu-3090"]),
                   {**load_values(VALUES_FILES["cpu-smol"]), "autoscaling": {"enabled": True}}):
        container = render_chart(values).container("Deployment", "-router", "router")
        assert container["command"] == ["vllm-router"]
        _router_parse(container["args"])


def test_router_commands_in_the_notebooks_parse():
    import json
    import re
    import shlex
    from pathlib import Path

    found = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for block in re.findall(r"```bash\n(.*?)```", "".join(cell["source"]), flags=re.S):
                for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                    words = shlex.split(line, comments=True)
                    if words and words[0] == "vllm-router":
                        _router_parse(words[1:])
                        found += 1
    assert found, "no vllm-router command found in the notebooks' Markdown: did notebook 10 change?"


def test_a_worker_that_is_down_at_start_is_named_and_nothing_runs():
    with InstantUpstream() as upstream:
        router = VLLMRouter([upstream.base_url, "http://127.0.0.1:9"])
        with pytest.raises(CourseError, match=r"http://127.0.0.1:9 \(ConnectError") as caught:
            router.start()
        assert "Start them first" in str(caught.value) and router.child is None


def test_failover_counts_come_from_the_routers_own_metrics():
    from helpers.bench.failover import run_failover

    keep, dying = InstantUpstream().start(), InstantUpstream().start()
    try:
        with VLLMRouter([keep.base_url, dying.base_url], health_check_interval_s=1,
                        extra=["--cb-failure-threshold", "2", "--cb-timeout-duration-secs", "2"]) as router:
            assert router.serving_workers() == sorted([keep.base_url, dying.base_url])
            outcome = run_failover(router.base_url, keep.model, dying.stop, requests=24, concurrency=2, kill_after=2,
                                   counters=router.failover_counters())
            assert outcome["answered"] == 24 and outcome["lost"] == 0   # nothing was running on it: all retried
            assert outcome["router_retries"] >= 1 and outcome["router_failed_attempts"] >= 1
            assert outcome["router_breaker_opened"] == 1
            assert router.wait_for_workers(1, timeout=20) == [keep.base_url]
            dying = InstantUpstream(port=dying.port).start()   # back on its port
            assert router.serving_workers() == [keep.base_url]        # healthy soon, but the breaker is open
            assert router.take_back(dying.base_url, keep.model, timeout=30) >= 1
            assert router.serving_workers() == sorted([keep.base_url, dying.base_url])
    finally:
        keep.stop()
        dying.stop()
