"""The optimizer: one optax chain over every collection, with the frozen base masked out.

The tree the optimizer sees is ``{"params": base, "lora": ..., "new_rows": ...,
"base": ...}`` (``base``: ``modules_to_save`` tensors trained in full). The
frozen ``params`` get ``set_to_zero`` (no state, no update); the trainable
collections are clipped by their global norm together, then ``optax.partition``
gives each group its own AdamW: ``lora`` at ``learning_rate`` with
``weight_decay``; ``new_rows`` and ``base`` at their own learning rate
(default: ``learning_rate``) and weight decay (default 0), all on the same
schedule shape (warmup, decay) scaled to their peak. Gradients are only ever
computed for the trainable collections; the frozen branch is handed scalar
placeholders, which ``set_to_zero`` ignores. A learning rate of 0 freezes a
group exactly (its parameters stay bit-identical).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtrans.errors import JaxtransError

FROZEN = "params"


SCHEDULES = ("cosine", "linear", "constant")  # the decay after warmup
MU_DTYPES = ("float32", "bfloat16")


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
    # new-token rows and modules_to_save tensors: their own peak learning rate (None: learning_rate) and decay
    new_rows_learning_rate: float | None = None
    new_rows_weight_decay: float = 0.0
    modules_learning_rate: float | None = None
    modules_weight_decay: float = 0.0
    # AdamW's first moment in bfloat16 halves its memory (for a 7B QLoRA r=64 step: 0.3 GiB); the second moment,
    # whose small values bf16 would round away, stays float32
    mu_dtype: str = "float32"

    def __post_init__(self) -> None:
        import math

        for name in ("learning_rate", "new_rows_learning_rate", "modules_learning_rate", "weight_decay",
                     "new_rows_weight_decay", "modules_weight_decay"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise JaxtransError(f"optim.{name}={value} must be a finite number >= 0")
        if self.mu_dtype not in MU_DTYPES:
            raise JaxtransError(f"optim.mu_dtype={self.mu_dtype!r} is not one of {', '.join(MU_DTYPES)}")
        if self.schedule not in SCHEDULES:
            raise JaxtransError(f"optim.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
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


GROUPS = ("lora", "new_rows", "base")


def labels(tree: dict[str, Any]) -> dict[str, Any]:
    """Each leaf's group: 'frozen' for the base, else its collection's name (lora, new_rows, base)."""
    return {k: jax.tree.map(lambda _, k=k: "frozen" if k == FROZEN else k, v) for k, v in tree.items()}


def group_settings(cfg: OptimConfig) -> dict[str, tuple[float, float]]:
    """(peak learning rate, weight decay) per trainable group."""

    def lr(x: float | None) -> float:
        return cfg.learning_rate if x is None else x

    return {
        "lora": (cfg.learning_rate, cfg.weight_decay),
        "new_rows": (lr(cfg.new_rows_learning_rate), cfg.new_rows_weight_decay),
        "base": (lr(cfg.modules_learning_rate), cfg.modules_weight_decay),
    }


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    import dataclasses

    groups = {
        name: optax.adamw(
            schedule(dataclasses.replace(cfg, learning_rate=peak)),
            cfg.b1,
            cfg.b2,
            cfg.eps,
            mu_dtype=jnp.dtype(cfg.mu_dtype),
            weight_decay=decay,
        )
        for name, (peak, decay) in group_settings(cfg).items()
    }
    train = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
        optax.partition(groups, labels),  # sees only the trainable leaves: the frozen ones are masked out
    )
    frozen_or_train = lambda tree: jax.tree.map(lambda g: "frozen" if g == "frozen" else "train", labels(tree))  # noqa: E731
    return optax.partition({"train": train, "frozen": optax.set_to_zero()}, frozen_or_train)


def full_tree(base: Any, trainable: dict[str, Any]) -> dict[str, Any]:
    """The tree the optimizer sees: the frozen base beside the trainable collections."""
    return {FROZEN: base, **trainable}


def frozen_placeholders(base: Any) -> Any:
    """Scalar stand-ins for the base's gradients: the optimizer sets them to zero and nothing reads them."""
    return jax.tree.map(lambda x: jnp.zeros((), x.dtype), base)
