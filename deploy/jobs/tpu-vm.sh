#!/usr/bin/env bash
# Train gpt2ja on a Cloud TPU VM, reading shards from and writing the run to gs://: TensorFlow's
# TPUStrategy from one client (BACKEND=tensorflow, the default) or JAX on every host (BACKEND=jax).
#
# NOT RUN by this project (no Google Cloud account, no TPU where it is developed). What is tested
# (tests/test_deployments.py): `--dry-run` renders the commands; real gcloud accepts their flags (it
# stops at "no active account", before any request); the gpt2ja command line parses with our CLI
# and validates as a TrainConfig. See deploy/README.md for what to check on a first real run.
#
# Steps: build the project's wheel here; create the TPU VM (TPU_TYPE); copy the wheel and
# deploy/jobs/tpu-vm-setup.sh to every worker; set up a Python 3.11 venv there; then
#   BACKEND=tensorflow: tensorflow-tpu in the venv; run `gpt2ja train --strategy tpu` once, on worker 0:
#     TensorFlow drives the whole slice from one client (TPUStrategy reaches every host's TPU runtime; a
#     slice of several hosts needs the TPU's name, from which TensorFlow finds the hosts:
#     https://cloud.google.com/tpu/docs/training-on-tpu-pods);
#   BACKEND=jax: jax[tpu] and the project without TensorFlow (install-jax.sh, copied too), on the
#     generation's JAX software version; run `gpt2ja train --backend jax` on EVERY worker (--worker=all):
#     one JAX process per host, and jax.distributed.initialize() finds the slice's hosts itself on Cloud TPU;
# delete the TPU VM when DELETE_WHEN_DONE=true. Rerunning resumes the run from gs://.
#
#   export PROJECT=my-project BUCKET=my-bucket
#   deploy/jobs/tpu-vm.sh              # create, set up, train (blocks while training)
#   BACKEND=jax TPU_TYPE=v6e-16 deploy/jobs/tpu-vm.sh
#   deploy/jobs/tpu-vm.sh --dry-run    # print the commands and the gpt2ja command line; run nothing
set -euo pipefail

PROJECT=${PROJECT:-my-project}
BUCKET=${BUCKET:-my-bucket}
ZONE=${ZONE:-us-central2-b}
TPU=${TPU:-gpt2ja-tpu}
TPU_TYPE=${TPU_TYPE:-v4-8}                          # also v5litepod-8, v5p-8, v6e-8; -16 and up: several hosts
BACKEND=${BACKEND:-tensorflow}                      # or jax
TF_VERSION=${TF_VERSION:-2.18.0}                    # tensorflow-tpu of this version, from libtpu-tf-releases
JAX_VERSION=${JAX_VERSION:-0.10.2}                  # jax[tpu] of this version (libtpu from PyPI), BACKEND=jax
# The TPU software version for TensorFlow, tpu-vm-tf-X.Y.Z[-pod]-pjrt (https://cloud.google.com/tpu/docs/runtimes;
# -pod: a slice of several hosts, i.e. more than 8 in its name). Its TensorFlow is the system Python 3.10's;
# gpt2ja needs 3.11, so tpu-vm-setup.sh installs tensorflow-tpu of the same version into its own venv.
# gpt2ja/flows/vertex.py renders the same name (TpuVmJob.runtime_version).
# JAX: the generation's base software version (the same page; gpt2ja/flows/vertex.py TpuVmJob.jax_runtime_version).
POD=""; (( ${TPU_TYPE##*-} > 8 )) && POD=-pod
if [[ "$BACKEND" == "jax" ]]; then
  case "${TPU_TYPE%-*}" in
    v6e) JAX_SOFTWARE=v2-alpha-tpuv6e ;;
    v5p) JAX_SOFTWARE=v2-alpha-tpuv5 ;;
    v5litepod) JAX_SOFTWARE=v2-alpha-tpuv5-lite ;;
    *) JAX_SOFTWARE=tpu-ubuntu2204-base ;;
  esac
  TPU_SOFTWARE=${TPU_SOFTWARE:-$JAX_SOFTWARE}
elif [[ "$BACKEND" == "tensorflow" ]]; then
  TPU_SOFTWARE=${TPU_SOFTWARE:-tpu-vm-tf-$TF_VERSION$POD-pjrt}
else
  echo "tpu-vm.sh: BACKEND=$BACKEND is neither tensorflow nor jax" >&2; exit 2
fi
DATA=${DATA:-gs://$BUCKET/datasets/aozora/sp32k-1024}
RUN=${RUN:-gs://$BUCKET/runs/small-aozora-tpu}
PRESET=${PRESET:-small}
STEPS=${STEPS:-20000}
BATCH_TOKENS=${BATCH_TOKENS:-524288}
MICRO_BATCH=${MICRO_BATCH:-64}                      # over all TPU cores (a multiple of their count)
DELETE_WHEN_DONE=${DELETE_WHEN_DONE:-false}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WHEEL=gpt2ja-0.1.0-py3-none-any.whl                 # what `pip wheel --no-deps .` builds from pyproject.toml

# The gpt2ja command line (data and run on gs://). TensorFlow, on worker 0: one host: tpu is this VM's TPU;
# several hosts: tpu is the slice's name and the client leaves worker 0's chips to the TPU runtime
# (TPU_LOAD_LIBRARY=0). JAX, on every worker: the same line everywhere, no strategy and no TPU name.
RUN_ARGS=(--preset "$PRESET" --steps "$STEPS" --batch-tokens "$BATCH_TOKENS" --micro-batch "$MICRO_BATCH"
          --data "$DATA" --run "$RUN")
if [[ "$BACKEND" == "jax" ]]; then
  GPT2JA=(train --backend jax --mixed-precision bf16 "${RUN_ARGS[@]}")
  TRAIN_ENV="KERAS_BACKEND=jax"
  TRAIN_ON=--worker=all
  SETUP_FILES=("$HERE/tpu-vm-setup.sh" "$HERE/install-jax.sh")
  SETUP_ARGS="$JAX_VERSION ~/$WHEEL jax"
else
  GPT2JA=(train --strategy tpu --mixed-precision bf16 "${RUN_ARGS[@]}")
  TRAIN_ENV="TF_CPP_MIN_LOG_LEVEL=2"
  if [[ -n "$POD" ]]; then GPT2JA+=(--set "tpu=$TPU"); TRAIN_ENV="TPU_LOAD_LIBRARY=0 $TRAIN_ENV"; fi
  TRAIN_ON=--worker=0
  SETUP_FILES=("$HERE/tpu-vm-setup.sh")
  SETUP_ARGS="$TF_VERSION ~/$WHEEL"
fi

source "$HERE/common.sh" "$@"   # DRY (--dry-run) and run()

TPU_AT=(--project "$PROJECT" --zone "$ZONE")
train_cmd=$(printf ' %q' "${GPT2JA[@]}")
if $DRY; then printf 'gpt2ja>%s\n' "$train_cmd"; fi

run python3 -m pip wheel --no-deps --wheel-dir "$REPO/build/wheel" "$REPO"
run gcloud compute tpus tpu-vm create "$TPU" "${TPU_AT[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_SOFTWARE"
run gcloud compute tpus tpu-vm scp "$REPO/build/wheel/$WHEEL" "${SETUP_FILES[@]}" "$TPU:" \
  "${TPU_AT[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU" "${TPU_AT[@]}" --worker=all \
  --command "bash ~/tpu-vm-setup.sh $SETUP_ARGS"
run gcloud compute tpus tpu-vm ssh "$TPU" "${TPU_AT[@]}" "$TRAIN_ON" \
  --command "$TRAIN_ENV ~/gpt2ja-venv/bin/gpt2ja$train_cmd"
if [[ "$DELETE_WHEN_DONE" == "true" ]]; then
  run gcloud compute tpus tpu-vm delete "$TPU" "${TPU_AT[@]}" --quiet
fi
