"""The one table of accelerators: memory per device and dense bf16 peak FLOP/s.

The planner looks devices up by the short names users type (``--device v5e``);
the train loop's MFU looks them up by jax's ``device_kind``. Both read this table.
"""

from __future__ import annotations

import dataclasses

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Device:
    memory: int  # bytes per device
    peak_flops: float  # dense bf16 FLOP/s per device
    kinds: tuple[str, ...] = ()  # jax ``device_kind`` strings of this device


DEVICES: dict[str, Device] = {
    "v4": Device(32 * GiB, 275e12, ("TPU v4",)),
    "v5e": Device(16 * GiB, 197e12, ("TPU v5 lite", "TPU v5e")),
    "v5p": Device(95 * GiB, 459e12, ("TPU v5p", "TPU v5")),
    "v6e": Device(32 * GiB, 918e12, ("TPU v6 lite", "TPU v6e")),
    "A100-40GB": Device(40 * GiB, 312e12, ("NVIDIA A100-SXM4-40GB",)),
    "A100-80GB": Device(80 * GiB, 312e12, ("NVIDIA A100-SXM4-80GB",)),
    "H100": Device(80 * GiB, 989e12, ("NVIDIA H100 80GB HBM3",)),
    "H200": Device(141 * GiB, 989e12, ("NVIDIA H200",)),
    "cpu": Device(24 * GiB, 1e11),
}


def peak_flops(device_kind: str) -> float | None:
    """Peak FLOP/s of a device by jax's ``device_kind``, or None for devices not in the table."""
    for device in DEVICES.values():
        if device_kind in device.kinds:
            return device.peak_flops
    return None
