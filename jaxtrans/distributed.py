"""Multi-host start-up: one ``jax.distributed.initialize`` from the config or the environment.

Every host runs the same command; JAX's multi-controller runtime then sees
all devices of all hosts as one mesh. Where the coordinator comes from:

1. the config's ``distributed`` block (``coordinator``, ``num_processes``, ``process_id``);
2. ``JAXTRANS_COORDINATOR`` / ``JAXTRANS_NUM_PROCESSES`` / ``JAXTRANS_PROCESS_ID`` (what
   ``launch/local_multiprocess.sh`` sets);
3. the cluster JAX detects itself: TPU VM slices (the TPU metadata server) and
   SLURM (``SLURM_NTASKS`` > 1, as ``launch/slurm_gpu.sbatch`` starts it).

A single process with none of these does nothing. On CPU the collectives are
gloo's. A peer that never arrives ends with one message naming the
coordinator and the wait, instead of a hang.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from jaxtrans.errors import JaxtransError


def _settings(block: Any) -> dict[str, Any]:
    block = block or {}
    get = block.get if hasattr(block, "get") else (lambda k, d=None: d)
    coordinator = get("coordinator", "") or os.environ.get("JAXTRANS_COORDINATOR", "")
    num = int(get("num_processes", 0) or os.environ.get("JAXTRANS_NUM_PROCESSES", 0) or 0)
    pid = get("process_id", -1)
    pid = int(pid if pid is not None and pid >= 0 else os.environ.get("JAXTRANS_PROCESS_ID", -1))
    return {"coordinator": coordinator, "num_processes": num, "process_id": pid,
            "timeout_s": int(get("timeout_s", 300)), "auto": bool(get("auto", True))}  # fmt: skip


def _cluster_detected() -> bool:
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or bool(os.environ.get("TPU_WORKER_HOSTNAMES"))


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Non-coordinator processes: fail with a message, not JAX's fatal abort, if the coordinator never listens."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise JaxtransError(
                    f"distributed start failed at {address}: no coordinator answered for {timeout_s:.0f}s; start "
                    "process 0 with the same coordinator address (and check the host and port are reachable)"
                ) from None
            time.sleep(0.5)


def initialize(block: Any = None) -> bool:
    """Start the multi-controller runtime if this is a multi-process run; returns whether it did."""
    s = _settings(block)
    explicit = bool(s["coordinator"]) or s["num_processes"] > 1
    if not explicit and not (s["auto"] and _cluster_detected()):
        return False
    if jax.distributed.is_initialized():
        return True
    if explicit:
        if not s["coordinator"] or s["num_processes"] < 1 or not 0 <= s["process_id"] < s["num_processes"]:
            raise JaxtransError(
                f"distributed: need coordinator (host:port), num_processes and a process_id in "
                f"[0, num_processes); got {s['coordinator']!r}, {s['num_processes']}, {s['process_id']}"
            )
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit and s["process_id"] != 0:
        _wait_for_coordinator(s["coordinator"], s["timeout_s"])
    kwargs: dict[str, Any] = {"initialization_timeout": s["timeout_s"]}
    if explicit:
        kwargs.update(coordinator_address=s["coordinator"], num_processes=s["num_processes"],
                      process_id=s["process_id"])  # fmt: skip
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # a peer that never arrives, a port in use, a mismatched count
        where = s["coordinator"] or "the cluster's coordinator"
        raise JaxtransError(
            f"distributed start failed at {where} after up to {s['timeout_s']}s ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); check that all {s['num_processes'] or 'the'} processes run "
            "the same command with the same coordinator and distinct process ids"
        ) from None
    if explicit and jax.process_count() != s["num_processes"]:
        raise JaxtransError(
            f"distributed: expected {s['num_processes']} processes, the runtime has {jax.process_count()}"
        )
    return True
