"""The frozen embedding table in host memory: each batch brings the rows of its tokens.

A LoRA step reads the frozen input table only to look up the batch's tokens,
yet keeps the whole table on the device (Llama-3's 128,256 x 4,096 in bf16:
0.98 GiB). With ``lora.host_embedding`` the table stays a numpy array in host
memory and the data path gathers the rows of each micro-batch there
(:func:`rows`); the step receives them as ``base_rows`` [accum, batch, time,
embed] in the model's dtype. The lookup is the device one, so logits, loss and
gradients are unchanged; new-token rows stay trainable on the device. Worth it
while a batch has fewer positions than the table has rows; a tied head needs
the table on the device anyway, and is refused.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

KEY = "embedding"  # the base parameter kept on the host
BATCH_KEY = "base_rows"  # the batch entry that carries its rows


def rows(table_vd: np.ndarray, tokens: np.ndarray, dtype: Any) -> np.ndarray:
    """The table's rows for ``tokens`` (any shape), new ids (>= the table's rows) reading its last row as the device
    lookup does (the model puts the new rows there), cast to the model's compute ``dtype``."""
    ids = np.minimum(tokens, table_vd.shape[0] - 1)
    return np.take(table_vd, ids, axis=0).astype(np.dtype(dtype))


def split(base: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """(the base without the table, the table as a host array)."""
    return {k: v for k, v in base.items() if k != KEY}, to_host(base[KEY])


def to_host(table: Any) -> np.ndarray:
    """A numpy copy of the table (every process gets the whole table: each gathers its own rows)."""
    if isinstance(table, jax.Array) and not table.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(table, tiled=True))
    return np.asarray(jax.device_get(table))
