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


def load_view(model: str, adapter: str | None = None, dtype: str = "float32") -> tuple[ModelView, Any]:
    """(ModelView, TCOT tags) for a model path plus an optional PEFT adapter directory.

    An adapter that adds tokens must bring its tokenizer (the pipeline's export
    does); the base tokenizer would silently never produce the new ids.
    """
    import jaxtrans
    from jaxtrans.data.formats import Tags
    from jaxtrans.export import ADAPTER_INFO, import_peft

    if adapter and not os.path.isdir(adapter):
        raise JaxtransError(f"adapter directory {adapter} does not exist")
    base, tokenizer = jaxtrans.load_pretrained(model, dtype=dtype)
    adapters, trainable, tags = llama.Adapters(), {}, Tags()
    if adapter:
        adapters, trainable = import_peft(adapter, base.config)
        has_tokenizer = os.path.isfile(os.path.join(adapter, "tokenizer_config.json"))
        if adapters.new_tokens and not has_tokenizer:
            raise JaxtransError(
                f"{adapter} adds {adapters.new_tokens} tokens but holds no tokenizer (tokenizer_config.json); "
                "copy the extended tokenizer into it (the pipeline's export includes it)"
            )
        if has_tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(adapter)
        info_path = os.path.join(adapter, ADAPTER_INFO)
        if os.path.isfile(info_path):
            with open(info_path) as f:
                info = json.load(f)
            tags = Tags(**info.get("tags", {}))
    want = base.config.vocab_size + adapters.new_tokens
    if len(tokenizer) > want:
        raise JaxtransError(
            f"the tokenizer has {len(tokenizer)} tokens but the model has {want} rows; "
            "use the tokenizer saved with the adapter"
        )
    return ModelView(base.config, adapters, {"params": base.params, **trainable}, tokenizer), tags
