"""Load the tokenizer a user names, whatever they point at, without reading model weights.

Accepted: a SentencePiece ``.model`` file; a tokenizer-only directory
(``tokenizer.json`` and/or ``tokenizer.model`` with ``tokenizer_config.json``, no
``config.json`` or weights); a model directory; a ``.gguf`` file;
``embedded:NAME``; a hub name (only the tokenizer files are fetched).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from jaxtrans.errors import JaxtransError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def hf_tokenizer_for_spm(spm_path: str) -> Any:
    """The HF fast tokenizer for a SentencePiece file; base and extended tokenizers take this same route."""
    from transformers import LlamaTokenizer

    if os.path.basename(spm_path) == "tokenizer.model":
        return LlamaTokenizer.from_pretrained(os.path.dirname(spm_path))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm_path, os.path.join(tmp, "tokenizer.model"))
        return LlamaTokenizer.from_pretrained(tmp)


def is_tokenizer_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def load_tokenizer(path: str) -> Any:
    """An HF tokenizer for ``path`` (see the module docstring); one clear error when there is none."""
    expanded = os.path.expanduser(path)
    if expanded.endswith(".model"):
        if not os.path.isfile(expanded):
            raise JaxtransError(f"tokenizer file {path} does not exist")
        return hf_tokenizer_for_spm(expanded)
    if is_tokenizer_dir(expanded):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(expanded)
        except (OSError, ValueError) as e:
            raise JaxtransError(f"{path} holds tokenizer files that transformers cannot load: {e}") from None
    if os.path.isdir(expanded) and not any(f.endswith(".gguf") for f in os.listdir(expanded)):
        raise JaxtransError(
            f"{path} has no tokenizer (tokenizer.json, tokenizer.model or tokenizer_config.json) and no .gguf file"
        )
    from jaxtrans.pretrained import is_hub_name

    if is_hub_name(path):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path)
        except Exception as e:  # network, auth, missing repo: all user-fixable
            raise JaxtransError(
                f"could not fetch the tokenizer of {path} from the hub: {type(e).__name__}: {e}"
            ) from None
    from jaxtrans.pretrained import load_tokenizer as model_tokenizer
    from jaxtrans.pretrained import resolve

    return model_tokenizer(resolve(path))
