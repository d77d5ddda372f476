"""Deploy the course's vLLM service outside Jupyter, configured by one ``.env`` (notebook 06).

* :mod:`.env_file` reads a ``.env`` strictly;
* :mod:`.config` turns it into a :class:`DeployConfig`: the settings, tuning flags, ports, keys,
  and the vLLM and gateway command lines derived from the course's one source of engine
  arguments;
* ``.venv/bin/python -m helpers.deploy check --env deploy/.env`` validates a file and prints both
  commands; ``python3 -m helpers.deploy exec vllm|gateway`` is the entry point of the compose
  services (in the container).
"""

from .config import COMPOSE_VARIABLES, ENGINE_VARIABLES, KNOWN, REQUIRED, SERVICE_VARIABLES, TUNING_VARIABLES, DeployConfig
from .env_file import parse_env_text, read_env_file

__all__ = ["COMPOSE_VARIABLES", "ENGINE_VARIABLES", "KNOWN", "REQUIRED", "SERVICE_VARIABLES", "TUNING_VARIABLES",
           "DeployConfig", "parse_env_text", "read_env_file"]
