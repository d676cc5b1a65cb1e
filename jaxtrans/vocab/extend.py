"""Extend a tokenizer with target-language tokens (Bailong-style), safely, whatever its layout.

The target-language tokens are trained with the base's own algorithm family
(``spm`` for SentencePiece BPE: Llama 2, Mistral; ``bpe`` for byte-level BPE:
Llama 3, Qwen2, SmolLM2), then transfer tags (``<EN>``, ``<TH>``,
``<RESPONSE>``, ...) follow as special tokens.

Guarantees, checked by the tests on real and synthetic layouts (specials after
the BPE vocabulary, GPT-4-style regex pre-tokenizers, specials first):

* original ids never move, added and special tokens included; new ids are
  contiguous after the largest original id;
* text without a target-script character encodes to exactly the same ids;
* ``decode(encode(x)) == x`` wherever the base round-trips ``x``.

The output is an HF tokenizer directory plus ``jaxtrans_vocab.json``: what the
resize needs to be reproduced and loaded elsewhere (the base tokenizer and a
digest of its vocabulary, sizes and padding rows, for every new id the base ids
the *original* tokenizer splits it into, which zip-tie averages, and the
row-initialisation method). Everything is written to a temporary directory and
renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from jaxtrans import stop
from jaxtrans.errors import JaxtransError
from jaxtrans.staging import staged_dir
from jaxtrans.vocab import bpe, spm
from jaxtrans.vocab.base import hf_tokenizer_for_spm, load_tokenizer
from jaxtrans.vocab.corpus import load_corpus, script_ranges
from jaxtrans.vocab.init import HEAD_METHODS, METHODS

REPORT = "jaxtrans_vocab.json"


@dataclasses.dataclass(frozen=True)
class ExtendConfig:
    language: str = "th"
    new_tokens: int = 16000  # new ids in all, transfer tags included, padding excluded
    special_tokens: tuple[str, ...] = ("<EN>", "<TH>", "<RESPONSE>")
    pad_to_multiple: int = 0  # pad the model's vocabulary to a multiple of this (e.g. 128); 0 = off
    min_frequency: int = 2
    text_field: str = "text"
    max_chars: int = 50_000_000
    # byte-level BPE: keep the target script's combining marks on their letters when pre-tokenising
    pretokenize: bool = True
    # how the model's new rows start (recorded with the tokenizer; see jaxtrans.vocab.init)
    init: str = "zip_tie"
    head_init: str = "zip_tie"
    init_seed: int = 0
    init_k: int = 64  # omp: at most this many original rows per new token
    init_cov_scale: float = 1.0  # mean_cov: the covariance is scaled by this (transformers uses 1e-9)

    def __post_init__(self) -> None:
        if self.new_tokens <= len(self.special_tokens):
            raise JaxtransError(
                f"new_tokens={self.new_tokens} leaves no room for language tokens after the "
                f"{len(self.special_tokens)} special tokens {list(self.special_tokens)}; ask for more"
            )
        if self.pad_to_multiple < 0:
            raise JaxtransError(f"pad_to_multiple={self.pad_to_multiple} is negative; give 0 (no padding) or e.g. 128")
        if self.min_frequency < 1:
            raise JaxtransError(f"min_frequency={self.min_frequency} must be at least 1")
        if len(set(self.special_tokens)) != len(self.special_tokens) or not all(self.special_tokens):
            raise JaxtransError(f"special tokens {list(self.special_tokens)} must be distinct and non-empty")
        if self.init not in METHODS:
            raise JaxtransError(f"init {self.init!r} is not one of {', '.join(METHODS)}")
        if self.head_init not in HEAD_METHODS:
            raise JaxtransError(f"head_init {self.head_init!r} is not one of {', '.join(HEAD_METHODS)}")
        if self.init_k < 1 or not self.init_cov_scale >= 0:
            raise JaxtransError(f"init_k={self.init_k} must be >= 1 and init_cov_scale={self.init_cov_scale} >= 0")
        script_ranges(self.language)  # an unknown language is refused here, before anything is read

    def init_record(self) -> dict:
        """The row initialisation as recorded in jaxtrans_vocab.json (what ``vocab.init.prepare`` reads back)."""
        options = {"omp": {"k": self.init_k}, "mean_cov": {"cov_scale": self.init_cov_scale}}.get(self.init, {})
        return {"method": self.init, "head": self.head_init, "seed": self.init_seed, "options": options}


# ---------------------------------------------------------------- base tokenizer


def _spm_file(base: str) -> str | None:
    base = os.path.expanduser(base)
    if base.endswith(".model") and os.path.isfile(base):
        return base
    candidate = os.path.join(base, "tokenizer.model")
    if os.path.isdir(base) and os.path.isfile(candidate):
        return candidate
    return None


def detect(base: str) -> tuple[str, Any]:
    """("spm", ModelProto) or ("bpe", HF fast tokenizer) for a tokenizer or model path (see ``vocab.base``)."""
    spm_path = _spm_file(base)
    if spm_path is not None:
        return "spm", spm.read_proto(spm_path)
    tok = load_tokenizer(base)
    backend = bpe.base_json(tok) if getattr(tok, "is_fast", False) else {}
    model_type = backend.get("model", {}).get("type")
    if model_type != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise JaxtransError(
            f"the tokenizer of {base} is {model_type or type(tok).__name__}, not byte-level BPE or SentencePiece BPE; "
            "vocabulary extension supports those two families"
        )
    return "bpe", tok


def vocab_digest(tok: Any) -> str:
    """A digest of a tokenizer's whole token -> id table, added tokens included."""
    items = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- entry point


def _build(kind: str, base_tok: Any, texts: Sequence[str], cfg: ExtendConfig, tmp: str) -> tuple[Any, Any, dict]:
    """(base HF tokenizer, extended HF tokenizer, facts for the record); the new tokenizer files land in ``tmp``."""
    ranges = script_ranges(cfg.language)
    want = cfg.new_tokens - len(cfg.special_tokens)
    if kind == "spm":
        from transformers import LlamaTokenizer

        merged, added = spm.extend_spm(base_tok, texts, want, ranges)
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(merged.SerializeToString())
        with tempfile.TemporaryDirectory() as base_dir:
            with open(os.path.join(base_dir, "tokenizer.model"), "wb") as f:
                f.write(base_tok.SerializeToString())
            base_hf = LlamaTokenizer.from_pretrained(base_dir)
        hf = hf_tokenizer_for_spm(os.path.join(tmp, "tokenizer.model"))
        facts = {"base_ids": spm.base_splits(base_tok, added), "pretokenizer": "sentencepiece (unchanged)"}
        split = lambda s: spm.base_splits(base_tok, [s])[0]  # noqa: E731
    else:
        from transformers import AutoTokenizer

        merged_json, added, widened = bpe.extend_bpe(base_tok, texts, want, ranges, cfg.min_frequency, cfg.pretokenize)
        base_hf = base_tok
        # the base tokenizer's own files with the merged tokenizer.json: every base setting (post-processor,
        # BOS/EOS handling, chat template, special-token roles) carries over exactly as the base had it
        base_tok.save_pretrained(tmp)
        for stale in ("vocab.json", "merges.txt"):  # slow-tokenizer files of the base would contradict the new json
            if os.path.exists(os.path.join(tmp, stale)):
                os.remove(os.path.join(tmp, stale))
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(merged_json, f, ensure_ascii=False)
        hf = AutoTokenizer.from_pretrained(tmp)
        facts = {
            "base_ids": bpe.base_splits(base_tok, added),
            "pretokenizer": "target marks kept on letters" if widened else "unchanged",
        }
        split = lambda s: base_tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if not added:
        raise JaxtransError(f"the corpus yielded no new {cfg.language!r} tokens; give more target-language text")
    existing = [s for s in cfg.special_tokens if s in base_hf.get_vocab()]
    if existing:
        raise JaxtransError(f"special tokens {existing} already exist in the base tokenizer; choose other tags")
    hf.add_special_tokens({"additional_special_tokens": list(cfg.special_tokens)}, replace_extra_special_tokens=False)
    facts["added"] = added
    facts["special_split"] = [split(s) for s in cfg.special_tokens]
    return base_hf, hf, facts


def _check_layout(base_hf: Any, hf: Any, added: Sequence[str], specials: Sequence[str]) -> tuple[list[int], int]:
    """Original ids unchanged and new ids contiguous after the largest; (new ids, first new id)."""
    before, after = base_hf.get_vocab(), hf.get_vocab()
    moved = [t for t, i in before.items() if after.get(t) != i]
    if moved:
        raise JaxtransError(f"internal error: extending moved {len(moved)} original tokens (e.g. {moved[:3]})")
    first = max(before.values()) + 1
    ids = [after[t] for t in added] + [after[s] for s in specials]
    if ids != list(range(first, first + len(ids))) or len(after) != first + len(ids):
        raise JaxtransError(f"internal error: new ids are not contiguous after the largest original id {first - 1}")
    return ids, first


def extend(base: str, corpus: Sequence[str], cfg: ExtendConfig, out_dir: str, overwrite: bool = False) -> dict:
    """Extend ``base`` with ``cfg.new_tokens`` tokens learned from ``corpus``; returns the record."""
    if os.path.exists(out_dir) and not overwrite:
        raise JaxtransError(f"{out_dir} already exists; pass --overwrite to replace it")
    if os.path.isfile(out_dir):
        raise JaxtransError(f"{out_dir} is a file; give a directory path for the extended tokenizer")
    kind, base_tok = detect(base)
    texts = load_corpus(corpus, cfg.language, cfg.text_field, cfg.max_chars)
    with staged_dir(out_dir, prefix=".vocab-") as tmp:
        stop.check()  # SIGTERM: between phases (the staging folder is removed)
        base_hf, hf, facts = _build(kind, base_tok, texts, cfg, tmp)
        stop.check()
        added = facts["added"]
        hf.save_pretrained(tmp)
        ids, first = _check_layout(base_hf, hf, added, cfg.special_tokens)
        total = len(hf)
        padding = (-total) % cfg.pad_to_multiple if cfg.pad_to_multiple else 0
        entries = [
            {"id": i, "token": t, "base_ids": b}
            for i, t, b in zip(ids[: len(added)], added, facts["base_ids"], strict=True)
        ]
        entries += [
            {"id": i, "token": s, "base_ids": b, "special": True}
            for i, s, b in zip(ids[len(added) :], cfg.special_tokens, facts["special_split"], strict=True)
        ]
        asked = cfg.new_tokens - len(cfg.special_tokens)
        if len(added) < asked:
            print(
                f"jaxtrans: warning: asked for {asked} new {cfg.language!r} tokens, the corpus yielded {len(added)}; "
                "give more target-language text (or lower min_frequency) for more",
                file=sys.stderr,
            )
        record = {
            "kind": kind,
            "base": base,
            "base_vocab_digest": vocab_digest(base_hf),
            "language": cfg.language,
            "pretokenizer": facts["pretokenizer"],
            "base_vocab_size": first,
            "requested_new_tokens": cfg.new_tokens,
            "new_tokens": len(entries),
            "vocab_size": total,
            "padding_rows": padding,
            "model_vocab_size": total + padding,
            "special_tokens": dict(zip(cfg.special_tokens, ids[len(added) :], strict=True)),
            "init": cfg.init_record(),
            "corpus": list(corpus),
            "entries": entries,
        }
        with open(os.path.join(tmp, REPORT), "w") as f:
            json.dump(record, f, ensure_ascii=False, indent=1)
    return record


def load_report(tokenizer_dir: str) -> dict:
    path = os.path.join(tokenizer_dir, REPORT)
    if not os.path.isfile(path):
        raise JaxtransError(f"{tokenizer_dir} has no {REPORT}; extend a tokenizer with python -m jaxtrans.vocab extend")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise JaxtransError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}); extend the tokenizer again"
        ) from None
