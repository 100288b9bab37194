"""Does the latent prior's autoencoder keep what the acceptance classifier reads (issue #15)?

On fresh labelled renders (a seed of their own, never the training set), held-in and held-out objects
apart, it measures the reconstruction PSNR (posterior mean, decoded) and the acceptance classifier's kind and
colour accuracy on the originals and on the reconstructions. Required: reconstructions keep at least 97 %
of each accuracy. It prints a Markdown table and writes OUT/autoencoder.json.

    .venv/bin/python benchmarks/latent_autoencoder.py runs/prior-v3/vae/model \\
        --classifier benchmarks/results/prior_acceptance/classifier.safetensors

The classifier is trained once and cached as benchmarks/prior_acceptance.py does (about 6.5 minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from dreamfusion.device import machine_facts
from dreamfusion.evaluation.classifier import HELD_IN_OBJECTS, accuracy, predict, render_labelled
from dreamfusion.prior.autoencoder import psnr
from dreamfusion.world import HELD_OUT_OBJECTS
from prior_acceptance import get_judge  # noqa: E402  (benchmarks/ is the script's folder)

RETENTION = 0.97
TEST_SEED = 20_261_204
DEFAULT_OUT = Path(__file__).parent / "results" / "latent_autoencoder"


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> the decoded posterior means, the same layout."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].permute(0, 3, 1, 2) * 2.0 - 1.0
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        out.append(((decoded + 1.0) / 2.0).permute(0, 2, 3, 1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("vae", type=Path, help="an AutoencoderKL folder, e.g. runs/prior-v3/vae/model")
    parser.add_argument("--classifier", type=Path, help="cached acceptance classifier (trained if missing)")
    parser.add_argument("--renders", type=int, default=2000, help="fresh renders per split (default 2000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    classifier_path = args.classifier or args.out / "classifier.safetensors"
    classifier, _ = get_judge(classifier_path, progress=True)
    vae = AutoencoderKL.from_pretrained(args.vae).float().eval()
    generator = torch.Generator().manual_seed(TEST_SEED)
    rows = []
    start = time.monotonic()
    for split, objects in (("held-in", HELD_IN_OBJECTS), ("held-out", HELD_OUT_OBJECTS)):
        renders = render_labelled(args.renders, classifier.config, generator, objects)
        recon = reconstruct(vae, renders.images)
        x = renders.images.permute(0, 3, 1, 2) * 2.0 - 1.0
        original = accuracy(predict(classifier, renders.images), renders.labels)
        rebuilt = accuracy(predict(classifier, recon), renders.labels)
        rows.append(
            {
                "split": split,
                "n": args.renders,
                "psnr_db": float(psnr(vae, x).median()),
                "kind_original": original.kind,
                "kind_reconstructed": rebuilt.kind,
                "colour_original": original.colour,
                "colour_reconstructed": rebuilt.colour,
                "kind_kept": rebuilt.kind / original.kind,
                "colour_kept": rebuilt.colour / original.colour,
            }
        )
    print(
        "| split | n | PSNR dB (median) | kind: renders | kind: recon | kept "
        "| colour: renders | colour: recon | kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['split']} | {r['n']} | {r['psnr_db']:.2f} | {r['kind_original']:.3f} | "
            f"{r['kind_reconstructed']:.3f} | {r['kind_kept']:.1%} | {r['colour_original']:.3f} | "
            f"{r['colour_reconstructed']:.3f} | {r['colour_kept']:.1%} |"
        )
    held_in = rows[0]
    passed = held_in["kind_kept"] >= RETENTION and held_in["colour_kept"] >= RETENTION
    print(f"\nheld-in retention >= {RETENTION:.0%}: {'PASS' if passed else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "what": "the latent prior's autoencoder: PSNR and acceptance-classifier accuracy on reconstructions",
        "vae": str(args.vae),
        "latent_shape": [
            vae.config.latent_channels,
            *[vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)] * 2,
        ],
        "scaling_factor": vae.config.scaling_factor,
        "rows": rows,
        "passed": passed,
        "seconds": round(time.monotonic() - start, 1),
        "machine": machine_facts(),
    }
    (args.out / "autoencoder.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'autoencoder.json'}")


if __name__ == "__main__":
    main()
