"""Extend a byte-level BPE tokenizer (Llama 3, Qwen2, SmolLM2) with target-language tokens and merges.

A ``tokenizers`` BPE model is trained on the corpus behind the base's
normalizer and (target-script-aware, see ``pretokenize``) pre-tokenizer. Its
merges whose result holds target-script bytes join the base model:

* **Ids never move.** New tokens get ids after the *largest* original id,
  added/special tokens included (Llama 3 keeps 256 specials after its BPE
  vocabulary). ``tokenizers`` re-numbers added tokens on load when the BPE
  vocabulary has a hole where they sit, so every added token is also entered
  in the BPE vocabulary at its own id: no merge can produce it, the added-token
  table still matches it first, and the saved ``tokenizer.json`` loads with
  every id in place.
* **English is untouched.** A new merge is kept only if its result holds a
  whole target-script character or a byte prefix that only target-script
  characters start with; no such merge can fire on text without the script.
  With the pre-tokenizer change, the same holds (see ``pretokenize``).
* **Merge order.** The new merges rank after the base merges (the base's
  byte-pair merges such as the lead bytes of the script fire first, and the
  new paths build on them). A trained merge whose result the base already
  has is kept too, so new tokens stay reachable along the new model's paths.
  Measured on held-out Thai (``bench/vocab_fertility.py``): this order reaches
  the fertility of a Thai-only tokenizer; new-merges-first does not, because
  the base's own byte merges then rank last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jaxtrans.vocab.corpus import has_script_char
from jaxtrans.vocab.pretokenize import target_pretokenizer


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


def target_prefixes(ranges: Sequence[tuple[int, int]]) -> set[bytes]:
    """Proper UTF-8 prefixes (2+ bytes) that only characters inside ``ranges`` start with."""
    inside: set[bytes] = set()
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            enc = chr(cp).encode("utf-8")
            inside.update(enc[:i] for i in range(2, len(enc)))
    ok = set()
    for prefix in inside:
        # every continuation of the prefix (the remaining continuation bytes) must decode inside the ranges
        lead = prefix[0]
        length = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        free = length - len(prefix)
        first = int.from_bytes(prefix + b"\x80" * free, "big")
        last = int.from_bytes(prefix + b"\xbf" * free, "big")
        cps = [
            ord(b.decode("utf-8", errors="ignore") or "\0")
            for b in (first.to_bytes(length, "big"), last.to_bytes(length, "big"))
        ]
        if any(lo <= cps[0] and cps[1] <= hi for lo, hi in ranges):
            ok.add(prefix)
    return ok


class TargetBytes:
    """Decides whether a byte-level token can only occur in text that holds the target script."""

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.decoder = _byte_decoder()
        self.prefixes = target_prefixes(ranges)
        self.widths = sorted({len(p) for p in self.prefixes})

    def __call__(self, token: str) -> bool:
        try:
            data = bytes(self.decoder[c] for c in token)
        except KeyError:
            return False
        if has_script_char(data.decode("utf-8", errors="ignore"), self.ranges):
            return True
        return any(data[i : i + w] in self.prefixes for w in self.widths for i in range(len(data) - w + 1))


def base_json(tok: Any) -> dict[str, Any]:
    return json.loads(tok.backend_tokenizer.to_str())


def train_new_model(base: dict[str, Any], texts: Sequence[str], vocab_size: int, min_frequency: int) -> list:
    """Merges of a byte-level BPE trained on ``texts`` behind ``base``'s normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    spec = {k: base.get(k) for k in ("normalizer", "pre_tokenizer")}
    shell = Tokenizer(models.BPE())
    loaded = Tokenizer.from_str(json.dumps({**json.loads(shell.to_str()), **spec}))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    loaded.train_from_iterator(texts, trainer)
    return json.loads(loaded.to_str())["model"]["merges"]


def extend_bpe(
    tok: Any, texts: Sequence[str], want: int, ranges: Sequence[tuple[int, int]], min_frequency: int, pretokenize: bool
) -> tuple[dict[str, Any], list[str], bool]:
    """(extended tokenizer.json, new tokens in id order, whether the pre-tokenizer changed)."""
    base = base_json(tok)
    new_pre = target_pretokenizer(base.get("pre_tokenizer"), ranges) if pretokenize else None
    if new_pre is not None:
        base["pre_tokenizer"] = new_pre
    # train larger than asked: merges already in the base or without the script are dropped
    trained = train_new_model(base, texts, 256 + int(want * 1.5) + 256, min_frequency)
    model = base["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    added_tokens = base.get("added_tokens", [])
    for t in added_tokens:  # fill the BPE vocabulary's holes where added tokens sit (see the module docstring)
        vocab.setdefault(t["content"], t["id"])
    as_lists = bool(model["merges"]) and isinstance(model["merges"][0], list)
    pairs = [tuple(m) if as_lists else tuple(m.split(" ", 1)) for m in model["merges"]]
    known = set(pairs)
    next_id = max([*vocab.values(), *(t["id"] for t in added_tokens)]) + 1
    is_target = TargetBytes(ranges)
    added: list[str] = []
    new_pairs: list[tuple[str, str]] = []
    for merge in trained:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        token = a + b
        if (a, b) in known or a not in vocab or b not in vocab or not is_target(token):
            continue
        if token not in vocab:
            if len(added) >= want:
                continue
            vocab[token] = next_id
            next_id += 1
            added.append(token)
        new_pairs.append((a, b))
        known.add((a, b))
    merges = pairs + new_pairs
    model["vocab"] = vocab
    model["merges"] = [list(p) if as_lists else " ".join(p) for p in merges]
    return base, added, new_pre is not None


def base_splits(tok: Any, tokens: Sequence[str]) -> list[list[int]]:
    """How the *original* BPE model splits each new token's bytes (its merges, no pre-tokenisation)."""
    model = tok.backend_tokenizer.model
    return [[t.id for t in model.tokenize(token)] for token in tokens]
