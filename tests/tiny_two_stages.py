"""Two small train stages on a tiny model (tests/test_reliability.py): enough to change, restart and lock runs.

python -m jaxtrans.main --config tests/tiny_two_stages.py:MODEL_DIR[,OPTION...] --config.output_dir=OUT

Options: ``qlora`` (NF4 base, with held-out Thai loss measured at every point), ``branch`` (a third stage ``c``
that starts from ``a``'s end, as an ablation would).
"""

import os

from ml_collections import config_dict

from jaxtrans.config import component, run_defaults, source, train_stage

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")


def get_config(arg: str) -> config_dict.ConfigDict:
    model_dir, *options = arg.split(",")
    cfg = run_defaults()
    cfg.model.path = model_dir
    cfg.lora.rank, cfg.lora.alpha = 2, 4.0
    cfg.progress = False
    cfg.translator.model = "none"
    pairs = source(os.path.join(DATA, "en-th-talpco", "talpco_en_th.jsonl"), columns={"src": "en", "tgt": "th"})
    small = dict(steps=3, warmup_steps=0, learning_rate=5e-3, seq_len=64, batch_size=8, save_every=1)
    cfg.curriculum = ("a", "b")
    cfg.stages = config_dict.ConfigDict({
        "a": train_stage({"pairs": component("translate", pairs)}, **small),
        "b": train_stage({"pairs": component("translate", pairs, directions="forward")}, **small),
    })  # fmt: skip
    if "qlora" in options:
        cfg.lora.quantized = True
        thaigov = os.path.join(DATA, "th-thaigov", "thaigov_sample.jsonl")
        cfg.eval.target_text = source(thaigov, limit=2)
    if "branch" in options:
        cfg.curriculum = ("a", "b", "c")
        cfg.stages.c = train_stage({"pairs": component("translate", pairs, directions="forward")}, start_from="a",
                                   **small)  # fmt: skip
    cfg.output_dir = "runs/tiny_two_stages"
    cfg.lock()
    return cfg
