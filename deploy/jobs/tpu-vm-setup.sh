#!/usr/bin/env bash
# Run on every TPU VM worker by deploy/jobs/tpu-vm.sh: a Python 3.11 venv (~/gpt2ja-venv) with gpt2ja
# and the backend's TPU build.   Usage: bash tpu-vm-setup.sh VERSION WHEEL [BACKEND]
#
# BACKEND tensorflow (the default; VERSION = TF_VERSION): the project pins nothing TPU-specific: it
# installs `tensorflow` (and tensorflow-text for keras-hub) at TF_VERSION, then tensorflow-tpu of the
# same version over it, which replaces the `tensorflow` module with the TPU build and brings libtpu.
# BACKEND jax (VERSION = JAX_VERSION): jax[tpu] (libtpu from PyPI) and the project WITHOUT TensorFlow,
# by install-jax.sh (copied beside this script by tpu-vm.sh).
# NOT RUN by this project (see deploy/README.md); `bash -n` checks its syntax in the tests.
set -euo pipefail
VERSION=$1
WHEEL=$2
BACKEND=${3:-tensorflow}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v uv > /dev/null; then
  curl -LsSf https://astral.sh/uv/install.sh | sh   # uv brings Python 3.11 (the TPU images have 3.10)
fi
export PATH="$HOME/.local/bin:$PATH"
PY=$HOME/gpt2ja-venv/bin/python

if [[ "$BACKEND" == "jax" ]]; then
  uv venv --python 3.11 --seed --allow-existing "$HOME/gpt2ja-venv"   # --seed: install-jax.sh uses its pip
  bash "$HERE/install-jax.sh" "$PY" tpu "$VERSION" "$WHEEL"
  exit 0
fi

TF_VERSION=$VERSION
MINOR=${TF_VERSION%.*}
uv venv --python 3.11 --allow-existing "$HOME/gpt2ja-venv"
uv pip install --python "$PY" "$WHEEL" "tensorflow==$TF_VERSION" "tensorflow-text==$MINOR.*"
uv pip install --python "$PY" --reinstall-package tensorflow-tpu "tensorflow-tpu==$TF_VERSION" \
  --find-links https://storage.googleapis.com/libtpu-tf-releases/index.html
"$PY" -c "import tensorflow as tf; print('gpt2ja setup: TensorFlow', tf.__version__)"
