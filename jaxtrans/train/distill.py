"""Recovery KD at the logit level: keep the adapted model's next-token distributions on English close to
the frozen chat model's, without a second copy of the weights.

With LoRA the frozen chat model *is* the base parameters with the adapters,
the new-token rows and any ``modules_to_save`` overrides switched off. The
teacher is therefore one more forward pass of the same ``params`` (under
``stop_gradient``), inside the same jitted step; nothing is generated and no
weights are copied (self-distillation, as in SDFT, arXiv 2402.13669; TransLLM's
recovery KD trains on the frozen model's *generated* answers instead).

Rows of the ``recovery_logits`` mixture component carry loss-mask value 2 on
the positions to distil (value 1 is ordinary next-token cross-entropy); the
step adds the divergence summed over those positions to the loss, so each
distilled position weighs as much as a trained token.

The frozen model does not know the new tokens. Where a distilled row holds
some (a tag such as ``<RESPONSE>``, or words the extended vocabulary spells
with new ids), the teacher reads the row with them *hidden*
(:func:`teacher_view`): no other token attends to them and the later
positions close up, which is exactly the frozen model reading the row without
them (not the same row with an unrelated token in their place). A distilled
position whose input or target is a new id is not distilled; one whose target
is new is trained by cross-entropy instead, as the frozen model has no
distribution over it.

Divergences, with temperature tau (scaled by tau^2, as in Hinton et al.):

* ``kl``: KL(p_base || p_adapted), the student's distribution over its whole
  vocabulary (mass it puts on new tokens counts against it);
* ``reverse_kl``: KL(p_adapted || p_base) and ``jsd`` (Jensen-Shannon, base 2 of e):
  over the base vocabulary, the student renormalised on it.

With an untrained adapter (LoRA B = 0) and no new rows the student's logits
equal the teacher's exactly, and so does the divergence: 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtrans.data.formats import DISTILLED as KD_MASK  # the loss-mask value of a position to distil
from jaxtrans.errors import JaxtransError

DIVERGENCES = ("kl", "reverse_kl", "jsd")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    divergence: str = "kl"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise JaxtransError(
                f"recovery_logits divergence {self.divergence!r} is not one of {', '.join(DIVERGENCES)}"
            )
        if not self.temperature > 0:
            raise JaxtransError(f"recovery_logits temperature {self.temperature} must be > 0")


def split_mask(
    loss_mask_bt: jax.Array, tokens_bt: jax.Array, targets_bt: jax.Array, vocab: int
) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy positions, distilled positions) of a row: mask value 1, and value 2 where input and target
    are known to the frozen model; a value-2 position whose target is a new id is cross-entropy."""
    distilled_bt = loss_mask_bt == KD_MASK
    new_target_bt = targets_bt >= vocab
    trained_bt = (loss_mask_bt == 1) | (distilled_bt & new_target_bt)
    return trained_bt, distilled_bt & (tokens_bt < vocab) & ~new_target_bt


def teacher_view(
    tokens_bt: jax.Array, segment_bt: jax.Array, positions_bt: jax.Array, vocab: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The row as the frozen model reads it: new ids (>= ``vocab``) hidden, later positions closed up.

    A hidden token gets a segment of its own (no real token attends to it; its own
    output is never used) and id 0; a real token's position drops by the number of
    hidden tokens before it in its packed example (positions restart at 0 per example).
    """
    new_bt = tokens_bt >= vocab
    count_bt = jnp.cumsum(new_bt.astype(jnp.int32), axis=1)  # new ids up to and including t
    at_start_bt = jnp.where(positions_bt == 0, count_bt - new_bt, 0)  # new ids before the example's first token
    hidden_bt = count_bt - jax.lax.cummax(at_start_bt, axis=1)
    tokens = jnp.where(new_bt, 0, tokens_bt)
    segments = jnp.where(new_bt, -segment_bt, segment_bt)  # real segments are > 0: no real token attends to these
    positions = jnp.maximum(positions_bt - hidden_bt, 0)
    return tokens, segments, positions


def divergence(
    student_btv: jax.Array, teacher_btw: jax.Array, mask_bt: jax.Array, cfg: DistillConfig
) -> tuple[jax.Array, jax.Array]:
    """(sum over masked positions, their count); the teacher has the base vocabulary W <= V."""
    tau = cfg.temperature
    w = teacher_btw.shape[-1]
    s = student_btv.astype(jnp.float32) / tau
    t = jax.lax.stop_gradient(teacher_btw.astype(jnp.float32)) / tau
    lt = jax.nn.log_softmax(t, axis=-1)
    pt = jnp.exp(lt)
    if cfg.divergence == "kl":
        ls = jax.nn.log_softmax(s, axis=-1)[..., :w]
        per_bt = jnp.sum(pt * (lt - ls), axis=-1)
    else:
        ls = jax.nn.log_softmax(s[..., :w], axis=-1)
        ps = jnp.exp(ls)
        if cfg.divergence == "reverse_kl":
            per_bt = jnp.sum(ps * (ls - lt), axis=-1)
        else:
            lm = jnp.log(0.5 * (ps + pt) + 1e-30)
            per_bt = 0.5 * jnp.sum(ps * (ls - lm), axis=-1) + 0.5 * jnp.sum(pt * (lt - lm), axis=-1)
    mask = mask_bt.astype(jnp.float32)
    return jnp.sum(per_bt * mask) * tau * tau, jnp.sum(mask)
