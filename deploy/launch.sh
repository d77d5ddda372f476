#!/usr/bin/env bash
# vLLM Hands-on, chapter 06: the launcher (no Docker needed, e.g. on AutoDL), from any folder.
#   bash deploy/launch.sh start [--gateway] [--wait S] | status | logs [--service vllm] [-f] | stop
# Uses deploy/.env unless you pass --env FILE; runs `.venv/bin/python -m helpers.launcher` (the course's .venv).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: bash deploy/launch.sh start|stop|status|logs [options] (see --help)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${COURSE_VENV:-.venv}
case "$venv" in /*) ;; *) venv=$repo/$venv ;; esac   # absolute, or relative to the checkout
python=$venv/bin/python
[ -x "$python" ] || python=python3  # e.g. a conda environment (environment.yml)
case " $* " in
  *" --env "* | *" --env="*) exec "$python" -m helpers.launcher "$@" ;;
  *) exec "$python" -m helpers.launcher "$@" --env "$repo/deploy/.env" ;;
esac
