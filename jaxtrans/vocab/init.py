"""Initial values for the embedding (and LM-head) rows of new tokens.

``zip_tie`` (our reading of Bailong, which does not spell the formula out): a
new token t that the *original* tokenizer splits into base ids p_1..p_k starts
as their mean,

    E_new[t] = (1/k) * sum_i E[p_i]

For byte-level BPE the split is the base BPE's merges applied to t's bytes; for
SentencePiece it is the base model's encoding of t's text (byte fallback
included). With tied embeddings that one vector serves input and output. With
an untied LM head, H_new[t] is built the same way from the head's columns
(``head="zip_tie"``), or is the head column of the first piece (``head="first"``,
as EEVE does: the first piece is the one the model would have predicted first).

``mean``: every new row is the mean of all original rows. ``random``: normal
with the original rows' standard deviation. Padding rows (to a multiple of 128)
are zeros; the model never predicts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtrans.errors import JaxtransError

METHODS = ("zip_tie", "mean", "random")
HEAD_METHODS = ("zip_tie", "first")


def new_rows(
    embedding_vd: np.ndarray,
    head_dv: np.ndarray | None,
    base_ids: Sequence[Sequence[int]],
    padding: int = 0,
    method: str = "zip_tie",
    head: str = "zip_tie",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``{"embedding": [n, D]}`` plus ``{"head": [D, n]}`` when the LM head is untied (n includes padding)."""
    if method not in METHODS:
        raise JaxtransError(f"embedding init {method!r} is not one of {', '.join(METHODS)}")
    if head not in HEAD_METHODS:
        raise JaxtransError(f"head init {head!r} is not one of {', '.join(HEAD_METHODS)}")
    emb = np.asarray(embedding_vd, np.float32)
    vocab = emb.shape[0]
    for i, ids in enumerate(base_ids):
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise JaxtransError(f"new token {i} splits into base ids {list(ids)} outside the model's {vocab} rows")
    rng = np.random.default_rng(seed)

    def build(table_vd: np.ndarray, how: str, first_only: bool = False) -> np.ndarray:
        if how == "zip_tie":
            rows = [table_vd[ids[0]] if first_only else table_vd[list(ids)].mean(axis=0) for ids in base_ids]
            out = np.stack(rows) if rows else np.zeros((0, table_vd.shape[1]), np.float32)
        elif how == "mean":
            out = np.broadcast_to(table_vd.mean(axis=0), (len(base_ids), table_vd.shape[1])).copy()
        else:
            out = rng.normal(0.0, table_vd.std(), (len(base_ids), table_vd.shape[1]))
        pad = np.zeros((padding, table_vd.shape[1]), np.float32)
        return np.concatenate([out.astype(np.float32), pad], axis=0)

    rows: dict[str, Any] = {"embedding": build(emb, method)}
    if head_dv is not None:
        head_vd = np.asarray(head_dv, np.float32).T
        rows["head"] = build(head_vd, method, first_only=(method == "zip_tie" and head == "first")).T
    return rows


def prepare(
    cfg: Any,
    base_params: Any,
    tokenizer_dir: str,
    method: str | None = None,
    head: str | None = None,
    seed: int | None = None,
):
    """``(Adapters, new_rows)`` for a model whose tokenizer was extended into ``tokenizer_dir``.

    ``method``/``head``/``seed`` default to the ones recorded with the
    tokenizer (``jaxtrans_vocab.json``: ``init``), so a resize is reproduced
    from its record alone. Checks that the tokenizer was extended from this
    model's vocabulary: the original ids must be exactly the model's rows.
    """
    from jaxtrans.model.llama import Adapters
    from jaxtrans.vocab.extend import load_report

    report = load_report(tokenizer_dir)
    recorded = report.get("init", {})
    method = method or recorded.get("method", "zip_tie")
    head = head or recorded.get("head", "zip_tie")
    seed = recorded.get("seed", 0) if seed is None else seed
    if report["base_vocab_size"] != cfg.vocab_size:
        raise JaxtransError(
            f"the tokenizer in {tokenizer_dir} extends a {report['base_vocab_size']}-token vocabulary but the model "
            f"has {cfg.vocab_size} embedding rows; extend this model's own tokenizer"
        )
    entries = sorted(report["entries"], key=lambda e: e["id"])
    ids = [e["id"] for e in entries]
    if ids != list(range(cfg.vocab_size, cfg.vocab_size + len(ids))):
        raise JaxtransError(f"{tokenizer_dir}: new token ids are not contiguous after the base vocabulary")
    head_dv = None if cfg.tie_embeddings else np.asarray(base_params["lm_head"]["kernel"])
    rows = new_rows(
        np.asarray(base_params["embedding"]),
        head_dv,
        [e["base_ids"] for e in entries],
        padding=report["padding_rows"],
        method=method,
        head=head,
        seed=seed,
    )
    adapters = Adapters(new_tokens=len(entries) + report["padding_rows"], padding_rows=report["padding_rows"])
    return adapters, rows
