#!/usr/bin/env bash
# A debug run on one NVIDIA GPU: one device, small steps, bf16 compute, cuDNN attention.
#
#   launch/single_gpu.sh [--dry-run] [CONFIG] [extra --config.* overrides]
#   launch/single_gpu.sh configs/thai.py --config.stages.pretrain.steps=10
#
# Needs jaxtrans installed with the CUDA extra: pip install -e '.[cuda]'.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
config="${1:-configs/thai.py}"
shift || true
cmd=(env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
     "${PYTHON:-python}" -m jaxtrans.main --config "${config}"
     --config.mesh.data=1 --config.mesh.fsdp=1 --config.mesh.tensor=1
     --config.model.dtype=bfloat16 "$@")
if [[ "${dry_run}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
