"""Device and dtype are chosen here and nowhere else.

Every module receives a `torch.device` (and, for the diffusion prior, a dtype) as an argument; none of them
looks at `torch.cuda` itself. The 3D field and renderer always compute in float32 (their gradients are small
and CPU bf16 gave no speed-up for them); only the frozen diffusion prior runs in half precision, on CUDA.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

import torch

from dreamfusion.errors import SettingsError


def pick_device(requested: str | None = None) -> torch.device:
    """`None` or "auto" picks CUDA when present, else the CPU. An unavailable device is a user error.
    One of several processes (torchrun) given plain "cuda" takes the GPU of its LOCAL_RANK."""
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and "LOCAL_RANK" in os.environ:
        requested = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise SettingsError(f"unknown device {requested!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(
            f"device {requested!r} was asked for but this machine has no CUDA device; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise SettingsError(f"device {requested!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return device


def prior_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The frozen prior's dtype: fp16 on CUDA, fp32 on the CPU (where fp16 is slow and lossy)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise SettingsError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    return table[precision]


def cpu_threads(requested: int | None = None) -> int:
    """Threads for torch's CPU kernels: `requested`, or by default the cores not already busy.

    torch starts one thread per core. When another process holds one of them, the threads of each parallel
    region wait on the slowest, and on a shared 2-core machine `generate` ran about 20 times slower with two
    threads than with one (benchmarks/README.md). The load average is the cheap, portable measure of busy
    cores; it lags by a minute, which is fine for a run that lasts longer. Several processes of one run on
    this machine (torchrun's LOCAL_WORLD_SIZE) share the free cores."""
    if requested is not None:
        if requested < 1:
            raise SettingsError(f"--threads must be at least 1, got {requested}")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(cores, round(cores - busy)) // sharing)


def use_cpu_threads(requested: int | None = None) -> int:
    """Sets torch's CPU thread count (see `cpu_threads`) and the CPU settings of `tune_cpu_kernels`;
    returns the thread count."""
    threads = cpu_threads(requested)
    torch.set_num_threads(threads)
    tune_cpu_kernels()
    return threads


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_cpu_kernels() -> None:
    """Two process-wide settings that made a late `generate` step of the builtin preset about 10 % faster
    on one CPU thread (113-117 ms against 126-131 ms, four alternating runs):

    - denormal floats are flushed to zero. SDS gradients on the field are tiny, and x86 arithmetic on
      denormals is many times slower (a sigmoid backward over 28k x 64 values took 26 ms);
    - glibc's allocator keeps freed blocks of up to 32 MiB in the heap instead of unmapping them, so the
      few-MB buffers every step allocates (grid_sample gradients, activations) are not page-faulted in
      afresh each time. Elsewhere than glibc this part is skipped."""
    torch.set_flush_denormal(True)
    if platform.system() != "Linux":
        return
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)


def machine_facts() -> dict[str, object]:
    """What a benchmark records about the machine it ran on; the load average is taken now."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
