"""helpers.scale_out on real tiny vLLM replicas behind vLLM's router: routing and failover, by counts.

Two tiny-profile servers (random weights: the text means nothing, the token counts and vLLM's
own counters do) are started once for the module, each on its own core, as notebook 10 does.
"""

from __future__ import annotations

import pytest

from helpers.bench.failover import run_failover
from helpers.scale_out import (VLLMRouter, conversations, data_parallel_environment, kill_replica,
                               replica_environment, restart_replica, run_conversations, start_replicas,
                               stop_replicas)
from helpers.scale_out.router import installed
from helpers.settings import get_settings

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not installed(), reason="vllm-router is not installed")]


@pytest.fixture(scope="module")
def tiny():
    settings = get_settings("tiny")
    settings.ensure_model()
    return settings


@pytest.fixture(scope="module")
def replicas(tiny):
    started = start_replicas(tiny, 2, progress=False)
    yield started
    stop_replicas(started)
    assert not any(server.is_running() for server in started)


def test_replicas_get_their_own_cores(tiny, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert [replica_environment(tiny, i, 2)["VLLM_CPU_OMP_THREADS_BIND"] for i in range(2)] == ["0,1", "2,3"]
    assert replica_environment(tiny, 0, 8) == {"OMP_NUM_THREADS": "1"}            # more replicas than cores
    assert data_parallel_environment(tiny, 2) == {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3", "OMP_NUM_THREADS": "2"}


def test_replicas_on_gpus_get_a_card_each_or_share_one(monkeypatch):
    gpu = get_settings("tiny", env={"COURSE_DEVICE": "cuda"}, check_hardware=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [replica_environment(gpu, i, 3)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["2", "3", "2"]
    assert replica_environment(gpu, 0, 2)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert replica_environment(gpu, 1, 2) == {}                  # one card: shared
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert replica_environment(gpu, 0, 2) == {}                  # none visible: nothing to hand out
    assert data_parallel_environment(gpu, 2) == {}               # vLLM gives each rank its card


def test_round_robin_splits_turns_and_cache_aware_keeps_a_conversation_on_one_replica(tiny, replicas):
    urls = [server.base_url for server in replicas]
    runs = {}
    for seed, policy in enumerate(("round_robin", "cache_aware")):
        plays = conversations(2, 3, 60, seed=100 + seed)     # played one after another: A1 A2 A3 B1 B2 B3
        with VLLMRouter(urls, policy=policy) as router:
            runs[policy] = run_conversations(router.base_url, tiny.served_model_name, plays, replicas=urls,
                                             label=policy, concurrency=1, max_tokens=4)
    for run in runs.values():
        assert [r["ok"] for r in run.records] == [True] * 6, [r["error"] for r in run.records]
        assert all(r["completion_tokens"] == 4 for r in run.records)
        assert [r["turn"] for r in run.records] == [0, 1, 2, 0, 1, 2]
        turns = [r["prompt_tokens"] for r in run.records[:3]]
        assert turns == sorted(turns) and turns[0] < turns[2]          # each turn repeats the ones before
        assert sum(stats["requests"] for stats in run.replicas.values()) == 6
    assert sorted(stats["requests"] for stats in runs["round_robin"].replicas.values()) == [3, 3]
    rr, ca = runs["round_robin"].summary(), runs["cache_aware"].summary()
    # round robin sends turns 2 and 3 to the replica that did not see the turn before: cache_aware
    # finds the whole earlier turn in the prefix cache, so it reuses more prompt tokens
    assert ca["hit_rate"] > rr["hit_rate"], (ca["replicas"], rr["replicas"])


def test_a_replica_killed_mid_run_is_retried_around_and_taken_back(tiny, replicas):
    urls = [server.base_url for server in replicas]
    victim = replicas[1]
    with VLLMRouter(urls, policy="round_robin", health_check_interval_s=1,
                    extra=["--cb-failure-threshold", "2", "--cb-timeout-duration-secs", "2"]) as router:
        outcome = run_failover(router.base_url, tiny.served_model_name, lambda: kill_replica(victim), requests=16,
                               concurrency=2, kill_after=4, max_tokens=8, counters=router.failover_counters())
        assert outcome["answered"] + outcome["lost"] == 16
        assert outcome["lost"] <= 2                                # at most the requests the victim was computing
        assert outcome["router_failed_attempts"] >= 1 and outcome["router_retries"] >= 1
        assert router.wait_for_workers(1, timeout=30) == [replicas[0].base_url]
        restart_replica(victim)                                    # back on its port
        assert router.take_back(victim.base_url, tiny.served_model_name, timeout=60) >= 1
        assert router.serving_workers() == sorted(urls)
