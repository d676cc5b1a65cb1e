"""Run configs: ``ml_collections`` files under ``configs/``, chosen with ``--config path.py[:variant]``.

absl's ``config_flags`` does the parsing and the ``--config.a.b=value``
overrides. Its own messages for the common mistakes (a missing file, a key that
does not exist) are a traceback or an opaque object, so :func:`precheck` looks
at the command line first and raises one clear :class:`JaxtransError`; after
parsing, :func:`validate` checks values (enums, paths) before any work starts.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from ml_collections import config_dict

from jaxtrans.errors import JaxtransError

DTYPES = ("float32", "bfloat16", "float16")


def model_defaults() -> config_dict.ConfigDict:
    """Keys every run config has under ``model``."""
    return config_dict.ConfigDict(
        {
            "path": "embedded:smollm2",  # HF dir, .gguf file, hub name, or embedded:smollm2
            "dtype": "float32",  # compute dtype
            "param_dtype": "float32",  # storage dtype of the frozen base
            "remat": "none",  # none | full | save_dots
            "loss_chunk": 0,  # >0: the training loss over this many positions at a time (long rows, big vocabularies)
            "attention": "xla",  # xla | chunked (flash-like memory in XLA) | dot_product (cuDNN) | flash (Pallas, TPU)
        }
    )


def mesh_defaults() -> config_dict.ConfigDict:
    """Mesh sizes over (data, fsdp, tensor); one may be -1 to take the remaining devices."""
    return config_dict.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def load_file(spec: str) -> config_dict.ConfigDict:
    """Load ``path.py[:variant]`` by calling its ``get_config(variant)``."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise JaxtransError(f"config file {path} does not exist (use --config configs/thai.py or another file)")
    module_spec = importlib.util.spec_from_file_location("jaxtrans_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise JaxtransError(f"config file {path} defines no get_config(variant) function")
    return module.get_config(variant) if variant else module.get_config()


def config_arg(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _check_key(cfg: config_dict.ConfigDict, dotted: str) -> None:
    node: Any = cfg
    walked = []
    for part in dotted.split("."):
        keys = list(node.keys()) if isinstance(node, (config_dict.ConfigDict, dict)) else []
        if part not in keys:
            where = ".".join(walked) or "the config"
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"; did you mean {'.'.join(walked + close)}?" if close else f"; keys of {where}: {', '.join(keys)}"
            raise JaxtransError(f"config key {dotted!r} does not exist{hint}")
        node = node[part]
        walked.append(part)


def precheck(argv: Sequence[str]) -> None:
    """Fail fast, with one line, on a missing/broken config file or an override of an unknown key."""
    spec = config_arg(argv)
    if spec is None:
        raise JaxtransError("no --config given; run e.g. python -m jaxtrans.main --config configs/thai.py")
    cfg = load_file(spec)
    for arg in argv:
        if arg.startswith("--config.") and not arg.startswith("--config.="):
            key = arg[len("--config.") :].split("=", 1)[0]
            _check_key(cfg, key)


def validate(cfg: config_dict.ConfigDict) -> None:
    """Value checks that do not need the model: enums and numbers. Paths are checked when resolved."""
    m = cfg.model
    for key in ("dtype", "param_dtype"):
        if m[key] not in DTYPES:
            raise JaxtransError(f"model.{key}={m[key]!r} is not one of {', '.join(DTYPES)}")
    if m.remat not in ("none", "full", "save_dots"):
        raise JaxtransError(f"model.remat={m.remat!r} is not one of none, full, save_dots")
    if m.attention not in ("xla", "chunked", "dot_product", "flash"):
        raise JaxtransError(f"model.attention={m.attention!r} is not one of xla, chunked, dot_product, flash")
    for axis in ("data", "fsdp", "tensor"):
        size = cfg.mesh[axis]
        if size == 0 or size < -1:
            raise JaxtransError(f"mesh.{axis}={size}: mesh sizes are positive, or -1 for 'the remaining devices'")


def lora_defaults(**overrides: Any) -> config_dict.ConfigDict:
    """The adapter block: LoRA (PEFT semantics), QLoRA via ``quantized``, full training of ``modules_to_save``."""
    block = {
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "targets": "all-linear",  # all-linear | q,k,v,o,gate,up,down (any subset) | HF names (q_proj ...)
        "rslora": False,
        "quantized": False,  # QLoRA: the frozen block weights stored as NF4
        "modules_to_save": (),  # e.g. ("embedding",) to train whole embeddings (PEFT's modules_to_save)
    }
    block.update(overrides)
    return config_dict.ConfigDict(block)


def source(path: str, **options: Any) -> config_dict.ConfigDict:
    """A data source block (see ``jaxtrans.data.sources``); every key present so overrides can reach it."""
    block = {
        "path": path,
        "format": "auto",
        "columns": {},
        "aligned": "",
        "split": "train",
        "streaming": False,
        "limit": 0,
        "skip": 0,
        "skip_bad": False,
    }
    block.update(options)
    return config_dict.ConfigDict(block)


def component(kind: str, src: config_dict.ConfigDict, weight: float = 1.0, **options: Any) -> config_dict.ConfigDict:
    """One data component of a train stage: its kind, source and mixture weight."""
    block = {"kind": kind, "source": src, "weight": weight, "directions": "both", "style": "chat", "system": ""}
    block.update(options)
    return config_dict.ConfigDict(block)


def train_stage(data: dict[str, config_dict.ConfigDict], **overrides: Any) -> config_dict.ConfigDict:
    """A train stage block: optimisation, batch shape and its data mixture."""
    block = {
        "kind": "train",
        "steps": 100,
        "learning_rate": 2e-4,
        "schedule": "cosine",
        "warmup_steps": 0,
        "end_lr_ratio": 0.0,
        "weight_decay": 0.0,  # LoRA matrices
        # new-token rows and modules_to_save tensors: their own peak learning rate (unset: learning_rate) and
        # weight decay, on the same schedule shape; 0 freezes a group
        "new_rows_learning_rate": config_dict.placeholder(float),
        "new_rows_weight_decay": 0.0,
        "modules_learning_rate": config_dict.placeholder(float),
        "modules_weight_decay": 0.0,
        # recovery_logits components: KL(p_base || p_adapted) ("kl"), "reverse_kl" or "jsd", at this temperature
        "distill_divergence": "kl",
        "distill_temperature": 1.0,
        "seq_len": 512,
        "batch_size": 8,
        "accum": 1,
        "too_long": "truncate",  # truncate | skip | error
        "streaming": False,
        "save_every": 50,
        "eval_every": 0,
        "data": config_dict.ConfigDict(data),
    }
    block.update(overrides)
    return config_dict.ConfigDict(block)


def vocab_stage(corpus: config_dict.ConfigDict, **overrides: Any) -> config_dict.ConfigDict:
    """A vocabulary-extension stage block (Bailong): tokenizer training and new-row initialisation."""
    block = {
        "kind": "vocab",
        "corpus": corpus,
        "new_tokens": 8000,
        "special_tokens": ("<EN>", "<TH>", "<RESPONSE>"),
        "pad_to_multiple": 128,
        "min_frequency": 2,
        "init": "zip_tie",  # zip_tie | mean | random | mean_cov | omp (jaxtrans.vocab.init)
        "head_init": "zip_tie",  # untied heads: zip_tie | first
        "init_k": 64,  # omp: original rows per new token, at most
        "init_cov_scale": 1.0,  # mean_cov: covariance scale (transformers' resize uses 1e-9)
    }
    block.update(overrides)
    return config_dict.ConfigDict(block)


def eval_stage(**data: Any) -> config_dict.ConfigDict:
    """An evaluation stage block (``jaxtrans.eval.suite.EvalSpec``): data sets and limits.

    Data keys (each a ``source`` block, or left out): target_text, en_text,
    pairs (roles ``english``/``target``), en_prompts, advbench (role ``prompt``),
    questions (a tuple of sources with ``turns``, answered in FastChat's format),
    multiple_choice (a tuple of ``multiple_choice(...)`` blocks, scored by log-likelihood).
    ``limit`` caps the records of every source that sets no limit of its own.
    """
    block = {
        "kind": "eval",
        "target_text": None,
        "en_text": None,
        "pairs": None,
        "en_prompts": None,
        "advbench": None,
        "questions": (),
        "multiple_choice": (),
        "limit": 64,
        "max_new_tokens": 128,
        "model_id": "jaxtrans",
    }
    block.update(data)
    return config_dict.ConfigDict(block)


def multiple_choice(path: str, name: str = "", template: str = "", **options: Any) -> config_dict.ConfigDict:
    """A multiple-choice task for an eval stage: records with ``question``, ``choices`` (a list), ``answer``.

    ``template`` formats the prompt from ``{question}`` (default ``"{question}\\nAnswer:"``); ``options``
    are the ``source`` keys (``columns`` maps the roles to other column names).
    """
    return config_dict.ConfigDict({"name": name, "template": template, "source": source(path, **options)})


def run_defaults() -> config_dict.ConfigDict:
    """The keys every pipeline config has besides its stages."""
    cfg = config_dict.ConfigDict()
    cfg.model = model_defaults()
    cfg.mesh = mesh_defaults()
    cfg.lora = lora_defaults()
    cfg.language = config_dict.ConfigDict({"code": "th", "name": "Thai", "tag": "<TH>"})
    cfg.generation = config_dict.ConfigDict({"batch_size": 16, "max_new_tokens": 128})
    cfg.translator = config_dict.ConfigDict({"model": "self"})  # self | none | a model path
    cfg.eval = config_dict.ConfigDict(
        {"th_text": None, "en_text": None, "en_prompts": None, "th_prompts": None, "max_new_tokens": 64}
    )
    # multi-host: empty = single process, or what the cluster (TPU VM, SLURM) or JAXTRANS_* variables say
    cfg.distributed = config_dict.ConfigDict(
        {"coordinator": "", "num_processes": 0, "process_id": -1, "auto": True, "timeout_s": 300}
    )
    cfg.seed = 0
    cfg.progress = True
    cfg.output_dir = "runs/run"
    return cfg
