"""Choosing the torch device: `auto` means CUDA when torch sees one, else the CPU."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from gankit.errors import GankitError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GankitError(f"device {name!r} asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GankitError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None


# The CPU features whose bfloat16 instructions oneDNN uses: x86's AVX-512 BF16 and AMX, Arm's
# BF16 (NEON and SVE). Without them torch emulates bfloat16: correct, and 10-14x slower than
# float32 on the project's AVX2 CPU (docs/configuration.md).
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_features() -> set[str]:
    """The CPU features torch's cpuinfo reports as present (torch.cpu.get_capabilities,
    torch >= 2.9; before it, the two x86 probes that torch 2.4 has)."""
    if hasattr(torch.cpu, "get_capabilities"):
        return {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return {k for k, f in probes.items() if getattr(torch.cpu, f, lambda: False)()}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 convolutions and matrix products in hardware, rather
    than emulating them (torch does both, the emulation many times slower than float32)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.5, whose answer leaves emulation out
            return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_features() & set(BF16_CPU_FEATURES))


def resolve_amp(device: torch.device, amp: str) -> str:
    """train.amp as a step runs it: "auto" is "bf16" where `device` has bfloat16 in
    hardware, else "none"; "none" and "bf16" are themselves."""
    if amp == "auto":
        return "bf16" if native_bf16(device) else "none"
    return amp


def amp_note(device: torch.device, amp: str) -> str | None:
    """The line a run logs about its precision: what "auto" chose, or a warning that "bf16"
    is emulated here; None when there is nothing to say."""
    native = native_bf16(device)
    if amp == "auto":
        how, has = ("bfloat16 autocast", "has") if native else ("float32", "has no")
        return f"amp auto: {how} ({device.type} {has} bfloat16 in hardware)"
    if amp == "bf16" and not native:
        return (
            f"warning: train.amp bf16 on a {device.type} without bfloat16 in hardware runs "
            "emulated, about 10x slower than float32: pass --amp auto or --amp none"
        )
    return None


def autocast(device: torch.device, amp: str) -> Callable[[], torch.autocast]:
    """What GameSettings.autocast takes: a factory of the context that a training step's
    forward passes and losses run in (backward passes and optimiser steps run outside it).
    amp "bf16": bfloat16 autocast (matmuls and convolutions in bfloat16, reductions and
    losses in float32; weights, gradients and Adam's state stay float32, so no loss scaling
    is needed); "none": a no-op; "auto": bf16 where the device has it in hardware, else
    none. Refuses bf16 on a GPU without it, here, once."""
    amp = resolve_amp(device, amp)
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GankitError(f"train.amp bf16 asked for, but {device} has no bfloat16 support")
    return partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
