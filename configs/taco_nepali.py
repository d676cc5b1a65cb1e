"""English chat model -> Nepali chat model, following TaCo (Upadhayay & Behzadan 2023).

TaCo trains with LoRA (r=32, alpha=64 on q,k,v,o) on instructions whose
targets walk through English: ``Instruction in English: ... Response in
English: ... Response in Nepali: ...``. The curriculum first teaches
translation (English <-> Nepali pairs), then the TaCo instruction format.

Variants (``--config configs/taco_nepali.py:VARIANT``):

* ``llama2_7b`` (default): Llama-2-7b-chat from the hub with TaCo's released
  data (``saillab/taco-datasets``) and FLORES-200 pairs; bf16.
* ``local``: the embedded SmolLM2 with the files in ``../shared/data`` (FLORES
  v1 en-ne, Alpaca samples; the Nepali side of TaCo targets is written by the
  model itself after its translation stage), scaled down to run on a CPU.
"""

import os

from ml_collections import config_dict

from jaxtrans.config import component, lora_defaults, run_defaults, source, train_stage
from jaxtrans.errors import JaxtransError

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def get_config(variant: str = "llama2_7b") -> config_dict.ConfigDict:
    cfg = run_defaults()
    cfg.language = config_dict.ConfigDict({"code": "ne", "name": "Nepali", "tag": "<NE>"})
    cfg.lora = lora_defaults(rank=32, alpha=64.0, dropout=0.05, targets="q,k,v,o")
    cfg.curriculum = ("translate", "taco")
    if variant == "llama2_7b":
        cfg.output_dir = "runs/taco_nepali"
        cfg.model.path = "meta-llama/Llama-2-7b-chat-hf"
        cfg.model.dtype = cfg.model.param_dtype = "bfloat16"
        cfg.model.remat = "save_dots"
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
        cfg.eval.en_prompts = source("hf:HuggingFaceH4/mt_bench_prompts", columns={"prompt": "prompt.0"})
    elif variant == "local":
        cfg.output_dir = "runs/taco_nepali_local"
        flores = os.path.join(SHARED, "en-ne-flores1", "wikipedia.dev.ne-en")
        pairs = source(f"{flores}.en", aligned=f"{flores}.ne", skip=100)
        alpaca = source(os.path.join(SHARED, "en-instruct-alpaca", "alpaca_data_1k.json"),
                        columns={"response": "output"}, limit=48)  # fmt: skip
        cfg.lora.rank, cfg.lora.alpha = 16, 32.0
        cfg.generation.max_new_tokens = 64
        cfg.stages = config_dict.ConfigDict(
            {
                "translate": train_stage({"pairs": component("translate", pairs)}, steps=30, learning_rate=1e-3,
                                         warmup_steps=3, seq_len=256, batch_size=8),
                "taco": train_stage({"taco": component("taco", alpaca)}, steps=20, learning_rate=1e-3,
                                    warmup_steps=2, seq_len=384, batch_size=8),
            }
        )  # fmt: skip
        cfg.eval.target_text = source(f"{flores}.ne", format="text", limit=100)
        cfg.eval.en_prompts = source(os.path.join(SHARED, "eval-vicuna-ne", "vicuna_en_ne.jsonl"),
                                     columns={"prompt": "en"}, limit=8)  # fmt: skip
        cfg.eval.target_prompts = source(os.path.join(SHARED, "eval-vicuna-ne", "vicuna_en_ne.jsonl"),
                                     columns={"prompt": "ne"}, limit=8)  # fmt: skip
    else:
        raise JaxtransError(f"unknown variant {variant!r} of configs/taco_nepali.py; use llama2_7b or local")
    cfg.lock()
    return cfg
