"""The original model's measurements, kept across runs in ``$JAXTRANS_CACHE/baselines``.

An untrained model's numbers depend only on the model, the data, the
settings and the measuring code, yet every run and every evaluation stage
measured them again (minutes on a CPU). Here they are stored under a digest
of exactly those inputs, with the files the measurement wrote (translation
hypotheses, answer files), and given back when the same digest comes again.
Bump :data:`VERSION` when a measurement changes meaning; delete the folder (or
set ``JAXTRANS_BASELINE_CACHE=off``) to measure again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

VERSION = 3  # of the measuring code: a new version never reads an old entry (3: pivot_chrf_questions)


def model_identity(path: str) -> str:
    """The model's name with, for local files, each file's name, size and modification time (cheap, and any
    rewrite of the weights changes it)."""
    if not os.path.exists(path):
        return path  # a hub name (pinned by its revision, if any) or an embedded model (pinned by its package)
    files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "**", "*"), recursive=True))
    stats = [(os.path.relpath(f, path), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files if os.path.isfile(f)]
    return json.dumps([os.path.abspath(path), stats])


def digest(parts: dict[str, Any]) -> str:
    """The cache key of a measurement: a hash of everything it depends on (``parts``) and of this code."""
    import jax

    from jaxtrans import __version__

    body = json.dumps({"parts": parts, "version": VERSION, "jaxtrans": __version__, "jax": jax.__version__},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def baseline_key(model_path: str, model: Any, spec: Any, tags: Any, prefix: str) -> str:
    """The key of an untrained model's measurement: the model (files, config, quantisation), what is measured
    (the ``EvalSpec``, with the content of its local data files) and how its files are named."""
    from jaxtrans.data.sources import content_digest

    data = [content_digest(src) for _, src, _ in spec.sources()]
    return digest({"model": model_identity(model_path), "config": repr(model), "spec": repr(spec), "data": data,
                   "tags": repr(tags), "prefix": prefix})  # fmt: skip


def cache_root() -> str:
    """``$JAXTRANS_BASELINE_CACHE`` (``off`` turns the cache off), else ``$JAXTRANS_CACHE/baselines``."""
    from jaxtrans.weights.smollm2 import cache_dir

    return os.environ.get("JAXTRANS_BASELINE_CACHE") or os.path.join(cache_dir(), "baselines")


def cached(key: str, out: str, prefix: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s result, from the cache when ``key`` is there; the files ``compute`` writes into ``out``
    whose names start with ``prefix`` are stored with it and written back on a hit."""
    import jax

    if cache_root() == "off" or jax.process_count() > 1:
        # several processes: each host has its own cache, and one reading while another computes (collectives
        # inside) would hang the job, so multi-process runs always measure
        return compute()
    entry = os.path.join(cache_root(), f"{key}.json")
    stored = None
    if os.path.isfile(entry):
        try:
            with open(entry, encoding="utf-8") as f:
                stored = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged cache entry is measured again
            print(f"jaxtrans: warning: the cached evaluation {entry} is damaged; measuring again", file=sys.stderr)
    if stored is not None:
        os.makedirs(out, exist_ok=True)
        for name, text in stored["files"].items():
            with open(os.path.join(out, name), "w", encoding="utf-8") as f:
                f.write(text)
        return {**stored["result"], "from_cache": key}
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # a stale measurement's files: whatever compute() writes now is what is stored
        if name.startswith(prefix) and os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    result = compute()
    if jax.process_index() == 0:
        files = {}
        for name in sorted(os.listdir(out)):
            if name.startswith(prefix) and os.path.isfile(os.path.join(out, name)):
                with open(os.path.join(out, name), encoding="utf-8") as f:
                    files[name] = f.read()
        os.makedirs(cache_root(), exist_ok=True)
        tmp = f"{entry}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"result": result, "files": files}, f, ensure_ascii=False)
        os.replace(tmp, entry)  # atomic: a concurrent run reads the old state or the whole entry
    return result
