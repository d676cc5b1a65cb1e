"""Public entry point: ``model, tokenizer = jaxtrans.load_pretrained(path)``; ``logits = model(input_ids)``.

``path`` may be a local HF directory (config.json + safetensors), a ``.gguf``
file, ``embedded:smollm2`` (the default demo model), or a hub name such as
``meta-llama/Llama-2-7b-chat-hf`` (downloaded with ``huggingface_hub`` when the
network is there; only json, safetensors and tokenizer files are fetched, and
no remote code is run).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrans import sharding as shd
from jaxtrans import xla_options
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig, from_hf_config
from jaxtrans.weights import smollm2
from jaxtrans.weights.loader import load_params
from jaxtrans.weights.tensors import GGUFSource, SafetensorsSource, TensorSource

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights and tokenizer live on disk."""

    kind: str  # "hf" or "gguf"
    path: str  # model directory, or the .gguf file

    def source(self) -> TensorSource:
        return GGUFSource(self.path) if self.kind == "gguf" else SafetensorsSource(self.path)


def resolve(path: str) -> ResolvedModel:
    """Turn a user's model path into files on disk, with one clear error when that is impossible."""
    if path.startswith("embedded:"):
        if path != smollm2.NAME:
            raise JaxtransError(f"unknown embedded model {path!r}; the embedded model is {smollm2.NAME!r}")
        return ResolvedModel("gguf", smollm2.smollm2_gguf())
    expanded = os.path.expanduser(path)
    if expanded.endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise JaxtransError(f"model file {path} does not exist")
        return ResolvedModel("gguf", expanded)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            ggufs = [f for f in os.listdir(expanded) if f.endswith(".gguf")]
            if len(ggufs) == 1:
                return ResolvedModel("gguf", os.path.join(expanded, ggufs[0]))
            raise JaxtransError(
                f"model directory {path} has no config.json; point at a HF model directory or a .gguf file"
            )
        return ResolvedModel("hf", expanded)
    if is_hub_name(path):
        return ResolvedModel("hf", _download(path))
    raise JaxtransError(f"model path {path} does not exist (give a local directory, a .gguf file or a hub name)")


def is_hub_name(path: str) -> bool:
    """``org/name`` that is not a local path: what jaxtrans fetches from the HuggingFace hub."""
    return bool(_HUB_NAME.match(path)) and not path.startswith((".", "/", "~")) and not os.path.exists(path)


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"],
        )
    except Exception as e:  # network, auth, missing repo: all user-fixable
        raise JaxtransError(f"could not download {repo_id} from the HuggingFace hub: {type(e).__name__}: {e}") from None


def load_tokenizer(resolved: ResolvedModel) -> Any:
    """A transformers fast tokenizer for the model."""
    from transformers import AutoTokenizer

    if resolved.kind == "gguf":
        return _gguf_tokenizer(resolved.path)
    files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if os.path.isdir(resolved.path) and not any(os.path.isfile(os.path.join(resolved.path, f)) for f in files):
        raise JaxtransError(
            f"{resolved.path} holds no tokenizer (none of {', '.join(files)}); copy the tokenizer files saved with "
            "the model into it"
        )
    try:
        return AutoTokenizer.from_pretrained(resolved.path)
    except (OSError, ValueError) as e:  # unreadable or unconvertible files: name them, not transformers' internals
        raise JaxtransError(f"the tokenizer in {resolved.path} cannot be loaded ({str(e).splitlines()[0]})") from None


_GGUF_SPECIAL = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _gguf_tokenizer(path: str) -> Any:
    """The tokenizer a GGUF file describes, built as transformers builds it, without torch.

    transformers' ``AutoTokenizer(..., gguf_file=...)`` reads the file with a
    reader that imports torch, which jaxtrans never requires. We read the
    metadata with the ``gguf`` package and hand it to transformers' own
    (torch-free) GGUF tokenizer conversion; a test checks both give the same
    tokenizer.
    """
    import gguf
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    grouped = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in _GGUF_SPECIAL.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    architecture = reader.fields["general.architecture"].contents()
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


@dataclasses.dataclass
class Pretrained:
    """A model config with its (frozen) base parameters; call it on token ids to get logits."""

    config: ModelConfig
    params: Any
    mesh: jax.sharding.Mesh | None = None

    @property
    def module(self) -> llama.Llama:
        return llama.Llama(self.config)

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        segment_ids: Any = None,
        positions: Any = None,
    ) -> jax.Array:
        """Logits [B, T, V] for token ids [B, T].

        ``attention_mask`` (1 = token, 0 = padding, left or right) or
        ``segment_ids`` (packed examples 1, 2, ...; 0 = padding) select the mask;
        positions restart at each segment unless given.
        """
        tokens = jnp.asarray(np.asarray(input_ids), jnp.int32)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if segment_ids is None and attention_mask is not None:
            segment_ids = np.asarray(attention_mask).astype(np.int32)
        seg = None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32).reshape(tokens.shape)
        pos = None if positions is None else jnp.asarray(positions, jnp.int32).reshape(tokens.shape)
        if seg is not None and pos is None:
            # Left padding: real tokens count from 0 regardless of where they start.
            pos = llama.positions_from_segments(seg)
        return _forward()(self.config, self.params, tokens, seg, pos)


@functools.cache
def _forward() -> Any:
    def forward(cfg: ModelConfig, params: Any, tokens: jax.Array, seg: Any, pos: Any) -> jax.Array:
        logits, _ = llama.Llama(cfg).apply({"params": params}, tokens, seg, pos)
        return logits

    return jax.jit(forward, static_argnums=0, compiler_options=xla_options.accurate())


def check_tokenizer(path: str, allow_mismatch: bool = False) -> Any:
    """The tokenizer found with a model, checked to fit its embedding rows (returned, so callers before the
    model loads need not read it again); reads config and tokenizer, no weights.

    Models pad their vocabulary by at most a few hundred rows (Qwen2: 271),
    so a tokenizer leaving more than ``max(1024, 2%)`` rows unused, or with
    another BOS id than the model's config, is another model's tokenizer.
    """
    resolved = resolve(path)
    hf = resolved.source().hf_config()
    tokenizer = load_tokenizer(resolved)
    rows, n = int(hf["vocab_size"]), len(tokenizer)
    if n > rows:
        raise JaxtransError(
            f"the tokenizer of {path} has {n} tokens but the model only {rows} rows; use the tokenizer saved with it"
        )
    if allow_mismatch:
        return tokenizer
    if rows - n > max(1024, rows // 50):
        raise JaxtransError(
            f"the tokenizer of {path} covers {n} of the model's {rows} rows, so it is probably another model's; "
            "use the tokenizer saved with this model (or set model.allow_tokenizer_mismatch=True)"
        )
    bos = hf.get("bos_token_id")
    if isinstance(bos, int) and tokenizer.bos_token_id is not None and tokenizer.bos_token_id != bos:
        raise JaxtransError(
            f"the tokenizer of {path} starts text with id {tokenizer.bos_token_id} but the model expects {bos}; "
            "use the tokenizer saved with this model (or set model.allow_tokenizer_mismatch=True)"
        )
    return tokenizer


def load_pretrained(
    path: str,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    remat: str = "none",
    attention: str = "auto",
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = shd.DEFAULT_RULES,
    with_tokenizer: bool = True,
) -> tuple[Pretrained, Any]:
    """Load a Llama-family model and its tokenizer. See the module docstring for ``path``.

    ``mesh``: shard the parameters over it per ``rules`` while loading (default:
    everything on the first device).
    """
    resolved = resolve(path)
    source = resolved.source()
    cfg = from_hf_config(
        source.hf_config(), dtype=dtype, param_dtype=param_dtype or dtype, remat=remat, attention=attention
    )
    shardings = None
    if mesh is not None:
        shardings = shd.logical_to_sharding(llama.abstract_params(cfg), mesh, rules)
    params = load_params(source, cfg, shardings, where=resolved.path)
    tokenizer = load_tokenizer(resolved) if with_tokenizer else None
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise JaxtransError(
            f"the tokenizer of {path} has {len(tokenizer)} tokens but the model only {cfg.vocab_size} rows; "
            "use the tokenizer saved with this model"
        )
    return Pretrained(cfg, params, mesh), tokenizer
