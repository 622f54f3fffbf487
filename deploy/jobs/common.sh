# Sourced by gpu-vm.sh and tpu-vm.sh (`source "$HERE/common.sh" "$@"`): the --dry-run switch and run().
# shellcheck shell=bash

DRY=false
[[ "${1:-}" == "--dry-run" ]] && DRY=true

run() {  # run a command, or print it shell-quoted (`+ cmd`) in a dry run
  if $DRY; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
