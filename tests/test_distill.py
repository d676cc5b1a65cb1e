"""Recovery KD at the logit level: exact zero at step 0, one copy of the base, it pulls toward the base, and the
frozen model reads a tagged answer exactly as it would read the answer alone."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxtrans import sharding
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.lora import LoraConfig
from jaxtrans.train.distill import KD_MASK, DistillConfig, teacher_view
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from tests.train_job import examples, tiny_config


def _mesh():
    return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _kd_batch(seed=0, n=4, vocab=128):
    ex = examples(n=n, seed=seed, vocab=vocab)
    ex["loss_mask"] = ex["loss_mask"] * KD_MASK
    return {k: v[None] for k, v in ex.items()}


def _trainer(divergence="kl", lr=1e-2, new_tokens=0, dropout=0.1):
    cfg = tiny_config()
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, dropout, targets="all-linear"), new_tokens=new_tokens)
    optim = OptimConfig(lr, schedule="constant", total_steps=10)
    return Trainer(cfg, adapters, optim, _mesh(), distill=DistillConfig(divergence, 1.0)), cfg


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_untrained_adapter_has_exactly_zero_divergence(divergence):
    trainer, cfg = _trainer(divergence)
    base = llama.init_params(cfg, seed=1)
    state = trainer.init_state(base)
    micro = jax.tree.map(lambda x: x[0], _kd_batch())
    loss_sum, count = jax.jit(trainer.loss_fn)(state.trainable, base, micro, jax.random.key(0))
    assert float(count) == micro["loss_mask"].size and float(loss_sum) == 0.0


def test_distillation_pulls_the_adapter_back_to_the_base():
    trainer, cfg = _trainer(lr=3e-2, dropout=0.0)
    base = llama.init_params(cfg, seed=1)
    state = trainer.init_state(base)
    rng = np.random.default_rng(0)
    perturbed = jax.tree_util.tree_map_with_path(
        lambda p, x: x + rng.normal(0, 0.3, x.shape).astype(x.dtype) if p[-1].key == "b" else x, state.trainable
    )
    state = trainer.make_state(base, perturbed)
    step = trainer.compiled_step(base)
    losses = []
    batch = _kd_batch()
    for _ in range(10):
        state, m = step(state, base, batch)
        losses.append(float(m["loss"]))
    assert losses[0] > 1e-3 and losses[-1] < 0.7 * losses[0]  # the divergence from the frozen model shrinks


def test_the_step_holds_one_copy_of_the_base():
    """Same arguments as the plain LoRA step: the teacher reads the frozen params it already has."""
    trainer, cfg = _trainer()
    plain = Trainer(cfg, trainer.adapters, trainer.optim, trainer.mesh)
    base = llama.init_params(cfg, seed=1)
    batch = _kd_batch()
    sizes = []
    for t in (plain, trainer):
        state = t.init_state(base)
        mem = t.compiled_step(base).lower(state, base, batch).compile().memory_analysis()
        sizes.append(mem.argument_size_in_bytes)
    assert sizes[1] <= 1.05 * sizes[0]


def test_the_teacher_reads_a_tagged_row_as_the_row_without_its_new_tokens():
    """Two packed examples, each ``prompt <TAG> answer`` with a new id as the tag: with the tag hidden the frozen
    model's logits at every other position equal its logits on ``prompt answer``: what it would say there had
    the row no token it does not know."""
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    model = llama.Llama(cfg, llama.Adapters())
    rng = np.random.default_rng(0)
    prompts, answers, tag = [rng.integers(0, 128, 5), rng.integers(0, 128, 3)], [rng.integers(0, 128, 6)] * 2, 130
    row, plain = [], []
    for k, (p, a) in enumerate(zip(prompts, answers, strict=True), 1):
        row.append((np.concatenate([p, [tag], a]), k))
        plain.append((np.concatenate([p, a]), k))

    def packed(examples):
        tokens = np.concatenate([x for x, _ in examples])[None].astype(np.int32)
        seg = np.concatenate([np.full(len(x), k) for x, k in examples])[None].astype(np.int32)
        pos = np.concatenate([np.arange(len(x)) for x, _ in examples])[None].astype(np.int32)
        return tokens, seg, pos

    tokens, seg, pos = packed(row)
    for got, given in zip(teacher_view(*packed(plain), cfg.vocab_size), packed(plain), strict=True):
        np.testing.assert_array_equal(got, given)  # a row without new ids is read as it is
    hidden, _ = model.apply({"params": base}, *teacher_view(tokens, seg, pos, cfg.vocab_size))
    alone, _ = model.apply({"params": base}, *packed(plain))
    keep = np.asarray(tokens[0] < cfg.vocab_size)  # the row without its tags lines up with the plain row
    np.testing.assert_allclose(np.asarray(hidden)[0, keep], np.asarray(alone)[0], atol=1e-5)
    # without hiding, the tag (read as id 0) changes what the frozen model says after it
    shown, _ = model.apply({"params": base}, np.where(tokens < cfg.vocab_size, tokens, 0), seg, pos)
    assert not np.allclose(np.asarray(shown)[0, keep], np.asarray(alone)[0], atol=1e-3)


def test_a_tag_the_frozen_model_lacks_is_trained_not_distilled():
    """In a distilled row, the position whose target is a new id is cross-entropy, the one whose input is a
    new id is neither, every other position is distilled."""
    trainer, cfg = _trainer(new_tokens=4, dropout=0.0)
    base = llama.init_params(cfg, seed=1)
    state = trainer.init_state(base)
    micro = jax.tree.map(lambda x: x[0], _kd_batch(vocab=128))
    micro["tokens"][0, 5], micro["targets"][0, 4] = 129, 129  # one tag inside the first row
    loss_sum, count = jax.jit(trainer.loss_fn)(state.trainable, base, micro, jax.random.key(0))
    assert float(count) == micro["loss_mask"].size - 1 and np.isfinite(float(loss_sum))
    micro["loss_mask"][0, 4] = 0  # the position that predicts the tag, left out: one count fewer
    _, count = jax.jit(trainer.loss_fn)(state.trainable, base, micro, jax.random.key(0))
    assert float(count) == micro["loss_mask"].size - 2


def test_recovery_logits_rows_and_bad_settings(shared_data, tmp_path):
    import json
    import os

    from jaxtrans.data.mixture import Component, Language, encode
    from jaxtrans.data.sources import Source
    from jaxtrans.vocab.base import load_tokenizer

    tok = load_tokenizer("embedded:smollm2")
    path = os.path.join(shared_data, "eval-mt-bench", "question.jsonl")
    records = [{"prompt": json.loads(x)["turns"][0], "_where": "q"} for x in open(path)][:2]
    comp = Component("kd", "recovery_logits", Source(path))
    lang = Language()
    ids, mask = encode(comp, records[:1], tok, lang)[0][0]
    assert set(np.unique(mask)) <= {0, KD_MASK} and (mask == KD_MASK).sum() >= len(ids) - 2  # the prompt text
    records[1]["answer"] = "Paris is the capital of France."
    ids2, mask2 = encode(comp, records[1:], tok, lang)[0][0]
    assert 0 < (mask2 == KD_MASK).sum() < len(ids2)  # the answer's tokens only, after a chat prompt
    # answers the data lacks come from the frozen model (style chat); style prompt distils the prompt alone
    from jaxtrans.data.mixture import Fillers, fill

    fillers = Fillers(answer=lambda prompts: [f"an answer to {p[:10]}" for p in prompts])
    chat = fill(comp, [dict(records[0])], fillers)[0]
    assert chat["answer"] == f"an answer to {records[0]['prompt'][:10]}"
    alone = Component.from_config("kd", {"kind": "recovery_logits", "source": {"path": path}, "style": "prompt"})
    assert "answer" not in fill(alone, [dict(records[0])], Fillers())[0]
    ids3, mask3 = encode(alone, [{**records[1]}], tok, lang)[0][0]
    assert (mask3 == KD_MASK).sum() >= len(ids3) - 2  # the prompt text, though the record has an answer
    with pytest.raises(JaxtransError, match="style is chat\\|prompt"):
        Component.from_config("kd", {"kind": "recovery_logits", "source": {"path": path}, "style": "tagged"})
    with pytest.raises(JaxtransError, match="divergence 'kld' is not one of kl, reverse_kl, jsd"):
        DistillConfig("kld")
    cfg = tiny_config().replace(loss_chunk=8)
    with pytest.raises(JaxtransError, match="set model.loss_chunk=0"):
        Trainer(cfg, llama.Adapters(), OptimConfig(), _mesh(), distill=DistillConfig())
