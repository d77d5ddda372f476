"""Read a ``.env`` file strictly: ``NAME=value`` lines, ``#`` comments (notebook 06).

The format is the one ``docker compose`` reads, kept to the part both compose and the course's
launcher understand the same way: one ``NAME=value`` per line, optional single or double
quotes around the value, blank lines and ``#`` comments. Anything else (``export NAME=..``,
a line without ``=``, a name used twice) is an error that names the file and line, before
anything starts.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DeployError

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def parse_env_text(text: str, source: str = ".env") -> dict[str, str]:
    """``NAME=value`` pairs of a ``.env`` text; :class:`DeployError` naming ``source:line`` on bad lines."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if line.startswith("export "):
            raise DeployError(f"{where}: `{line}`: write `NAME=value` without `export` (docker compose reads it that way).")
        if "=" not in line:
            raise DeployError(f"{where}: `{line}` is not `NAME=value`.")
        name, value = (part.strip() for part in line.split("=", 1))
        if not _NAME.fullmatch(name):
            raise DeployError(f"{where}: {name!r} is not a variable name: use upper-case letters, digits and _, "
                              "e.g. MAX_MODEL_LEN=8192.")
        if name in values:
            raise DeployError(f"{where}: {name} is set twice; keep one line.")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()  # inline comment after an unquoted value
        values[name] = value
    return values


def read_env_file(path: str | Path) -> dict[str, str]:
    """:func:`parse_env_text` of a file; a missing file says how to make one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeployError(f"{path} does not exist: copy deploy/.env.example to {path} and edit it.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path} cannot be read ({exc}).") from None
    return parse_env_text(text, str(path))
