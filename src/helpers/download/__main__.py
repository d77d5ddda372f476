"""``python -m helpers.download``: see :mod:`helpers.download.cli`."""

from __future__ import annotations

from ..cli_args import exit_with
from .cli import PROG, main

if __name__ == "__main__":
    exit_with(main, PROG)
