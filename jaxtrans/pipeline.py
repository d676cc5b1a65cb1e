"""The transfer pipeline: run a config's curriculum of stages, resumably, and write a report.

``cfg.curriculum`` is the ordered list of stage names; ``cfg.stages[name]`` is
each stage's block, whose ``kind`` is

* ``vocab``: extend the tokenizer with target-language tokens (Bailong) and
  start the new rows with zip-tie (must come before any train stage);
* ``train``: LoRA (QLoRA when ``lora.quantized``) on a mixture of data
  components (see ``jaxtrans.data.stages``), starting from the previous train
  stage's adapters and new-token rows.

Everything a stage produces lives under ``output_dir/stages/NAME`` (orbax
checkpoints, metrics, generation caches). Re-running the same command resumes:
finished stages are restored, not retrained; the interrupted one continues
from its last checkpoint at the same data position; generation caches are
reused line by line. Before any stage runs, the curriculum, every data
component and the mesh are checked, so a bad config fails in seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxtrans import sharding
from jaxtrans.config import validate
from jaxtrans.data import formats
from jaxtrans.data.generated import cached_generate
from jaxtrans.data.sources import Source, read
from jaxtrans.data.stages import Component, Fillers, Language, build_rows, stream_rows
from jaxtrans.errors import JaxtransError
from jaxtrans.eval import measures
from jaxtrans.eval.suite import EvalSpec, evaluate
from jaxtrans.model import llama
from jaxtrans.model.lora import LoraConfig

STAGE_KINDS = ("vocab", "train", "eval")


class Preempted(Exception):
    """A stage saved its state on SIGTERM and stopped; re-running the command resumes it."""


# ---------------------------------------------------------------- config checks


def _components(name: str, stage: Any) -> list[Component]:
    if "data" not in stage or not stage.data:
        raise JaxtransError(f"stage {name!r} has no data components; add stages.{name}.data.<component>")
    return [Component.from_config(f"{name}.{k}", v) for k, v in stage.data.items()]


def _distill(name: str, stage: Any, cfg: Any) -> Any:
    """The stage's DistillConfig when its mixture has a recovery_logits component, else None."""
    from jaxtrans.train.distill import DistillConfig

    if not any(c.kind == "recovery_logits" for c in _components(name, stage)):
        return None
    if cfg.model.get("loss_chunk", 0):
        raise JaxtransError(
            f"stage {name!r} mixes in recovery_logits, which needs the full logits; set model.loss_chunk=0 "
            "(or use recovery_kd, which trains on generated answers)"
        )
    return DistillConfig(stage.get("distill_divergence", "kl"), float(stage.get("distill_temperature", 1.0)))


def _extend_config(cfg: Any, stage: Any) -> Any:
    from jaxtrans.vocab.extend import ExtendConfig

    return ExtendConfig(
        language=cfg.language.code,
        new_tokens=stage.new_tokens,
        special_tokens=tuple(stage.special_tokens),
        pad_to_multiple=stage.pad_to_multiple,
        min_frequency=stage.min_frequency,
        init=stage.init,
        head_init=stage.head_init,
        init_k=stage.get("init_k", 64),
        init_cov_scale=stage.get("init_cov_scale", 1.0),
    )


def _optim_config(stage: Any) -> Any:
    from jaxtrans.train.optim import OptimConfig

    keys = ("weight_decay", "new_rows_learning_rate", "new_rows_weight_decay", "modules_learning_rate",
            "modules_weight_decay", "end_lr_ratio")  # fmt: skip
    return OptimConfig(
        learning_rate=stage.learning_rate,
        schedule=stage.schedule,
        warmup_steps=stage.warmup_steps,
        total_steps=stage.steps,
        **{k: stage[k] for k in keys if k in stage},
    )


def check(cfg: Any) -> None:
    """Config checks that need no model or data: stage names and kinds, component blocks, numbers."""
    validate(cfg)
    if not cfg.get("curriculum"):
        raise JaxtransError("the config has no curriculum; set curriculum = (stage names in order)")
    seen_train = False
    for name in cfg.curriculum:
        if name not in cfg.stages:
            raise JaxtransError(f"curriculum stage {name!r} has no block in stages (stages: {', '.join(cfg.stages)})")
        stage = cfg.stages[name]
        if stage.kind not in STAGE_KINDS:
            raise JaxtransError(f"stage {name!r}: kind {stage.kind!r} is not one of {', '.join(STAGE_KINDS)}")
        if stage.kind == "vocab" and seen_train:
            raise JaxtransError(f"vocab stage {name!r} must come before every train stage")
        if stage.kind == "vocab":
            _extend_config(cfg, stage)  # bad sizes, tags or init methods are refused before any model work
        if stage.kind == "eval":
            _eval_spec(cfg, stage)
        if stage.kind == "train":
            seen_train = True
            _components(name, stage)
            _distill(name, stage, cfg)
            for key in ("steps", "batch_size", "seq_len"):
                if stage[key] <= 0:
                    raise JaxtransError(f"stages.{name}.{key} must be positive, got {stage[key]}")
            if stage.get("accum", 1) <= 0:
                raise JaxtransError(f"stages.{name}.accum must be positive")
            if not 0 <= stage.warmup_steps <= stage.steps:
                raise JaxtransError(
                    f"stages.{name}.warmup_steps={stage.warmup_steps} must be between 0 and steps={stage.steps}"
                )
            _optim_config(stage)  # learning rates, decays and the schedule, before any model work
    LoraConfig.make(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, cfg.lora.rslora)


def check_batches(cfg: Any, mesh: Any) -> None:
    """Every train stage's batch divides over the processes and the mesh's data-parallel axes."""
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    for name in cfg.curriculum:
        stage = cfg.stages[name]
        if stage.kind != "train":
            continue
        if stage.batch_size % jax.process_count():
            raise JaxtransError(
                f"stages.{name}.batch_size={stage.batch_size} is not divisible by the {jax.process_count()} processes"
            )
        if stage.batch_size % dp:
            raise JaxtransError(
                f"stages.{name}.batch_size={stage.batch_size} is not divisible by the data-parallel size {dp} "
                f"(mesh data x fsdp); use a multiple of {dp}"
            )


def preflight(cfg: Any, max_streaming: int = 1000) -> dict[str, int]:
    """Read every local data source once (no tokenising) so bad data fails before any model work.

    Streaming sources are checked on their first ``max_streaming`` records;
    hub sources are opened when their stage runs (they need the network).
    Returns the record count of each component.
    """
    import itertools

    from jaxtrans.data.stages import ROLES

    counts = {}
    for name in cfg.curriculum:
        stage = cfg.stages[name]
        if stage.kind == "eval":
            _eval_spec(cfg, stage).check()
        if stage.kind != "train":
            continue
        for comp in _components(name, stage):
            if comp.source.path.startswith("hf:"):
                continue
            records = read(comp.source, *ROLES[comp.kind])
            if comp.source.streaming or stage.get("streaming", False):
                records = itertools.islice(records, max_streaming)
            counts[comp.name] = sum(1 for _ in records)
            if counts[comp.name] == 0:
                raise JaxtransError(
                    f"data component {comp.name!r}: source {comp.source.path} yielded no records; "
                    "give it data or remove it from the mixture"
                )
    return counts


# ---------------------------------------------------------------- run state


@dataclasses.dataclass
class Run:
    """What the stages share and hand to each other."""

    cfg: Any
    mesh: Any
    model_cfg: Any
    float_base: Any  # the frozen base as loaded, for zip-tie; dropped once the base is quantised
    base: Any  # the frozen base the train step reads (NF4 when quantized)
    base_tokenizer: Any
    tokenizer: Any
    adapters: llama.Adapters
    lang: Language
    out: str
    new_rows: dict | None = None
    vocab_record: dict | None = None  # jaxtrans_vocab.json of the extended tokenizer: exported with the adapter
    trainable: dict | None = None
    eval_texts: list[str] = dataclasses.field(default_factory=list)  # held-out target text for in-stage evals
    report: dict = dataclasses.field(default_factory=dict)

    _digest: tuple[Any, str] | None = None

    def state_digest(self) -> str:
        """digest() of the current trainable state, computed once per state (it gathers and hashes every array)."""
        if self._digest is None or self._digest[0] is not self.trainable:
            self._digest = (self.trainable, digest(self.trainable))
        return self._digest[1]

    def view(self, trained: bool = True) -> measures.ModelView:
        """The model with the current adapters, or (``trained=False``) the frozen chat model itself."""
        if not trained or self.trainable is None:
            frozen = llama.Adapters(quantized=self.adapters.quantized)
            return measures.ModelView(self.model_cfg, frozen, {"params": self.base}, self.base_tokenizer)
        variables = {"params": self.base, **{k: v for k, v in self.trainable.items() if k != "base"}}
        if "base" in self.trainable:
            variables["params"] = {**self.base, **self.trainable["base"]}
        return measures.ModelView(self.model_cfg, self.adapters, variables, self.tokenizer)


def on_host(tree: Any) -> Any:
    """numpy copies of a tree's arrays; arrays spread over several processes are gathered (a collective)."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def digest(tree: Any) -> str:
    """A short hash of a pytree's values, to show in the report which state a stage started and ended with."""
    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(on_host(tree)), key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(leaf.tobytes())
    return h.hexdigest()[:16]


def _write_json(path: str, obj: Any) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, default=str)
    os.replace(tmp, path)


# ---------------------------------------------------------------- generation fillers


def _generator(run: Run, view: measures.ModelView, label: str, stage_dir: str, what: str) -> Any:
    gen = run.cfg.generation

    def batch_fn(prompts: list[str]) -> list[str]:
        return measures.answers(view, prompts, gen.max_new_tokens, gen.batch_size)

    def fn(texts: list[str]) -> list[str]:
        settings = f"{label}|{gen.max_new_tokens}"
        path = os.path.join(stage_dir, "generated", f"{what}.jsonl")
        return cached_generate(path, texts, batch_fn, settings, gen.batch_size, desc=what)

    return fn


@functools.cache
def _translator(path: str, dtype: str, mesh: Any) -> tuple[Any, Any]:
    """A separate translation model, loaded once for all the stages that use it."""
    from jaxtrans.pretrained import load_pretrained

    return load_pretrained(path, dtype=dtype, mesh=mesh)


def fillers(run: Run, stage_dir: str) -> Fillers:
    """English answers from the frozen base; translations from the configured translator."""
    answer = _generator(run, run.view(trained=False), f"base:{run.cfg.model.path}", stage_dir, "answers")
    t = run.cfg.translator
    to_target = to_english = None
    if t.model == "self":
        if run.trainable is None:
            to_target = None  # nothing trained yet: a stage needing translations fails with a clear message
        else:
            view = run.view()
            label = f"self:{run.state_digest()}"
            fwd = _generator(run, view, label, stage_dir, "to_target")
            bwd = _generator(run, view, label, stage_dir, "to_english")

            def to_target(texts: list[str]) -> list[str]:
                prompts = [formats.translate_prompt(x, "English", run.lang.name) for x in texts]
                return fwd(prompts)

            def to_english(texts: list[str]) -> list[str]:
                return bwd([formats.translate_prompt(x, run.lang.name, "English") for x in texts])
    elif t.model != "none":
        other, tok = _translator(t.model, run.cfg.model.dtype, run.mesh)
        view = measures.ModelView(other.config, llama.Adapters(), {"params": other.params}, tok)
        fwd = _generator(run, view, f"model:{t.model}", stage_dir, "to_target")

        def to_target(texts: list[str]) -> list[str]:
            return fwd([formats.translate_prompt(x, "English", run.lang.name) for x in texts])

    return Fillers(answer=answer, to_target=to_target, to_english=to_english)


# ---------------------------------------------------------------- stages


def run_vocab(run: Run, name: str, stage: Any) -> None:
    from jaxtrans.vocab import extend as vx
    from jaxtrans.vocab.init import prepare

    out_dir = os.path.join(run.out, "tokenizer")
    request_path = os.path.join(run.out, "stages", name, "request.json")
    corpus = stage.corpus if isinstance(stage.corpus, str) else stage.corpus.to_dict()
    request = {"model": run.cfg.model.path, "language": run.cfg.language.code, "corpus": corpus}
    request.update({k: stage[k] for k in ("new_tokens", "special_tokens", "pad_to_multiple", "min_frequency")})
    request.update(init=stage.init, head_init=stage.head_init)
    request.update({k: stage[k] for k in ("init_k", "init_cov_scale") if k in stage})
    request = json.loads(json.dumps(request))  # tuples -> lists, as read back
    if not os.path.isfile(os.path.join(out_dir, vx.REPORT)):
        src = Source.from_config(stage.corpus)
        texts = [r["text"] for r in read(src, ("text",))]
        corpus_file = os.path.join(run.out, "stages", name, "corpus.txt")
        os.makedirs(os.path.dirname(corpus_file), exist_ok=True)
        with open(corpus_file, "w", encoding="utf-8") as f:
            f.writelines(t.replace("\n", " ") + "\n" for t in texts)
        xcfg = _extend_config(run.cfg, stage)
        vx.extend(run.cfg.model.path, [corpus_file], xcfg, out_dir, overwrite=True)
        _write_json(request_path, request)
    elif _read_json(request_path) not in (None, request):
        raise JaxtransError(
            f"{out_dir} holds a tokenizer extended with other settings than stage {name!r} now asks for; use a new "
            "output_dir (or delete that directory and the stages trained on it)"
        )
    from transformers import AutoTokenizer

    run.tokenizer = AutoTokenizer.from_pretrained(out_dir)
    run.adapters, run.new_rows = prepare(run.model_cfg, run.float_base, out_dir)  # the recorded init method
    report = vx.load_report(out_dir)
    run.vocab_record = report
    run.report.setdefault("stages", {})[name] = {
        "kind": "vocab",
        "new_tokens": report["new_tokens"],
        "padding_rows": report["padding_rows"],
        "vocab_size": report["vocab_size"],
        "init": stage.init,
        "new_rows_digest": digest(run.new_rows),
    }


def run_train(run: Run, name: str, stage: Any) -> None:
    from jaxtrans.train.data import InMemoryBatches, LazyBatches, StreamingBatches
    from jaxtrans.train.loop import LoopConfig, train
    from jaxtrans.train.step import Trainer

    stage_dir = os.path.join(run.out, "stages", name)
    components = _components(name, stage)
    optim = _optim_config(stage)
    trainer = Trainer(run.model_cfg, run.adapters, optim, run.mesh, modules_to_save=tuple(run.cfg.lora.modules_to_save),
                      distill=_distill(name, stage, run.cfg))  # fmt: skip
    accum = stage.get("accum", 1)
    if run.trainable is None:  # the first train stage: fresh adapters, zip-tie rows
        init = trainer.init_state(run.base, run.cfg.seed).trainable
        if run.new_rows is not None:
            sh = trainer.trainable_shardings()["new_rows"]
            init["new_rows"] = jax.device_put({k: np.asarray(v) for k, v in run.new_rows.items()}, sh)
    else:
        init = run.trainable
    digest_in = digest(init)
    data_report: list = []
    process = (jax.process_index(), jax.process_count())
    seed = run.cfg.seed

    def make_data() -> Any:
        fill = fillers(run, stage_dir)
        if stage.get("streaming", False):
            local = stage.batch_size // jax.process_count()
            return StreamingBatches(
                lambda: stream_rows(
                    components, run.tokenizer, run.lang, fill, stage.seq_len, stage.too_long, seed, process
                ),  # fmt: skip
                local,
                accum,
            )
        rows, reports = build_rows(
            components, run.tokenizer, run.lang, fill, stage.seq_len, stage.steps * stage.batch_size * accum,
            stage.too_long, seed,
        )  # fmt: skip
        data_report.extend(reports)
        _write_json(os.path.join(stage_dir, "data.json"), [dataclasses.asdict(r) for r in reports])
        return InMemoryBatches(rows, stage.batch_size, accum, seed)

    eval_texts = run.eval_texts

    def eval_fn(trainable: dict) -> dict[str, float]:
        saved = run.trainable
        run.trainable = trainable
        try:
            return {"th_nats_per_char": measures.nats_per_char(run.view(), eval_texts)} if eval_texts else {}
        finally:
            run.trainable = saved

    loop = LoopConfig(
        total_steps=stage.steps,
        save_every=stage.save_every,
        eval_every=stage.get("eval_every", 0),
        desc=name,
        progress=run.cfg.progress,
    )
    t0 = time.time()
    state = train(
        trainer, run.base, LazyBatches(make_data), loop, stage_dir,
        init_trainable=init, eval_fn=eval_fn if eval_texts else None,
        meta={"stage": name, "config": run.cfg.to_json_best_effort()}, seed=seed,
    )  # fmt: skip
    run.trainable = state.trainable
    done = int(jax.device_get(state.step))
    if done < stage.steps:  # preempted (SIGTERM): the checkpoint is saved; the same command resumes here
        raise Preempted(f"stage {name!r} stopped at step {done} of {stage.steps}; re-run the same command to resume")
    losses = _losses(os.path.join(stage_dir, "metrics.jsonl"))
    run.report.setdefault("stages", {})[name] = {
        "kind": "train",
        "steps": stage.steps,
        "seconds_this_run": round(time.time() - t0, 1),
        "digest_in": digest_in,
        "new_rows_digest_in": digest(init["new_rows"]) if "new_rows" in init else None,
        "digest_out": run.state_digest(),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "data": [dataclasses.asdict(r) for r in data_report] or _read_json(os.path.join(stage_dir, "data.json")),
    }


def _losses(path: str) -> list[float]:
    if not os.path.isfile(path):
        return []
    by_step: dict[int, float] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                by_step[row["step"]] = row["loss"]  # a resumed run rewrites the steps after its checkpoint
    return [by_step[k] for k in sorted(by_step)]


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------- evaluation points


def _eval_sets(cfg: Any) -> dict[str, list[str]]:
    e = cfg.eval
    out: dict[str, list[str]] = {}
    for key, role in (("th_text", "text"), ("en_text", "text"), ("en_prompts", "prompt"), ("th_prompts", "prompt")):
        block = e.get(key)
        if block:
            src = Source.from_config(block)
            out[key] = [r[role] for r in read(src, (role,))]
    return out


def measure(run: Run, label: str, sets: dict[str, list[str]], trained: bool, answers: bool = True) -> dict:
    """Held-out losses; and greedy answers to the eval prompts when ``answers`` (the first and last points)."""
    path = os.path.join(run.out, "eval", f"{label}.json")
    state = run.state_digest() if trained and run.trainable is not None else "base"
    cached = _read_json(path)
    if cached is not None and cached.get("state") == state:  # the same model state was measured before
        return cached
    view = run.view(trained)
    n = run.cfg.eval.max_new_tokens
    result: dict[str, Any] = {"label": label, "state": state}
    if "th_text" in sets:
        result["th_nats_per_char"] = measures.nats_per_char(view, sets["th_text"])
    if "en_text" in sets:
        result["en_nats_per_char"] = measures.nats_per_char(view, sets["en_text"])
    if "en_prompts" in sets and answers:
        result["en_answers"] = measures.answers(view, sets["en_prompts"], n)
    if "th_prompts" in sets and answers:
        result["th_answers"] = measures.answers(view, sets["th_prompts"], n)
    _write_json(path, result)
    return result


def _eval_spec(cfg: Any, stage: Any) -> EvalSpec:
    return EvalSpec.from_config(stage, cfg.language.code, cfg.language.name)


def run_eval(run: Run, name: str, stage: Any) -> dict:
    """The evaluation suite on the current model and on the original one, into ``eval/NAME``.

    A finished evaluation of the same model state is reused (resuming a run
    does not evaluate twice). Every process computes; process 0 writes into ``eval/NAME``.
    """
    import tempfile

    out = os.path.join(run.out, "eval", name)
    state = run.state_digest() if run.trainable is not None else "base"
    done = _read_json(os.path.join(out, "eval.json"))
    if done is not None and done.get("state") == state:
        print(f"stage {name}: evaluation of this state found in {out}")
    else:
        spec = _eval_spec(run.cfg, run.cfg.stages[name])
        spec = dataclasses.replace(spec, model_id=f"{spec.model_id}-{name}")
        where = out if jax.process_index() == 0 else tempfile.mkdtemp()
        done = evaluate(run.view(), run.lang.tags, spec, where, run.view(trained=False), title=name, state=state)
    run.report.setdefault("evals", {})[name] = {"dir": out, "state": state}
    return done


# ---------------------------------------------------------------- the run


def run(cfg: Any) -> dict:
    """Run (or resume) the curriculum of ``cfg``; returns the report (also written as report.md / report.json)."""
    from jaxtrans.model import nf4
    from jaxtrans.pretrained import load_pretrained

    check(cfg)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    check_batches(cfg, mesh)
    preflight(cfg)
    out = cfg.output_dir
    _write_json(os.path.join(out, "config.json"), json.loads(cfg.to_json_best_effort()))
    t0 = time.time()
    model, tokenizer = load_pretrained(
        cfg.model.path, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
        attention=cfg.model.attention, mesh=mesh,
    )  # fmt: skip
    print(f"loaded {cfg.model.path}: {model.config.num_params / 1e6:.1f}M parameters in {time.time() - t0:.1f}s")
    model_cfg = dataclasses.replace(model.config, loss_chunk=cfg.model.get("loss_chunk", 0))
    lora = LoraConfig.make(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, cfg.lora.rslora)
    tags = formats.Tags(target=cfg.language.tag)
    r = Run(
        cfg=cfg, mesh=mesh, model_cfg=model_cfg, float_base=model.params, base=model.params,
        base_tokenizer=tokenizer, tokenizer=tokenizer, adapters=llama.Adapters(lora=lora),
        lang=Language(cfg.language.name, tags), out=out,
    )  # fmt: skip
    del model  # the Run holds the parameters now; quantising can then free the float copy
    sets = _eval_sets(cfg)
    r.eval_texts = sets.get("th_text", [])[: cfg.eval.get("loop_texts", 32)]
    points = [measure(r, "0_base", sets, trained=False)]
    quantized = False
    last_train = [n for n in cfg.curriculum if cfg.stages[n].kind == "train"][-1]
    for i, name in enumerate(cfg.curriculum, 1):
        stage = cfg.stages[name]
        if stage.kind == "eval":
            run_eval(r, name, stage)
            continue
        if stage.kind == "vocab":
            run_vocab(r, name, stage)
            r.adapters = dataclasses.replace(r.adapters, lora=lora)
            continue
        if cfg.lora.quantized and not quantized:  # after zip-tie, which reads the float embeddings
            sh = sharding.logical_to_sharding(
                llama.abstract_params(r.model_cfg, dataclasses.replace(r.adapters, quantized=True)), mesh
            )
            r.base = nf4.quantize_params(r.float_base, sh)
            r.float_base = None
            r.adapters = dataclasses.replace(r.adapters, quantized=True)
            quantized = True
        run_train(r, name, stage)
        points.append(measure(r, f"{i}_{name}", sets, trained=True, answers=name == last_train))
    r.report["points"] = points
    r.report["model"] = cfg.model.path
    if r.trainable is not None:
        from jaxtrans.export import export_peft

        trained = on_host(r.trainable)  # every process joins the gather; process 0 writes
        peft_dir = os.path.join(out, "export", "peft")
        if jax.process_index() == 0:
            export_peft(peft_dir, r.model_cfg, trained, r.adapters, cfg.model.path, overwrite=True,
                        tokenizer=r.tokenizer, tags=tags, vocab_record=r.vocab_record)  # fmt: skip
        r.report["export"] = {"peft": peft_dir}
    _write_json(os.path.join(out, "report.json"), r.report)
    if jax.process_index() == 0:
        from jaxtrans.eval.report import write_markdown

        write_markdown(os.path.join(out, "report.md"), r.report, tags)
    return r.report
