#!/usr/bin/env bash
# Train gpt2ja on a Cloud TPU VM with TPUStrategy, reading shards from and writing the run to gs://.
#
# NOT RUN by this project (no Google Cloud account, no TPU where it is developed). What is tested
# (tests/test_deployments.py): `--dry-run` renders the commands; real gcloud accepts their flags (it
# stops at "no active account", before any request); the gpt2ja command line parses with our CLI
# and validates as a TrainConfig. See infra/README.md for what to check on a first real run.
#
# Steps: build the project's wheel here; create the TPU VM (TPU_TYPE); copy the wheel and
# infra/jobs/tpu-vm-setup.sh to every worker; set up a Python 3.11 venv with tensorflow-tpu there;
# run `gpt2ja train --strategy tpu` once, on worker 0: TensorFlow drives the whole slice from one client
# (TPUStrategy reaches every host's TPU runtime; a slice of several hosts needs the TPU's name, from which
# TensorFlow finds the hosts: https://cloud.google.com/tpu/docs/training-on-tpu-pods); delete the TPU VM
# when DELETE_WHEN_DONE=true. Rerunning resumes the run from gs://.
#
#   export PROJECT=my-project BUCKET=my-bucket
#   infra/jobs/tpu-vm.sh              # create, set up, train (blocks while training)
#   infra/jobs/tpu-vm.sh --dry-run    # print the commands and the gpt2ja command line; run nothing
set -euo pipefail

PROJECT=${PROJECT:-my-project}
BUCKET=${BUCKET:-my-bucket}
ZONE=${ZONE:-us-central2-b}
TPU=${TPU:-gpt2ja-tpu}
TPU_TYPE=${TPU_TYPE:-v4-8}                          # also v5litepod-8, v5p-8, v6e-8; -16 and up: several hosts
TF_VERSION=${TF_VERSION:-2.18.0}                    # tensorflow-tpu of this version, from libtpu-tf-releases
# The TPU software version for TensorFlow, tpu-vm-tf-X.Y.Z[-pod]-pjrt (https://cloud.google.com/tpu/docs/runtimes;
# -pod: a slice of several hosts, i.e. more than 8 in its name). Its TensorFlow is the system Python 3.10's;
# gpt2ja needs 3.11, so tpu-vm-setup.sh installs tensorflow-tpu of the same version into its own venv.
# infra/vertex.py renders the same name (TpuVmJob.runtime_version).
POD=""; (( ${TPU_TYPE##*-} > 8 )) && POD=-pod
TPU_SOFTWARE=${TPU_SOFTWARE:-tpu-vm-tf-$TF_VERSION$POD-pjrt}
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

# The gpt2ja command line worker 0 runs (data and run on gs://). One host: tpu is this VM's TPU. Several
# hosts: tpu is the slice's name and the client leaves worker 0's chips to the TPU runtime (TPU_LOAD_LIBRARY=0).
GPT2JA=(train --strategy tpu --mixed-precision bf16
        --preset "$PRESET" --steps "$STEPS" --batch-tokens "$BATCH_TOKENS" --micro-batch "$MICRO_BATCH"
        --data "$DATA" --run "$RUN")
TRAIN_ENV="TF_CPP_MIN_LOG_LEVEL=2"
if [[ -n "$POD" ]]; then GPT2JA+=(--set "tpu=$TPU"); TRAIN_ENV="TPU_LOAD_LIBRARY=0 $TRAIN_ENV"; fi

source "$HERE/common.sh" "$@"   # DRY (--dry-run) and run()

TPU_AT=(--project "$PROJECT" --zone "$ZONE")
train_cmd=$(printf ' %q' "${GPT2JA[@]}")
if $DRY; then printf 'gpt2ja>%s\n' "$train_cmd"; fi

run python3 -m pip wheel --no-deps --wheel-dir "$REPO/build/wheel" "$REPO"
run gcloud compute tpus tpu-vm create "$TPU" "${TPU_AT[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_SOFTWARE"
run gcloud compute tpus tpu-vm scp "$REPO/build/wheel/$WHEEL" "$HERE/tpu-vm-setup.sh" "$TPU:" \
  "${TPU_AT[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU" "${TPU_AT[@]}" --worker=all \
  --command "bash ~/tpu-vm-setup.sh $TF_VERSION ~/$WHEEL"
run gcloud compute tpus tpu-vm ssh "$TPU" "${TPU_AT[@]}" --worker=0 \
  --command "$TRAIN_ENV ~/gpt2ja-venv/bin/gpt2ja$train_cmd"
if [[ "$DELETE_WHEN_DONE" == "true" ]]; then
  run gcloud compute tpus tpu-vm delete "$TPU" "${TPU_AT[@]}" --quiet
fi
