"""Several vLLM servers of one model on this machine, started together (notebook 10).

:func:`start_replicas` starts ``count`` servers of the same settings, each on its own port
(``exclusive=False``: a second copy of a model must not replace the first), in parallel
threads, and waits for all of them; if one fails, all are stopped and the error says which.
:func:`kill_replica` SIGKILLs a replica's API server as a crash would;
:func:`restart_replica` brings it back on the same port.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..errors import ServerError
from ..ports import distinct_free_ports
from ..server import VLLMServer, running_server_pids
from ..settings import Settings


def replica_environment(settings: Settings, index: int, count: int) -> dict[str, str]:
    """What replica ``index`` of ``count`` needs so that the replicas do not fight over one device.

    On the CPU: its own cores (``VLLM_CPU_OMP_THREADS_BIND``, ``OMP_NUM_THREADS``). Unbound, each
    engine runs one OpenMP thread per core of the machine, and two engines on the same cores
    spin against each other: measured here, a request took 5x longer with both replicas busy.
    On GPUs: a card of its own (``CUDA_VISIBLE_DEVICES``, round robin over the visible cards when
    there are fewer than replicas); on one card the replicas share it (each at a small
    ``gpu_memory_utilization``, see :func:`helpers.engines.small_engine_settings`).
    """
    if settings.device == "cpu":
        cores = sorted(os.sched_getaffinity(0))
        share = len(cores) // count
        if share < 1:
            return {"OMP_NUM_THREADS": "1"}
        mine = cores[index * share:(index + 1) * share]
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(core) for core in mine), "OMP_NUM_THREADS": str(len(mine))}
    visible = visible_gpus()
    if len(visible) < 2:
        return {}   # one card (or none visible): the replicas share it
    # NVML numbers cards in PCI order, CUDA fastest first unless told: the same order for both
    return {"CUDA_VISIBLE_DEVICES": visible[index % len(visible)], "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def visible_gpus() -> list[str]:
    """The cards this process may use: ``CUDA_VISIBLE_DEVICES`` when set (empty: none), else every
    card NVML or nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [card.strip() for card in listed.split(",") if card.strip()]
    from ..hardware import probe_gpus

    return [str(gpu.index) for gpu in probe_gpus().gpus]


def _shares_a_device(settings: Settings, count: int) -> bool:
    return settings.device != "cpu" and len(visible_gpus()) < count


def start_replicas(settings: Settings, count: int, *, extra_args: Sequence[str] = (),
                   progress: bool = True, timeout: float | None = None) -> list[VLLMServer]:
    """``count`` running servers of ``settings`` (each its own port and share of the machine,
    :func:`replica_environment`), or an error and none running.

    In parallel, except when they share a GPU: vLLM measures the memory it may use during its
    start, and another engine allocating on the same card at that moment is counted as its own
    (vLLM's advice: never start two engines on one card at the same time).
    """
    if count < 1:
        raise ServerError(f"count={count}: start at least one replica.")
    servers = [VLLMServer(settings, port=port, exclusive=False, extra_args=extra_args, progress=progress,
                          timeout=timeout, env=replica_environment(settings, index, count))
               for index, port in enumerate(distinct_free_ports(count))]
    with ThreadPoolExecutor(1 if _shares_a_device(settings, count) else count) as pool:
        futures = [pool.submit(server.start) for server in servers]
        errors = []
        for index, future in enumerate(futures):
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - every replica is stopped, then one error
                errors.append(f"replica {index + 1}: {exc}")
    if errors:
        for server in servers:
            server.stop()
        raise ServerError(f"{len(errors)} of {count} replicas did not start; all were stopped.\n" + "\n".join(errors))
    return servers


def kill_replica(server: VLLMServer) -> int:
    """SIGKILL the API server of ``server`` (a crash, no clean-up); returns its pid."""
    pids = running_server_pids(port=server.port)
    if not pids:
        raise ServerError(f"no vLLM API server listens on port {server.port}: nothing to kill.")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def restart_replica(server: VLLMServer) -> VLLMServer:
    """Start a killed replica again on its port: first make sure the old process group is gone
    (``stop`` on a dead server only confirms it), then start, so that nothing half-dead is adopted."""
    server.stop()
    return server.start()


def stop_replicas(servers: Sequence[VLLMServer]) -> None:
    for server in servers:
        server.stop()


def data_parallel_environment(settings: Settings, size: int) -> dict[str, str]:
    """The environment of one server with ``--data-parallel-size size``: on the CPU, each engine
    its own cores (``VLLM_CPU_OMP_THREADS_BIND`` takes one core list per rank, separated by ``|``),
    for the reason :func:`replica_environment` gives; on GPUs vLLM gives each rank its own card."""
    if settings.device != "cpu":
        return {}
    shares = [replica_environment(settings, index, size) for index in range(size)]
    if any("VLLM_CPU_OMP_THREADS_BIND" not in share for share in shares):
        return {"OMP_NUM_THREADS": "1"}
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(share["VLLM_CPU_OMP_THREADS_BIND"] for share in shares),
            "OMP_NUM_THREADS": shares[0]["OMP_NUM_THREADS"]}
