"""The speed issue's candidate tricks, measured where they would act: the built-in prior's U-Net forward.

That forward (both classifier-free-guidance halves, a batch of 2 at 32x32) is the largest single cost of a
default `generate` step (about 30 of 73 ms, benchmarks/bench_step.py). Each variant runs the shipped U-Net on
the same inputs; the table gives the median milliseconds per call, the speed-up over fp32, and the largest
difference of its output from fp32's (the output is v, of order 1):

- fp32: as `generate` runs it (one thread unless --threads);
- fp32 channels-last: the convolutions' memory format NHWC;
- bf16 autocast: matmuls and convolutions in bfloat16 (this CPU has AMX-bf16);
- bf16 weights: the whole U-Net cast to bfloat16;
- two threads: torch.set_num_threads(2);
- torch.compile: inductor, default mode; its compile time is reported apart from the steady-state calls.

    .venv/bin/python benchmarks/bench_prior_unet.py [--calls 30] [--no-compile]

Results go to benchmarks/results/bench_prior_unet.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from dreamfusion.device import machine_facts, use_cpu_threads
from dreamfusion.prior.builtin import package_folder

DEFAULT_JSON = Path(__file__).parent / "results" / "bench_prior_unet.json"


def timed_calls(call: Callable[[], torch.Tensor], calls: int) -> list[float]:
    """Milliseconds of each of `calls` calls."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=30, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=1, help="threads for every variant but 'two threads'")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (it needs a C++ compiler)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    use_cpu_threads(args.threads)

    unet = UNet2DConditionModel.from_pretrained(package_folder() / "unet").float().eval()
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, size, size, generator=g)
    t = torch.tensor([500, 500])
    text = torch.randn(2, 32, width, generator=g)

    def forward(model: torch.nn.Module, inputs: torch.Tensor, autocast: bool = False) -> torch.Tensor:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
        with torch.no_grad(), context:
            return model(inputs, t, encoder_hidden_states=text.to(inputs.dtype)).sample.float()

    reference = forward(unet, x)
    bf16 = UNet2DConditionModel.from_pretrained(package_folder() / "unet", torch_dtype=torch.bfloat16).eval()
    channels_last = UNet2DConditionModel.from_pretrained(package_folder() / "unet").float().eval()
    channels_last = channels_last.to(memory_format=torch.channels_last)
    x_nhwc = x.to(memory_format=torch.channels_last)

    def with_threads(n: int, call: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                return call()
            finally:
                torch.set_num_threads(before)

        return run

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "fp32": lambda: forward(unet, x),
        "fp32 channels-last": lambda: forward(channels_last, x_nhwc),
        "bf16 autocast": lambda: forward(unet, x, autocast=True),
        "bf16 weights": lambda: forward(bf16, x.to(torch.bfloat16)),
        "two threads": with_threads(2, lambda: forward(unet, x)),
    }
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(unet)
        started = time.perf_counter()
        forward(compiled, x)
        compile_s = time.perf_counter() - started
        variants["torch.compile"] = lambda: forward(compiled, x)

    rows = []
    # Round-robin over the variants, a few calls at a time, so that a change in the machine's load hits all.
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm-up
        call()
    rounds = max(1, args.calls // 5)
    for _ in range(rounds):
        for name, call in variants.items():
            samples[name] += timed_calls(call, 5)
    base = statistics.median(samples["fp32"])
    for name, call in variants.items():
        median = statistics.median(samples[name])
        error = float((call() - reference).abs().max())
        rows.append({"variant": name, "median_ms": median, "speedup": base / median, "max_abs_diff": error})

    print("| variant | ms per call (median) | speed-up | max |output - fp32| |")
    print("|---|---:|---:|---:|")
    for row in rows:
        cells = [
            row["variant"],
            f"{row['median_ms']:.1f}",
            f"{row['speedup']:.2f}x",
            f"{row['max_abs_diff']:.3g}",
        ]
        print("| " + " | ".join(cells) + " |")
    if compile_s is not None:
        print(f"torch.compile's first call (compilation): {compile_s:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "bench_prior_unet",
        "units": "milliseconds per U-Net call (batch 2, the two CFG halves), median",
        "machine": machine_facts(),
        "calls_per_variant": rounds * 5,
        "compile_seconds": compile_s,
        "rows": rows,
    }
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
