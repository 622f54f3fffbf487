#!/usr/bin/env bash
# Train gpt2ja on a Compute Engine VM with NVIDIA GPUs, in the image of deploy/Dockerfile: its tensorflow
# target (BACKEND=tensorflow, the default) or its jax target (BACKEND=jax: CUDA 13, no TensorFlow).
#
# NOT RUN by this project (no Google Cloud account, no GPU where it is developed). What is tested
# (tests/test_deployments.py): `--dry-run` renders the commands; real gcloud accepts their flags (it
# stops at "no active account", before any request); the gpt2ja command line parses with our CLI
# and validates as a TrainConfig. See deploy/README.md for what to check on a first real run.
#
# What happens: the VM (a Deep Learning VM image: NVIDIA driver, Docker, NVIDIA Container Toolkit)
# boots, runs deploy/jobs/gpu-vm-startup.sh, which pulls $IMAGE and runs
#     docker run --gpus all $IMAGE train --strategy mirrored ... --data gs://... --run gs://...
# (BACKEND=jax: train --backend jax ..., every GPU of the VM in one jitted step, no strategy)
# then powers the VM off (a stopped VM costs only its disk). The run directory is on gs://, so a
# restarted VM (or this script run again with the same RUN) resumes from the newest checkpoint.
#
#   export PROJECT=my-project BUCKET=my-bucket
#   export IMAGE=us-central1-docker.pkg.dev/$PROJECT/gpt2ja/gpt2ja:latest
#   docker build -f deploy/Dockerfile -t "$IMAGE" . && docker push "$IMAGE"
#   deploy/jobs/gpu-vm.sh              # create the VM (it trains, then stops itself)
#   BACKEND=jax IMAGE=...gpt2ja-jax:latest deploy/jobs/gpu-vm.sh    # after `docker build --target jax ...`
#   deploy/jobs/gpu-vm.sh --dry-run    # print the commands and the gpt2ja command line; run nothing
#   gcloud compute instances get-serial-port-output gpt2ja-train --zone "$ZONE"   # follow the log
set -euo pipefail

PROJECT=${PROJECT:-my-project}
BUCKET=${BUCKET:-my-bucket}
ZONE=${ZONE:-us-central1-a}
VM=${VM:-gpt2ja-train}
MACHINE_TYPE=${MACHINE_TYPE:-g2-standard-12}   # 1 × NVIDIA L4 (24 GB, bf16); a2-highgpu-8g: 8 × A100
BACKEND=${BACKEND:-tensorflow}                 # or jax
if [[ "$BACKEND" == "jax" ]]; then
  # JAX's CUDA 13 wheels need an NVIDIA driver >= 580: a Deep Learning VM family that installs that driver
  IMAGE_FAMILY=${IMAGE_FAMILY:-common-cu129-ubuntu-2204-nvidia-580}
  IMAGE=${IMAGE:-us-central1-docker.pkg.dev/$PROJECT/gpt2ja/gpt2ja-jax:latest}
elif [[ "$BACKEND" == "tensorflow" ]]; then
  IMAGE_FAMILY=${IMAGE_FAMILY:-common-cu124-ubuntu-2204-py310}   # a Deep Learning VM family with CUDA 12
  IMAGE=${IMAGE:-us-central1-docker.pkg.dev/$PROJECT/gpt2ja/gpt2ja:latest}
else
  echo "gpu-vm.sh: BACKEND=$BACKEND is neither tensorflow nor jax" >&2; exit 2
fi
DATA=${DATA:-gs://$BUCKET/datasets/aozora/sp32k-1024}
RUN=${RUN:-gs://$BUCKET/runs/small-aozora}
PRESET=${PRESET:-small}
STEPS=${STEPS:-20000}
BATCH_TOKENS=${BATCH_TOKENS:-524288}    # 512 sequences of 1,024 tokens per step
MICRO_BATCH=${MICRO_BATCH:-8}           # sequences per pass, over all GPUs (a multiple of their count)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The gpt2ja command line the container runs (its entrypoint is `gpt2ja`). JAX: no strategy (TensorFlow's),
# no --xla (JAX always compiles the step with XLA); the image sets KERAS_BACKEND=jax.
RUN_ARGS=(--preset "$PRESET" --steps "$STEPS" --batch-tokens "$BATCH_TOKENS" --micro-batch "$MICRO_BATCH"
          --data "$DATA" --run "$RUN")
if [[ "$BACKEND" == "jax" ]]; then
  GPT2JA=(train --backend jax --mixed-precision bf16 "${RUN_ARGS[@]}")
else
  GPT2JA=(train --strategy mirrored --mixed-precision bf16 --xla "${RUN_ARGS[@]}")
fi

source "$HERE/common.sh" "$@"   # DRY (--dry-run) and run()

args_file=$(mktemp)
trap 'rm -f "$args_file"' EXIT
printf '%s\n' "${GPT2JA[@]}" > "$args_file"   # one argument per line: no quoting survives metadata otherwise

if $DRY; then printf 'gpt2ja>'; printf ' %q' "${GPT2JA[@]}"; printf '\n'; fi
run gcloud compute instances create "$VM" \
  --project "$PROJECT" --zone "$ZONE" --machine-type "$MACHINE_TYPE" \
  --maintenance-policy TERMINATE --provisioning-model STANDARD \
  --image-family "$IMAGE_FAMILY" --image-project deeplearning-platform-release \
  --boot-disk-size 200GB --scopes cloud-platform \
  --metadata "install-nvidia-driver=True,gpt2ja-image=$IMAGE,gpt2ja-stop-when-done=true" \
  --metadata-from-file "startup-script=$HERE/gpu-vm-startup.sh,gpt2ja-args=$args_file"
