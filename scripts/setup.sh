#!/usr/bin/env bash
# One-step setup on a fresh Debian machine with Python 3.11 (the README's first
# command): system packages where missing, then .venv with pinned Python
# dependencies and the project installed editable. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

# --- system packages: the real servers the tests start, and ffmpeg ----------
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  # Debian's packages start system services; the tests never use them (they
  # start their own servers on free ports), so a policy-rc.d is not needed.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# --- Python ----------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { echo "setup: Python >= 3.10 required" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# torch first and alone: a CUDA build that also runs on the CPU (the CPU-only
# 2.13.0 wheel breaks torchvision 0.29).
"${PIP[@]}" install -q "${TORCH_PINS[@]}"
"${PIP[@]}" install -q -c requirements.lock -e ".[cloud,edge,dev]"
"$VENV/bin/python" -c 'import torch, torchvision, av, paho.mqtt, redis, ai_edge_litert, cloudtutor; print("setup: ok, torch", torch.__version__, "av", av.__version__)'
