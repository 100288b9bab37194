"""Training speed of latent U-Net designs for the built-in prior (issue #15): images per second of one
training step (forward, backward, AdamW) on one thread, for candidate widths and attention placements at the
autoencoder's latent size.

Each design is a `LatentUNetConfig`; the text states are random (the frozen text encoder's cost is the same
for every design and is left out). The first --warmup steps are dropped; the table gives the median.

    .venv/bin/python benchmarks/latent_unet_speed.py [--size 16] [--steps 8] [--batch 128]

Results go to benchmarks/results/latent_unet_speed.json. Run it on a quiet core: the figures are relative.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dreamfusion.device import machine_facts
from dreamfusion.prior.latent_unet import LatentUNetConfig, build_latent_unet

DEFAULT_JSON = Path(__file__).parent / "results" / "latent_unet_speed.json"

# (name, channels, attention): 16x16 latents halve to 8x8 and 4x4 (three levels) or to 2x2 (four).
DESIGNS = (
    ("64/128/128, attention everywhere", (64, 128, 128), (True, True, True)),
    ("64/128/128, none at the top level", (64, 128, 128), (False, True, True)),
    ("32/128/128, none at the top level", (32, 128, 128), (False, True, True)),
    ("64/128/192, none at the top level", (64, 128, 192), (False, True, True)),
    ("32/64/128/128, attention from 8x8 down", (32, 64, 128, 128), (False, True, True, True)),
    ("32/64/128/128, attention below 8x8", (32, 64, 128, 128), (False, False, True, True)),
)


def step_seconds(
    config: LatentUNetConfig, batch: int, steps: int, warmup: int, text_tokens: int
) -> list[float]:
    unet = build_latent_unet(config, seed=0).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, config.latent_channels, config.sample_size, config.sample_size, generator=g)
    text = torch.randn(batch, text_tokens, config.text_width, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = unet(z, t, encoder_hidden_states=text).sample.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=16, help="latent side (default 16)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--tokens",
        type=int,
        default=32,
        help="text states per caption (default 32, the text encoder's max_tokens)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, channels, attention in DESIGNS:
        config = LatentUNetConfig(sample_size=args.size, channels=channels, attention=attention)
        params = sum(p.numel() for p in build_latent_unet(config, seed=0).parameters())
        median = statistics.median(step_seconds(config, args.batch, args.steps, args.warmup, args.tokens))
        rows.append(
            {
                "design": name,
                "parameters_m": params / 1e6,
                "step_s": median,
                "images_per_s": args.batch / median,
            }
        )
        print(
            f"{name}: {params / 1e6:.1f} M, {median:.2f} s/step, {args.batch / median:.1f} images/s",
            flush=True,
        )
    print(
        f"\n| design ({args.size}x{args.size} latents, batch {args.batch}, one thread) | parameters | "
        "step s (median) | images/s |\n|---|---:|---:|---:|"
    )
    for r in rows:
        print(f"| {r['design']} | {r['parameters_m']:.1f} M | {r['step_s']:.2f} | {r['images_per_s']:.1f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"machine": machine_facts(), "size": args.size, "batch": args.batch, "rows": rows}, indent=2
        )
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
