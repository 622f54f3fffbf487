#!/usr/bin/env bash
# Run on every TPU VM worker by infra/jobs/tpu-vm.sh: a Python 3.11 venv (~/gpt2ja-venv) with gpt2ja
# and TensorFlow's TPU build.   Usage: bash tpu-vm-setup.sh TF_VERSION WHEEL
#
# The project pins nothing TPU-specific: it installs `tensorflow` (and tensorflow-text for
# keras-hub) at TF_VERSION, then tensorflow-tpu of the same version over it, which replaces the
# `tensorflow` module with the TPU build and brings libtpu.
# NOT RUN by this project (see infra/README.md); `bash -n` checks its syntax in the tests.
set -euo pipefail
TF_VERSION=$1
WHEEL=$2
MINOR=${TF_VERSION%.*}

if ! command -v uv > /dev/null; then
  curl -LsSf https://astral.sh/uv/install.sh | sh   # uv brings Python 3.11 (the TPU images have 3.10)
fi
export PATH="$HOME/.local/bin:$PATH"
uv venv --python 3.11 --allow-existing "$HOME/gpt2ja-venv"
PY=$HOME/gpt2ja-venv/bin/python
uv pip install --python "$PY" "$WHEEL" "tensorflow==$TF_VERSION" "tensorflow-text==$MINOR.*"
uv pip install --python "$PY" --reinstall-package tensorflow-tpu "tensorflow-tpu==$TF_VERSION" \
  --find-links https://storage.googleapis.com/libtpu-tf-releases/index.html
"$PY" -c "import tensorflow as tf; print('gpt2ja setup: TensorFlow', tf.__version__)"
