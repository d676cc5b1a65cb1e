#!/usr/bin/env bash
# Run jaxtrans on every worker of a Cloud TPU VM slice (v4/v5e/v5p/v6e). JAX finds the other workers
# itself; the same command runs on all of them.
#
#   launch/tpu_pod.sh [--dry-run] [--create] NAME ZONE ACCELERATOR -- ARGS...
#   launch/tpu_pod.sh --create jaxtrans-v5p us-east5-a v5p-32 -- --config configs/thai.py:llama2_7b --config.mesh.fsdp=16
#
# --create makes the slice first (runtime from TPU_RUNTIME, default v2-alpha-tpuv5). The repository is
# copied to every worker and installed with the TPU extra before the run. --dry-run prints the gcloud commands.
set -euo pipefail

dry_run=0
create=0
while [[ "${1:-}" == --* && "${1:-}" != "--" ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --create) create=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 3 ]]; then
  echo "usage: launch/tpu_pod.sh [--dry-run] [--create] NAME ZONE ACCELERATOR -- ARGS..." >&2
  exit 2
fi
name="$1"; zone="$2"; accelerator="$3"; shift 3
if [[ "${1:-}" == "--" ]]; then shift; fi
runtime="${TPU_RUNTIME:-v2-alpha-tpuv5}"
args="$(printf '%q ' "$@")"

run() {
  if [[ "${dry_run}" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

if [[ "${create}" == 1 ]]; then
  run gcloud compute tpus tpu-vm create "${name}" --zone "${zone}" --accelerator-type "${accelerator}" \
    --version "${runtime}"
fi
run gcloud compute tpus tpu-vm scp --recurse --zone "${zone}" --worker=all . "${name}:~/jaxtrans"
run gcloud compute tpus tpu-vm ssh "${name}" --zone "${zone}" --worker=all --command \
  "cd ~/jaxtrans && python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]' && python -m jaxtrans.main ${args}"
