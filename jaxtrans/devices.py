"""The one table of accelerators: memory per device, dense bf16 peak FLOP/s, and each GPU's description.

The planner looks devices up by the short names users type (``--device v5e``,
``--device RTX4090``); the train loop's MFU looks them up by jax's
``device_kind``. Both read this table. A GPU row also carries the hardware
facts the XLA GPU compiler needs to compile for that card without one
(:mod:`jaxtrans.gpu` renders them as a ``stream_executor.GpuTargetConfigProto``):
streaming multiprocessors, shared memory, L2, clock, bandwidth and compute
capability, from the vendors' datasheets.
"""

from __future__ import annotations

import dataclasses

GiB = 1 << 30
# the share of a GPU's memory jax's allocator takes (XLA_PYTHON_CLIENT_MEM_FRACTION, as launch/single_gpu.sh sets it;
# jax's own default is 0.75): plans of GPU steps fit when they fit in this share
GPU_MEM_FRACTION = 0.9
KiB = 1 << 10
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Gpu:
    """What the XLA GPU compiler reads of a card (``GpuDeviceInfoProto``'s fields), per datasheet."""

    name: str  # the driver's device name (jax's ``device_kind``)
    compute_capability: tuple[int, int]
    sms: int  # streaming multiprocessors (the compiler's ``core_count``)
    shared_memory_per_sm: int  # bytes
    shared_memory_per_block_optin: int  # bytes a kernel may opt in to
    l2_cache: int  # bytes
    clock_ghz: float  # boost clock
    memory_bandwidth: float  # bytes/s
    threads_per_sm: int = 2048
    fp32_lanes_per_sm: int = 64  # CUDA cores per SM (the compiler's ``fpus_per_core``)


@dataclasses.dataclass(frozen=True)
class Device:
    memory: int  # bytes per device
    peak_flops: float  # dense bf16 FLOP/s per device (tensor cores, fp32 accumulation)
    kinds: tuple[str, ...] = ()  # jax ``device_kind`` strings of this device
    gpu: Gpu | None = None  # NVIDIA cards: what compiles for them without one
    host_memory: int = 0  # host RAM per device on a usual machine with this card (cloud instance, workstation)

    @property
    def usable_memory(self) -> int:
        """What a step may use: on a GPU, jax's allocator takes ``GPU_MEM_FRACTION`` of the card; a TPU's
        compiler plans against its whole HBM (and refuses what does not fit)."""
        return int(self.memory * GPU_MEM_FRACTION) if self.gpu is not None else self.memory


def _gpu(memory_gib: float, peak: float, gpu: Gpu, *kinds: str, host_gib: int = 0) -> Device:
    return Device(int(memory_gib * GiB), peak, (gpu.name, *kinds), gpu, host_gib * GiB)


_HOPPER = dict(compute_capability=(9, 0), shared_memory_per_sm=228 * KiB, shared_memory_per_block_optin=227 * KiB,
               l2_cache=50 * MiB, fp32_lanes_per_sm=128)  # fmt: skip
_AMPERE_DC = dict(compute_capability=(8, 0), shared_memory_per_sm=164 * KiB, shared_memory_per_block_optin=163 * KiB,
                  l2_cache=40 * MiB, clock_ghz=1.41)  # fmt: skip
_SM86 = dict(compute_capability=(8, 6), shared_memory_per_sm=100 * KiB, shared_memory_per_block_optin=99 * KiB,
             threads_per_sm=1536, fp32_lanes_per_sm=128, l2_cache=6 * MiB)  # fmt: skip
_SM89 = dict(compute_capability=(8, 9), shared_memory_per_sm=100 * KiB, shared_memory_per_block_optin=99 * KiB,
             threads_per_sm=1536, fp32_lanes_per_sm=128)  # fmt: skip

DEVICES: dict[str, Device] = {
    "v4": Device(32 * GiB, 275e12, ("TPU v4",), host_memory=100 * GiB),
    "v5e": Device(16 * GiB, 197e12, ("TPU v5 lite", "TPU v5e"), host_memory=24 * GiB),
    "v5p": Device(95 * GiB, 459e12, ("TPU v5p", "TPU v5"), host_memory=112 * GiB),
    "v6e": Device(32 * GiB, 918e12, ("TPU v6 lite", "TPU v6e"), host_memory=90 * GiB),
    "H100": _gpu(80, 989e12, Gpu("NVIDIA H100 80GB HBM3", sms=132, clock_ghz=1.98, memory_bandwidth=3.35e12,
                                 **_HOPPER), host_gib=225),
    "H100-PCIe": _gpu(80, 756e12, Gpu("NVIDIA H100 PCIe", sms=114, clock_ghz=1.755, memory_bandwidth=2.0e12,
                                      **_HOPPER), host_gib=128),
    "H200": _gpu(141, 989e12, Gpu("NVIDIA H200", sms=132, clock_ghz=1.98, memory_bandwidth=4.8e12, **_HOPPER),
                 "NVIDIA H200 141GB HBM3e", host_gib=250),
    "A100-80GB": _gpu(80, 312e12, Gpu("NVIDIA A100-SXM4-80GB", sms=108, memory_bandwidth=2.039e12, **_AMPERE_DC),
                      "NVIDIA A100 80GB PCIe", host_gib=240),
    "A100-40GB": _gpu(40, 312e12, Gpu("NVIDIA A100-SXM4-40GB", sms=108, memory_bandwidth=1.555e12, **_AMPERE_DC),
                      "NVIDIA A100-PCIE-40GB", host_gib=144),
    "L40S": _gpu(48, 362e12, Gpu("NVIDIA L40S", sms=142, clock_ghz=2.52, memory_bandwidth=864e9, l2_cache=96 * MiB,
                                 **_SM89), host_gib=128),
    "A6000": _gpu(48, 155e12, Gpu("NVIDIA RTX A6000", sms=84, clock_ghz=1.8, memory_bandwidth=768e9, **_SM86),
                  host_gib=128),
    "L4": _gpu(24, 121e12, Gpu("NVIDIA L4", sms=58, clock_ghz=2.04, memory_bandwidth=300e9, l2_cache=48 * MiB,
                               **_SM89), host_gib=32),
    "A10G": _gpu(24, 70e12, Gpu("NVIDIA A10G", sms=80, clock_ghz=1.71, memory_bandwidth=600e9, **_SM86),
                 host_gib=32),
    "RTX4090": _gpu(24, 165e12, Gpu("NVIDIA GeForce RTX 4090", sms=128, clock_ghz=2.52, memory_bandwidth=1008e9,
                                    l2_cache=72 * MiB, **_SM89), host_gib=64),
    "RTX3090": _gpu(24, 71e12, Gpu("NVIDIA GeForce RTX 3090", sms=82, clock_ghz=1.695, memory_bandwidth=936e9,
                                   **_SM86), host_gib=64),
    "cpu": Device(24 * GiB, 1e11, host_memory=24 * GiB),
}  # fmt: skip


def peak_flops(device_kind: str) -> float | None:
    """Peak FLOP/s of a device by jax's ``device_kind``, or None for devices not in the table."""
    for device in DEVICES.values():
        if device_kind in device.kinds:
            return device.peak_flops
    return None
