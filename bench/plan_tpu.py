"""The plan table: train steps compiled by the TPU compiler for TPU slices, on a machine without a TPU.

    pip install libtpu==0.0.42.1 && python bench/plan_tpu.py [--cases 7b_qlora_v5e1 ...]

Each case runs ``jaxtrans.plan.plan`` in its own process (``configs/thai.py:llama2_7b`` with overrides): the
step is lowered for the slice's abstract devices and compiled by libtpu; the table gives the per-chip peak from
XLA's memory analysis beside the analytic floor (``jaxtrans.costs``), their ratio, the tokens/s the analytic
FLOPs give at 40% MFU, and the compile time here. Nothing is timed on a TPU: these are the compiler's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QLORA = {"lora.quantized": True, "lora.rank": 64, "model.attention": "flash", "model.remat": "full",
         "model.loss_chunk": 512, "stages.transfer.seq_len": 2048, "curriculum": ["transfer"]}  # fmt: skip
LORA = {**QLORA, "lora.quantized": False}
CASES = {
    "7b_qlora_v5e1": ("Llama-2-7B QLoRA r=64", "v5e:1x1", {**QLORA, "mesh.data": 1, "stages.transfer.batch_size": 1}),
    "7b_qlora_v5e8": ("Llama-2-7B QLoRA r=64", "v5e:2x4", {**QLORA, "mesh.data": 1, "mesh.fsdp": 8,
                                                           "stages.transfer.batch_size": 8}),
    "7b_lora_v5e1": ("Llama-2-7B LoRA r=64, bf16 base", "v5e:1x1", {**LORA, "mesh.data": 1,
                                                                     "stages.transfer.batch_size": 1}),
    "7b_lora_v5e8": ("Llama-2-7B LoRA r=64, bf16 base", "v5e:2x4", {**LORA, "mesh.data": 1, "mesh.fsdp": 8,
                                                                     "stages.transfer.batch_size": 8}),
    "13b_qlora_v5e8": ("Llama-2-13B QLoRA r=64", "v5e:2x4", {**QLORA, "model.path": "meta-llama/Llama-2-13b-chat-hf",
                                                             "mesh.data": 1, "mesh.fsdp": 8,
                                                             "stages.transfer.batch_size": 8}),
    "70b_qlora_v5p16": ("Llama-2-70B QLoRA r=64", "v5p:2x2x4", {**QLORA, "model.path": "meta-llama/Llama-2-70b-chat-hf",
                                                                "mesh.data": 1, "mesh.fsdp": 16,
                                                                "stages.transfer.batch_size": 16}),
    "llama3_8b_16k_rows_v5e8": ("Llama-3-8B QLoRA + 16k new rows", "v5e:2x4",
                                {**QLORA, "model.path": "meta-llama/Meta-Llama-3-8B-Instruct", "mesh.data": 1,
                                 "mesh.fsdp": 8, "stages.transfer.batch_size": 8,
                                 "curriculum": ["vocab", "transfer"], "stages.vocab.new_tokens": 16000}),
}  # fmt: skip

RUN = """
import json, sys
from jaxtrans.config import load_file
from jaxtrans.plan import plan, plan_generation
cfg = load_file("configs/thai.py:llama2_7b").unlock()
overrides, device, topology, prompt_len = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
result = plan_generation(cfg, device, topology, prompt_len) if prompt_len else plan(cfg, device, 0.4, topology)
print("PLAN " + json.dumps(result))
"""


def run(case: str, cases: dict = CASES, device: str | None = None, prompt_len: int = 0) -> dict:
    """One case of ``cases`` (title, topology, overrides) planned in its own process; ``device`` defaults to the
    TPU generation the topology names; ``prompt_len`` > 0 plans the frozen model's decode instead of the step."""
    title, topology, overrides = cases[case]
    device = device or topology.split(":")[0]
    dump = tempfile.mkdtemp(prefix=f"plan-{case}-")
    flags = f"--xla_dump_to={dump} --xla_dump_hlo_pass_re=NONE --xla_dump_hlo_module_re=.*step_fn.*"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "JAXTRANS_PLAN_DUMP": dump}
    args = [json.dumps(overrides), device, topology, str(prompt_len)]
    done = subprocess.run([sys.executable, "-c", RUN, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    lines = [x for x in done.stdout.splitlines() if x.startswith("PLAN ")]
    refused = [x for x in done.stderr.splitlines() if "does NOT fit" in x]
    if refused:  # the compiler itself said no: a row of the table too
        print(refused[-1], flush=True)
        return {"case": case, "title": title, "topology": topology, "refused": refused[-1]}
    if done.returncode or not lines:
        raise SystemExit(f"{case} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    print("\n".join(x for x in done.stdout.splitlines() if not x.startswith("PLAN ")), flush=True)
    return {"case": case, "title": title, "topology": topology, **json.loads(lines[-1][5:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    rows = [run(c) for c in args.cases]
    gib = 1 << 30
    print("\n| case | slice | mesh | per-chip peak | floor | peak / floor | tokens/s at 40% MFU | compile |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "refused" in r:
            why = r["refused"].split("RESOURCE_EXHAUSTED: ")[-1].split(";")[0].rstrip(")")
            print(f"| {r['title']} | {r['topology']} | 1 | does not fit: {why} | | | | |")
            continue
        mesh = "×".join(str(v) for v in r["mesh"].values())
        print(f"| {r['title']} | {r['topology']} | {mesh} | {r['per_device_bytes']['peak'] / gib:.2f} GiB | "
              f"{r['floor_total'] / gib:.2f} GiB | {r['peak_over_floor']:.2f} | "
              f"{r['tokens_per_second_at_mfu']['tokens_per_s']:,.0f} | {r['compile_seconds']:.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
