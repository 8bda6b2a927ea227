"""Throughput and model FLOPs utilization (MFU).

MFU = achieved model FLOP/s ÷ peak FLOP/s of the devices (Chowdhery et al., "PaLM", 2022,
appendix B). Model FLOPs per token of a decoder-only transformer are ``6·N + 12·L·T·d``
(``titanax.models.gpt_flops_per_token``); the Engine takes them from the caller, or falls back to
the compiled program's FLOPs (hardware FLOPs, remat included — then reported as ``hfu``).
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["PEAK_BF16_FLOPS", "peak_flops_per_device"]

# Dense bf16 peak FLOP/s per device (vendor data sheets; no sparsity).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; PCIe is 756e12
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "V100": 125e12,  # fp16 tensor cores; no bf16
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
    "TPU v3": 123e12,
    "MI300X": 1307e12,
}


def peak_flops_per_device(device: Any | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of ``device`` (default: the first device), or ``None`` if unknown.

    Matches :data:`PEAK_BF16_FLOPS` keys against ``device.device_kind`` (longest key first);
    CPUs are unknown (MFU is not meaningful there).
    """
    device = device if device is not None else jax.devices()[0]
    kind = str(getattr(device, "device_kind", ""))
    if getattr(device, "platform", "") == "cpu":
        return None
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.lower() in kind.lower():
            return PEAK_BF16_FLOPS[key]
    return None
