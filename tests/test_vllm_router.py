"""helpers.vllm_router: vLLM's Rust router started, used and stopped like every course service."""

from __future__ import annotations

import httpx
import pytest

from helpers.errors import CourseError
from helpers.instant_upstream import InstantUpstream
from helpers.ports import port_is_free
from helpers.vllm_router import VLLMRouter, installed, router_command

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
