"""XLA:CPU compiler options, chosen per purpose, in one place. Other backends get none.

On CPU (jax 0.10) XLA hands dots to the YNNPACK library. Its dot kernels round
float32 about twice as much as XLA's own (measured on SmolLM2: 1.8e-4 against
a float64 reference vs 8.3e-5 with YNNPACK off; transformers' float32 is
6.0e-5), so forward passes that must match other frameworks keep YNNPACK to
convolutions only, and XLA's own kernels do the dots.
Training instead restricts YNNPACK to dots: left free, it fuses elementwise
work into transposing copies in the LoRA backward (an MLP block's backward
went from 115 ms to 41 ms).
Decoding does the same: its dots are [batch, d] x [d, f] products that only
stream weights, and YNNPACK streams them at 16 GB/s where XLA's own kernels
manage 10 on the development machine. Greedy tokens still equal transformers'
in the parity tests; the logits those tests compare come from ``accurate()``.
"""

from __future__ import annotations

import functools

import jax

_ACCURATE = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
_FAST_TRAINING = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def on_cpu() -> bool:
    """Whether jax computes on the CPU (the default backend)."""
    return jax.default_backend() == "cpu"


def accurate() -> dict[str, str] | None:
    """For inference and evaluation: float32 results as close to other frameworks as XLA:CPU gets."""
    return dict(_ACCURATE) if on_cpu() else None


def fast_training() -> dict[str, str] | None:
    """For the train step."""
    return dict(_FAST_TRAINING) if on_cpu() else None


def decoding() -> dict[str, str] | None:
    """For the decode loop (memory-bound weight products)."""
    return dict(_FAST_TRAINING) if on_cpu() else None
