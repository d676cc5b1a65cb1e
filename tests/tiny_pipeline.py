"""Every stage kind on a tiny random model and the real data in ../shared/data (for tests/test_pipeline.py).

python -m jaxtrans.main --config tests/tiny_pipeline.py:MODEL_DIR --config.output_dir=OUT
"""

import os

from ml_collections import config_dict

from jaxtrans.config import component, eval_stage, multiple_choice, run_defaults, source, train_stage, vocab_stage

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")


def _d(*parts: str) -> str:
    return os.path.join(DATA, *parts)


def get_config(model_dir: str) -> config_dict.ConfigDict:
    cfg = run_defaults()
    cfg.model.path = model_dir
    cfg.mesh.data = 2  # the test runs it on 4 forced CPU devices, so sharded steps run too
    cfg.mesh.fsdp = 2
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout = 4, 8.0, 0.05
    cfg.generation.batch_size, cfg.generation.max_new_tokens = 8, 6
    cfg.progress = False
    cfg.curriculum = ("vocab", "pretrain", "translate", "transfer", "final")
    small = dict(steps=3, warmup_steps=1, learning_rate=5e-3, seq_len=96, batch_size=4, save_every=1)
    pairs = source(_d("en-th-talpco", "talpco_en_th.jsonl"), columns={"src": "en", "tgt": "th"})
    # test_pipeline writes a multiple-choice file (real TALPCo pairs) beside the model
    mc_file = os.path.join(model_dir, "choice_th.jsonl")
    choice = (multiple_choice(mc_file, name="talpco_choice", template="{question}"),) if os.path.isfile(mc_file) else ()
    aligned = source(_d("en-th-tatoeba", "tatoeba.tha-eng.eng"), aligned=_d("en-th-tatoeba", "tatoeba.tha-eng.tha"))
    vicuna_th = source(_d("eval-vicuna-th", "vicuna_th.jsonl"), columns={"query": "th", "en_query": "en"}, limit=6)
    mt_bench = source(_d("eval-mt-bench", "question.jsonl"), columns={"prompt": "turns.0"}, limit=6)
    alpaca = source(_d("en-instruct-alpaca", "alpaca_data_1k.json"), columns={"response": "output"}, limit=4)
    sharegpt = source(_d("en-chat-sharegpt-dummy", "dummy_conversation.json"), limit=20)
    thaigov = _d("th-thaigov", "thaigov_sample.jsonl")
    cfg.stages = config_dict.ConfigDict(
        {
            "vocab": vocab_stage(source(thaigov, limit=40), new_tokens=200),
            "pretrain": train_stage(
                {"thai": component("pretrain", source(_d("th-wisesight", "pos.txt"), limit=200))}, **small
            ),
            "translate": train_stage(
                {
                    "talpco": component("translate", pairs),
                    "tatoeba": component("translate", aligned, weight=0.5, style="tagged"),
                },
                **small,
            ),
            "transfer": train_stage(
                {
                    "tcot": component("tcot", vicuna_th),
                    "recovery": component("recovery_kd", mt_bench),
                    "taco": component("taco", alpaca),
                    "chat": component("sft", sharegpt),
                },
                **small,
            ),
            "final": eval_stage(
                target_text=source(thaigov, skip=200),
                pairs=source(_d("en-th-talpco", "talpco_en_th.jsonl"), columns={"english": "en", "target": "th"}),
                en_prompts=source(_d("eval-vicuna", "question.jsonl"), columns={"prompt": "turns.0"}),
                advbench=source(_d("eval-advbench", "harmful_behaviors.csv"), columns={"prompt": "goal"}),
                questions=(source(_d("eval-vicuna-th", "vicuna_th.jsonl"), columns={"turns": "th"}),),
                multiple_choice=choice,
                limit=3,
                max_new_tokens=6,
            ),
        }
    )
    cfg.eval.target_text = source(thaigov, skip=200, limit=4)
    cfg.eval.en_prompts = source(_d("eval-vicuna", "question.jsonl"), columns={"prompt": "turns.0"}, limit=4)
    cfg.eval.target_prompts = source(_d("eval-vicuna-th", "vicuna_th.jsonl"), columns={"prompt": "th"}, limit=3)
    cfg.eval.target_questions = source("embedded:thai_questions", limit=2)
    cfg.eval.max_new_tokens = 6
    cfg.output_dir = "runs/tiny"
    cfg.lock()
    return cfg
