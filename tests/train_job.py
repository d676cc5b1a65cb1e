"""A small, fully deterministic training job for the resume and sharding tests.

python tests/train_job.py RUN_DIR STEPS [--mesh D,F,T] [--sleep S] [--coordinator HOST:PORT --nproc N --pid I]
Prints nothing; writes RUN_DIR/metrics.jsonl, checkpoints, and RUN_DIR/final.npz (the adapters).
With --coordinator it is one process of a multi-process (multi-host) run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config():
    from jaxtrans.model.config import ModelConfig, RopeConfig

    return ModelConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope=RopeConfig(head_dim=16),
    )


def examples(n: int = 64, t: int = 16, vocab: int = 132, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(n, t + 1)).astype(np.int32)
    seg = np.ones((n, t), np.int32)
    return {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((n, t), np.int32),
        "segment_ids": seg,
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)).copy(),
    }


def build(mesh_sizes=(1, 1, 1), dropout=0.1, lr=5e-3):
    import jax

    from jaxtrans import sharding
    from jaxtrans.model import llama
    from jaxtrans.model.lora import LoraConfig
    from jaxtrans.train.optim import OptimConfig
    from jaxtrans.train.step import Trainer

    cfg = tiny_config()
    n = mesh_sizes[0] * mesh_sizes[1] * mesh_sizes[2]
    mesh = sharding.make_mesh(*mesh_sizes, devices=jax.devices()[:n])
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, dropout), new_tokens=4)
    trainer = Trainer(
        cfg, adapters, OptimConfig(learning_rate=lr, total_steps=40, warmup_steps=3 if lr < 1 else 0), mesh
    )
    base_sh = trainer.base_shardings()
    base = jax.jit(lambda: llama.init_params(cfg, seed=1), out_shardings=base_sh)()
    return trainer, base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("steps", type=int)
    ap.add_argument("--mesh", default="1,1,1")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--coordinator", default="")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--pid", type=int, default=0)
    args = ap.parse_args()
    import numpy as np

    from jaxtrans import distributed

    distributed.initialize({"coordinator": args.coordinator, "num_processes": args.nproc, "process_id": args.pid,
                            "timeout_s": int(os.environ.get("JAXTRANS_TEST_DIST_TIMEOUT", 60))})  # fmt: skip

    from jaxtrans.errors import JaxtransError
    from jaxtrans.train.data import InMemoryBatches
    from jaxtrans.train.loop import LoopConfig, train

    trainer, base = build(tuple(int(x) for x in args.mesh.split(",")), lr=args.lr)
    data = InMemoryBatches(examples(), batch_size=8, accum=2, seed=3)
    if args.sleep:  # slow steps down so a test can kill the job mid-run
        inner = data.__next__

        def slow_next():
            time.sleep(args.sleep)
            return inner()

        data.__next__ = slow_next  # type: ignore[method-assign]
    loop = LoopConfig(total_steps=args.steps, save_every=3, progress=False, async_save=True)
    try:
        state = train(trainer, base, _Iter(data), loop, args.run_dir)
    except JaxtransError as e:
        print(f"jaxtrans: error: {e}", file=sys.stderr)
        sys.exit(2)
    import jax
    from jax.experimental import multihost_utils

    flat = {"/".join(map(str, p)): np.asarray(multihost_utils.process_allgather(v, tiled=True))
            for p, v in _flatten(state.trainable)}  # fmt: skip
    if jax.process_index() == 0:
        np.savez(os.path.join(args.run_dir, "final.npz"), **flat)


class _Iter:
    """Iterator wrapper that forwards state()/restore() (so next() can be slowed in tests)."""

    def __init__(self, data):
        self.data = data

    def __next__(self):
        return self.data.__next__()

    def state(self):
        return self.data.state()

    def restore(self, s):
        self.data.restore(s)


def _flatten(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree).items()


if __name__ == "__main__":
    main()
