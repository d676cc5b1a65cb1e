"""The optimizer: one optax chain over every collection, with the frozen base masked out.

The tree the optimizer sees is ``{"params": base, "lora": ..., "new_rows": ...}``.
``optax.partition`` gives the ``params`` collection ``set_to_zero`` (no state,
no update) and everything else clipping + AdamW, with weight decay on the LoRA
matrices only. Gradients are only ever computed for the trainable collections;
the frozen branch is handed scalar placeholders, which ``set_to_zero`` ignores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtrans.errors import JaxtransError

FROZEN = "params"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 2e-4
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm clipping; 0 = off

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise JaxtransError(f"optim.schedule={self.schedule!r} is not one of cosine, linear, constant")
        if self.total_steps <= 0 or self.warmup_steps < 0 or self.warmup_steps > self.total_steps:
            raise JaxtransError(
                f"optim: need 0 <= warmup_steps ({self.warmup_steps}) <= total_steps ({self.total_steps}), total > 0"
            )


def schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine or linear decay (or constant) to ``end_lr_ratio``."""
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_ratio
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, cfg.warmup_steps), decay], [cfg.warmup_steps])


def labels(tree: dict[str, Any]) -> dict[str, Any]:
    """'frozen' for every leaf of the base, 'train' for the rest."""
    return {k: jax.tree.map(lambda _, k=k: "frozen" if k == FROZEN else "train", v) for k, v in tree.items()}


def _decay_mask(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: jax.tree.map(lambda _, k=k: k == "lora", v) for k, v in tree.items()}


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    train = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
        optax.adamw(schedule(cfg), cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask),
    )
    return optax.partition({"train": train, "frozen": optax.set_to_zero()}, labels)


def full_tree(base: Any, trainable: dict[str, Any]) -> dict[str, Any]:
    """The tree the optimizer sees: the frozen base beside the trainable collections."""
    return {FROZEN: base, **trainable}


def frozen_placeholders(base: Any) -> Any:
    """Scalar stand-ins for the base's gradients: the optimizer sets them to zero and nothing reads them."""
    return jax.tree.map(lambda x: jnp.zeros((), x.dtype), base)
