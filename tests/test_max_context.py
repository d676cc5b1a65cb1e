"""``--dry_run --max_context``: the longest row a card takes, found by compiling for it, cached; and the refusals
of #36 (an unknown policy, a batch that fits at no length, host offload without host memory)."""

from __future__ import annotations

import dataclasses
import types

import pytest

from jaxtrans import devices, max_context, platforms
from jaxtrans.errors import JaxtransError
from tests.test_gpu_plan import _config, gpu_tiny, needs_plugin  # noqa: F401  (gpu_tiny: a fixture)


@needs_plugin
def test_the_search_finds_the_edge_and_reads_it_back_from_its_cache(gpu_tiny, monkeypatch, tmp_path):  # noqa: F811
    """A card shrunk to 120 MiB: the longest row fits, one granule more does not; the same search again
    compiles nothing."""
    monkeypatch.setenv("JAXTRANS_CACHE", str(tmp_path))
    small = dataclasses.replace(devices.DEVICES["H100"], memory=120 << 20)
    monkeypatch.setitem(devices.DEVICES, "H100", small)
    cfg = _config(gpu_tiny, (1, 1, 1))
    cfg.model.remat, cfg.model.mlp_chunk, cfg.model.loss_chunk = "offload_residuals", 256, 256
    cfg.stages.a.batch_size = cfg.stages.b.batch_size = 1
    found = max_context.search(cfg, "H100")
    g = max_context.granule(cfg)
    assert g == 256 and found["max_seq_len"] % g == 0 and found["max_seq_len"] >= 4 * g
    assert found["peak"] <= small.usable_memory and found["compiles"] <= 12
    probe = max_context._Probe(cfg, "H100", None, None)
    assert not probe(found["max_seq_len"] + g)["fits"]  # from the cache: the search compiled it
    monkeypatch.setattr(max_context.planner, "_compile", lambda *a: pytest.fail("compiled again"))
    assert max_context.search(cfg, "H100")["max_seq_len"] == found["max_seq_len"]


@needs_plugin
def test_a_batch_that_fits_at_no_length_is_refused_in_one_line(gpu_tiny, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("JAXTRANS_CACHE", str(tmp_path))
    monkeypatch.setitem(devices.DEVICES, "L4", dataclasses.replace(devices.DEVICES["L4"], memory=16 << 20))
    cfg = _config(gpu_tiny, (1, 1, 1))
    with pytest.raises(JaxtransError, match=r"--max_context: batch 4 does not fit L4 even at 128 tokens a row"):
        max_context.search(cfg, "L4")


def test_host_offload_on_devices_without_host_memory_is_refused():
    memory = types.SimpleNamespace(kind="device")
    device = types.SimpleNamespace(platform="metal", addressable_memories=lambda: [memory])
    with pytest.raises(JaxtransError, match="offload_residuals needs host memory, and metal devices have only device"):
        platforms.check_host_memory([device], "offload_residuals")
    platforms.check_host_memory([device], "full")  # nothing offloaded: nothing to check
    import jax

    platforms.check_host_memory(jax.devices()[:1], "offload_residuals")  # the CPU has pinned host memory


def test_a_checkpoint_policy_that_does_not_exist_is_refused():
    from jaxtrans.config import load_file, validate

    cfg = load_file("configs/thai.py").unlock()
    cfg.model.remat = "offload"
    with pytest.raises(JaxtransError, match="model.remat"):
        validate(cfg)
