"""Extend a SentencePiece BPE model (Llama 2, Mistral) with target-language pieces.

A SentencePiece BPE model is trained on the corpus with the base's normalizer
settings; its pieces that hold a target-script character and are not in the
base are appended to the base ``ModelProto``. Appending keeps every original
id, control and user-defined pieces included, wherever they sit.

SentencePiece BPE segments by piece score (the highest-scoring adjacent pair
whose concatenation is a piece merges first); transformers' conversion of a
``tokenizer.model`` to ``tokenizer.json`` ranks merges by piece *id*. The new
pieces are therefore scored below every base piece, in id order, so both
libraries segment identically (a test checks it). The target-script
characters the base lacks come first: SentencePiece can merge characters it has
no piece for, the converted BPE cannot, and without them the two disagree.
A new piece holds a target-script character, so no text without that script can
ever form one, and English keeps its exact segmentation.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from jaxtrans.errors import JaxtransError
from jaxtrans.vocab.corpus import has_script_char


def read_proto(path: str) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise JaxtransError(
            f"{path} is a SentencePiece {pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)} model; "
            "vocabulary extension supports SentencePiece BPE and byte-level BPE tokenizers"
        )
    return proto


def _train(texts: Sequence[str], vocab_size: int, proto: Any) -> Any:
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


def extend_spm(proto: Any, texts: Sequence[str], want: int, ranges: Sequence[tuple[int, int]]) -> tuple[Any, list[str]]:
    """(extended ModelProto, new pieces in id order)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    normal_type = pb.ModelProto.SentencePiece.NORMAL
    existing = {p.piece for p in proto.pieces}
    # train larger than asked: pieces already in the base, or without the script, are dropped
    trained = _train(texts, int(want * 1.15) + 256, proto)
    scores = [p.score for p in proto.pieces if p.type == normal_type] or [0.0]
    merged = pb.ModelProto()
    merged.CopyFrom(proto)
    candidates = sorted((p for p in trained.pieces if p.type == normal_type), key=lambda p: -p.score)
    fresh = [p.piece for p in candidates if p.piece not in existing and has_script_char(p.piece, ranges)]
    chars = [p for p in fresh if len(p) == 1]
    chosen = (chars + [p for p in fresh if len(p) > 1])[:want]
    for piece, score in zip(chosen, _descending_below(min(scores), len(chosen)), strict=True):
        new = merged.pieces.add()
        new.piece, new.score, new.type = piece, score, normal_type
    return merged, chosen


def _descending_below(floor: float, n: int) -> list[float]:
    """``n`` strictly decreasing float32 scores below ``floor``.

    Scores are stored as float32; Llama 2's lowest is about -1e9, where float32
    steps by 64, so ``floor - 1 - i`` would give many pieces one score and
    SentencePiece would break the ties differently from transformers' id order.
    """
    import numpy as np

    step = max(1.0, 4.0 * float(np.spacing(np.float32(abs(floor) + n * 1024.0))))
    scores = np.float32(floor) - step * np.arange(1, n + 1, dtype=np.float64)
    out = scores.astype(np.float32)
    if n > 1 and not bool(np.all(np.diff(out) < 0)):
        raise JaxtransError("internal error: new piece scores are not strictly decreasing in float32")
    return [float(x) for x in out]


def base_splits(proto: Any, pieces: Sequence[str]) -> list[list[int]]:
    """How the base model splits each piece's text (no dummy prefix: the piece stands mid-text)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    raw = pb.ModelProto()
    raw.CopyFrom(proto)
    raw.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=raw.SerializeToString())
    return [sp.encode(piece.replace("\u2581", " ")) for piece in pieces]
