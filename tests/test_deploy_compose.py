"""deploy/: the compose file, its .env, Prometheus and Grafana agree with helpers.deploy (notebook 06).

No Docker here: the compose file is read as YAML and its ``${VAR}`` resolved the way compose
resolves them (:func:`interpolate`), so the container's environment, and from it the vLLM
command line the container runs, can be compared with the course's own derivation.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from helpers.deploy import KNOWN, DeployConfig, parse_env_text
from helpers.gateway.cli import parser as gateway_parser
from helpers.server_command import server_command
from helpers.settings import PROFILES, get_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
EXAMPLE_TEXT = (DEPLOY / ".env.example").read_text(encoding="utf-8")
EXAMPLE = parse_env_text(EXAMPLE_TEXT, ".env.example")
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))


# -- compose's interpolation, small ----------------------------------------------------------
_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                        r"|(?P<bare>[A-Za-z_]))")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """``$$``, ``${VAR}``, ``${VAR:-default}``/``${VAR-default}``, ``${VAR:?message}``/``${VAR?message}``."""
    def resolve(match: re.Match) -> str:
        if match["dollar"]:
            return "$"
        if match["bare"]:
            raise AssertionError(f"write ${{NAME}}, not ${match['bare']}...: {text!r}")
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        value = env.get(name)
        if op.startswith(":") and value == "":
            value = None
        if value is not None:
            return value
        if op.endswith("?"):
            raise MissingVariable(f"{name}: {arg}")
        return arg if op.endswith("-") else ""

    return _REFERENCE.sub(resolve, text)


def resolved(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolved(value, env) for key, value in node.items()}
    return node


def test_interpolation_follows_compose_rules():
    env = {"A": "1", "E": ""}
    assert interpolate("${A}-${A:-x}-${E:-x}-${E-x}-${U-x}-${U}-$$A", env) == "1-1-x--x--$A"
    with pytest.raises(MissingVariable, match="E: say"):
        interpolate("${E:?say}", env)
    assert interpolate("${E?say}", env) == ""


# -- the compose file ------------------------------------------------------------------------
def example_with(**values: str) -> dict[str, str]:
    return {**EXAMPLE, **values}


def container_port(service: str) -> int:
    (mapping,) = SERVICES[service]["ports"]
    return int(mapping.rsplit(":", 1)[1])


def mount(service: str, target: str) -> tuple[str, str]:
    """(host source, options) of the volume of ``service`` mounted at ``target``."""
    for volume in SERVICES[service]["volumes"]:
        source, _, rest = volume.partition(":")
        if source.startswith("${"):  # a ${VAR:?message} may contain ':'
            source, _, rest = volume.partition("}:")
            source += "}"
        if rest.split(":")[0] == target:
            return source, rest[len(target) + 1:]
    raise AssertionError(f"{service} mounts nothing at {target}")


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", duration))


def test_the_five_services_run_pinned_images():
    assert set(SERVICES) == {"vllm", "gateway", "router", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        image = interpolate(service["image"], EXAMPLE)
        repository, _, tag = image.rpartition(":")
        pinned = r"nightly-\d{8}-[0-9a-f]{7}" if name == "router" else r"v?\d+\.\d+\.\d+"  # the router: dated nightlies
        assert repository and re.fullmatch(pinned, tag), f"{name}: {image} is not pinned to a version"
    assert interpolate(SERVICES["vllm"]["image"], EXAMPLE).startswith("vllm/vllm-openai:")
    assert SERVICES["gateway"]["image"] == SERVICES["vllm"]["image"]


def test_the_vllm_image_is_the_version_the_course_pins():
    lock = (ROOT / "requirements" / "lock-gpu.txt").read_text(encoding="utf-8")
    (version,) = re.findall(r"^vllm==(\S+)$", lock, flags=re.M)
    assert EXAMPLE["VLLM_IMAGE"] == f"vllm/vllm-openai:v{version}"


@pytest.mark.parametrize("name", ["vllm", "gateway"])
def test_course_services_run_helpers_deploy_from_the_mounted_source(name):
    service = SERVICES[name]
    assert service["env_file"] in (".env", [".env"])
    assert service["entrypoint"][:5] == ["python3", "-m", "helpers.deploy", "exec", name]
    source, options = mount(name, service["environment"]["PYTHONPATH"])
    assert options == "ro" and (DEPLOY / source / "helpers" / "deploy" / "__main__.py").is_file()
    assert service["init"] is True and service["restart"] == "unless-stopped"


def test_the_gateway_forwards_to_the_vllm_service_and_waits_until_it_is_healthy():
    entrypoint = resolved(SERVICES["gateway"]["entrypoint"], EXAMPLE)
    assert entrypoint[entrypoint.index("--upstream") + 1] == f"http://vllm:{container_port('vllm')}"
    through = resolved(SERVICES["gateway"]["entrypoint"], example_with(GATEWAY_UPSTREAM="http://router:8080"))
    assert through[through.index("--upstream") + 1] == f"http://router:{container_port('router')}"
    assert SERVICES["gateway"]["depends_on"] == {"vllm": {"condition": "service_healthy"}}


def test_the_model_folder_is_mounted_read_only_where_the_container_looks():
    source, options = mount("vllm", SERVICES["vllm"]["environment"]["MODEL_DIR"])
    assert options == "ro"
    with pytest.raises(MissingVariable, match="MODEL_DIR: set MODEL_DIR in .env"):
        interpolate(source, example_with(MODEL_DIR=""))
    assert interpolate(source, example_with(MODEL_DIR="/data/qwen")) == "/data/qwen"


def test_vllm_gets_the_gpus_and_shared_memory_and_the_gateway_does_not():
    devices = SERVICES["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert SERVICES["vllm"].get("ipc") == "host" or "shm_size" in SERVICES["vllm"]
    assert "deploy" not in SERVICES["gateway"]


def test_published_ports():
    ports = {name: interpolate(service["ports"][0], EXAMPLE) for name, service in SERVICES.items()}
    assert ports == {"vllm": f"127.0.0.1:{EXAMPLE['VLLM_PORT']}:8000", "gateway": f"{EXAMPLE['GATEWAY_PORT']}:9000",
                     "router": f"127.0.0.1:{EXAMPLE['ROUTER_PORT']}:8080",
                     "prometheus": f"127.0.0.1:{EXAMPLE['PROMETHEUS_PORT']}:9090",
                     "grafana": f"127.0.0.1:{EXAMPLE['GRAFANA_PORT']}:3000"}
    assert int(SERVICES["vllm"]["environment"]["VLLM_PORT"]) == container_port("vllm")
    assert int(SERVICES["gateway"]["environment"]["GATEWAY_PORT"]) == container_port("gateway")


def test_the_router_container_runs_what_the_launcher_would():
    """Compose's router flags are the ones ``DeployConfig.router_command`` builds (compose's
    addresses and container ports), and vllm-router's own parser reads them."""
    from vllm_router.launch_router import parse_router_args

    from helpers.scale_out.router import router_command

    router = SERVICES["router"]
    assert router["profiles"] == ["router"] and router["depends_on"] == {"vllm": {"condition": "service_healthy"}}
    command = resolved(router["command"], EXAMPLE)
    config = DeployConfig.from_values(EXAMPLE, source=".env.example", check_hardware=False)
    launcher = config.router_command()
    expected = router_command([f"http://vllm:{container_port('vllm')}"], container_port("router"), host="0.0.0.0",
                              policy=config.service["ROUTER_POLICY"], metrics_port=29000,
                              health_check_interval_s=5)
    assert command == ["vllm-router", *expected[3:]]
    compose_args, launcher_args = vars(parse_router_args(command[1:])), vars(parse_router_args(launcher[3:]))
    addresses = {"host", "port", "worker_urls", "prometheus_host", "prometheus_port"}   # compose's own network
    assert {k: v for k, v in compose_args.items() if k not in addresses} == \
        {k: v for k, v in launcher_args.items() if k not in addresses}


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name", ["vllm", "gateway"])
def test_healthchecks_pass_on_200_and_fail_on_503(name):
    check = SERVICES[name]["healthcheck"]
    assert seconds(check["start_period"]) >= (300 if name == "vllm" else 10)
    assert seconds(check["interval"]) > 0 and check["retries"] >= 1 and seconds(check["timeout"]) > 0
    kind, program, flag, code = check["test"]
    assert (kind, program, flag) == ("CMD", "python3", "-c")
    url = f"http://127.0.0.1:{container_port(name)}/health"
    assert url in code
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Health,), {}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = code.replace(url, f"http://127.0.0.1:{server.server_port}/health")
        codes = []
        for status in (200, 503):
            server.RequestHandlerClass.status = status
            codes.append(subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=60).returncode)
    finally:
        server.shutdown()
        server.server_close()
    assert codes[0] == 0 and codes[1] != 0


# -- Prometheus and Grafana ------------------------------------------------------------------
def test_prometheus_scrapes_the_compose_services_on_their_container_ports():
    source, options = mount("prometheus", "/etc/prometheus/prometheus.yml")
    assert options == "ro" and (DEPLOY / source).resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    jobs = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
            for job in PROMETHEUS["scrape_configs"]}
    assert jobs == {name: [f"{name}:{container_port(name)}"] for name in ("vllm", "gateway")}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in PROMETHEUS["scrape_configs"])


def grafana_file(target: str) -> Path:
    """The host path of a file Grafana sees at ``target``, through the service's mounts."""
    for volume in SERVICES["grafana"]["volumes"]:
        source, container, *_ = volume.split(":")
        if target.startswith(container + "/") and source.startswith("."):
            return DEPLOY / source / target[len(container) + 1:]
    raise AssertionError(f"grafana mounts nothing over {target}")


def test_grafana_provisions_the_datasource_and_vllms_dashboard():
    environment = SERVICES["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    datasources = yaml.safe_load(grafana_file("/etc/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{container_port('prometheus')}"
    assert source["jsonData"]["timeInterval"] == PROMETHEUS["global"]["scrape_interval"]
    providers = yaml.safe_load(grafana_file("/etc/grafana/provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = providers["providers"]
    dashboard = json.loads(grafana_file(provider["options"]["path"] + "/vllm.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus" and variable["current"]["value"] == source["uid"]
    uids = {node["datasource"]["uid"] for node in _walk(dashboard)
            if isinstance(node, dict) and isinstance(node.get("datasource"), dict)}
    assert "${" + variable["name"] + "}" in uids
    assert uids <= {"${" + variable["name"] + "}", source["uid"], "-- Grafana --"}, uids


def _walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


def test_the_dashboard_queries_only_metrics_vllm_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vllm.json").read_text())
    expressions = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    queried = set(re.findall(r"vllm:[a-z0-9_]+", expressions))
    loggers = Path(importlib.util.find_spec("vllm.v1.metrics.loggers").origin).read_text(encoding="utf-8")
    exported = set(re.findall(r'name="(vllm:[a-z0-9_]+)"', loggers))
    assert len(queried) > 10 and len(exported) > 20
    unknown = {name for name in queried
               if name not in exported and re.sub(r"_(bucket|sum|count|total)$", "", name) not in exported}
    assert not unknown, f"not exported by the installed vLLM: {sorted(unknown)} (list them in deploy/README.md)"


# -- the .env ---------------------------------------------------------------------------------
def test_every_compose_variable_is_known_and_documented():
    strings = " ".join(node for node in _walk(COMPOSE) if isinstance(node, str))  # not the comments
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", strings))
    assert used >= {"VLLM_IMAGE", "MODEL_DIR", "VLLM_PORT", "GATEWAY_PORT", "GRAFANA_ADMIN_PASSWORD"}
    assert used <= set(KNOWN), sorted(used - set(KNOWN))
    assert set(EXAMPLE) == set(KNOWN), sorted(set(EXAMPLE) ^ set(KNOWN))
    resolved(COMPOSE, example_with(MODEL_DIR="/data/qwen"))  # no bare $NAME, nothing else missing


def test_the_example_env_is_accepted():
    config = DeployConfig.from_values(EXAMPLE, source=".env.example", check_hardware=False)
    assert config.settings.profile == EXAMPLE["COURSE_PROFILE"]
    assert config.settings.model_id == EXAMPLE["MODEL_NAME"]


def container_environment(service: str, env_file: dict[str, str]) -> dict[str, str]:
    """What ``exec`` reads in the container: the .env (``env_file:``), overridden by ``environment:``."""
    overrides = {key: str(value) for key, value in resolved(SERVICES[service]["environment"], env_file).items()}
    return {name: value for name, value in {**env_file, **overrides}.items() if name in KNOWN}


@pytest.mark.parametrize("profile", PROFILES)
def test_the_container_runs_what_helpers_server_would(profile, tmp_path):
    """The vllm container's command = server_command() of independently derived settings + tuning flags."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    model_id = get_settings(profile, env={}, check_hardware=False).model_id
    env_path = tmp_path / ".env"
    env_path.write_text(f"COURSE_PROFILE={profile}\nMODEL_NAME={model_id}\nMODEL_DIR=/srv/models/m\nVLLM_PORT=8123\n"
                        "MAX_MODEL_LEN=1024\nMAX_NUM_SEQS=64\nENABLE_PREFIX_CACHING=0\n"
                        "VLLM_IMAGE=vllm/vllm-openai:v1.2.3\nGRAFANA_ADMIN_PASSWORD=x\n")
    env_file = parse_env_text(env_path.read_text(), str(env_path))
    model_target = SERVICES["vllm"]["environment"]["MODEL_DIR"]
    assert interpolate(mount("vllm", model_target)[0], env_file) == "/srv/models/m"

    command = DeployConfig.from_values(container_environment("vllm", env_file), strict=False,
                                       check_hardware=False).vllm_command()
    settings = get_settings(profile, env={"COURSE_MODEL_DIR": model_target, "COURSE_MAX_MODEL_LEN": "1024"},
                            check_hardware=False)
    expected = server_command(settings, host="0.0.0.0", port=container_port("vllm"),
                              extra_args=["--max-num-seqs", "64", "--no-enable-prefix-caching"])
    assert command == expected
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(command[3:])
    assert (parsed.model, parsed.host, parsed.port) == (model_target, "0.0.0.0", container_port("vllm"))
    assert (parsed.max_model_len, parsed.max_num_seqs, parsed.enable_prefix_caching) == (1024, 64, False)

    gateway = DeployConfig.from_values(container_environment("gateway", env_file), strict=False,
                                       check_hardware=False).gateway_command("http://vllm:8000")
    args = gateway_parser().parse_args(gateway[3:])
    assert (args.host, args.port, args.upstream) == ("0.0.0.0", container_port("gateway"), ["http://vllm:8000"])


# -- python -m helpers.deploy check ------------------------------------------------------------
def run_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers.deploy", "check", "--env", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_check_accepts_the_example_and_prints_both_commands():
    done = run_check(DEPLOY / ".env.example")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("OK (gpu profile, model Qwen/Qwen2.5-7B-Instruct)")
    assert lines[1].startswith("vLLM:") and "vllm.entrypoints.openai.api_server" in lines[1]
    assert lines[2].startswith("gateway:") and "-m helpers.gateway" in lines[2]


BAD_ENV = {
    "malformed": (lambda text: text.replace("MAX_MODEL_LEN=8192", "MAX_MODEL_LEN=8k"),
                  ["MAX_MODEL_LEN='8k'", "positive integer"]),
    "missing": (lambda text: text.replace("MODEL_NAME=Qwen/Qwen2.5-7B-Instruct\n", ""), ["MODEL_NAME", "missing"]),
    "misspelled": (lambda text: text + "MAX_MODEL_LENGTH=4096\n", ["MAX_MODEL_LENGTH", "Did you mean MAX_MODEL_LEN?"]),
    "export": (lambda text: text + "export MAX_NUM_SEQS=64\n", ["MAX_NUM_SEQS", "without `export`"]),
    "duplicated": (lambda text: text + "VLLM_PORT=8001\n", ["VLLM_PORT is set twice"]),
}


@pytest.mark.parametrize("case", BAD_ENV)
def test_check_names_the_bad_variable_in_one_line(case, tmp_path):
    change, expected = BAD_ENV[case]
    path = tmp_path / ".env"
    path.write_text(change(EXAMPLE_TEXT))
    assert path.read_text() != EXAMPLE_TEXT
    done = run_check(path)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    for text in expected:
        assert text in done.stderr


def test_the_gateway_container_starts_without_a_gpu():
    """`exec gateway` with the gpu profile's .env, on a machine without a GPU, reaches the gateway.

    Its port is taken, so the gateway itself refuses at once (exit 1, its own message): no server runs.
    """
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {name: value for name, value in os.environ.items() if name not in KNOWN}
        env.update(container_environment("gateway", EXAMPLE), GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port))
        done = subprocess.run([sys.executable, "-m", *resolved(SERVICES["gateway"]["entrypoint"], EXAMPLE)[2:]], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in done.stderr, done.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_the_launcher_runs_what_helpers_server_would(profile, tmp_path):
    """The launcher's vLLM argv = VLLMServer's for the same settings and flags, for every profile."""
    from helpers.launcher import plan_from_config
    from helpers.server import VLLMServer

    model_id = get_settings(profile, env={}, check_hardware=False).model_id
    env_path = tmp_path / ".env"
    env_path.write_text(f"COURSE_PROFILE={profile}\nMODEL_NAME={model_id}\nVLLM_PORT=8124\nMAX_NUM_SEQS=16\n")
    config = DeployConfig.from_values(parse_env_text(env_path.read_text()), check_hardware=False)
    vllm = plan_from_config(config, env_path).services[0]
    server = VLLMServer(get_settings(profile, env={}, check_hardware=False), extra_args=["--max-num-seqs", "16"])
    assert vllm.argv == server.command_for(8124)
    assert {k: v for k, v in vllm.env.items() if v is not None} == server.env


def test_prometheus_loads_the_alert_rules_it_is_given():
    source, options = mount("prometheus", "/etc/prometheus/alerts.yml")
    assert options == "ro" and PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]
    rules = yaml.safe_load((DEPLOY / source).read_text())["groups"][0]["rules"]
    assert {"VLLMDown", "VLLMRequestsQueued", "VLLMKVCacheFull"} <= {rule["alert"] for rule in rules}
    loggers = Path(importlib.util.find_spec("vllm.v1.metrics.loggers").origin).read_text(encoding="utf-8")
    exported = set(re.findall(r'name="(vllm:[a-z0-9_]+)"', loggers))
    read = {metric for rule in rules for metric in re.findall(r"vllm:[a-z0-9_]+", rule["expr"])}
    assert read and all(re.sub(r"_(bucket|total)$", "", m) in exported or m in exported for m in read), read
