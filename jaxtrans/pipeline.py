"""The transfer pipeline: run a config's curriculum of stages, resumably, and write a report.

``cfg.curriculum`` is the ordered list of stage names; ``cfg.stages[name]`` is
each stage's block, whose ``kind`` names a module in :data:`STAGE_KINDS`
(``jaxtrans.curriculum``): ``vocab`` (extend the tokenizer, initialise the new
rows; before any train stage), ``train`` (LoRA/QLoRA on a data mixture, from
the previous train stage's state) and ``eval`` (the evaluation suite).

Everything a stage produces lives under ``output_dir/stages/NAME`` (orbax
checkpoints, metrics, generation caches). Re-running the same command resumes:
finished stages are restored, not retrained; the interrupted one continues
from its last checkpoint at the same data position; generation caches are
reused line by line. Before any model weight is read, every stage's config and
local data and the mesh are checked, so a bad config fails in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from types import ModuleType
from typing import Any

import jax

from jaxtrans import platforms, sharding, stop
from jaxtrans.config import validate
from jaxtrans.curriculum import Preempted, RunState, StageKind, evaluate, identity, points, train, vocab
from jaxtrans.curriculum.lock import RunLock
from jaxtrans.curriculum.state import digest, on_host, write_json
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.lora import LoraConfig
from jaxtrans.pretrained import check_tokenizer
from jaxtrans.timing import Clock

__all__ = ["Preempted", "STAGE_KINDS", "check", "digest", "preflight", "register", "run"]

STAGE_KINDS: dict[str, StageKind | ModuleType] = {"vocab": vocab, "train": train, "eval": evaluate}


def register(kind: str, module: StageKind | ModuleType) -> None:
    """Add a stage kind: a module (or object) with ``check``, ``preflight``, ``run`` and ``fingerprint``
    (``jaxtrans.curriculum``)."""
    for fn in ("check", "preflight", "run", "fingerprint"):
        if not callable(getattr(module, fn, None)):
            raise TypeError(f"stage kind {kind!r} has no {fn}() function")
    STAGE_KINDS[kind] = module


def lora_config(cfg: Any) -> LoraConfig:
    return LoraConfig.make(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, cfg.lora.rslora)


def check(cfg: Any) -> None:
    """Config checks that need no model or data: stage names and kinds, then each kind's own checks."""
    validate(cfg)
    if not cfg.get("curriculum"):
        raise JaxtransError("the config has no curriculum; set curriculum = (stage names in order)")
    earlier: list[str] = []
    for name in cfg.curriculum:
        if name not in cfg.stages:
            raise JaxtransError(f"curriculum stage {name!r} has no block in stages (stages: {', '.join(cfg.stages)})")
        kind = cfg.stages[name].get("kind")
        if kind not in STAGE_KINDS:
            raise JaxtransError(f"stage {name!r}: kind {kind!r} is not one of {', '.join(STAGE_KINDS)}")
        STAGE_KINDS[kind].check(cfg, name, cfg.stages[name], list(earlier))
        earlier.append(kind)
    if "train" not in earlier:
        raise JaxtransError("the curriculum has no train stage; add one (a stage block with kind 'train')")
    if not lora_config(cfg).targets and not cfg.lora.get("modules_to_save") and "vocab" not in earlier:
        raise JaxtransError(
            f"lora.targets={cfg.lora.targets!r} adapts no layer, and neither a vocab stage nor lora.modules_to_save "
            "gives the run anything else to train; set lora.targets (e.g. all-linear, or q,v)"
        )
    points.spec(cfg)


def preflight(cfg: Any, mesh: Any = None) -> dict[str, int]:
    """Every stage's local data read once (no tokenising) and the batches checked against the mesh
    (default: the configured one). Returns the record count of each train data component."""
    mesh = mesh or sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    counts: dict[str, int] = {}
    for name in cfg.curriculum:
        stage = cfg.stages[name]
        counts.update(STAGE_KINDS[stage.kind].preflight(cfg, name, stage, mesh))
    points.spec(cfg).check()
    tokenizer = check_tokenizer(cfg.model.path, cfg.model.get("allow_tokenizer_mismatch", False))
    kinds = [cfg.stages[name].kind for name in cfg.curriculum]
    if "train" in kinds and ("vocab" not in kinds or kinds.index("train") < kinds.index("vocab")):
        for name in cfg.curriculum[: kinds.index("vocab") if "vocab" in kinds else None]:
            if cfg.stages[name].kind == "train":
                train.check_trained_tokens(cfg, name, cfg.stages[name], tokenizer)
    _check_untied(cfg)
    return counts


def _check_untied(cfg: Any) -> None:
    """Settings that move the frozen head or embedding table need the two apart (checked from config.json)."""
    asked = {
        "quantize_head": "stores the head as NF4 while the embedding table stays float (lookups and new-row inits "
        "read it)",
        "host_embedding": "keeps the embedding table off the device, which the tied head reads every step",
    }
    asked = {k: why for k, why in asked.items() if cfg.lora.get(k, False)}
    if not asked:
        return
    from jaxtrans.plan import model_config  # config.json only

    if model_config(cfg.model.path).tie_embeddings:
        key, why = next(iter(asked.items()))
        raise JaxtransError(
            f"lora.{key}: {cfg.model.path} ties its LM head to the embedding table, and this setting {why}; "
            f"set lora.{key}=False"
        )
    if "host_embedding" in asked and "embedding" in cfg.lora.modules_to_save:
        raise JaxtransError(
            "lora.host_embedding keeps the frozen embedding table on the host, but lora.modules_to_save trains it; "
            "drop one of the two"
        )


def _load(cfg: Any, mesh: Any, clock: Clock) -> RunState:
    """The frozen chat model and its tokenizer, as the first stage sees them."""
    from jaxtrans.data.formats import Tags
    from jaxtrans.data.mixture import Language
    from jaxtrans.pretrained import load_pretrained

    t0 = time.time()
    model, tokenizer = load_pretrained(
        cfg.model.path, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
        attention=cfg.model.attention, mesh=mesh,
    )  # fmt: skip
    print(f"loaded {cfg.model.path}: {model.config.num_params / 1e6:.1f}M parameters in {time.time() - t0:.1f}s")
    return RunState(
        cfg=cfg, mesh=mesh, model_cfg=dataclasses.replace(
            model.config, loss_chunk=cfg.model.get("loss_chunk", 0), mlp_chunk=cfg.model.get("mlp_chunk", 0)
        ),
        float_base=model.params, base=model.params, base_tokenizer=tokenizer, tokenizer=tokenizer,
        adapters=llama.Adapters(lora=lora_config(cfg)), lang=Language(cfg.language.name, Tags(target=cfg.language.tag)),
        out=cfg.output_dir, clock=clock,
    )  # fmt: skip


def _export(state: RunState) -> None:
    """The trained adapters (and new rows, and the tokenizer) as a PEFT directory under ``export/peft``."""
    from jaxtrans.export import export_peft

    trained = on_host(state.trainable)  # every process joins the gather; process 0 writes
    peft_dir = os.path.join(state.out, "export", "peft")
    if jax.process_index() == 0:
        export_peft(peft_dir, state.model_cfg, trained, state.adapters, state.cfg.model.path, overwrite=True,
                    tokenizer=state.tokenizer, tags=state.lang.tags, vocab_record=state.vocab_record)  # fmt: skip
    state.report["export"] = {"peft": peft_dir}


def run(cfg: Any) -> dict:
    """Run (or resume) the curriculum of ``cfg``; returns the report (also written as report.md / report.json)."""
    clock = Clock(since_process_start=True)  # the report's time table: the whole command, imports included
    check(cfg)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    platforms.check_host_memory(list(mesh.devices.flat), cfg.model.remat)
    with clock.phase("check the config, data and tokenizer"):
        preflight(cfg, mesh)
    with RunLock(cfg.output_dir):
        return _run(cfg, mesh, clock)


def _run(cfg: Any, mesh: Any, clock: Clock) -> dict:
    """The curriculum under the run directory's lock: settings checked against the results there, then run."""
    prints = identity.check(cfg, STAGE_KINDS, cfg.output_dir)  # before any weight is read
    write_json(os.path.join(cfg.output_dir, "config.json"), json.loads(cfg.to_json_best_effort()))
    with clock.phase("load the model"):
        state = _load(cfg, mesh, clock)
    state.report["points"] = [points.measure(state, "0_base", trained=False)]
    for name in cfg.curriculum:
        stop.check()  # SIGTERM: between stages
        stage = cfg.stages[name]
        kind = STAGE_KINDS[stage.kind]
        fresh = name in prints and identity.record(cfg.output_dir, name, prints[name])
        clock.stage = name
        try:
            with clock.phase(getattr(kind, "PHASE", stage.kind)):
                kind.run(state, name, stage)
        except BaseException:
            # a stage that failed before producing anything keeps no fingerprint, so the corrected command is
            # not refused as "made with other settings" (kinds without ``produced`` keep it, to be safe)
            if fresh and not getattr(kind, "produced", lambda _out, _name: True)(cfg.output_dir, name):
                identity.forget(cfg.output_dir, name)
            raise
    state.report["model"], state.report["language"] = cfg.model.path, cfg.language.name
    clock.stage = "end"
    if state.trainable is not None:
        with clock.phase("export the adapter (PEFT)"):
            _export(state)
    state.report["time"] = clock.table()
    write_json(os.path.join(cfg.output_dir, "report.json"), state.report)
    if jax.process_index() == 0:
        from jaxtrans.eval.report import write_markdown

        write_markdown(os.path.join(cfg.output_dir, "report.md"), state.report, state.lang.tags)
    return state.report
