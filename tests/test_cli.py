"""The command lines a user expects: ``main --help`` lists every flag; ``export`` merges a run or an adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO, tiny_hf_model

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_main_help_lists_every_flag():
    done = _run("jaxtrans.main", "--help", timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--config", "--dry_run", "--device", "--mfu", "--config.KEY=VALUE"):
        assert flag in done.stdout
    with_config = _run("jaxtrans.main", "--config", "configs/thai.py", "--help", timeout=120)
    assert with_config.returncode == 0 and "stages.pretrain.learning_rate = " in with_config.stdout


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A tiny model speaking SmolLM2's tokenizer, and a PEFT adapter for it (LoRA as if trained)."""
    import jax

    import jaxtrans
    from jaxtrans.export import export_peft
    from jaxtrans.model import llama
    from jaxtrans.model.lora import LoraConfig
    from jaxtrans.vocab.base import load_tokenizer

    tmp = tmp_path_factory.mktemp("cli")
    tok = load_tokenizer("embedded:smollm2")
    _, path = tiny_hf_model(tmp, vocab_size=len(tok), tie_word_embeddings=True)
    tok.save_pretrained(path)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="q,v,down"))
    trainable = jax.device_get(llama.init_trainable(model.config, adapters, 0))
    rng = np.random.default_rng(0)
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.05, x.shape).astype(x.dtype) if p[-1].key == "b" else np.asarray(x), trainable
    )
    peft_dir = export_peft(str(tmp / "run" / "export" / "peft"), model.config, trainable, adapters, path, tokenizer=tok)
    with open(tmp / "run" / "config.json", "w") as f:
        json.dump({"model": {"path": path}}, f)
    tokens = np.array([[1, 5, 9, 300, 7]])
    logits, _ = llama.Llama(model.config, adapters).apply({"params": model.params, **trainable}, tokens)
    return {"model": path, "peft": peft_dir, "run": str(tmp / "run"), "tmp": tmp, "logits": np.asarray(logits)}


@pytest.mark.parametrize("how", ["adapter", "run"])
def test_export_cli_merges_an_adapter_or_a_run(adapted, how):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = adapted
    out = str(a["tmp"] / f"merged-{how}")
    source = ["--model", a["model"], "--adapter", a["peft"]] if how == "adapter" else ["--run", a["run"]]
    done = _run("jaxtrans.export", *source, "--merged", out)
    assert done.returncode == 0, done.stderr[-2000:]
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(a["model"]).get_vocab()
    with torch.no_grad():
        ref = hf(torch.tensor([[1, 5, 9, 300, 7]])).logits.numpy()
    assert np.abs(ref - a["logits"]).max() <= 1e-4


def test_export_cli_bad_input(adapted, tmp_path):
    a = adapted
    cases = [
        (["--run", a["run"]], "nothing to write: give --merged DIR and/or --peft DIR"),
        (["--run", str(tmp_path), "--merged", str(tmp_path / "m")], "is not a run directory (no config.json)"),
        (
            ["--model", a["model"], "--merged", str(tmp_path / "m")],
            "give --run RUN_DIR, or --model BASE with --adapter",
        ),
        (["--run", a["run"], "--merged", a["peft"]], "already exists; choose another path or pass --overwrite"),
    ]
    for args, message in cases:
        done = _run("jaxtrans.export", *args, timeout=120)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
