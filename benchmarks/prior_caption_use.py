"""How much a prior folder uses its captions: the health measure of the built-in prior (issue #3).

Fresh training renders are noised to a few timesteps t, and the prior's estimate of the clean image (x0) is
compared with the truth three times: given the image's own caption, the empty caption, and the caption of
another image in the batch (the batch's captions rotated by one). The relative rise of the x0 error with the
wrong caption,

    caption use = (err(shuffled) - err(own)) / err(shuffled),

is 0 for a prior that ignores its text. It says whether training is teaching the captions long before the
samples show it, and at which noise levels: the high ones are where a sampler decides what the object is.

    .venv/bin/python benchmarks/prior_caption_use.py runs/prior/model             # about a minute
    .venv/bin/python benchmarks/prior_caption_use.py src/dreamfusion/prior/builtin --images 128

The renders come from a seed of their own (--seed), with the prior's training settings (prior_world()), so
they are new images of held-in scenes. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from dreamfusion.device import machine_facts
from dreamfusion.files import dreamfusion_cache
from dreamfusion.guidance.components import epsilon_from_output
from dreamfusion.prior.builtin import builtin_prior_folder
from dreamfusion.prior.export import LoadedPrior, load_prior
from dreamfusion.world import prior_world, sample_training_batch

DEFAULT_TIMESTEPS = (300, 500, 700, 800, 900)
DEFAULT_JSON = Path(__file__).parent / "results" / "prior_caption_use.json"


def encode(prior: LoadedPrior, captions: list[str]) -> Tensor:
    tokens = prior.tokenizer(
        captions,
        padding="max_length",
        max_length=int(prior.tokenizer.model_max_length),
        truncation=True,
        return_tensors="pt",
    )
    return prior.text_encoder(tokens["input_ids"]).last_hidden_state


@torch.no_grad()
def x0_errors(prior: LoadedPrior, images: Tensor, captions: list[str], t: int, seed: int) -> dict[str, float]:
    """Mean squared x0 error at timestep t for the own, empty and shuffled captions (same noise for all)."""
    scheduler = DDPMScheduler.from_pretrained(prior.scheduler_folder)
    n = images.shape[0]
    abar = scheduler.alphas_cumprod[t].float()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed + t))
    z = abar.sqrt() * images + (1 - abar).sqrt() * noise
    timesteps = torch.full((n,), t)
    texts = {
        "own": captions,
        "empty": [""] * n,
        "shuffled": captions[1:] + captions[:1],
    }
    errors = {}
    for name, text in texts.items():
        output = prior.unet(z, timesteps, encoder_hidden_states=encode(prior, text)).sample
        eps = epsilon_from_output(output, z, abar.expand(n), scheduler.config.prediction_type)
        x0 = ((z - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        errors[name] = float(((x0 - images) ** 2).mean())
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folder", nargs="?", type=Path, help="an exported prior folder (default: the built-in)"
    )
    parser.add_argument("--images", type=int, default=64, help="fresh renders per timestep (default 64)")
    parser.add_argument("--timesteps", default=",".join(map(str, DEFAULT_TIMESTEPS)))
    parser.add_argument("--seed", type=int, default=11, help="renders and noise (default 11)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared CPU)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = args.folder or builtin_prior_folder(dreamfusion_cache())
    prior = load_prior(folder)
    prior.unet.float().eval()
    prior.text_encoder.float().eval()
    size = int(prior.unet.config.sample_size)
    batch = sample_training_batch(args.images, size, torch.Generator().manual_seed(args.seed), prior_world())
    images = batch.images.permute(0, 3, 1, 2) * 2 - 1
    captions = list(batch.captions)

    rows = []
    print("| t | x0 error, own caption | empty caption | shuffled caption | caption use |")
    print("|---:|---:|---:|---:|---:|")
    for t in (int(v) for v in args.timesteps.split(",")):
        e = x0_errors(prior, images, captions, t, args.seed)
        use = (e["shuffled"] - e["own"]) / e["shuffled"]
        rows.append({"t": t, **e, "caption_use": use})
        print(f"| {t} | {e['own']:.4f} | {e['empty']:.4f} | {e['shuffled']:.4f} | {100 * use:.1f} % |")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "folder": str(folder),
        "images": args.images,
        "seed": args.seed,
        "rows": rows,
        "machine": machine_facts(),
    }
    args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
