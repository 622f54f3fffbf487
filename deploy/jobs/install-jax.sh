#!/usr/bin/env bash
# Install JAX and gpt2ja WITHOUT TensorFlow into one Python: the JAX route's install, used by the
# `jax` target of deploy/Dockerfile (GPUs: JAX_EXTRA cuda13) and by tpu-vm-setup.sh on every TPU VM
# worker when the backend is jax (JAX_EXTRA tpu).
#
#   bash install-jax.sh PYTHON JAX_EXTRA JAX_VERSION PROJECT
#     PYTHON       the interpreter to install into (its own pip)
#     JAX_EXTRA    cuda13 (pip's CUDA 13 libraries; the host needs only an NVIDIA driver >= 580),
#                  cuda12 (older drivers) or tpu (libtpu)
#     JAX_VERSION  the jax release, e.g. 0.10.2
#     PROJECT      gpt2ja's source folder or its wheel
#   bash install-jax.sh --requirements PYTHON    print the requirement list step 3 installs, for the
#                                                gpt2ja and keras-hub installed there; install nothing
#
# Why not `pip install PROJECT`: pyproject.toml lists tensorflow among gpt2ja's dependencies, and
# keras-hub requires tensorflow-text on Linux (which requires tensorflow). So gpt2ja and keras-hub go
# in with --no-deps, then every requirement either of them declares EXCEPT the tensorflow* packages
# (and keras-hub itself, already there), read from their installed metadata: the list follows
# pyproject.toml instead of being copied here. When pyproject.toml gains its TensorFlow-free extra,
# this becomes `pip install "PROJECT[that extra]" "jax[JAX_EXTRA]==JAX_VERSION"`.
# The last step fails the install if anything brought TensorFlow in after all.
# NOT RUN by this project on a GPU or TPU (see deploy/README.md); `bash -n` checks its syntax in the tests.
set -euo pipefail

install() { "$PY" -m pip install --no-cache-dir "$@"; }

# the requirements of the installed distributions named, less extras, tensorflow* and keras-hub
requirements_without_tensorflow() {
  "$PY" - "$@" <<'EOF'
import re
import sys
from importlib.metadata import requires

for dist in sys.argv[1:]:
    for req in requires(dist) or []:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
        if "extra ==" in req or name.startswith("tensorflow") or name == "keras-hub":
            continue
        print(req)
EOF
}

if [[ "${1:-}" == "--requirements" ]]; then
  PY=$2
  requirements_without_tensorflow gpt2ja keras-hub
  exit 0
fi
PY=$1
JAX_EXTRA=$2
JAX_VERSION=$3
PROJECT=$4

install "jax[$JAX_EXTRA]==$JAX_VERSION"
install --no-deps "$PROJECT"
keras_hub=$("$PY" -c "from importlib.metadata import requires; print(next(r for r in requires('gpt2ja') if r.startswith('keras-hub')))")
install --no-deps "$keras_hub"
requirements=$(mktemp)
requirements_without_tensorflow gpt2ja keras-hub > "$requirements"
install -r "$requirements"
rm -f "$requirements"
KERAS_BACKEND=jax "$PY" -c "
import importlib.util, jax, keras, keras_hub, gpt2ja, gpt2ja.model.summaries
assert importlib.util.find_spec('tensorflow') is None, 'TensorFlow was installed: the JAX route must not need it'
print('gpt2ja JAX route: jax', jax.__version__, 'keras', keras.__version__, 'backend', keras.backend.backend())"
