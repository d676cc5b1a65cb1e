"""``--dry_run --max_context``: the longest row whose compiled train step fits a card, found by search.

For each device it compiles the config's largest train stage (its batch, the
configured model, adapters and memory settings) at growing row lengths for that
device's abstract GPU or TPU (:mod:`jaxtrans.plan`'s targets), doubling until
the step no longer fits (device peak above the card's memory, host bytes above
what a usual machine with that card has, or the TPU compiler's own refusal),
then narrows the gap by interpolation: memory grows about linearly with length
once attention, MLP and loss are chunked, so a few compiles find the edge.
Lengths are multiples of a granule (the flash kernels' 128-position blocks and
the MLP and loss chunks). Every compiled length is kept in
``$JAXTRANS_CACHE/plans`` under the settings that made it, so a repeated search
reads its answers instead of compiling.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from typing import Any

import jax

from jaxtrans import plan as planner
from jaxtrans import platforms
from jaxtrans.devices import DEVICES, GiB
from jaxtrans.errors import JaxtransError

LONGEST = 1 << 22  # 4M tokens: the search stops there


def granule(cfg: Any) -> int:
    """Row lengths the search tries are multiples of this: whole kernel blocks, MLP chunks and loss chunks."""
    g = 128
    for chunk in (cfg.model.get("mlp_chunk", 0), cfg.model.get("loss_chunk", 0)):
        if chunk:
            g = g * chunk // math.gcd(g, chunk)
    return g


def _code_digest() -> str:
    """The model's and the step's source: a change to either may change what a length costs."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for sub in ("model", "train"):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            if name.endswith(".py"):
                with open(os.path.join(root, sub, name), "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def _cache_path(key: dict) -> str:
    from jaxtrans.weights.smollm2 import cache_dir  # $JAXTRANS_CACHE, default ~/.cache/jaxtrans

    root = cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, "plans", f"max_context-{digest}.json")


class _Probe:
    """Compiles the step at a row length for one target and says whether it fits; remembers every answer."""

    def __init__(self, cfg: Any, device: str, topology: str | None, description: str | None) -> None:
        self.cfg, self.device = cfg, device
        self.devices, self.compiler = planner._target(cfg, device, topology, description)
        if self.devices is None:
            raise JaxtransError(f"--max_context needs {device}'s own compiler (see the line above); install it")
        _, stage = planner._trainer(cfg, self.devices)
        self.stage = [n for n in cfg.curriculum if cfg.stages[n] is stage][0]
        self.spec = DEVICES[device]
        key = {"config": cfg.to_dict(), "device": device, "compiler": self.compiler, "jax": jax.__version__,
               "description": open(description).read() if description else None, "code": _code_digest()}  # fmt: skip
        self.path = _cache_path(key)
        self.known: dict[int, dict] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.known = {int(k): v for k, v in json.load(f).items()}

    def __call__(self, seq_len: int) -> dict:
        if seq_len not in self.known:
            self.known[seq_len] = self._compile(seq_len)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(self.known, f)
            os.replace(tmp, self.path)
        r = self.known[seq_len]  # whether it fits is judged now: the cache keeps the compiler's bytes
        fits = not r["refused"] and r["peak"] <= self.spec.usable_memory and r["host"] <= self.spec.host_memory
        return {**r, "fits": fits}

    def pressure(self, seq_len: int) -> float:
        """How full the card is at ``seq_len``: 1.0 at its device (or host) memory, above it when it does not fit."""
        r = self(seq_len)
        if r.get("refused"):
            return 2.0
        host = r["host"] / self.spec.host_memory if self.spec.host_memory else 0.0
        return max(r["peak"] / self.spec.usable_memory, host)

    def _compile(self, seq_len: int) -> dict:
        cfg = copy.deepcopy(self.cfg)
        cfg.unlock()
        cfg.stages[self.stage].seq_len = seq_len
        trainer, stage = planner._trainer(cfg, self.devices)
        try:
            with platforms.native_stderr():  # the compiler's warnings about lengths that do not fit
                compiled, *_ = planner._compile(trainer, stage)
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses what cannot fit its chip
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return {"peak": None, "host": None, "refused": True}
        mem = compiled.memory_analysis()
        host = planner._host_peak(mem) + planner.host_table_bytes(trainer)
        return {"peak": planner._device_peak(mem), "host": host, "refused": False}


def search(cfg: Any, device: str, topology: str | None = None, description: str | None = None) -> dict[str, Any]:
    """The longest row length (a multiple of :func:`granule`) whose step fits ``device``; returns and prints it."""
    from jaxtrans.pipeline import check

    check(cfg)
    probe = _Probe(cfg, device, topology, description)
    g, rows = granule(cfg), cfg.stages[probe.stage].batch_size
    first = probe(g)
    if not first["fits"]:
        why = ("the compiler refuses it" if first.get("refused") else
               f"peak {first['peak'] / GiB:.2f} GiB of {probe.spec.usable_memory / GiB:.1f} usable, host "
               f"{first['host'] / GiB:.2f} GiB of {probe.spec.host_memory / GiB:.0f}")  # fmt: skip
        raise JaxtransError(
            f"--max_context: batch {rows} does not fit {device} even at {g} tokens a row ({why}); lower "
            f"stages.{probe.stage}.batch_size, quantise the base (lora.quantized), offload "
            "(model.remat=offload_residuals) or shard (mesh.fsdp)"
        )
    # extrapolate the line through two fitting lengths (from 4 and 8 granules on: the shortest rows do not
    # chunk their MLP and loss yet) until a length does not fit; then narrow the gap, interpolating where the
    # last step halved it and bisecting where it did not
    lo, hi, below = g, None, g
    for length in (4 * g, 8 * g):
        if not probe(length)["fits"]:
            hi = length
            break
        below, lo = lo, length
    while hi is None:
        p0, p1 = probe.pressure(below), probe.pressure(lo)
        guess = lo + (1 - p1) * (lo - below) / (p1 - p0) if p1 > p0 else 2 * lo
        length = min(max(int(guess) // g * g, lo + g), 16 * lo)
        if length > LONGEST:
            break
        if probe(length)["fits"]:
            below, lo = lo, length
        else:
            hi = length
    bisect = False
    while hi is not None and hi - lo > g:
        p_lo, p_hi = probe.pressure(lo), probe.pressure(hi)
        guess = lo + (1 - p_lo) * (hi - lo) / (p_hi - p_lo) if p_hi > p_lo and not bisect else (lo + hi) / 2
        length, width = min(max(int(guess) // g * g, lo + g), hi - g), hi - lo
        if probe(length)["fits"]:
            lo = length
        else:
            hi = length
        bisect = hi - lo > width / 2
    best = probe(lo)
    result = {"device": device, "compiler": probe.compiler, "batch": rows, "max_seq_len": lo,
              "peak": best["peak"], "host": best["host"], "memory": probe.spec.usable_memory,
              "host_memory": probe.spec.host_memory, "compiles": len(probe.known), "capped": hi is None}  # fmt: skip
    print(f"  {device}: {lo:,} tokens a row x {rows} rows fit (device {best['peak'] / GiB:.2f} of "
          f"{probe.spec.usable_memory / GiB:.1f} GiB usable, host {best['host'] / GiB:.2f} of "
          f"{probe.spec.host_memory / GiB:.0f} GiB"
          f"{'; the search stops at ' + format(LONGEST, ',') if result['capped'] else ''}); "
          f"{len(probe.known)} lengths compiled by the {probe.compiler}")  # fmt: skip
    return result


def table(results: list[dict[str, Any]]) -> str:
    """The searches as a Markdown table, one card a row."""
    lines = ["| device | longest row (tokens) | rows | device peak | usable device memory | host | host memory | "
             "compiled by |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        longest = f"{r['max_seq_len']:,}" + (" (search cap)" if r["capped"] else "")
        lines.append(f"| {r['device']} | {longest} | {r['batch']} | {r['peak'] / GiB:.2f} GiB | "
                     f"{r['memory'] / GiB:.1f} GiB | {r['host'] / GiB:.2f} GiB | {r['host_memory'] / GiB:.0f} GiB | "
                     f"{r['compiler']} |")  # fmt: skip
    return "\n".join(lines)
