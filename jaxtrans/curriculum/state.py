"""What the stages of a run share: the model, tokenizer, adapters and trainable state, and the report.

Also the helpers every stage kind needs to record what it did: a digest of a
state (gathered over processes) and JSON files written by process 0 only,
atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

from jaxtrans import sharding
from jaxtrans.errors import JaxtransError, Preempted
from jaxtrans.model import llama, nf4
from jaxtrans.timing import Clock
from jaxtrans.train import host_embedding
from jaxtrans.view import ModelView

__all__ = ["Preempted", "RunState", "digest", "on_host", "read_json", "write_json"]


@dataclasses.dataclass
class RunState:
    """The model and the state the stages hand to each other, in curriculum order."""

    cfg: Any
    mesh: Any
    model_cfg: Any
    float_base: Any  # the frozen base as loaded, for new-row inits; dropped once the base is quantised
    base: Any  # the frozen base the train step reads (NF4 once quantised)
    base_tokenizer: Any
    tokenizer: Any
    adapters: llama.Adapters
    lang: Any  # jaxtrans.data.mixture.Language
    out: str
    new_rows: dict | None = None  # the vocab stage's initial rows, until the first train stage takes them
    vocab_record: dict | None = None  # jaxtrans_vocab.json of the extended tokenizer: exported with the adapter
    trainable: dict | None = None
    ends: dict[str, Any] = dataclasses.field(default_factory=dict)  # train stage -> its final state (start_from)
    report: dict = dataclasses.field(default_factory=dict)
    clock: Clock = dataclasses.field(default_factory=Clock)  # the run's time per stage and phase (report's table)

    _digest: tuple[Any, str] | None = None
    _table_sharding: Any = None  # where a host-kept embedding table lived on the device (views put it back there)

    def state_digest(self) -> str:
        """digest() of the current trainable state, computed once per state (it gathers and hashes every array)."""
        if self._digest is None or self._digest[0] is not self.trainable:
            self._digest = (self.trainable, digest(self.trainable))
        return self._digest[1]

    def view(self, trained: bool = True) -> ModelView:
        """The model with the current adapters, or (``trained=False``) the frozen chat model itself."""
        base = self._device_base()
        if not trained or self.trainable is None:
            frozen = llama.Adapters(quantized=self.adapters.quantized, quantized_head=self.adapters.quantized_head)
            return ModelView(self.model_cfg, frozen, {"params": base}, self.base_tokenizer)
        variables = {"params": base, **{k: v for k, v in self.trainable.items() if k != "base"}}
        if "base" in self.trainable:
            variables["params"] = {**base, **self.trainable["base"]}
        return ModelView(self.model_cfg, self.adapters, variables, self.tokenizer)

    def embedding_to_host(self) -> None:
        """``lora.host_embedding``: from the first train stage on (new-row inits have read the table) the frozen
        embedding table is a host array; train steps get each batch's rows, views borrow a device copy."""
        if isinstance(self.base[host_embedding.KEY], np.ndarray):
            return
        self._table_sharding = self.base[host_embedding.KEY].sharding
        table = host_embedding.to_host(self.base[host_embedding.KEY])
        self.base = {**self.base, host_embedding.KEY: table}
        if self.float_base is not None:
            self.float_base = {**self.float_base, host_embedding.KEY: table}

    def _device_base(self) -> Any:
        """The base with every table on the device: generation and evaluation read the table whole."""
        table = self.base[host_embedding.KEY]
        if not isinstance(table, np.ndarray):
            return self.base
        sh = self._table_sharding  # recorded when it left: no model trace per view
        on_device = jax.make_array_from_callback(table.shape, sh, lambda index: table[index])
        return {**self.base, host_embedding.KEY: on_device}

    def quantize_base(self, head: bool = False) -> None:
        """Store the frozen base as NF4 (QLoRA; ``head``: the LM head too), once; the float copy is freed.
        New-row inits read it first."""
        if self.adapters.quantized:
            return
        adapters = dataclasses.replace(self.adapters, quantized=True, quantized_head=head)
        shardings = sharding.logical_to_sharding(llama.abstract_params(self.model_cfg, adapters), self.mesh)
        self.base = nf4.quantize_params(self.float_base, shardings, head=head)
        self.float_base = None
        self.adapters = adapters

    def stage_dir(self, name: str) -> str:
        return os.path.join(self.out, "stages", name)

    def record(self, section: str, name: str, entry: dict) -> None:
        """Put a stage's entry into the report (``report[section][name]``)."""
        self.report.setdefault(section, {})[name] = entry


def on_host(tree: Any) -> Any:
    """numpy copies of a tree's arrays; arrays spread over several processes are gathered (a collective)."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def digest(tree: Any) -> str:
    """A short hash of a pytree's values, to show in the report which state a stage started and ended with."""
    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(on_host(tree)), key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(leaf.tobytes())
    return h.hexdigest()[:16]


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON from process 0 only, atomically (a temporary file renamed over the target)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, default=str)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """The JSON in ``path``, or None when there is no such file; a damaged one (a full disk, a copy cut short)
    is one line naming it and what to do, not a raw JSONDecodeError."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise JaxtransError(
            f"{path} is damaged (not valid JSON{where}); restore it from a copy, or delete "
            f"{os.path.dirname(path)} to redo what it records"
        ) from None
