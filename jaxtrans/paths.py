"""No command writes into what it reads: every output folder is checked against every input path first.

A run directory set to the model's own folder would write ``config.json`` over the model's; an export whose
``--merged`` is its own ``--run`` would replace the run with the merged model. Both lose data a user cannot
get back, so every writer (the pipeline, export, vocab extend, eval, the harness) calls :func:`check_apart`
before it writes anything: an output may not be an input, lie inside one, or contain one (after symlinks are
resolved). Inputs that are not local paths (hub names, ``embedded:`` data) cannot collide and are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from jaxtrans.errors import JaxtransError

# config keys whose string values name files or folders the run reads
CONFIG_PATH_KEYS = ("path", "model", "tokenizer", "corpus", "include_path")


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def relation(output: str, input_path: str) -> str | None:
    """How ``output`` collides with ``input_path`` ("is", "is inside", "contains"), or None when they are apart."""
    out, src = _real(output), _real(input_path)
    if out == src:
        return "is"
    if _inside(out, src):
        return "is inside"
    if _inside(src, out):
        return "contains"
    return None


def check_apart(outputs: Iterable[tuple[str, str | None]], inputs: Iterable[tuple[str, str | None]]) -> None:
    """Refuse, in one line, an output that is, lies inside or contains a local input (or another output).

    ``outputs`` and ``inputs`` are (what the user calls it, path) pairs; None paths and non-local inputs are
    skipped."""
    outs = [(name, p) for name, p in outputs if isinstance(p, str) and p.strip()]
    ins = [(name, p) for name, p in inputs if isinstance(p, str) and p.strip() and os.path.exists(p)]
    for i, (out_name, out) in enumerate(outs):
        for in_name, src in ins:
            how = relation(out, src)
            if how is not None:
                raise JaxtransError(
                    f"{out_name} {out} {how} {in_name} {src}, which this command reads, and writing there could "
                    "overwrite it; choose a folder apart from it"
                )
        for other_name, other in outs[i + 1 :]:
            how = relation(out, other)
            if how is not None:
                raise JaxtransError(f"{out_name} {out} {how} {other_name} {other}; give them separate folders")


def config_inputs(cfg: Any) -> Iterator[tuple[str, str]]:
    """Every local path a run config reads: the values of :data:`CONFIG_PATH_KEYS` anywhere in it."""

    def walk(node: Any, prefix: str) -> Iterator[tuple[str, str]]:
        if hasattr(node, "items"):
            for key, value in node.items():
                if isinstance(value, str):
                    if key in CONFIG_PATH_KEYS:
                        yield f"{prefix}{key}", value
                elif key in CONFIG_PATH_KEYS and isinstance(value, (list, tuple)):
                    yield from ((f"{prefix}{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))
                else:
                    yield from walk(value, f"{prefix}{key}.")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                yield from walk(value, f"{prefix.rstrip('.')}[{i}].")

    yield from walk(cfg, "")
