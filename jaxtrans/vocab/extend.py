"""Extend a tokenizer with target-language tokens (Bailong-style), safely.

The target-language tokenizer is trained with the base's own algorithm family:

* **SentencePiece BPE** (Llama 2, Mistral): a SentencePiece BPE model is trained
  on the corpus and its pieces are appended to the base ``ModelProto`` with
  scores below every base piece (base merges keep priority; the new model's
  relative order is kept, so its merge paths exist).
* **Byte-level BPE** (Llama 3, Qwen2, SmolLM2): a ``tokenizers`` BPE model is
  trained with the base's normalizer and pre-tokenizer; new tokens and their
  merges are appended after the base ones.

Safety rules, whatever the algorithm: original ids never move; a new token is
kept only if it contains a character of the target script (or, for byte-level
BPE, the leading bytes of one), so text without that script — English — cannot
contain it and encodes to exactly the same ids as before. Transfer tags (``<EN>``,
``<TH>``, ``<RESPONSE>``, ...) follow as special tokens. The output is an HF
tokenizer directory plus ``jaxtrans_vocab.json``: for every new id, the base ids
the *original* tokenizer splits it into (what zip-tie initialisation averages).
Everything is written to a temporary directory and renamed at the end, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from jaxtrans.errors import JaxtransError
from jaxtrans.vocab.corpus import has_script_char, load_corpus, script_ranges

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

    def __post_init__(self) -> None:
        if self.new_tokens <= len(self.special_tokens):
            raise JaxtransError(
                f"new_tokens={self.new_tokens} leaves no room for language tokens after the "
                f"{len(self.special_tokens)} special tokens {list(self.special_tokens)}; ask for more"
            )


# ---------------------------------------------------------------- base tokenizer


def _spm_file(base: str) -> str | None:
    if base.endswith(".model") and os.path.isfile(base):
        return base
    candidate = os.path.join(base, "tokenizer.model")
    if os.path.isdir(base) and os.path.isfile(candidate):
        return candidate
    return None


def detect(base: str) -> tuple[str, Any]:
    """("spm", ModelProto) or ("bpe", HF fast tokenizer) for a base tokenizer path or model path."""
    spm_path = _spm_file(base)
    if spm_path is not None:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(open(spm_path, "rb").read())
        if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
            raise JaxtransError(
                f"{spm_path} is a SentencePiece {pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)} "
                "model; vocabulary extension supports SentencePiece BPE and byte-level BPE tokenizers"
            )
        return "spm", proto
    from jaxtrans.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve(base))
    backend = json.loads(tok.backend_tokenizer.to_str()) if getattr(tok, "is_fast", False) else {}
    model_type = backend.get("model", {}).get("type")
    if model_type != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise JaxtransError(
            f"the tokenizer of {base} is {model_type or type(tok).__name__}, not byte-level BPE or SentencePiece BPE; "
            "vocabulary extension supports those two families"
        )
    return "bpe", tok


# ---------------------------------------------------------------- SentencePiece BPE


def _train_spm(texts: Sequence[str], vocab_size: int, proto: Any) -> Any:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=out,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=False,
            hard_vocab_limit=False,
            normalization_rule_name=proto.normalizer_spec.name or "identity",
            add_dummy_prefix=proto.normalizer_spec.add_dummy_prefix,
            remove_extra_whitespaces=proto.normalizer_spec.remove_extra_whitespaces,
            split_digits=proto.trainer_spec.split_digits,
            max_sentence_length=1 << 16,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise JaxtransError(f"SentencePiece training failed: {e}") from None
    trained = pb.ModelProto()
    trained.ParseFromString(out.getvalue())
    return trained


def _extend_spm(proto: Any, texts: Sequence[str], cfg: ExtendConfig) -> tuple[Any, list[str]]:
    from sentencepiece import sentencepiece_model_pb2 as pb

    ranges = script_ranges(cfg.language)
    want = cfg.new_tokens - len(cfg.special_tokens)
    existing = {p.piece for p in proto.pieces}
    # train somewhat larger: pieces already in the base, or without the script, are dropped
    trained = _train_spm(texts, int(want * 1.15) + 256, proto)
    normal = [p for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    floor = min(p.score for p in normal) if normal else 0.0
    merged = pb.ModelProto()
    merged.CopyFrom(proto)
    added: list[str] = []
    candidates = sorted(
        (p for p in trained.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL),
        key=lambda p: -p.score,
    )
    for piece in candidates:
        if len(added) >= want:
            break
        if piece.piece in existing or not has_script_char(piece.piece, ranges):
            continue
        new = merged.pieces.add()
        new.piece, new.score, new.type = piece.piece, floor - 1.0 - len(added), pb.ModelProto.SentencePiece.NORMAL
        existing.add(piece.piece)
        added.append(piece.piece)
    return merged, added


def _spm_base_ids(proto: Any, pieces: Sequence[str]) -> list[list[int]]:
    """How the base SentencePiece model splits each piece's text (no dummy prefix: the piece is mid-text)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    raw = pb.ModelProto()
    raw.CopyFrom(proto)
    raw.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=raw.SerializeToString())
    return [sp.encode(piece.replace("\u2581", " ")) for piece in pieces]


def hf_tokenizer_for_spm(spm_path: str) -> Any:
    """The HF fast tokenizer for a SentencePiece file; base and extended tokenizers take this same route."""
    from transformers import LlamaTokenizer

    if os.path.basename(spm_path) == "tokenizer.model":
        return LlamaTokenizer.from_pretrained(os.path.dirname(spm_path))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm_path, os.path.join(tmp, "tokenizer.model"))
        return LlamaTokenizer.from_pretrained(tmp)


# ---------------------------------------------------------------- byte-level BPE


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: byte-level symbol -> byte."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    visible += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(visible), 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(visible, chars, strict=True)}


def _target_prefixes(ranges: Sequence[tuple[int, int]]) -> set[bytes]:
    """Proper prefixes (2+ bytes) of the UTF-8 encodings of the script's characters."""
    out = set()
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            enc = chr(cp).encode("utf-8")
            out.update(enc[:i] for i in range(2, len(enc)))
    return out


def _is_target_bytes(token: str, decoder: dict[str, int], ranges: Sequence[tuple[int, int]], prefixes: set) -> bool:
    """The token's bytes hold a whole target-script character, or are the leading bytes of one."""
    try:
        data = bytes(decoder[c] for c in token)
    except KeyError:
        return False
    return has_script_char(data.decode("utf-8", errors="ignore"), ranges) or data in prefixes


def _extend_bpe(tok: Any, texts: Sequence[str], cfg: ExtendConfig) -> tuple[dict, list[str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    base = json.loads(tok.backend_tokenizer.to_str())
    ranges = script_ranges(cfg.language)
    want = cfg.new_tokens - len(cfg.special_tokens)
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = tok.backend_tokenizer.normalizer
    trainer_tok.pre_tokenizer = tok.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=256 + int(want * 1.3) + 256,
        min_frequency=cfg.min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_tok.train_from_iterator(texts, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]["merges"]

    vocab: dict[str, int] = dict(base["model"]["vocab"])
    merges = list(base["model"]["merges"])
    as_lists = bool(merges) and isinstance(merges[0], list)
    next_id = max([*vocab.values(), *(t["id"] for t in base.get("added_tokens", []))]) + 1
    decoder = _byte_decoder()
    prefixes = _target_prefixes(ranges)
    added: list[str] = []
    for merge in trained:
        if len(added) >= want:
            break
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        token = a + b
        if token in vocab or a not in vocab or b not in vocab:
            continue
        if not _is_target_bytes(token, decoder, ranges, prefixes):
            continue
        vocab[token] = next_id
        next_id += 1
        merges.append([a, b] if as_lists else f"{a} {b}")
        added.append(token)
    base["model"]["vocab"] = vocab
    base["model"]["merges"] = merges
    return base, added


def _bpe_base_ids(tok: Any, tokens: Sequence[str]) -> list[list[int]]:
    """How the base BPE model splits each new token's bytes (its merges, no pre-tokenisation)."""
    model = tok.backend_tokenizer.model
    return [[t.id for t in model.tokenize(token)] for token in tokens]


# ---------------------------------------------------------------- entry point


def extend(base: str, corpus: Sequence[str], cfg: ExtendConfig, out_dir: str, overwrite: bool = False) -> dict:
    """Extend ``base`` with ``cfg.new_tokens`` tokens learned from ``corpus``; returns the report."""
    if os.path.exists(out_dir) and not overwrite:
        raise JaxtransError(f"{out_dir} already exists; pass --overwrite to replace it")
    kind, base_tok = detect(base)
    texts = load_corpus(corpus, cfg.language, cfg.text_field, cfg.max_chars)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".vocab-", dir=parent)
    try:
        if kind == "spm":
            merged, added = _extend_spm(base_tok, texts, cfg)
            spm_path = os.path.join(tmp, "tokenizer.model")
            with open(spm_path, "wb") as f:
                f.write(merged.SerializeToString())
            base_size = len(base_tok.pieces)
            base_ids = _spm_base_ids(base_tok, added)
            hf = hf_tokenizer_for_spm(spm_path)
            special_split = [_spm_base_ids(base_tok, [s])[0] for s in cfg.special_tokens]
        else:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            merged_json, added = _extend_bpe(base_tok, texts, cfg)
            base_size = len(base_tok)
            base_ids = _bpe_base_ids(base_tok, added)
            hf = PreTrainedTokenizerFast(
                tokenizer_object=Tokenizer.from_str(json.dumps(merged_json)),
                **{k: v for k, v in base_tok.special_tokens_map.items() if k != "additional_special_tokens"},
            )
            hf.chat_template = base_tok.chat_template
            special_split = [base_tok(s, add_special_tokens=False)["input_ids"] for s in cfg.special_tokens]
        if not added:
            raise JaxtransError(f"the corpus yielded no new {cfg.language!r} tokens; give more target-language text")
        hf.add_special_tokens(
            {"additional_special_tokens": list(cfg.special_tokens)}, replace_extra_special_tokens=False
        )
        hf.save_pretrained(tmp)
        total = len(hf)
        padding = (-total) % cfg.pad_to_multiple if cfg.pad_to_multiple else 0
        new_entries = [
            {"id": base_size + i, "token": t, "base_ids": ids}
            for i, (t, ids) in enumerate(zip(added, base_ids, strict=True))
        ]
        special_ids = hf.convert_tokens_to_ids(list(cfg.special_tokens))
        new_entries += [
            {"id": sid, "token": s, "base_ids": ids, "special": True}
            for s, sid, ids in zip(cfg.special_tokens, special_ids, special_split, strict=True)
        ]
        report = {
            "kind": kind,
            "base": base,
            "language": cfg.language,
            "base_vocab_size": base_size,
            "new_tokens": len(new_entries),
            "vocab_size": total,
            "padding_rows": padding,
            "model_vocab_size": total + padding,
            "special_tokens": dict(zip(cfg.special_tokens, special_ids, strict=True)),
            "corpus": list(corpus),
            "entries": new_entries,
        }
        with open(os.path.join(tmp, REPORT), "w") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def load_report(tokenizer_dir: str) -> dict:
    path = os.path.join(tokenizer_dir, REPORT)
    if not os.path.isfile(path):
        raise JaxtransError(f"{tokenizer_dir} has no {REPORT}; extend a tokenizer with python -m jaxtrans.vocab extend")
    with open(path) as f:
        return json.load(f)
