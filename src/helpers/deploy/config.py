"""One deployment, described by one ``.env`` file (notebook 06).

``deploy/docker-compose.yml`` (a GPU server) and the launcher for machines without Docker
(``python -m helpers.launcher``, e.g. AutoDL) both read the same ``.env``. Its variables use
the names of the deployment guide the course grew from (``MODEL_NAME``, ``MAX_MODEL_LEN``,
``GPU_MEMORY_UTILIZATION``, ``TENSOR_PARALLEL_SIZE``, ...); :data:`VARIABLES` says what each one
means. The engine variables become ``COURSE_*`` overrides of :func:`helpers.settings.get_settings`,
so the vLLM command line comes from :meth:`helpers.settings.Settings.llm_kwargs`, the one source
of engine arguments, through :func:`helpers.server_command.server_command`: compose, the
launcher and ``helpers.server`` cannot disagree.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import DeployError, SettingsError
from ..ports import DEFAULT_HOST, connect_host, exposure_problem
from ..server_command import cli_args, server_command
from ..settings import OVERRIDES, PROFILES, Settings, get_settings

#: ``.env`` name -> ``Settings`` field (parsed and checked by the settings' own parsers).
ENGINE_VARIABLES: dict[str, str] = {
    "MODEL_NAME": "model_id",
    "MODEL_DIR": "model_dir",
    "SERVED_MODEL_NAME": "served_model_name",
    "DTYPE": "dtype",
    "MAX_MODEL_LEN": "max_model_len",
    "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
    "TENSOR_PARALLEL_SIZE": "tensor_parallel_size",
    "ENFORCE_EAGER": "enforce_eager",
    "CPU_KVCACHE_SPACE": "cpu_kvcache_space_gib",
}


_positive_int = OVERRIDES["max_model_len"][1]
_boolean = OVERRIDES["enforce_eager"][1]
_folder = OVERRIDES["models_root"][1]   # a non-empty path, ~ expanded


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError
    return value


def _kv_dtype(text: str) -> str:
    if text not in ("auto", "fp8"):
        raise ValueError
    return text


def _host(text: str) -> str:
    if not text or " " in text:
        raise ValueError
    return text


def _any(text: str) -> str:
    return text


def _policy(text: str) -> str:
    from ..scale_out.router import POLICIES

    if text not in POLICIES:
        raise ValueError
    return text


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(text.replace(",", " ").split())
    if not all(url.startswith(("http://", "https://")) for url in urls):
        raise ValueError
    return urls


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


#: Tuning knobs: ``.env`` name -> (vLLM engine argument, parser, expected form). Empty = vLLM's default.
TUNING_VARIABLES: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "MAX_NUM_SEQS": ("max_num_seqs", _positive_int, "a positive integer, e.g. 64"),
    "MAX_NUM_BATCHED_TOKENS": ("max_num_batched_tokens", _positive_int, "a positive integer, e.g. 2048"),
    "ENABLE_PREFIX_CACHING": ("enable_prefix_caching", _boolean, "one of 1/0, true/false, yes/no"),
    "KV_CACHE_DTYPE": ("kv_cache_dtype", _kv_dtype, "auto or fp8"),
}

#: Service variables: name -> (parser, expected form, default).
SERVICE_VARIABLES: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "VLLM_HOST": (_host, "an address, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network)", DEFAULT_HOST),
    "VLLM_PORT": (_port, "a port number 1-65535, e.g. 8000", "8000"),
    "VLLM_API_KEY": (_any, "a secret string, or empty for none", ""),
    "GATEWAY_HOST": (_host, "an address, e.g. 127.0.0.1 or 0.0.0.0", DEFAULT_HOST),
    "GATEWAY_PORT": (_port, "a port number 1-65535, e.g. 9000", "9000"),
    "GATEWAY_API_KEY": (_any, "a secret string, or empty for none", ""),
    "GATEWAY_NO_KEY_ON_NETWORK": (_boolean, "one of 1/0, true/false, yes/no", "0"),
    "ROUTER_PORT": (_port, "a port number 1-65535, e.g. 8080", "8080"),
    "ROUTER_METRICS_PORT": (_port, "a port number 1-65535, e.g. 29000", "29000"),
    "ROUTER_POLICY": (_policy, "one of round_robin, cache_aware, power_of_two, consistent_hash, random", "cache_aware"),
    "ROUTER_WORKERS": (_urls, "vLLM servers on other machines, URLs separated by spaces, e.g. http://10.0.0.2:8000",
                       ""),
    "RESTART_LIMIT": (_count, "an integer >= 0, e.g. 5", "5"),
    "RUN_DIR": (_folder, "a folder for the launcher's logs and state, e.g. run", "run"),
}

#: Read only by ``docker compose`` (the image, published ports of the monitoring services).
COMPOSE_VARIABLES = ("VLLM_IMAGE", "ROUTER_IMAGE", "GATEWAY_UPSTREAM", "PROMETHEUS_PORT", "GRAFANA_PORT",
                     "GRAFANA_ADMIN_PASSWORD", "HF_HOME")

REQUIRED = ("COURSE_PROFILE", "MODEL_NAME", "VLLM_PORT")
KNOWN = ("COURSE_PROFILE", *ENGINE_VARIABLES, *TUNING_VARIABLES, *SERVICE_VARIABLES, *COMPOSE_VARIABLES)


def _unknown_message(name: str, source: str) -> str:
    close = difflib.get_close_matches(name, KNOWN, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"{source}: {name} is not a variable the course knows.{hint} See deploy/.env.example for the list."


@dataclass(frozen=True)
class DeployConfig:
    """What one ``.env`` says: the model and engine (``settings``), tuning knobs, ports and keys."""

    settings: Settings
    tuning: dict[str, Any] = field(default_factory=dict)
    service: dict[str, Any] = field(default_factory=dict)
    source: str = ".env"

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: Mapping[str, str], *, source: str = ".env", strict: bool = True,
                    check_hardware: bool = True) -> "DeployConfig":
        """Check every variable, then resolve the settings. ``strict``: unknown names are errors."""
        if strict:
            for name in values:
                if name not in KNOWN:
                    raise DeployError(_unknown_message(name, source))
        missing = [name for name in REQUIRED if not values.get(name, "").strip()]
        if missing:
            raise DeployError(f"{source}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing or empty: "
                              f"set {' and '.join(f'{n}=...' for n in missing)} (deploy/.env.example shows each one).")
        profile = values["COURSE_PROFILE"].strip().lower()
        if profile not in PROFILES:
            raise DeployError(f"{source}: COURSE_PROFILE={values['COURSE_PROFILE']!r} is not valid: expected one of "
                              f"{', '.join(PROFILES)}.")
        course_env = {}
        default_model = get_settings(profile, env={}, check_hardware=False).model_id
        for name, field_name in ENGINE_VARIABLES.items():
            raw = values.get(name, "").strip()
            if raw and not (name == "MODEL_NAME" and raw == default_model):  # the profile's own model
                course_env[OVERRIDES[field_name][0]] = raw
        try:
            settings = get_settings(profile, env=course_env, check_hardware=check_hardware)
        except SettingsError as exc:  # name the .env variable, not the COURSE_* one behind it
            message = str(exc)
            for name, field_name in ENGINE_VARIABLES.items():
                message = message.replace(OVERRIDES[field_name][0] + "=", name + "=")
            raise DeployError(f"{source}: {message}") from None
        tuning = {}
        for name, (argument, parser, expected) in TUNING_VARIABLES.items():
            raw = values.get(name, "").strip()
            if raw:
                tuning[argument] = _parse(name, raw, parser, expected, source)
        service = {}
        for name, (parser, expected, default) in SERVICE_VARIABLES.items():
            raw = values.get(name, "").strip() or default
            service[name] = _parse(name, raw, parser, expected, source) if raw else raw
        return cls(settings=settings, tuning=tuning, service=service, source=source)

    @classmethod
    def from_env_file(cls, path: str | Path, *, check_hardware: bool = True) -> "DeployConfig":
        from .env_file import read_env_file

        return cls.from_values(read_env_file(path), source=str(path), check_hardware=check_hardware)

    # -- what it runs -------------------------------------------------------------------------
    @property
    def vllm_url(self) -> str:
        return f"http://{connect_host(self.service['VLLM_HOST'])}:{self.service['VLLM_PORT']}"

    @property
    def gateway_url(self) -> str:
        return f"http://{connect_host(self.service['GATEWAY_HOST'])}:{self.service['GATEWAY_PORT']}"

    @property
    def router_url(self) -> str:
        return f"http://{connect_host(self.service['VLLM_HOST'])}:{self.service['ROUTER_PORT']}"

    def router_command(self) -> list[str]:
        """vLLM's router (notebook 10) in front of this vLLM and ``ROUTER_WORKERS``, on vLLM's host."""
        from ..scale_out.router import router_command

        return router_command([self.vllm_url, *self.service["ROUTER_WORKERS"]], self.service["ROUTER_PORT"],
                              host=self.service["VLLM_HOST"], policy=self.service["ROUTER_POLICY"],
                              metrics_port=self.service["ROUTER_METRICS_PORT"], health_check_interval_s=5)

    def vllm_environment(self) -> dict[str, str]:
        """Variables vLLM needs besides its flags (the CPU KV space, ...); the key travels in ``VLLM_API_KEY``."""
        env = self.settings.vllm_environment()
        if self.service["VLLM_API_KEY"]:
            env["VLLM_API_KEY"] = self.service["VLLM_API_KEY"]
        return env

    def vllm_command(self) -> list[str]:
        """The vLLM server's argv: :func:`~helpers.server_command.server_command` plus the tuning flags.

        The key is not on the command line (``ps`` would show it): vLLM reads ``VLLM_API_KEY``
        from its environment (:meth:`vllm_environment`).
        """
        return server_command(self.settings, host=self.service["VLLM_HOST"], port=self.service["VLLM_PORT"],
                              extra_args=cli_args(self.tuning))

    def gateway_command(self, upstream: str | None = None) -> list[str]:
        """The chapter 05 gateway's argv in front of this vLLM (keys by variable name, never by value)."""
        argv = [sys.executable, "-m", "helpers.gateway", "--upstream", upstream or self.vllm_url,
                "--host", self.service["GATEWAY_HOST"], "--port", str(self.service["GATEWAY_PORT"])]
        if self.service["GATEWAY_API_KEY"]:
            argv += ["--api-key-env", "GATEWAY_API_KEY"]
        if self.service["GATEWAY_NO_KEY_ON_NETWORK"]:
            argv += ["--no-key-on-network"]
        if self.service["VLLM_API_KEY"]:
            argv += ["--upstream-api-key-env", "VLLM_API_KEY"]
        return argv

    def gateway_exposure(self, host: str | None = None) -> str | None:
        """Why the gateway on ``host`` (default GATEWAY_HOST) would serve the network without a key, or None."""
        if self.service["GATEWAY_NO_KEY_ON_NETWORK"]:
            return None
        problem = exposure_problem(host or self.service["GATEWAY_HOST"], bool(self.service["GATEWAY_API_KEY"]),
                                   set_key="set GATEWAY_API_KEY in .env",
                                   opt_out="set GATEWAY_NO_KEY_ON_NETWORK=1")
        return f"{self.source}: {problem}" if problem else None

    def gateway_environment(self) -> dict[str, str]:
        return {name: self.service[name] for name in ("GATEWAY_API_KEY", "VLLM_API_KEY") if self.service[name]}


def _parse(name: str, raw: str, parser: Callable[[str], Any], expected: str, source: str) -> Any:
    try:
        return parser(raw)
    except ValueError:
        raise DeployError(f"{source}: {name}={raw!r} is not valid: expected {expected}.") from None
