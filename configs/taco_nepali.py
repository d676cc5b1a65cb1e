"""English chat model -> Nepali chat model, following TaCo (Upadhayay & Behzadan 2023).

TaCo trains with LoRA (r=32, alpha=64 on q,k,v,o) on instructions whose
targets walk through English: ``Instruction in English: ... Response in
English: ... Response in Nepali: ...``. The curriculum first teaches
translation (English <-> Nepali pairs), then the TaCo instruction format.

Variants (``--config configs/taco_nepali.py:VARIANT``):

* ``llama2_7b`` (default): Llama-2-7b-chat from the hub with TaCo's released
  data (``saillab/taco-datasets``) and FLORES-200 pairs; bf16.
* ``llama31_8b``, ``qwen3_8b``: the same recipe on Llama-3.1-8B-Instruct and
  Qwen3-8B (thinking off in every prompt and trained answer), full remat and
  the loss 512 positions at a time (128k- and 152k-row vocabularies: the
  [T, V] logits would be the largest activation of the step).
* ``local``: the embedded SmolLM2 with the files in ``../shared/data`` (FLORES
  v1 en-ne pairs; TaCo targets for 68 Nepali Vicuna questions, their English
  answers by the frozen model and their Nepali answers by the model itself
  after its translation stage), scaled down to about 15 minutes on a CPU.
  Held out: FLORES devtest pairs (chrF++), the first 100 dev sentences (Nepali
  loss), the first 12 Vicuna questions (TaCo format rate, English answers).
"""

import os

from ml_collections import config_dict

from jaxtrans.config import component, large_model_memory, lora_defaults, run_defaults, source, train_stage
from jaxtrans.errors import JaxtransError

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


# the hub chat models this recipe is stated for: the variant name -> model
HUB_MODELS = {
    "llama2_7b": "meta-llama/Llama-2-7b-chat-hf",  # the paper's base
    "llama31_8b": "meta-llama/Llama-3.1-8B-Instruct",
    "qwen3_8b": "Qwen/Qwen3-8B",
}


def get_config(variant: str = "llama2_7b") -> config_dict.ConfigDict:
    cfg = run_defaults()
    cfg.language = config_dict.ConfigDict({"code": "ne", "name": "Nepali", "tag": "<NE>"})
    cfg.lora = lora_defaults(rank=32, alpha=64.0, dropout=0.05, targets="q,k,v,o")
    cfg.curriculum = ("translate", "taco")
    if variant in HUB_MODELS:
        cfg.output_dir = "runs/taco_nepali" + ("" if variant == "llama2_7b" else f"_{variant}")
        cfg.model.path = HUB_MODELS[variant]
        cfg.model.dtype = cfg.model.param_dtype = "bfloat16"
        cfg.model.remat = "save_dots"
        if variant != "llama2_7b":
            cfg.model.remat, cfg.model.loss_chunk = "full", 512
        pairs = source(
            "hf:openlanguagedata/flores_plus:npi_Deva", split="dev", columns={"src": "eng_text", "tgt": "text"}
        )
        taco = source(
            "hf:saillab/taco-datasets",
            columns={"instruction": "instruction", "target_instruction": "instruction_ne", "response": "output",
                     "target_response": "output_ne"},
        )  # fmt: skip
        cfg.stages = config_dict.ConfigDict(
            {
                "translate": train_stage({"pairs": component("translate", pairs)}, steps=1000, learning_rate=3e-4,
                                         warmup_steps=50, seq_len=512, batch_size=64),
                "taco": train_stage({"taco": component("taco", taco)}, steps=3000, learning_rate=3e-4,
                                    warmup_steps=100, seq_len=1024, batch_size=64),
            }
        )  # fmt: skip
        large_model_memory(cfg.stages)
        cfg.eval.en_prompts = source("hf:HuggingFaceH4/mt_bench_prompts", columns={"prompt": "prompt.0"})
    elif variant == "local":
        cfg.output_dir = "runs/taco_nepali_local"
        flores = os.path.join(SHARED, "en-ne-flores1", "wikipedia.{}.ne-en")
        dev, devtest = flores.format("dev"), flores.format("devtest")
        pairs = source(f"{dev}.en", aligned=f"{dev}.ne", skip=100)  # the first 100 are held-out Nepali text
        # TaCo's instructions are real target-language text (its released data is translated Alpaca): here the
        # Nepali Vicuna questions past the 12 held out, with their English originals; the English answers come
        # from the frozen model and the Nepali ones from the model itself after its translation stage
        vicuna = os.path.join(SHARED, "eval-vicuna-ne", "vicuna_en_ne.jsonl")
        questions = source(vicuna, skip=12, columns={"instruction": "en", "target_instruction": "ne"})
        cfg.lora.rank, cfg.lora.alpha = 16, 32.0
        cfg.generation.max_new_tokens = 40  # answers and translations written for the TaCo targets: short, so the
        # model learns to end its English response and reach the Nepali one (at 64 tokens: format rate 0.67)
        cfg.stages = config_dict.ConfigDict(
            {
                "translate": train_stage({"pairs": component("translate", pairs)}, steps=30, learning_rate=1e-3,
                                         warmup_steps=3, seq_len=256, batch_size=8),
                "taco": train_stage({"taco": component("taco", questions),
                                     "pairs": component("translate", pairs, weight=0.3)},
                                    steps=40, learning_rate=2e-3, warmup_steps=2, seq_len=320, batch_size=8,
                                    too_long="skip"),
            }
        )  # fmt: skip
        cfg.eval.target_text = source(f"{dev}.ne", format="text", limit=100)
        cfg.eval.pairs = source(
            f"{devtest}.en", aligned=f"{devtest}.ne", columns={"english": "src", "target": "tgt"}, limit=24
        )  # devtest: never trained on
        cfg.eval.en_prompts = source(vicuna, columns={"prompt": "en"}, limit=8)
        cfg.eval.target_prompts = source(vicuna, columns={"prompt": "ne"}, limit=12)
        cfg.eval.target_max_new_tokens = 224  # instruction, English answer and Nepali answer
    else:
        raise JaxtransError(
            f"unknown variant {variant!r} of configs/taco_nepali.py; use {', '.join(HUB_MODELS)} or local"
        )
    cfg.lock()
    return cfg
