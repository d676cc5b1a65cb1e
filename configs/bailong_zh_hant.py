"""English chat model -> Traditional Chinese chat model, following Bailong (2024).

Bailong extends the vocabulary with Traditional Chinese tokens, starts each new
embedding as the mean of the embeddings of the pieces the original tokenizer
split it into (zip-tie), and trains with QLoRA (NF4 frozen base, LoRA on every
linear layer) on Chinese text, then on instructions. New-token embedding and
LM-head rows are trained (PEFT's ``trainable_token_indices``); with a
tied-embedding base one row serves both.

Variants (``--config configs/bailong_zh_hant.py:VARIANT``):

* ``llama2_7b`` (default): Llama-2-7b (hub) with zh-Hant Wikipedia and an
  instruction set; point the sources at your own data as needed.
* ``llama31_8b``, ``qwen3_8b``: the same method on Llama-3.1-8B-Instruct and
  Qwen3-8B. Their vocabularies (128k and 152k rows) already hold common
  Chinese characters and words, which Llama-2's 32k did not, so the extension
  is smaller (8,000 and 4,000 new tokens: mostly Traditional-only words);
  measure the fertility on your corpus (``python -m jaxtrans.vocab``) before a
  long run. Full remat and the loss 512 positions at a time.
* ``local``: the embedded SmolLM2 (tied embeddings) with the Chinese XQuAD
  paragraphs and Alpaca samples from ``../shared/data``, scaled down for a CPU.
  XQuAD's Chinese is **Simplified** (and ``../shared/data`` has no Traditional
  Chinese), so this variant declares ``zh_hans``: the same method on the script
  its data is in. Preflight checks every target-language source's script
  (``jaxtrans.data.script``) and refuses Simplified text under ``zh_hant``.

The ``llama2_7b`` variant reads zh Wikipedia from the hub, which mixes both
systems (it is converted when displayed); the script check reads local files
only, so convert it (e.g. with OpenCC) or use a Traditional corpus.
"""

import functools
import os

from ml_collections import config_dict

from jaxtrans.config import component, large_model_memory, lora_defaults, run_defaults, source, train_stage, vocab_stage
from jaxtrans.errors import JaxtransError

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


# the hub models this recipe is stated for: the variant name -> (model, new tokens of the vocab stage)
HUB_MODELS = {
    "llama2_7b": ("meta-llama/Llama-2-7b-hf", 27000),  # Bailong's base and extension
    "llama31_8b": ("meta-llama/Llama-3.1-8B-Instruct", 8000),
    "qwen3_8b": ("Qwen/Qwen3-8B", 4000),
}


def get_config(variant: str = "llama2_7b") -> config_dict.ConfigDict:
    cfg = run_defaults()
    cfg.language = config_dict.ConfigDict({"code": "zh_hant", "name": "Traditional Chinese", "tag": "<ZH>"})
    cfg.lora = lora_defaults(rank=64, alpha=16.0, dropout=0.1, targets="all-linear", quantized=True)
    cfg.translator.model = "none"  # Bailong trains on given data only
    cfg.curriculum = ("vocab", "pretrain", "instruct")
    if variant in HUB_MODELS:
        cfg.output_dir = "runs/bailong_zh_hant" + ("" if variant == "llama2_7b" else f"_{variant}")
        cfg.model.path, new_tokens = HUB_MODELS[variant]
        cfg.model.dtype = "bfloat16"
        cfg.model.param_dtype = "bfloat16"
        cfg.model.remat = "save_dots"
        if variant != "llama2_7b":
            cfg.model.remat, cfg.model.loss_chunk = "full", 512
        text = source("hf:wikimedia/wikipedia:20231101.zh", streaming=True)
        cfg.stages = config_dict.ConfigDict(
            {
                "vocab": vocab_stage(source("hf:wikimedia/wikipedia:20231101.zh", limit=500_000),
                                     new_tokens=new_tokens, special_tokens=(), init="zip_tie"),
                "pretrain": train_stage({"text": component("pretrain", text)}, steps=20000, learning_rate=2e-4,
                                        warmup_steps=200, seq_len=2048, batch_size=64, streaming=True),
                "instruct": train_stage(
                    {"chat": component("sft", source("hf:yentinglin/TaiwanChat", split="train"))},
                    steps=3000, learning_rate=1e-4, warmup_steps=50, seq_len=2048, batch_size=32,
                ),
            }
        )  # fmt: skip
        large_model_memory(cfg.stages)
    elif variant == "local":
        cfg.language = config_dict.ConfigDict({"code": "zh_hans", "name": "Chinese (Simplified)", "tag": "<ZH>"})
        cfg.output_dir = "runs/bailong_zh_hans_local"
        xquad = os.path.join(SHARED, "xquad-en-th-zh", "xquad.{}.json")
        # every paragraph of XQuAD (240, ≈60k characters); the first 20 are held out
        paragraphs = functools.partial(source, xquad.format("zh"), explode="paragraphs", columns={"text": "context"})
        alpaca = os.path.join(SHARED, "en-instruct-alpaca", "alpaca_data_1k.json")
        cfg.lora.rank, cfg.lora.alpha = 16, 16.0
        cfg.stages = config_dict.ConfigDict(
            {
                "vocab": vocab_stage(paragraphs(skip=20), new_tokens=512, special_tokens=(), min_frequency=2,
                                     init="zip_tie"),
                "pretrain": train_stage({"text": component("pretrain", paragraphs(skip=20))},
                                        steps=70, learning_rate=1e-3, new_rows_learning_rate=1e-2, warmup_steps=4,
                                        seq_len=256, batch_size=8),
                "instruct": train_stage(
                    {"alpaca": component("sft", source(alpaca, limit=200)),
                     "text": component("pretrain", paragraphs(skip=20), weight=0.5)},
                    steps=10, learning_rate=2e-4, new_rows_learning_rate=1e-3, warmup_steps=1, seq_len=256,
                    batch_size=8,
                ),
            }
        )  # fmt: skip
        cfg.eval.target_text = paragraphs(limit=20)
        cfg.eval.en_text = source(xquad.format("en"), explode="paragraphs", columns={"text": "context"}, limit=20)
    else:
        raise JaxtransError(
            f"unknown variant {variant!r} of configs/bailong_zh_hant.py; use {', '.join(HUB_MODELS)} or local"
        )
    cfg.lock()
    return cfg
