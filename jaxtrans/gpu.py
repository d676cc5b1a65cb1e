"""Abstract NVIDIA GPUs: compile for a GPU on a machine without one (the CUDA plugin's deviceless topologies).

``jax.experimental.topologies.get_topology_desc(platform="cuda", ...)`` gives
abstract devices of a card described by a ``stream_executor.GpuTargetConfigProto``
in text form; a mesh over them and ``jit(...).lower(...).compile()`` then run
the real XLA GPU compiler (Triton and cuDNN kernels for that compute
capability, NCCL collectives between devices), so memory and the kernels
chosen are the GPU's. The description comes from the device table
(:mod:`jaxtrans.devices`) or from a file. A topology is
``PARTITIONS x HOSTS x GPUS_PER_HOST`` (``1x1x8``: one host of 8; ``1x2x8``:
two hosts). It needs the CUDA plugin (:data:`PLUGIN`; the test extra installs
it), and jax started on the CPU platform, which the planner sees to.
"""

from __future__ import annotations

import importlib.util
import math
import re
from typing import Any

from jaxtrans import platforms
from jaxtrans.devices import DEVICES, Gpu
from jaxtrans.errors import JaxtransError

# the CUDA plugin matching the pinned jax: 180 MB of wheels, all a deviceless compile needs (no CUDA libraries,
# no driver); a GPU machine installs jax[cuda12] (the plugin and NVIDIA's libraries) instead
PLUGIN = "jax-cuda12-plugin==0.10.2"
_TOPOLOGY = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*x[1-9][0-9]*$")
_CUDNN = (9, 8)  # the cuDNN version the compiler is told the card runs (jax 0.10.2's CUDA 12 wheels ship 9.x)


def is_gpu(device: str) -> bool:
    return device in DEVICES and DEVICES[device].gpu is not None


def has_plugin() -> bool:
    return importlib.util.find_spec("jax_cuda12_plugin") is not None


def default_topology(mesh_sizes: tuple[int, int, int]) -> str:
    """One host with as many GPUs as the mesh names (a -1 axis: one GPU for it)."""
    return f"1x1x{math.prod(s for s in mesh_sizes if s != -1)}"


def description(gpu: Gpu, memory: int) -> str:
    """The card as the ``GpuTargetConfigProto`` text the XLA GPU compiler reads."""
    major, minor = gpu.compute_capability
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
        f"  shared_memory_per_core: {gpu.shared_memory_per_sm}", f"  threads_per_core_limit: {gpu.threads_per_sm}",
        f"  core_count: {gpu.sms}", f"  fpus_per_core: {gpu.fp32_lanes_per_sm}",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(gpu.memory_bandwidth)}", f"  l2_cache_size: {gpu.l2_cache}",
        f"  clock_rate_ghz: {gpu.clock_ghz}", f"  device_memory_size: {memory}",
        f"  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        f"dnn_version_info {{ major: {_CUDNN[0]} minor: {_CUDNN[1]} }}",
        f'device_description_str: "{gpu.name}"',
    ])  # fmt: skip


def read_description(path: str) -> str:
    """A user's ``GpuTargetConfigProto`` text file (for a card the table lacks), checked for its shape."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise JaxtransError(f"cannot read the GPU description {path}: {e.strerror}; give a readable file") from None
    if "gpu_device_info" not in text or "cuda_compute_capability" not in text or text.count("{") != text.count("}"):
        raise JaxtransError(
            f"GPU description {path} does not parse as a GpuTargetConfigProto (it needs a gpu_device_info {{ ... "
            "cuda_compute_capability { major: ... } ... } block); start from one the device table renders: "
            "python -c 'from jaxtrans import gpu; print(gpu.description_of(\"H100\"))'"
        )
    return text


def description_of(device: str) -> str:
    spec = DEVICES[device]
    return description(spec.gpu, spec.memory)


def check(device: str, topology: str) -> None:
    """A topology of the right form and the CUDA plugin to compile for it: one line otherwise."""
    if not _TOPOLOGY.match(topology):
        raise JaxtransError(
            f"GPU topology {topology!r} is not PARTITIONSxHOSTSxGPUS (e.g. 1x1x1, 1x1x8 for one host of 8, "
            "1x2x8 for two hosts)"
        )
    if not has_plugin():
        raise JaxtransError(f"compiling for {device} needs the CUDA plugin: pip install '{PLUGIN}' (no GPU needed)")


def devices(device: str, topology: str, text: str | None = None) -> list[Any]:
    """The abstract GPUs of ``topology``, in mesh order (hosts outermost)."""
    from jax.experimental import topologies

    text = text or description_of(device)
    with platforms.native_stderr() as log:
        try:
            desc = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=text,
                                                topology=topology)  # fmt: skip
        except NotImplementedError:  # the plugin's factory is registered only when jax starts on the CPU platform
            raise JaxtransError(
                "the CUDA plugin cannot describe GPUs here: jax started on another platform; run with JAX_PLATFORMS=cpu"
            ) from None
        except Exception as e:  # the plugin's own refusal, in one line with the parser's reason (logged natively)
            why = [ln.split("GpuTargetConfigProto: ")[-1] for ln in log().splitlines() if "Error parsing" in ln]
            raise JaxtransError(
                f"the CUDA plugin refuses the {device} description: {(why or [str(e).splitlines()[0]])[0][:200]}; "
                "check its fields against python -c 'from jaxtrans import gpu; print(gpu.description_of(\"H100\"))'"
            ) from None
    return sorted(desc.devices, key=lambda d: d.id)
