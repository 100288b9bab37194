"""Forward + backward throughput of the 3D fields on this machine, in million points per second.

    python benchmarks/bench_field.py [--points 131072] [--repeats 5] [--out PATH.json] [--threads N]

One step is what training does per batch of ray samples: evaluate density and albedo (and normals, for the
orientation loss and lambertian shading, paper sec. 3.1 / App. A.2), then backpropagate a loss that touches
every output. The points are uniform in the bounding sphere (random access: the worst case for a hash grid;
samples along rays are more coherent). Each case runs in a fresh process, so its peak RSS is its own and
allocator state cannot leak between cases. The reference is a NAIVE pure-PyTorch hash grid as one would first
write it (loops over 16 levels and 8 corners, one nn.Embedding per level, normals by double backward), defined
below; ratios compare each of our fields to it without normals (the issue's reference figure) and, with
--naive-normals, to it with the same normals setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamfusion.device import machine_facts
from dreamfusion.fields import FieldConfig, build_field
from dreamfusion.fields.base import (
    Field,
    FieldOutput,
    autograd_normals,
    blob_preactivation,
    density_activation,
)

# The naive baseline's settings: stable-dreamfusion's grid (16 levels x 2 features, 2^19 entries per level,
# resolutions 16..2048) and its 3-layer, 64-wide density MLP.
NAIVE_LEVELS = 16
NAIVE_FEATURES = 2
NAIVE_LOG2_TABLE = 19
NAIVE_RESOLUTIONS = (16, 2048)
NAIVE_HIDDEN = 64
PRIMES = (1, 2654435761, 805459861)


class NaiveHashGrid(Field):
    """The straightforward multiresolution hash grid: every level hashed, a Python loop over levels and
    corners, one nn.Embedding per level, normals by autograd through the whole field (double backward)."""

    def __init__(self, bound: float, generator: torch.Generator):
        super().__init__()
        self.bound = bound
        self.table_size = 2**NAIVE_LOG2_TABLE
        base, finest = NAIVE_RESOLUTIONS
        growth = (finest / base) ** (1 / (NAIVE_LEVELS - 1))
        self.resolutions = [math.floor(base * growth**level) for level in range(NAIVE_LEVELS)]
        self.embeddings = nn.ModuleList(
            nn.Embedding(self.table_size, NAIVE_FEATURES) for _ in self.resolutions
        )
        for embedding in self.embeddings:
            nn.init.uniform_(embedding.weight, -1e-4, 1e-4, generator=generator)
        width = NAIVE_LEVELS * NAIVE_FEATURES
        self.mlp = nn.Sequential(
            nn.Linear(width, NAIVE_HIDDEN),
            nn.SiLU(),
            nn.Linear(NAIVE_HIDDEN, NAIVE_HIDDEN),
            nn.SiLU(),
            nn.Linear(NAIVE_HIDDEN, 4),
        )

    def _mlp_out(self, points: Tensor) -> Tensor:
        unit = (points / self.bound + 1) / 2
        features = []
        for resolution, embedding in zip(self.resolutions, self.embeddings, strict=True):
            position = unit * resolution
            cell = position.floor().long()
            fraction = position - cell
            level = 0
            for corner in itertools.product((0, 1), repeat=3):
                vertex = cell + torch.tensor(corner)
                index = (vertex[:, 0] * PRIMES[0]) ^ (vertex[:, 1] * PRIMES[1]) ^ (vertex[:, 2] * PRIMES[2])
                weight = torch.ones_like(fraction[:, 0])
                for axis, bit in enumerate(corner):
                    weight = weight * (fraction[:, axis] if bit else 1 - fraction[:, axis])
                level = level + weight[:, None] * embedding(index % self.table_size)
            features.append(level)
        return self.mlp(torch.cat(features, -1))

    def density(self, points: Tensor) -> Tensor:
        return density_activation(self._mlp_out(points)[:, 0] + blob_preactivation(points, 5.0, 0.2))

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        out = self._mlp_out(points)
        density = density_activation(out[:, 0] + blob_preactivation(points, 5.0, 0.2))
        normals = autograd_normals(self.density, points) if with_normals else None
        return FieldOutput(density=density, albedo=torch.sigmoid(out[:, 1:]), normals=normals)


class DoubleBackwardNormals(Field):
    """Wraps a field so its normals come from `autograd_normals` (the alternative to analytic normals)."""

    def __init__(self, field: Field):
        super().__init__()
        self.field = field
        self.bound = field.bound

    def density(self, points: Tensor) -> Tensor:
        return self.field.density(points)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        out = self.field(points)
        normals = autograd_normals(self.field.density, points) if with_normals else None
        return FieldOutput(density=out.density, albedo=out.albedo, normals=normals)


@dataclass(frozen=True)
class Case:
    name: str
    field: str  # "triplane", "hashgrid", "hashgrid-double-backward" or "naive"
    with_normals: bool
    # The naive grid's double backward takes 10-90 s per step here: when asked for (--naive-normals),
    # it gets one timed step and no warm-up.
    single_step: bool = False


CASES = (
    Case("TriplaneField", "triplane", False),
    Case("TriplaneField + normals (analytic)", "triplane", True),
    Case("HashGridField", "hashgrid", False),
    Case("HashGridField + normals (analytic)", "hashgrid", True),
    Case("HashGridField + normals (double backward)", "hashgrid-double-backward", True),
    Case("naive hash grid", "naive", False),
    Case("naive hash grid + normals (double backward)", "naive", True, single_step=True),
)


def build(kind: str, generator: torch.Generator) -> Field:
    match kind:
        case "triplane":
            return build_field(FieldConfig(kind="triplane"), generator)
        case "hashgrid":
            return build_field(FieldConfig(kind="hashgrid"), generator)
        case "hashgrid-double-backward":
            return DoubleBackwardNormals(build_field(FieldConfig(kind="hashgrid"), generator))
        case "naive":
            return NaiveHashGrid(FieldConfig().bound, generator)
        case _:
            raise ValueError(f"unknown benchmark field {kind!r}")


def training_step(field: Field, points: Tensor, cotangents: Tensor, with_normals: bool) -> Callable[[], None]:
    """Forward, a loss that weights every output by fixed random numbers, backward."""

    def step() -> None:
        field.zero_grad(set_to_none=True)
        out = field(points, with_normals=with_normals)
        loss = (out.density * cotangents[:, 0]).sum() + (out.albedo * cotangents[:, 1:4]).sum()
        if out.normals is not None:
            loss = loss + (out.normals * cotangents[:, 4:]).sum()
        loss.backward()

    return step


def run_case(case: Case, points_count: int, repeats: int, threads: int, seed: int) -> dict:
    """Runs in a child process: one warm-up step, then `repeats` timed steps; wall-clock seconds."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    field = build(case.field, generator)
    bound = FieldConfig().bound
    direction = F.normalize(torch.randn(points_count, 3, generator=generator), dim=-1)
    points = direction * bound * torch.rand(points_count, 1, generator=generator) ** (1 / 3)
    cotangents = torch.randn(points_count, 7, generator=generator)
    step = training_step(field, points, cotangents, case.with_normals)
    if case.single_step:
        repeats = 1
    else:
        step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=131072, help="per step (64x64 rays x 32 samples)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case, after one warm-up")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_field.json"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--naive-normals",
        action="store_true",
        help="also time the naive grid with double-backward normals (10-90 s per step)",
    )
    args = parser.parse_args()

    cases = [c for c in CASES if args.naive_normals or not (c.field == "naive" and c.with_normals)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    # A fresh process per case ("spawn": no state inherited from this one) makes each peak RSS its own.
    context = multiprocessing.get_context("spawn")
    results = []
    for case in cases:
        with context.Pool(1) as pool:
            measured = pool.apply(run_case, (case, args.points, args.repeats, args.threads, args.seed))
        median = statistics.median(measured["seconds"])
        results.append(
            {
                **dataclasses.asdict(case),
                **measured,
                "median_s": median,
                "min_s": min(measured["seconds"]),
                # Other processes on the machine slow every case; this says how busy it was meanwhile.
                "load_1m_after": os.getloadavg()[0],
                "mpoints_per_s": args.points / median / 1e6,
            }
        )
        print(f"  {case.name}: {results[-1]['mpoints_per_s']:.3f} M points/s", flush=True)

    # Two references: the naive grid without normals (the figure) and with the same normals setting.
    naive = {r["with_normals"]: r["mpoints_per_s"] for r in results if r["field"] == "naive"}
    for result in results:
        plain, same = naive.get(False), naive.get(result["with_normals"])
        result["x_naive"] = result["mpoints_per_s"] / plain if plain else None
        result["x_naive_same_normals"] = result["mpoints_per_s"] / same if same else None

    report = {
        "machine": {
            **machine_facts(),
            "torch_threads": args.threads,  # set in each case's own process; this one keeps its default
            "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "config": {
            "points": args.points,
            "repeats": args.repeats,
            "seed": args.seed,
            "triplane": dataclasses.asdict(FieldConfig(kind="triplane")),
            "hashgrid": dataclasses.asdict(FieldConfig(kind="hashgrid")),
            "naive": {
                "levels": NAIVE_LEVELS,
                "features_per_level": NAIVE_FEATURES,
                "log2_table_size": NAIVE_LOG2_TABLE,
                "resolutions": list(NAIVE_RESOLUTIONS),
                "mlp": f"3 layers, {NAIVE_HIDDEN} wide, SiLU",
            },
        },
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\n{args.points} points, median of {args.repeats}, {args.threads} torch threads, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {load_before[0]:.1f}\n"
    )
    print("| field | M points/s | ms / step | x naive | x naive, same normals | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ratios = [f"{x:.1f}" if x is not None else "-" for x in (r["x_naive"], r["x_naive_same_normals"])]
        speed = f"{r['mpoints_per_s']:.3f} | {1000 * r['median_s']:.0f}"
        print(f"| {r['name']} | {speed} | {ratios[0]} | {ratios[1]} | {r['peak_rss_mib']:.0f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
