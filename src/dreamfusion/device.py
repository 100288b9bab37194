"""Device and dtype are chosen here and nowhere else.

Every module receives a `torch.device` (and, for the diffusion prior, a dtype) as an argument; none of them
looks at `torch.cuda` itself. The 3D field and renderer always compute in float32 (their gradients are small
and CPU bf16 gave no speed-up for them); only the frozen diffusion prior runs in half precision, on CUDA.
"""

from __future__ import annotations

import torch

from dreamfusion.errors import UserError


def pick_device(requested: str | None = None) -> torch.device:
    """`None` or "auto" picks CUDA when present, else the CPU. An unavailable device is a user error."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise UserError(f"unknown device {requested!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {requested!r} was asked for but this machine has no CUDA device; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {requested!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return device


def prior_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The frozen prior's dtype: fp16 on CUDA, fp32 on the CPU (where fp16 is slow and lossy)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise UserError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    return table[precision]
