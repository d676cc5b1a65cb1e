"""Next-token cross-entropy with a hand-written gradient (the train step's and the evaluator's loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def token_nll(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
    """-log p(target) per token, in float32.

    The gradient is written out (softmax - one_hot): autodiff of the gather
    would build and scatter into a zero-filled [B, T, V] buffer, which costs
    more than the whole loss on a CPU.
    """
    logits = logits_btv.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits, axis=-1)
    return lse_bt - jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]


def _token_nll_fwd(logits_btv: jax.Array, targets_bt: jax.Array) -> tuple:
    logits = logits_btv.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits, axis=-1)
    nll_bt = lse_bt - jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    return nll_bt, (logits_btv, targets_bt, lse_bt)


def _token_nll_bwd(res: tuple, g_bt: jax.Array) -> tuple:
    logits_btv, targets_bt, lse_bt = res
    probs_btv = jnp.exp(logits_btv.astype(jnp.float32) - lse_bt[..., None])
    one_hot_btv = jnp.arange(logits_btv.shape[-1], dtype=targets_bt.dtype) == targets_bt[..., None]
    grad_btv = (probs_btv - one_hot_btv) * g_bt[..., None]
    return grad_btv.astype(logits_btv.dtype), None


token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


def cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, number of trained tokens), in float32."""
    mask = mask_bt.astype(jnp.float32)
    return jnp.sum(token_nll(logits_btv, targets_bt) * mask), jnp.sum(mask)
