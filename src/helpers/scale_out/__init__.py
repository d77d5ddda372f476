"""Past one server (notebook 10): replicas of one model behind vLLM's router.

* :mod:`.router`: ``vllm-router`` (vLLM's Rust router) as a course service: started, checked,
  read (its Prometheus page, its view of each worker) and stopped through the process layer;
* :mod:`.replicas`: several vLLM servers of one model started together, one killed as a crash;
* :mod:`.workload`: multi-turn conversations over long shared documents, where routing shows
  in each replica's prefix-cache counters and in the time to first token.
"""

from .replicas import (data_parallel_environment, kill_replica, replica_environment, restart_replica,
                       start_replicas, stop_replicas)
from .router import POLICIES, VLLMRouter, installed, router_command
from .workload import Conversation, WorkloadRun, conversations, merge_runs, run_conversations

__all__ = ["Conversation", "POLICIES", "VLLMRouter", "WorkloadRun", "conversations", "data_parallel_environment",
           "installed", "kill_replica", "merge_runs", "replica_environment", "restart_replica",
           "router_command", "run_conversations", "start_replicas", "stop_replicas"]
