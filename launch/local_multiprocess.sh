#!/usr/bin/env bash
# N jaxtrans processes on this machine (127.0.0.1), each with its own CPU devices: a real multi-host run
# for testing launch, per-host data and collective checkpoints without a cluster.
#
#   launch/local_multiprocess.sh [--dry-run] [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- ARGS...
#   launch/local_multiprocess.sh -n 2 -d 2 -- --config configs/thai.py --config.mesh.data=4
#
# ARGS go to python -m jaxtrans.main. Logs: runs/launch/process_<i>.log. Each process is bounded by
# TIMEOUT seconds (default 3600). --dry-run prints the commands instead of running them.
set -euo pipefail

n=2
devices=2
port=12355
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    -n) n="$2"; shift 2 ;;
    -d) devices="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (options: --dry-run -n -d -p, then -- and the jaxtrans arguments)" >&2; exit 2 ;;
  esac
done
timeout_s="${TIMEOUT:-3600}"
python="${PYTHON:-python}"
logs="runs/launch"

pids=()
for ((i = 0; i < n; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu
       "JAXTRANS_COORDINATOR=127.0.0.1:${port}" "JAXTRANS_NUM_PROCESSES=${n}" "JAXTRANS_PROCESS_ID=${i}"
       timeout "${timeout_s}" "${python}" -m jaxtrans.main "$@")
  if [[ "${dry_run}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; printf '> %s/process_%d.log\n' "${logs}" "${i}"
    continue
  fi
  mkdir -p "${logs}"
  "${cmd[@]}" > "${logs}/process_${i}.log" 2>&1 &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  wait "${pid}" || status=$?
done
exit "${status}"
