"""One version of a model, ready to run: base + adapters + the tokenizer that goes with them.

Shared by evaluation, chat, the lm-evaluation-harness model and the pipeline.
``load_view`` builds one from a model path and an optional PEFT adapter
directory (what the pipeline exports).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ModelView:
    """Everything needed to run one version of the model: base + adapters + the tokenizer that goes with them."""

    cfg: ModelConfig
    adapters: llama.Adapters
    variables: Any  # {"params": base, "lora": ..., "new_rows": ...}
    tokenizer: Any


def add_allow_other_base(parser: Any) -> None:
    """The ``--allow_other_base`` flag of every command that takes ``--model`` with ``--adapter``."""
    parser.add_argument(
        "--allow_other_base",
        action="store_true",
        help="use --adapter with a --model other than the one it names (a copy under another name)",
    )


def load_view(
    model: str, adapter: str | None = None, dtype: str = "float32", allow_other_base: bool = False
) -> tuple[ModelView, Any]:
    """(ModelView, TCOT tags) for a model path plus an optional PEFT adapter directory.

    An adapter that adds tokens must bring its tokenizer (the pipeline's export
    does); the base tokenizer would silently never produce the new ids. An
    adapter trained on another base (its ``base_model_name_or_path``) is refused
    even when the shapes fit, unless ``allow_other_base`` (a local copy of the
    same model under another name).
    """
    import jaxtrans
    from jaxtrans.data.formats import Tags
    from jaxtrans.export import ADAPTER_INFO, adapter_base, import_peft, same_model
    from jaxtrans.model.config import from_hf_config
    from jaxtrans.pretrained import resolve

    if adapter and not os.path.isdir(adapter):
        raise JaxtransError(f"adapter directory {adapter} does not exist")
    adapters, trainable, tags, tokenizer = llama.Adapters(), {}, Tags(), None
    if adapter:  # the adapter is checked against the model's config before any base weight is read
        cfg = from_hf_config(resolve(model).source().hf_config(), dtype=dtype)
        adapters, trainable = import_peft(adapter, cfg)
        recorded = adapter_base(adapter)
        if recorded and not allow_other_base and not same_model(recorded, model):
            raise JaxtransError(
                f"{adapter} was trained on {recorded}, not {model}; give that model (--model {recorded}), or pass "
                "--allow_other_base if this is a copy of it under another name"
            )
        has_tokenizer = os.path.isfile(os.path.join(adapter, "tokenizer_config.json"))
        if adapters.new_tokens and not has_tokenizer:
            raise JaxtransError(
                f"{adapter} adds {adapters.new_tokens} tokens but holds no tokenizer (tokenizer_config.json); "
                "copy the extended tokenizer into it (the pipeline's export includes it)"
            )
        if has_tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(adapter)
        tags = _tags(adapter, ADAPTER_INFO)
    base, base_tokenizer = jaxtrans.load_pretrained(model, dtype=dtype)
    tokenizer = base_tokenizer if tokenizer is None else tokenizer
    want = base.config.vocab_size + adapters.new_tokens
    if len(tokenizer) > want:
        raise JaxtransError(
            f"the tokenizer has {len(tokenizer)} tokens but the model has {want} rows; "
            "use the tokenizer saved with the adapter"
        )
    return ModelView(base.config, adapters, {"params": base.params, **trainable}, tokenizer), tags


def _tags(adapter: str, info_name: str) -> Any:
    """The TCOT tags recorded with an exported adapter (defaults when it has none)."""
    from jaxtrans.data.formats import Tags

    info_path = os.path.join(adapter, info_name)
    if not os.path.isfile(info_path):
        return Tags()
    with open(info_path) as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise JaxtransError(f"{info_path} is not valid JSON ({e}); export the adapter again") from None
    return Tags(**info.get("tags", {}))
