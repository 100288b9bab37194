"""One run on several processes with torch.distributed: each process renders its share of a step's views,
the gradients are averaged, and rank 0 alone writes the run folder (metrics, checkpoints, grids, export).

Launched by `torchrun --nproc-per-node N -m dreamfusion generate ...`, or by `dreamfusion generate
--processes N`, which starts the same elastic agent (torch.distributed.launcher) on this machine. The
backend is gloo on the CPU and NCCL on CUDA, where each process takes the GPU of its LOCAL_RANK.

Exactness. Every process draws the randomness of the whole batch from the same seeded generators (cameras,
lights, shading, sample jitter, background colours, the SDS timesteps and noise) and keeps its own rows, so
N processes at `train.batch_size=B` take the same steps as one process at batch B, up to float rounding
(tests/training/test_distributed.py). The SDS term is a sum over views and the regularisers are means, so
each process multiplies its SDS term by N before the gradients are averaged. (The SDF field's eikonal term
is a mean over the samples each process evaluated, so there the average is close, not exact.)

Why not the DistributedDataParallel wrapper: a step calls the field several times (occupancy, samples,
normals by autograd.grad with create_graph), while DDP's reducer expects one forward per backward. One
all-reduce of the flattened gradients after backward is what DDP does, without that constraint.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dreamfusion.errors import SettingsError


@dataclass(frozen=True)
class Shard:
    """This process's share of every batch: rows [rank * n, (rank + 1) * n) of a batch of world * n."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, full: Tensor) -> Tensor:
        """This process's rows of a tensor whose first dimension is the whole batch (view-major)."""
        n = full.shape[0] // self.world
        return full[self.rank * n : (self.rank + 1) * n]

    def rand(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        """torch.rand(shape) for this process's rows: the whole batch's draw (world * shape[0] rows), sliced,
        so the generator advances exactly as it does in a single process."""
        return self.take(torch.rand(self.world * shape[0], *shape[1:], generator=generator))

    def randn(self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        full = (self.world * shape[0], *shape[1:])
        return self.take(torch.randn(full, generator=generator, device=generator.device, dtype=dtype))

    def randint(self, low: int, high: int, n: int, generator: torch.Generator) -> Tensor:
        full = torch.randint(low, high, (self.world * n,), generator=generator, device=generator.device)
        return self.take(full)

    # -- collectives ---------------------------------------------------------------------------------------
    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Every parameter's .grad becomes the mean over processes (a missing grad counts as zeros)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in parameters:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def sum(self, values: Tensor) -> Tensor:
        values = values.clone()
        dist.all_reduce(values)
        return values

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether any process says yes (a stop asked for on one of them stops all at the same step)."""
        return bool(self.sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's `value`, on every process (any picklable object: a path, a config, a checkpoint)."""
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or --processes)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device, batch_size: int | None = None) -> Shard | None:
    """Joins the process group when launched by torchrun; None for an ordinary single process."""
    if not launched():
        return None
    world = int(os.environ["WORLD_SIZE"])
    if batch_size is not None:
        check_split(batch_size, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Shard(rank=dist.get_rank(), world=world)


def check_split(batch_size: int, processes: int) -> None:
    if processes < 1:
        raise SettingsError(f"--processes must be at least 1, got {processes}")
    if batch_size % processes:
        raise SettingsError(
            f"train.batch_size={batch_size} does not split over {processes} processes: "
            f"use a multiple of {processes}, e.g. --set train.batch_size={processes}"
        )


def local_processes() -> int:
    """How many processes of this run share this machine (torchrun's LOCAL_WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def local_rank() -> int | None:
    return int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None


def launch(processes: int, argv: Sequence[str]) -> int:
    """`dreamfusion ARGV` in `processes` processes on this machine, under torch's elastic agent (what
    torchrun --standalone does). Returns the exit code: the first failed process's, else 0. Each process
    prints its own errors (rank 0 the progress bar), so a failure here adds only a line naming the rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"dreamfusion-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "dreamfusion", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode not in (2, 130):  # those printed their own one-line message
            print(f"dreamfusion: error: process {rank} of {processes} exited with {failure.exitcode}")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """argv with `option VALUE` and `option=VALUE` removed (to pass the rest on to each process)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
