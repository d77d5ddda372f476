"""``python -m helpers.gateway --upstream URL ...`` (see :mod:`helpers.gateway.cli`)."""

from .cli import run

if __name__ == "__main__":
    run()
