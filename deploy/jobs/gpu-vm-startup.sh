#!/usr/bin/env bash
# The GPU VM's startup script (root, every boot): wait for the NVIDIA driver, pull the gpt2ja image,
# train, then power the VM off. Set by deploy/jobs/gpu-vm.sh through instance metadata:
#   gpt2ja-image           the image to run (deploy/Dockerfile, pushed to Artifact Registry)
#   gpt2ja-args            the gpt2ja command line, one argument per line
#   gpt2ja-stop-when-done  true: power off when the container exits (success or not)
# NOT RUN by this project (see deploy/README.md); `bash -n` checks its syntax in the tests.
set -euo pipefail

md() {  # an instance metadata attribute
  curl -sf -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

IMAGE=$(md gpt2ja-image)
mapfile -t ARGS < <(md gpt2ja-args)
STOP=$(md gpt2ja-stop-when-done || echo false)

# Deep Learning VM images install the driver on first boot (install-nvidia-driver=True).
for _ in $(seq 90); do nvidia-smi > /dev/null 2>&1 && break; sleep 10; done
nvidia-smi || { echo "gpt2ja: no NVIDIA driver after 15 minutes" >&2; exit 1; }

REGISTRY=${IMAGE%%/*}
case "$REGISTRY" in
  *-docker.pkg.dev|gcr.io|*.gcr.io) gcloud auth configure-docker "$REGISTRY" --quiet ;;
esac
docker pull "$IMAGE"

status=0
# --network host: the container reaches the metadata server for gs:// credentials as the VM does.
docker run --rm --gpus all --network host --shm-size 16g "$IMAGE" "${ARGS[@]}" || status=$?
echo "gpt2ja: training exited with status $status"

if [[ "$STOP" == "true" ]]; then
  shutdown -h now
fi
exit "$status"
