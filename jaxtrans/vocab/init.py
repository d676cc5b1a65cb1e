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
with the original rows' standard deviation. ``mean_cov``: sampled from
N(mu, scale * Sigma), the mean and covariance of the original rows (Hewitt's
"vocab expansion" note; transformers' ``resize_token_embeddings`` samples with
scale 1e-9), seeded. ``omp``: orthogonal matching pursuit (mergekit's
tokensurgeon): the zip-tie vector of the token's pieces as a sparse combination
of at most k original embedding rows; the same coefficients on the LM head's
rows give the head row of an untied model. Without a donor model the embedding
row then reproduces the zip-tie vector (the target lies in the span of the
pieces); the head row differs from zip-tie's when the head is untied.
Padding rows (to a multiple of 128) are zeros; the model never predicts them.

A method is one function here plus one entry in ``METHODS``; the method and
its options are recorded with the tokenizer (``jaxtrans_vocab.json``: ``init``)
so the same rows can be made again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxtrans.errors import JaxtransError

Tables = dict[str, np.ndarray]  # "embedding" (and "head" when untied) as [V, D] rows
HEAD_METHODS = ("zip_tie", "first")


def _zip_tie(tables: Tables, base_ids: Sequence[Sequence[int]], rng: Any, opts: dict) -> Tables:
    out = {}
    for name, t in tables.items():
        first = name == "head" and opts.get("head") == "first"
        out[name] = np.stack([t[ids[0]] if first else t[list(ids)].mean(axis=0) for ids in base_ids])
    return out


def _mean(tables: Tables, base_ids: Sequence[Sequence[int]], rng: Any, opts: dict) -> Tables:
    return {k: np.broadcast_to(t.mean(axis=0), (len(base_ids), t.shape[1])).copy() for k, t in tables.items()}


def _random(tables: Tables, base_ids: Sequence[Sequence[int]], rng: Any, opts: dict) -> Tables:
    return {k: rng.normal(0.0, t.std(), (len(base_ids), t.shape[1])) for k, t in tables.items()}


def _mean_cov(tables: Tables, base_ids: Sequence[Sequence[int]], rng: Any, opts: dict) -> Tables:
    scale = float(opts.get("cov_scale", 1.0))
    out = {}
    for k, t in tables.items():
        t64 = t.astype(np.float64)
        mu = t64.mean(axis=0)
        centred = t64 - mu
        sigma = centred.T @ centred / len(t64)
        # Cholesky with a little jitter: the empirical covariance can be singular (fewer distinct rows than D)
        jitter = 1e-6 * float(np.trace(sigma)) / len(sigma)
        chol = np.linalg.cholesky(sigma + jitter * np.eye(len(sigma)))
        z = rng.standard_normal((len(base_ids), len(mu)))
        out[k] = mu + np.sqrt(scale) * z @ chol.T
    return out


def _omp(tables: Tables, base_ids: Sequence[Sequence[int]], rng: Any, opts: dict) -> Tables:
    from jaxtrans.vocab.omp import omp_rows

    emb = tables["embedding"]
    targets = np.stack([emb[list(ids)].mean(axis=0) for ids in base_ids])
    idx, coef = omp_rows(emb, targets, int(opts.get("k", 64)))
    return {name: np.stack([c @ t[i] for i, c in zip(idx, coef, strict=True)]) for name, t in tables.items()}


METHODS: dict[str, Callable[..., Tables]] = {
    "zip_tie": _zip_tie,
    "mean": _mean,
    "random": _random,
    "mean_cov": _mean_cov,
    "omp": _omp,
}


def new_rows(
    embedding_vd: np.ndarray,
    head_dv: np.ndarray | None,
    base_ids: Sequence[Sequence[int]],
    padding: int = 0,
    method: str = "zip_tie",
    head: str = "zip_tie",
    seed: int = 0,
    **options: Any,
) -> dict[str, np.ndarray]:
    """``{"embedding": [n, D]}`` plus ``{"head": [D, n]}`` when the LM head is untied (n includes padding).

    ``options``: ``k`` for ``omp`` (default 64), ``cov_scale`` for ``mean_cov`` (default 1.0).
    """
    if method not in METHODS:
        raise JaxtransError(f"embedding init {method!r} is not one of {', '.join(METHODS)}")
    if head not in HEAD_METHODS:
        raise JaxtransError(f"head init {head!r} is not one of {', '.join(HEAD_METHODS)}")
    emb = np.asarray(embedding_vd, np.float32)
    vocab = emb.shape[0]
    for i, ids in enumerate(base_ids):
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise JaxtransError(f"new token {i} splits into base ids {list(ids)} outside the model's {vocab} rows")
    tables: Tables = {"embedding": emb}
    if head_dv is not None:
        tables["head"] = np.asarray(head_dv, np.float32).T
    made = METHODS[method](tables, base_ids, np.random.default_rng(seed), {"head": head, **options}) if base_ids else {}
    rows: dict[str, Any] = {}
    for name, t in tables.items():
        body = np.asarray(made[name], np.float32) if base_ids else np.zeros((0, t.shape[1]), np.float32)
        full = np.concatenate([body, np.zeros((padding, t.shape[1]), np.float32)], axis=0)
        rows[name] = full.T if name == "head" else full
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
    options = dict(recorded.get("options", {})) if method in (None, recorded.get("method")) else {}
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
        **options,
    )
    adapters = Adapters(new_tokens=len(entries) + report["padding_rows"], padding_rows=report["padding_rows"])
    return adapters, rows
