"""The GPU plan table: train steps compiled by the XLA GPU compiler for NVIDIA GPUs, on a machine without one.

    pip install jax-cuda12-plugin==0.10.2 && python bench/plan_gpu.py [--cases 8b_qlora_torchtune_4090 ...]

Each case runs ``jaxtrans.plan.plan`` in its own process (``configs/thai.py:llama2_7b`` with overrides) on abstract
GPUs of the device table (``jaxtrans.devices``, ``jaxtrans.gpu``): ``model.attention`` stays ``auto`` (Pallas
Triton flash attention); the table gives the per-GPU peak from XLA's memory analysis beside the analytic floor
(``jaxtrans.costs``), their ratio, the tokens/s the analytic FLOPs give at 40% MFU on that card, the attention
kernel the compiler emitted and the compile time here. Nothing is timed on a GPU: these are the compiler's numbers.
The last case plans the frozen model's recovery-KD generation (64 prompts x (512 + 512) tokens) instead.
"""

from __future__ import annotations

import argparse

from plan_tpu import run

QLORA = {"lora.quantized": True, "lora.rank": 64, "model.remat": "full", "model.loss_chunk": 512,
         "stages.transfer.seq_len": 2048, "curriculum": ["transfer"], "mesh.data": 1}  # fmt: skip
# torchtune's llama3_1/8B_qlora_single_device recipe: r=8, alpha=16 on q, v, o and the MLP, no dropout, batch 2 of
# 2,048 packed tokens, activation checkpointing, chunked cross-entropy (8 chunks: 512 positions each)
TORCHTUNE = {**QLORA, "model.path": "meta-llama/Llama-3.1-8B-Instruct", "lora.rank": 8, "lora.alpha": 16.0,
             "lora.dropout": 0.0, "lora.targets": "q,v,o,gate,up,down", "stages.transfer.batch_size": 2,
             "model.loss_chunk": 256}  # fmt: skip
TILED = {"model.mlp_chunk": 256}
CASES = {
    "7b_qlora_h100": ("Llama-2-7B QLoRA r=64, batch 1", "H100", "1x1x1", {**QLORA, "stages.transfer.batch_size": 1}),
    "8b_qlora_torchtune_4090_untiled": ("Llama-3.1-8B QLoRA, torchtune's settings, whole MLP", "RTX4090", "1x1x1",
                                        TORCHTUNE),
    "8b_qlora_torchtune_4090": ("Llama-3.1-8B QLoRA, torchtune's settings", "RTX4090", "1x1x1",
                                {**TORCHTUNE, **TILED}),
    "8b_qlora_torchtune_h100": ("Llama-3.1-8B QLoRA, torchtune's settings", "H100", "1x1x1", {**TORCHTUNE, **TILED}),
    "8b_lora_bf16_h100": ("Llama-3.1-8B LoRA (torchtune's), bf16 base", "H100", "1x1x1",
                          {**TORCHTUNE, **TILED, "lora.quantized": False}),
    "qwen3_8b_qlora_4090": ("Qwen3-8B QLoRA, torchtune's settings", "RTX4090", "1x1x1",
                            {**TORCHTUNE, **TILED, "model.path": "Qwen/Qwen3-8B"}),
    "qwen3_8b_qlora_r64_h100": ("Qwen3-8B QLoRA r=64, batch 1 (configs/thai.py:qwen3_8b)", "H100", "1x1x1",
                                {**QLORA, **TILED, "model.path": "Qwen/Qwen3-8B", "stages.transfer.batch_size": 1}),
    "70b_qlora_h100x8": ("Llama-3.1-70B QLoRA r=64, fsdp", "H100", "1x1x8",
                         {**QLORA, **TILED, "model.path": "meta-llama/Llama-3.1-70B-Instruct", "mesh.fsdp": 8,
                          "stages.transfer.batch_size": 8}),
    "8b_lora_2x8": ("Llama-3.1-8B LoRA r=64, bf16 base, 2 hosts, fsdp", "H100", "1x2x8",
                    {**QLORA, **TILED, "lora.quantized": False, "model.path": "meta-llama/Llama-3.1-8B-Instruct",
                     "mesh.fsdp": 16, "stages.transfer.batch_size": 16}),
    "7b_generation_h100": ("Llama-2-7B recovery-KD generation, 64 x (512 + 512)", "H100", "1x1x1",
                           {**QLORA, "lora.quantized": False}),
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    cases = {k: (title, topology, overrides) for k, (title, _, topology, overrides) in CASES.items()}
    rows = []
    for c in args.cases:
        generation = c.endswith("_generation_h100")
        rows.append((c, run(c, cases, device=CASES[c][1], prompt_len=512 if generation else 0)))
    gib = 1 << 30
    print("\n| case | GPU | topology | mesh | per-GPU peak | floor | peak / floor | tokens/s at 40% MFU | attention | "
          "compile |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, r in rows:
        gpu = CASES[c][1]
        if "refused" in r:
            print(f"| {r['title']} | {gpu} | {r['topology']} | | does not fit | | | | | |")
        elif "kv_cache_bytes" in r:
            print(f"| {r['title']} | {gpu} | {r['topology']} | 1 | {r['peak'] / gib:.2f} GiB (weights "
                  f"{r['weights_per_device'] / gib:.2f}, KV cache {r['kv_cache_bytes'] / gib:.2f}) | | | | | "
                  f"{r['compile_seconds']:.0f} s |")  # fmt: skip
        else:
            mesh, peak = "×".join(str(v) for v in r["mesh"].values()), r["per_device_bytes"]["peak"]
            print(f"| {r['title']} | {gpu} | {r['topology']} | {mesh} | {peak / gib:.2f} GiB | "
                  f"{r['floor_total'] / gib:.2f} GiB | {r['peak_over_floor']:.2f} | "
                  f"{r['tokens_per_second_at_mfu']['tokens_per_s']:,.0f} | {r['attention_kernel']} | "
                  f"{r['compile_seconds']:.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
