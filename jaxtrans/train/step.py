"""The train step: loss, gradients of the trainable collections only, and one sharded ``jax.jit``.

A batch is a dict of int32 arrays [accum, batch, time]: ``tokens``, ``targets``
(the next token), ``loss_mask`` (1 where the target is trained on),
``segment_ids`` (0 = padding; packed examples 1, 2, ...) and ``positions``.
The leading ``accum`` axis is gradient accumulation: micro-batches run under
``lax.scan`` and the loss is the mean over every trained token of the whole
batch, so accumulating 4 x 2 equals one batch of 8 exactly (up to float order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from jaxtrans import sharding as shd
from jaxtrans import xla_options
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig
from jaxtrans.model.loss import cross_entropy
from jaxtrans.train import host_embedding
from jaxtrans.train.distill import DistillConfig, divergence, split_mask, teacher_view
from jaxtrans.train.optim import OptimConfig, frozen_placeholders, full_tree, make_optimizer, schedule

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a run changes; the frozen base lives outside it and is never saved."""

    step: jax.Array
    trainable: dict[str, Any]  # {"lora": ..., "new_rows": ..., "base": {fully trained base params}}
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so it checkpoints as a plain array


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Builds the state and the compiled step for one model, adapter set, optimizer and mesh."""

    cfg: ModelConfig
    adapters: llama.Adapters
    optim: OptimConfig
    mesh: Mesh
    rules: tuple = shd.DEFAULT_RULES
    # PEFT's modules_to_save: top-level base parameters trained in full (e.g. "embedding", "lm_head").
    # The trainable copy lives in the state under "base" and overrides the frozen one in the forward pass.
    modules_to_save: tuple[str, ...] = ()
    # recovery KD at the logit level (rows whose loss mask is 2): see jaxtrans.train.distill
    distill: DistillConfig | None = None
    # the frozen embedding table stays in host memory; each batch carries its rows (jaxtrans.train.host_embedding)
    host_embedding: bool = False

    def __post_init__(self) -> None:
        if self.host_embedding and (self.cfg.tie_embeddings or host_embedding.KEY in self.modules_to_save):
            why = "the LM head is tied to it" if self.cfg.tie_embeddings else "lora.modules_to_save trains it"
            raise JaxtransError(
                f"lora.host_embedding keeps the frozen embedding table off the device, but {why}; "
                "set lora.host_embedding=False"
            )
        if self.distill is not None and self.cfg.loss_chunk:
            raise JaxtransError(
                "recovery_logits needs the full logits of a micro-batch; set model.loss_chunk=0 for stages with it "
                "(or use recovery_kd, which trains on generated answers)"
            )

    @property
    def model(self) -> llama.Llama:
        return llama.Llama(self.cfg, self.adapters)

    @property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(self.optim)

    def base_shardings(self) -> Any:
        """Shardings of the frozen base the step reads (without the table kept on the host)."""
        return shd.logical_to_sharding(self._abstract_base(), self.mesh, self.rules)

    def _abstract_base(self) -> Any:
        return self.device_base(llama.abstract_params(self.cfg, self.adapters))

    def device_base(self, base: Any) -> Any:
        """The part of the frozen base the step reads on the device: all of it, or all but the host-kept table."""
        return {k: v for k, v in base.items() if k != host_embedding.KEY} if self.host_embedding else base

    def batch_keys(self) -> tuple[str, ...]:
        """The arrays of a batch: token ids and masks, and with ``host_embedding`` the tokens' embedding rows."""
        return BATCH_KEYS + ((host_embedding.BATCH_KEY,) if self.host_embedding else ())

    def trainable_shardings(self) -> dict[str, Any]:
        return {k: shd.logical_to_sharding(v, self.mesh, self.rules) for k, v in self._abstract_trainable(True).items()}

    def batch_sharding(self) -> NamedSharding:
        return shd.batch_sharding(self.mesh, self.rules)

    def state_shardings(self) -> TrainState:
        """Shardings of a TrainState: optimizer moments follow their parameters, scalars are replicated."""
        trainable_sh = self.trainable_shardings()
        base_abstract = nn.meta.unbox(self._abstract_base())
        opt_abstract = jax.eval_shape(self.tx.init, full_tree(base_abstract, self._abstract_trainable()))
        by_path = {tuple(k.key for k in path): s for path, s in jax.tree_util.tree_leaves_with_path(trainable_sh)}
        rep = shd.replicated(self.mesh)

        def leaf_sharding(path: tuple, _: Any) -> NamedSharding:
            # moments mirror the parameter tree: their path ends with the parameter's own dict keys
            keys = []
            for k in reversed(path):
                if not isinstance(k, jax.tree_util.DictKey):
                    break
                keys.insert(0, k.key)
            return by_path.get(tuple(keys), rep)

        opt_sh = jax.tree_util.tree_map_with_path(leaf_sharding, opt_abstract)
        return TrainState(step=rep, trainable=trainable_sh, opt_state=opt_sh, rng=rep)

    def _abstract_trainable(self, boxed: bool = False) -> dict[str, Any]:
        abstract = llama.abstract_variables(self.cfg, self.adapters)
        out = {k: v for k, v in abstract.items() if k != "params"}
        if self.modules_to_save:
            missing = set(self.modules_to_save) - set(abstract["params"])
            if missing:
                raise JaxtransError(
                    f"modules_to_save {sorted(missing)} are not base parameters; "
                    f"choose from {sorted(abstract['params'])}"
                )
            out["base"] = {k: abstract["params"][k] for k in self.modules_to_save}
        return out if boxed else {k: nn.meta.unbox(v) for k, v in out.items()}

    def init_state(self, base: Any, seed: int = 0) -> TrainState:
        """Fresh adapters (B = 0), optimizer state over the full tree (nothing for the base), step 0."""
        base = self.device_base(base)
        sh = self.trainable_shardings()
        trainable = llama.init_trainable(self.cfg, self.adapters, seed, {k: v for k, v in sh.items() if k != "base"})
        if self.modules_to_save:
            trainable["base"] = jax.jit(lambda b: {k: b[k] for k in self.modules_to_save}, out_shardings=sh["base"])(
                base
            )
        return self.make_state(base, trainable, seed)

    def make_state(self, base: Any, trainable: dict[str, Any], seed: int = 0) -> TrainState:
        """A step-0 state around given trainable collections (e.g. handed over from a previous stage)."""
        shardings, base = self.state_shardings(), self.device_base(base)
        init = jax.jit(
            lambda b, t: TrainState(
                step=jnp.zeros((), jnp.int32),
                trainable=t,
                opt_state=self.tx.init(full_tree(b, t)),
                rng=jax.random.key_data(jax.random.key(seed)),
            ),
            out_shardings=shardings,
        )
        return init(base, trainable)

    def loss_fn(self, trainable: dict[str, Any], base: Any, micro: dict[str, jax.Array], rng: jax.Array) -> tuple:
        adapters = {k: v for k, v in trainable.items() if k != "base"}
        variables = {"params": {**base, **trainable.get("base", {})}, **adapters}
        args = (micro["tokens"], micro["segment_ids"], micro["positions"])
        rows = {"base_rows_btd": micro.get(host_embedding.BATCH_KEY)}
        if self.distill is None:
            targets = (micro["targets"], micro["loss_mask"])
            return self.model.apply(variables, *args, *targets, **rows, rngs={"dropout": rng}, method="loss")
        logits, _ = self.model.apply(variables, *args, **rows, rngs={"dropout": rng})
        vocab = self.cfg.vocab_size
        trained_bt, kd_bt = split_mask(micro["loss_mask"], micro["tokens"], micro["targets"], vocab)
        ce_sum, ce_n = cross_entropy(logits, micro["targets"], trained_bt)
        kd_sum, kd_n = self._distill_loss(base, micro, logits, kd_bt)
        return ce_sum + kd_sum, ce_n + kd_n

    def _distill_loss(self, base: Any, micro: dict[str, jax.Array], logits_btv: jax.Array, kd_bt: jax.Array) -> tuple:
        """The divergence from the frozen model at ``kd_bt``: the same base params, adapters and new rows off, no
        gradient; it reads the row with the new-id tokens hidden (``distill.teacher_view``). Host-gathered rows
        serve it as they are: a hidden token's row reaches no other position."""
        vocab = self.cfg.vocab_size
        tokens = micro["tokens"]
        teacher_adapters = dataclasses.replace(self.adapters, lora=None, new_tokens=0, padding_rows=0)

        def teacher() -> jax.Array:
            view = teacher_view(tokens, micro["segment_ids"], micro["positions"], vocab)
            rows = micro.get(host_embedding.BATCH_KEY)
            out, _ = llama.Llama(self.cfg, teacher_adapters).apply({"params": base}, *view, base_rows_btd=rows)
            return jax.lax.stop_gradient(out)

        shape = jax.eval_shape(teacher)
        teacher_btw = jax.lax.cond(jnp.any(kd_bt), teacher, lambda: jnp.zeros(shape.shape, shape.dtype))
        return divergence(logits_btv, teacher_btw, kd_bt, self.distill)

    def step_fn(self, state: TrainState, base: Any, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        """One optimizer step over ``batch`` [accum, B, T] (unjitted; see :meth:`compiled_step`).

        Traced under the mesh (``jax.set_mesh``), so fused kernels that must be
        partitioned by hand (Pallas flash attention) see how the step is split.
        """
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
            return self._step(state, base, batch)

    def _step(self, state: TrainState, base: Any, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)

        def micro_step(carry: tuple, xs: tuple) -> tuple:
            grads, loss_sum, count = carry
            micro, i = xs
            (lsum, n), g = grad_fn(state.trainable, base, micro, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, grads, g), loss_sum + lsum, count + n), None

        accum = batch["tokens"].shape[0]
        if accum == 1:  # no accumulation buffer: one fewer copy of the trainable tree in memory
            micro = jax.tree.map(lambda x: x[0], batch)
            (loss_sum, count), grads = grad_fn(state.trainable, base, micro, jax.random.fold_in(key, 0))
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.trainable)
            (grads, loss_sum, count), _ = jax.lax.scan(
                micro_step, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(accum))
            )
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        full_grads = full_tree(frozen_placeholders(base), grads)
        updates, opt_state = self.tx.update(full_grads, state.opt_state, full_tree(base, state.trainable))
        updates = {k: v for k, v in updates.items() if k in state.trainable}
        trainable = optax.apply_updates(state.trainable, updates)
        loss, grad_norm = loss_sum / denom, optax.global_norm(grads)
        # a step whose loss, gradients or new values are not finite changes nothing (the loop decides what then)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(trainable)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        trainable, opt_state = keep(trainable, state.trainable), keep(opt_state, state.opt_state)
        metrics = {
            "loss": loss,
            "tokens": count,
            "grad_norm": grad_norm,
            "lr": schedule(self.optim)(state.step),
            "finite": finite.astype(jnp.float32),
        }
        new_state = TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state, rng=state.rng)
        return new_state, metrics

    def compiled_step(self, base: Any) -> Callable:
        """The step as one ``jax.jit`` with explicit in/out shardings and the state donated."""
        state_sh = self.state_shardings()
        base_sh = jax.tree.map(lambda x: x.sharding, base)
        batch_sh = {k: self.batch_sharding() for k in self.batch_keys()}
        rep = shd.replicated(self.mesh)
        return jax.jit(
            self.step_fn,
            in_shardings=(state_sh, base_sh, batch_sh),
            out_shardings=(state_sh, {k: rep for k in ("loss", "tokens", "grad_norm", "lr", "finite")}),
            donate_argnums=(0,),
            compiler_options=xla_options.fast_training(),
        )


def _all_finite(tree: Any) -> jax.Array:
    """True when every floating value in ``tree`` is finite (one reduction per leaf)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
