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

from jaxtrans.errors import JaxtransError, number, one_of
from jaxtrans.model.config import ATTENTION, REMAT_POLICIES

DTYPES = ("float32", "bfloat16", "float16")


def model_defaults() -> config_dict.ConfigDict:
    """Keys every run config has under ``model``."""
    return config_dict.ConfigDict(
        {
            "path": "embedded:smollm2",  # HF dir, .gguf file, hub name, or embedded:smollm2
            "dtype": "float32",  # compute dtype
            "param_dtype": "float32",  # storage dtype of the frozen base
            "remat": "none",  # none | full | save_dots | offload_residuals
            "loss_chunk": 0,  # >0: the training loss over this many positions at a time (long rows, big vocabularies)
            "mlp_chunk": 0,  # >0: the MLP over this many positions at a time: no [T, mlp] array exists whole
            # auto: the platform's flash kernel (Pallas on TPU, Pallas Triton on NVIDIA GPUs), the reference on CPU;
            # or xla | chunked (flash-like memory in XLA) | dot_product (cuDNN, materialised mask) | flash | triton
            "attention": "auto",
            # the tokenizer beside the weights must fit them (jaxtrans.pretrained.check_tokenizer); True skips that
            "allow_tokenizer_mismatch": False,
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
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise JaxtransError(f"config file {path} defines no get_config(variant) function")
        cfg = module.get_config(variant) if variant else module.get_config()
    except JaxtransError:
        raise
    except SyntaxError as e:
        raise JaxtransError(f"config file {path}:{e.lineno}: syntax error: {e.msg}; fix the file") from None
    except Exception as e:  # the user's code failed: name the line in their file, not ours
        raise JaxtransError(f"config file {_where(e, path)}: {type(e).__name__}: {e}; fix the file") from None
    if not isinstance(cfg, config_dict.ConfigDict):
        raise JaxtransError(
            f"config file {path}: get_config() returned {type(cfg).__name__}, not an ml_collections ConfigDict; "
            "build it with jaxtrans.config.run_defaults()"
        )
    return cfg


def _where(error: BaseException, path: str) -> str:
    """``path:line`` of the deepest frame of ``error`` in the config file (the file alone if none)."""
    import traceback

    here = os.path.abspath(path)
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == here]
    return f"{path}:{lines[-1]}" if lines else path


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
    """Value checks that do not need the model or data: enums (with a did-you-mean), numbers, the output folder."""
    m = cfg.model
    for key, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("remat", REMAT_POLICIES),
                         ("attention", ATTENTION)):  # fmt: skip
        one_of(f"model.{key}", m[key], allowed)
    number("model.loss_chunk", m.get("loss_chunk", 0), 0)
    if cfg.lora.get("quantize_head", False) and not cfg.lora.quantized:
        raise JaxtransError(
            "lora.quantize_head=True stores the head as NF4 beside an NF4 base: set lora.quantized=True"
        )
    number("model.mlp_chunk", m.get("mlp_chunk", 0), 0)
    for axis in ("data", "fsdp", "tensor"):
        size = cfg.mesh[axis]
        if size == 0 or size < -1:
            raise JaxtransError(f"mesh.{axis}={size}: mesh sizes are positive, or -1 for 'the remaining devices'")
    for key in ("max_new_tokens", "batch_size"):
        number(f"generation.{key}", cfg.generation[key], 1)
    number("eval.max_new_tokens", cfg.eval.get("max_new_tokens", 64), 1)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise JaxtransError(f"seed={cfg.seed!r} must be a whole number from 0 to 2**32 - 1")
    number("eval.loop_texts", cfg.eval.get("loop_texts", 32), 0)
    restart = cfg.get("restart_from", "")
    if restart and restart not in (cfg.get("curriculum") or ()):
        close = difflib.get_close_matches(str(restart), list(cfg.get("curriculum") or ()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" ({', '.join(cfg.get('curriculum') or ())})"
        raise JaxtransError(f"restart_from={restart!r} is not a stage of the curriculum{hint}")
    check_output_dir(cfg.output_dir)
    from jaxtrans.paths import check_apart, config_inputs

    check_apart([("output_dir", cfg.output_dir)], config_inputs(cfg))


def check_output_dir(path: str) -> None:
    """A run directory we can create and write: not empty, not a file, not under a file, not read-only."""
    if not isinstance(path, str) or not path.strip():
        raise JaxtransError("output_dir is empty; set --config.output_dir=runs/NAME")
    if os.path.exists(path) and not os.path.isdir(path):
        raise JaxtransError(f"output_dir {path} is a file, not a folder; choose another output_dir")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise JaxtransError(f"output_dir {path} is under {parent}, which is a file; choose another output_dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JaxtransError(f"output_dir {path}: {parent} is not writable; choose a folder you can write to")


def lora_defaults(**overrides: Any) -> config_dict.ConfigDict:
    """The adapter block: LoRA (PEFT semantics), QLoRA via ``quantized``, full training of ``modules_to_save``."""
    block = {
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "targets": "all-linear",  # all-linear | q,k,v,o,gate,up,down (any subset) | HF names (q_proj ...)
        "rslora": False,
        "quantized": False,  # QLoRA: the frozen block weights stored as NF4
        "quantize_head": False,  # with quantized: the untied LM head's frozen kernel as NF4 too (new rows stay)
        # the frozen embedding table kept in host memory, each batch's rows gathered there (untied heads only)
        "host_embedding": False,
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
    # ``language="en"`` marks English text (replay) among pretrain data; absent, a component is target-language
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
        "too_long": "split",  # split (documents into rows; other examples truncated) | truncate | skip | error
        "streaming": False,
        "save_every": 50,
        "eval_every": 0,
        # steps whose loss or gradients are not finite are skipped (no update), up to this many in a row; past
        # that (and with 0) the stage stops, keeping its last finite checkpoint
        "skip_nonfinite_steps": 0,
        # start from the end of this earlier train stage instead of the previous one (a branch: e.g. an ablation
        # of the transfer stage without recovery KD, from the same translation-stage state)
        "start_from": "",
        "data": config_dict.ConfigDict(data),
    }
    block.update(overrides)
    return config_dict.ConfigDict(block)


def large_model_memory(stages: config_dict.ConfigDict) -> None:
    """The memory policy of the 7B-and-up variants: AdamW's first moment in bfloat16 in every train stage
    (−0.30 GiB per chip for a 7B QLoRA r=64 step; docs/benchmarks.md)."""
    for stage in stages.values():
        if stage.kind == "train":
            stage.mu_dtype = "bfloat16"


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
    # held-out measurements before training and after every train stage (jaxtrans.curriculum.points), in the
    # eval suite's vocabulary; loop_texts: how many target texts ``eval_every`` measures inside a stage
    cfg.eval = config_dict.ConfigDict(
        {"target_text": None, "en_text": None, "en_prompts": None, "target_prompts": None, "target_questions": None,
         "max_new_tokens": 64, "loop_texts": 32}
    )  # fmt: skip
    # multi-host: empty = single process, or what the cluster (TPU VM, SLURM) or JAXTRANS_* variables say
    cfg.distributed = config_dict.ConfigDict(
        {"coordinator": "", "num_processes": 0, "process_id": -1, "auto": True, "timeout_s": 300}
    )
    cfg.seed = 0
    cfg.progress = True
    cfg.output_dir = "runs/run"
    # a stage whose settings changed since its results were made: retrain it and every later stage (earlier
    # stages' results are kept); without it such a re-run is refused (jaxtrans.curriculum.identity)
    cfg.restart_from = ""
    return cfg
