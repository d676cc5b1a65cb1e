"""``python -m jaxtrans.main --config configs/thai.py[:variant] [--config.key=value ...]``.

Today the job loads the configured chat model onto the configured mesh and
answers the config's prompts with its chat template, writing them to
``<output_dir>/chat.jsonl``. The transfer pipeline's stages will run here.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from jaxtrans.config import precheck, validate
from jaxtrans.errors import JaxtransError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config: path.py[:variant]", lock_config=True)


def run(cfg) -> list[dict]:
    """Load the model and answer the config's chat prompts; returns the answers."""
    from jaxtrans import sharding
    from jaxtrans.infer.chat import chat_ids
    from jaxtrans.infer.generate import SamplingConfig, generate
    from jaxtrans.pretrained import load_pretrained

    validate(cfg)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    t0 = time.time()
    model, tokenizer = load_pretrained(
        cfg.model.path,
        dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype,
        remat=cfg.model.remat,
        attention=cfg.model.attention,
        mesh=mesh,
    )
    print(f"loaded {cfg.model.path}: {model.config.num_params / 1e6:.1f}M parameters in {time.time() - t0:.1f}s")
    prompts, stop_ids = chat_ids(tokenizer, list(cfg.chat.prompts))
    sampling = SamplingConfig(max_new_tokens=cfg.chat.max_new_tokens)
    outputs = generate(model.config, {"params": model.params}, prompts, sampling, stop_ids, tokenizer.pad_token_id or 0)
    answers = []
    for question, ids in zip(cfg.chat.prompts, outputs, strict=True):
        answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
        answers.append({"prompt": question, "answer": answer})
        print(f"\n> {question}\n{answer}")
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(os.path.join(cfg.output_dir, "chat.jsonl"), "w") as f:
        for row in answers:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return answers


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise JaxtransError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    run(_CONFIG.value)


def cli(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    argv = list(sys.argv if argv is None else argv)
    try:
        precheck(argv[1:])
        try:  # parse here, so a bad value is one line instead of absl's usage dump
            remaining = flags.FLAGS(argv)
        except flags.Error as e:
            raise JaxtransError(f"bad command line: {e}") from None
        app.run(_main, argv=argv, flags_parser=lambda _: remaining)
    except JaxtransError as e:
        print(f"jaxtrans: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
