"""Stage kind ``train``: LoRA (QLoRA when ``lora.quantized``) on a mixture of data components.

Starts from the previous train stage's adapters and new-token rows (the first
starts fresh adapters and the vocab stage's rows), trains with
``jaxtrans.train.loop`` (resumable from ``stages/NAME/checkpoints``), and ends
with a held-out measurement point (``jaxtrans.curriculum.points``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxtrans import sharding
from jaxtrans.curriculum import points
from jaxtrans.curriculum.fillers import fillers
from jaxtrans.curriculum.state import Preempted, RunState, digest, read_json, write_json
from jaxtrans.data import script
from jaxtrans.data.mixture import ROLES, Component, target_texts
from jaxtrans.data.sources import read
from jaxtrans.errors import JaxtransError, number, one_of

SCRIPT_SAMPLE = 2000  # target-language texts per component whose script is checked before the run

OPTIM_KEYS = ("weight_decay", "new_rows_learning_rate", "new_rows_weight_decay", "modules_learning_rate",
              "modules_weight_decay", "end_lr_ratio", "mu_dtype")  # fmt: skip


def components(name: str, stage: Any) -> list[Component]:
    if "data" not in stage or not stage.data:
        raise JaxtransError(f"stage {name!r} has no data components; add stages.{name}.data.<component>")
    return [Component.from_config(f"{name}.{k}", v) for k, v in stage.data.items()]


def distill_config(name: str, stage: Any, cfg: Any) -> Any:
    """The stage's DistillConfig when its mixture has a recovery_logits component, else None."""
    from jaxtrans.train.distill import DistillConfig

    if not any(c.kind == "recovery_logits" for c in components(name, stage)):
        return None
    if cfg.model.get("loss_chunk", 0):
        raise JaxtransError(
            f"stage {name!r} mixes in recovery_logits, which needs the full logits; set model.loss_chunk=0 "
            "(or use recovery_kd, which trains on generated answers)"
        )
    return DistillConfig(stage.get("distill_divergence", "kl"), float(stage.get("distill_temperature", 1.0)))


def optim_config(stage: Any) -> Any:
    from jaxtrans.train.optim import OptimConfig

    return OptimConfig(
        learning_rate=stage.learning_rate, schedule=stage.schedule, warmup_steps=stage.warmup_steps,
        total_steps=stage.steps, **{k: stage[k] for k in OPTIM_KEYS if k in stage},
    )  # fmt: skip


def check(cfg: Any, name: str, stage: Any, earlier: list[str]) -> None:
    """Every value of the block: counts positive, rates finite, enums spelled right (with a did-you-mean)."""
    from jaxtrans.data.pack import POLICIES
    from jaxtrans.train.distill import DIVERGENCES
    from jaxtrans.train.optim import SCHEDULES

    key = f"stages.{name}"
    components(name, stage)
    distill_config(name, stage, cfg)
    for k in ("steps", "batch_size", "save_every"):
        number(f"{key}.{k}", stage[k], 1)
    number(f"{key}.seq_len", stage.seq_len, 2)  # a row predicts its next token: two positions at least
    number(f"{key}.accum", stage.get("accum", 1), 1)
    number(f"{key}.skip_nonfinite_steps", stage.get("skip_nonfinite_steps", 0), 0)
    number(f"{key}.eval_every", stage.get("eval_every", 0), 0)
    if not 0 <= stage.warmup_steps <= stage.steps:
        raise JaxtransError(f"{key}.warmup_steps={stage.warmup_steps} must be between 0 and steps={stage.steps}")
    number(f"{key}.learning_rate", stage.learning_rate, 0, inclusive=False)
    for k in ("new_rows_learning_rate", "modules_learning_rate", "weight_decay", "new_rows_weight_decay",
              "modules_weight_decay", "end_lr_ratio"):  # fmt: skip
        if stage.get(k) is not None:
            number(f"{key}.{k}", stage[k], 0)  # 0 freezes a group
    if stage.get("end_lr_ratio") is not None and stage.end_lr_ratio > 1:
        raise JaxtransError(f"{key}.end_lr_ratio={stage.end_lr_ratio} must be at most 1 (the rate decays to it)")
    one_of(f"{key}.schedule", stage.schedule, SCHEDULES)
    one_of(f"{key}.too_long", stage.too_long, POLICIES)
    one_of(f"{key}.distill_divergence", stage.get("distill_divergence", "kl"), DIVERGENCES)
    number(f"{key}.distill_temperature", stage.get("distill_temperature", 1.0), 0, inclusive=False)
    optim_config(stage)
    start = stage.get("start_from") or ""
    before = list(cfg.curriculum)[: list(cfg.curriculum).index(name)]
    if start and (start not in before or cfg.stages[start].kind != "train"):
        trains = [n for n in before if cfg.stages[n].kind == "train"]
        raise JaxtransError(
            f"{key}.start_from={start!r} must name a train stage before it ({', '.join(trains) or 'none'})"
        )


def fingerprint(cfg: Any, name: str, stage: Any) -> dict[str, Any]:
    """What determines the stage's result (``jaxtrans.curriculum.identity``): the model, adapters, seed,
    generation settings, the block (not its save/eval cadence) and the content of every data source."""
    from jaxtrans.curriculum.identity import flat
    from jaxtrans.data.sources import content_digest

    fp = {"model.path": cfg.model.path, "model.dtype": cfg.model.dtype, "model.param_dtype": cfg.model.param_dtype,
          "seed": cfg.seed, "generation.max_new_tokens": cfg.generation.max_new_tokens,
          "translator.model": cfg.translator.model}  # fmt: skip
    fp.update(flat(cfg.language, "language") | flat(cfg.lora, "lora"))
    fp.update(flat(stage, f"stages.{name}", skip=("save_every", "eval_every")))
    for comp in components(name, stage):
        fp[f"stages.{name}.data.{comp.name.split('.', 1)[1]}.source (content)"] = content_digest(comp.source)
    return fp


def check_batch(name: str, stage: Any, mesh: Any) -> None:
    """The batch divides over the processes and the mesh's data-parallel axes."""
    dp = sharding.data_parallel_size(mesh)
    if stage.batch_size % jax.process_count():
        raise JaxtransError(
            f"stages.{name}.batch_size={stage.batch_size} is not divisible by the {jax.process_count()} processes"
        )
    if stage.batch_size % dp:
        raise JaxtransError(
            f"stages.{name}.batch_size={stage.batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh data x fsdp); use a multiple of {dp}"
        )


def preflight(cfg: Any, name: str, stage: Any, mesh: Any, max_streaming: int = 1000) -> dict[str, int]:
    """Read every local source once (no tokenising); streaming ones on their first ``max_streaming`` records.

    Hub sources are opened when the stage runs (they need the network).
    """
    check_batch(name, stage, mesh)
    counts = {}
    for comp in components(name, stage):
        if comp.source.path.startswith("hf:"):
            continue
        records = read(comp.source, *ROLES[comp.kind])
        if comp.source.streaming or stage.get("streaming", False):
            records = itertools.islice(records, max_streaming)
        texts, counts[comp.name] = [], 0
        for r in records:
            counts[comp.name] += 1
            if len(texts) < SCRIPT_SAMPLE:
                texts += target_texts(comp, r)
        script.check(texts, cfg.language.code, f"stage {name!r}, data component {comp.name!r} ({comp.source.path})")
        if counts[comp.name] == 0:
            raise JaxtransError(
                f"data component {comp.name!r}: source {comp.source.path} yielded no records; "
                "give it data or remove it from the mixture"
            )
    return counts


# kinds whose examples are whole in the data (the others wait for answers the model generates)
SELF_CONTAINED = ("pretrain", "translate", "sft")


def check_trained_tokens(cfg: Any, name: str, stage: Any, tokenizer: Any, sample: int = 64) -> None:
    """Refuse, before any weight is read, a component none of whose first ``sample`` examples keeps a trained
    token within the stage's rows (prompts longer than ``seq_len``, or every answer cut away): the stage would
    train on nothing. Checked with the base tokenizer, so only before a vocab stage changes it."""
    from jaxtrans.data.formats import Tags
    from jaxtrans.data.mixture import Language, encode
    from jaxtrans.data.pack import pack

    lang = Language(cfg.language.name, Tags(target=cfg.language.tag))
    for comp in components(name, stage):
        if comp.kind not in SELF_CONTAINED or comp.source.path.startswith("hf:"):
            continue
        records = list(itertools.islice(read(comp.source, *ROLES[comp.kind]), sample))
        split = stage.seq_len if stage.too_long == "split" else 0
        examples, names = encode(comp, records, tokenizer, lang, split)
        policy = "truncate" if stage.too_long == "error" else stage.too_long  # "error" is raised by the run itself
        if records and pack(examples, stage.seq_len, 0, policy, names)[1].trained_tokens == 0:
            raise JaxtransError(
                f"stage {name!r}, data component {comp.name!r}: none of its first {len(records)} examples keeps a "
                f"trained token within seq_len={stage.seq_len} (too_long={stage.too_long}); raise "
                f"stages.{name}.seq_len, or fix the data"
            )


def _start(state: RunState, trainer: Any, start: str = "") -> dict:
    """The trainable state the stage starts from: ``start_from``'s end, the previous stage's, or fresh adapters
    and the vocab rows."""
    if start:
        return state.ends[start]
    if state.trainable is not None:
        return state.trainable
    init = trainer.init_state(state.base, state.cfg.seed).trainable
    if state.new_rows is not None:
        sh = trainer.trainable_shardings()["new_rows"]
        init["new_rows"] = jax.device_put({k: np.asarray(v) for k, v in state.new_rows.items()}, sh)
    return init


def _data(state: RunState, name: str, stage: Any, reports: list) -> Any:
    """The stage's batches, built when the loop first asks (a finished stage never builds them)."""
    from jaxtrans.data.mixture import build_rows, stream_rows
    from jaxtrans.train.data import InMemoryBatches, LazyBatches, StreamingBatches

    comps, seed, accum = components(name, stage), state.cfg.seed, stage.get("accum", 1)
    process = (jax.process_index(), jax.process_count())

    def make() -> Any:
        fill = fillers(state)
        if stage.get("streaming", False):
            local = stage.batch_size // jax.process_count()
            rows = lambda: stream_rows(comps, state.tokenizer, state.lang, fill, stage.seq_len, stage.too_long,  # noqa: E731
                                       seed, process)  # fmt: skip
            return StreamingBatches(rows, local, accum)
        total = stage.steps * stage.batch_size * accum
        rows, built = build_rows(comps, state.tokenizer, state.lang, fill, stage.seq_len, total, stage.too_long, seed)
        reports.extend(dataclasses.asdict(r) for r in built)
        write_json(os.path.join(state.stage_dir(name), "data.json"), reports)
        return InMemoryBatches(rows, stage.batch_size, accum, seed)

    return LazyBatches(make)


def _eval_fn(state: RunState) -> Any:
    """Held-out target loss of a trainable state, for ``eval_every`` inside the loop (None without texts)."""
    from jaxtrans.eval import measures

    texts = points.loop_texts(state.cfg)
    if not texts:
        return None

    def fn(trainable: dict) -> dict[str, float]:
        view = dataclasses.replace(state, trainable=trainable, _digest=None).view()
        return {"target_nats_per_char": measures.nats_per_char(view, texts)}

    return fn


def _empty_steps(stage_dir: str) -> int:
    """Logged steps that trained on no token (every example of their batch cut away)."""
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    by_step = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "tokens" in row:
                by_step[row["step"]] = row["tokens"]
    return sum(1 for tokens in by_step.values() if tokens == 0)


def produced(out: str, name: str) -> bool:
    """Whether the stage left a result a re-run must match: a checkpoint, or a record of a non-finite stop."""
    from jaxtrans.curriculum.identity import NONFINITE

    stage_dir = os.path.join(out, "stages", name)
    checkpoints = os.path.join(stage_dir, "checkpoints")
    steps = [d for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
    return bool(steps) or os.path.isfile(os.path.join(stage_dir, NONFINITE))


PHASE = "data (tokenise, mix, pack) and setup"


def run(state: RunState, name: str, stage: Any) -> None:
    from jaxtrans.curriculum.identity import NONFINITE
    from jaxtrans.train.loop import LoopConfig, NonFiniteError, read_losses, train
    from jaxtrans.train.step import Trainer

    if state.cfg.lora.quantized and not state.adapters.quantized:
        with state.clock.phase("NF4 quantisation of the base"):
            state.quantize_base(state.cfg.lora.get("quantize_head", False))  # after the vocab stage (float rows)
        state.report["points"].append(points.measure(state, "0_base_nf4", trained=False))
    if state.cfg.lora.get("host_embedding", False):
        state.embedding_to_host()
    trainer = Trainer(state.model_cfg, state.adapters, optim_config(stage), state.mesh,
                      modules_to_save=tuple(state.cfg.lora.modules_to_save),
                      distill=distill_config(name, stage, state.cfg),
                      host_embedding=state.cfg.lora.get("host_embedding", False))  # fmt: skip
    init = _start(state, trainer, stage.get("start_from") or "")
    if stage.get("start_from"):
        state.trainable = init  # generated fields (self-translation) come from the state this branch starts at
    digest_in, stage_dir, reports = digest(init), state.stage_dir(name), []
    loop = LoopConfig(total_steps=stage.steps, save_every=stage.save_every, eval_every=stage.get("eval_every", 0),
                      desc=name, progress=state.cfg.progress,
                      skip_nonfinite_steps=stage.get("skip_nonfinite_steps", 0))  # fmt: skip
    t0 = time.time()
    try:
        trained = train(
            trainer, state.base, _data(state, name, stage, reports), loop, stage_dir, init_trainable=init,
            eval_fn=_eval_fn(state), meta={"stage": name, "config": state.cfg.to_json_best_effort()},
            seed=state.cfg.seed, timed=state.clock.phase,
        )  # fmt: skip
    except NonFiniteError as e:  # recorded: a re-run with a lower rate retrains this stage (curriculum.identity)
        write_json(os.path.join(stage_dir, NONFINITE), {"step": e.step, "last_checkpoint": e.last_checkpoint})
        raise
    state.trainable = state.ends[name] = trained.trainable
    done = int(jax.device_get(trained.step))
    if done < stage.steps:  # preempted (SIGTERM): the checkpoint is saved; the same command resumes here
        raise Preempted(
            f"stopped by SIGTERM in stage {name!r} at step {done} of {stage.steps} (saved); "
            "re-run the same command to resume"
        )
    if jax.process_index() == 0 and os.path.isfile(os.path.join(stage_dir, NONFINITE)):
        os.remove(os.path.join(stage_dir, NONFINITE))  # finished: its settings are fixed from here on
    losses = list(read_losses(os.path.join(stage_dir, "metrics.jsonl")).values())
    empty = _empty_steps(stage_dir)
    if empty and empty == stage.steps:
        raise JaxtransError(
            f"stage {name!r} trained on 0 tokens in all {empty} steps: no example kept a trained token within "
            f"seq_len={stage.seq_len} (prompts longer than the row, or every answer cut away); raise "
            f"stages.{name}.seq_len (or fix the data) and re-run with --config.restart_from={name}"
        )
    state.record("stages", name, {
        "kind": "train", "steps": stage.steps, "seconds_this_run": round(time.time() - t0, 1),
        "start_from": stage.get("start_from") or None,
        "digest_in": digest_in, "new_rows_digest_in": digest(init["new_rows"]) if "new_rows" in init else None,
        "digest_out": state.state_digest(), "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "steps_without_trained_tokens": empty,
        "data": reports or read_json(os.path.join(stage_dir, "data.json")),
    })  # fmt: skip
    index = list(state.cfg.curriculum).index(name) + 1
    state.report.setdefault("points", []).append(points.measure(state, f"{index}_{name}", True))
