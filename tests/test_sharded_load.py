"""Loading onto a mesh places every parameter with the sharding the rules table gives it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

import jaxtrans
from jaxtrans import sharding
from jaxtrans.errors import JaxtransError
from tests.conftest import tiny_hf_model


def test_loaded_params_follow_the_rules(tmp_path):
    assert len(jax.devices()) == 8
    _, path = tiny_hf_model(tmp_path, "llama", vocab_size=96, num_attention_heads=4, num_key_value_heads=2)
    single, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = jaxtrans.load_pretrained(path, with_tokenizer=False, mesh=mesh)
    flat = traverse_util.flatten_dict(sharded.params)
    spec = lambda p: tuple(flat[p].sharding.spec)  # noqa: E731
    assert spec(("layers", "attn", "q", "kernel")) == (None, "fsdp", "tensor", None)
    assert spec(("layers", "mlp", "down", "kernel")) == (None, "tensor", "fsdp")
    assert spec(("embedding",)) == ("tensor", "fsdp")
    # each device holds a quarter of the q kernel
    q = flat[("layers", "attn", "q", "kernel")]
    assert q.addressable_shards[0].data.size == q.size // 4
    for p, value in traverse_util.flatten_dict(single.params).items():
        np.testing.assert_array_equal(np.asarray(flat[p]), np.asarray(value))
    tokens = np.arange(24).reshape(2, 12) % 96
    np.testing.assert_allclose(np.asarray(sharded(tokens)), np.asarray(single(tokens)), atol=1e-5)


def test_mesh_that_does_not_fit_is_refused():
    with pytest.raises(JaxtransError, match="needs 12 devices but 8 are available"):
        sharding.make_mesh(data=3, fsdp=2, tensor=2)
    with pytest.raises(JaxtransError, match="does not divide the 8 available devices"):
        sharding.make_mesh(data=-1, fsdp=3)


def test_axes_that_do_not_divide_are_replicated(tmp_path):
    _, path = tiny_hf_model(tmp_path, "llama", vocab_size=97)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False, mesh=mesh)
    assert tuple(model.params["embedding"].sharding.spec) == (None, "fsdp")
