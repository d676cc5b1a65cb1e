"""Model-generated text (recovery-KD answers, translations) cached in a resumable JSONL file.

Each line is ``{"key": ..., "input": ..., "output": ...}``; the key is a hash
of the input and the generation settings, so a changed prompt or model is
regenerated, never silently reused. Rows are appended one batch at a time and
flushed with ``fsync``, so a killed job loses at most the batch in flight; on
restart a torn last line is dropped, the rows already written are reused and
only the missing inputs are generated. Duplicated inputs are generated once.
Only process 0 writes; every process computes the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

import jax
from tqdm import tqdm

from jaxtrans import stop


def key_of(text: str, settings: str) -> str:
    return hashlib.sha256(f"{settings}\x00{text}".encode()).hexdigest()[:24]


def _read(path: str) -> dict[str, str]:
    done: dict[str, str] = {}
    if not os.path.isfile(path):
        return done
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    good = 0
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from a killed job
        done[row["key"]] = row["output"]
        good += len(line.encode("utf-8"))
    if good != os.path.getsize(path) and jax.process_index() == 0:
        with open(path, "r+b") as f:  # drop the torn tail so appends start on a line boundary
            f.truncate(good)
    return done


def cached_generate(
    path: str,
    inputs: Sequence[str],
    generate_batch: Callable[[list[str]], list[str]],
    settings: str,
    batch_size: int = 16,
    desc: str = "generate",
) -> list[str]:
    """Outputs for ``inputs`` in order, generating (``batch_size`` at a time) only those not yet in ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    done = _read(path)
    keys = [key_of(t, settings) for t in inputs]
    todo: dict[str, str] = {}
    for k, t in zip(keys, inputs, strict=True):
        if k not in done:
            todo.setdefault(k, t)
    pending = list(todo.items())
    if pending:
        writer = open(path, "a", encoding="utf-8") if jax.process_index() == 0 else None
        try:
            bar = tqdm(total=len(inputs), initial=len(inputs) - len(pending), desc=desc, disable=writer is None)
            for i in range(0, len(pending), batch_size):
                stop.check()  # SIGTERM: between batches (what is written is kept)
                chunk = pending[i : i + batch_size]
                outputs = generate_batch([t for _, t in chunk])
                for (k, t), out in zip(chunk, outputs, strict=True):
                    done[k] = out
                    if writer is not None:
                        writer.write(json.dumps({"key": k, "input": t, "output": out}, ensure_ascii=False) + "\n")
                if writer is not None:
                    writer.flush()
                    os.fsync(writer.fileno())
                bar.update(len(chunk))
            bar.close()
        finally:
            if writer is not None:
                writer.close()
    return [done[k] for k in keys]
