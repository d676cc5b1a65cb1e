"""Pack tokenised examples into fixed-length rows with segment ids (no attention across examples).

An example is (ids, trained): ``trained[i] = 1`` when token i is a target the
loss covers. In a row, example k gets segment id k (1, 2, ...), positions that
restart at 0, and targets that are the next token *of the same example*; the
last token of each example predicts nothing. Padding is segment 0. Examples
are placed in order, first fit among the last 8 rows, so the order (and a resumable position) is
deterministic. Longer-than-row examples are truncated or skipped by policy,
and the count is reported, never dropped silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from jaxtrans.errors import JaxtransError

# split: a pretraining document becomes several rows (jaxtrans.data.mixture); an example that cannot be split
# (a conversation) is truncated, as with truncate
POLICIES = ("split", "truncate", "skip", "error")
_OPEN_ROWS = 8  # first fit among the last few rows: linear time, deterministic


@dataclasses.dataclass
class PackStats:
    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    rows: int = 0
    trained_tokens: int = 0


def pack(
    examples: Iterable[tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    pad_id: int = 0,
    too_long: str = "truncate",
    names: Sequence[str] | None = None,
) -> tuple[dict[str, np.ndarray], PackStats]:
    """Rows [N, seq_len] of tokens, targets, loss_mask, segment_ids, positions; plus counts."""
    if too_long not in POLICIES:
        raise JaxtransError(f"too_long={too_long!r} is not one of {', '.join(POLICIES)}")
    stats = PackStats()
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    fill: list[int] = []
    for n, (ids, trained) in enumerate(examples):
        stats.examples += 1
        ids, trained = np.asarray(ids, np.int32), np.asarray(trained, np.int32)
        if len(ids) < 2:
            continue  # nothing to predict
        if len(ids) > seq_len + 1:
            where = names[n] if names is not None else f"example {n}"
            if too_long == "error":
                raise JaxtransError(f"{where} has {len(ids)} tokens, more than the {seq_len}-token rows")
            if too_long == "skip":
                stats.skipped += 1
                continue
            stats.truncated += 1
            ids, trained = ids[: seq_len + 1], trained[: seq_len + 1]
        need = len(ids) - 1  # inputs: every token but the last
        first_open = max(0, len(rows) - _OPEN_ROWS)
        for r in range(first_open, len(rows)):
            if fill[r] + need <= seq_len:
                rows[r].append((ids, trained))
                fill[r] += need
                break
        else:
            rows.append([(ids, trained)])
            fill.append(need)
    out = {k: np.zeros((len(rows), seq_len), np.int32) for k in ("tokens", "targets", "loss_mask", "segment_ids")}
    out["tokens"][:] = pad_id
    out["positions"] = np.zeros((len(rows), seq_len), np.int32)
    for r, row in enumerate(rows):
        start = 0
        for k, (ids, trained) in enumerate(row, 1):
            n = len(ids) - 1
            sl = slice(start, start + n)
            out["tokens"][r, sl] = ids[:-1]
            out["targets"][r, sl] = ids[1:]
            out["loss_mask"][r, sl] = trained[1:]
            out["segment_ids"][r, sl] = k
            out["positions"][r, sl] = np.arange(n)
            start += n
    stats.rows = len(rows)
    stats.trained_tokens = int((out["loss_mask"] > 0).sum())  # 1: cross-entropy, 2: distilled (recovery_logits)
    return out, stats
