"""LoRA adapters as their own pytree (the ``lora`` collection), and merging them into the base.

For a target projection ``y = x W`` the adapted layer computes
``y = x W + s * dropout(x) A B`` with ``A`` [in, r] random (Kaiming-uniform, as
PEFT) and ``B`` [r, out] zero, so an untrained adapter changes nothing.
``s = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA. ``A`` carries the
logical axes of the base kernel's input side and ``B`` those of its output side,
so adapters shard along the same mesh axes as their base weight, not replicated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxtrans.errors import JaxtransError

LINEAR = ("q", "k", "v", "o", "gate", "up", "down")
_ALIASES = {f"{n}_proj": n for n in LINEAR} | {"o_proj": "o", "out": "o"}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LINEAR
    rslora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise JaxtransError(f"lora rank must be a positive whole number, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) \
                or self.alpha <= 0:  # fmt: skip
            raise JaxtransError(f"lora alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise JaxtransError(f"lora dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.targets) - set(LINEAR)
        if unknown:
            raise JaxtransError(
                f"unknown lora targets {sorted(unknown)}; choose from {', '.join(LINEAR)} or all-linear"
            )

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @classmethod
    def make(cls, rank: int, alpha: float, dropout: float = 0.0, targets: Any = "all-linear", rslora: bool = False):
        """Build from user-facing values: targets as 'all-linear', 'q,v', or names like q_proj."""
        if isinstance(targets, str):
            targets = LINEAR if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        names = tuple(dict.fromkeys(_ALIASES.get(t, t) for t in targets))
        return cls(rank=rank, alpha=float(alpha), dropout=dropout, targets=names, rslora=rslora)


def kaiming_uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any, fan_in: int) -> jax.Array:
    """PEFT's init for A: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, contract: tuple, scale: float, dtype: Any) -> jax.Array:
    """The adapter's contribution ``s * x A B`` to a projection's output, in the compute ``dtype``.

    ``contract`` is the ``dot_general`` contraction of x's trailing axes with A's
    leading ones (the projection's input axes); B's trailing axes are the output's.
    """
    rank = a.shape[-1]
    xa = jax.lax.dot_general(x, a.astype(dtype), (contract, ((), ())))
    return (xa @ b.astype(dtype).reshape(rank, -1)).reshape(xa.shape[:-1] + b.shape[1:]) * scale


def delta(a: jax.Array, b: jax.Array, cfg: LoraConfig, n_in: int) -> jax.Array:
    """The dense update s * A B in the base kernel's layout, for a stack [L, ...] or a single layer."""
    stacked = a.ndim - n_in == 2  # [L, *in, r]
    if stacked:
        return jax.vmap(lambda x, y: delta(x, y, cfg, n_in))(a, b)
    return cfg.scale * jnp.tensordot(a, b, axes=1)


def _targets(lora: Any) -> list[tuple[tuple[str, ...], int]]:
    """(module path, number of input axes) of every adapted projection; A is stacked [L, *in, r]."""
    flat = traverse_util.flatten_dict(lora)
    return [(path[:-1], flat[path].ndim - 2) for path in flat if path[-1] == "a"]


def merge(params: Any, lora: Any, cfg: LoraConfig, sign: float = 1.0) -> Any:
    """Base params with ``sign * s * A B`` added to every adapted kernel (sign=-1 subtracts it again)."""
    flat_p = dict(traverse_util.flatten_dict(params))
    flat_l = traverse_util.flatten_dict(lora)
    for module, n_in in _targets(lora):
        kernel = flat_p[module + ("kernel",)]
        d = delta(flat_l[module + ("a",)], flat_l[module + ("b",)], cfg, n_in)
        flat_p[module + ("kernel",)] = (kernel.astype(jnp.float32) + sign * d).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat_p)


def count(lora: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(lora))
