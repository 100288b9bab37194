"""Acceptance check of the built-in prior (issue #3): do its samples show the object kind and colour they were
asked for? Required on held-in prompts: kind accuracy >= 85 %, colour accuracy >= 90 %; held-out prompts are
reported without a threshold.

1. The judge: a small CNN (dreamfusion.evaluation.classifier) trained on the world's single-object renders,
   held-out objects included, from its own seed. It is trained once and cached (--classifier, by default
   OUT/classifier.safetensors), so later runs only load it.
2. The judge's own accuracy on fresh renders (a seed of its own), held-in and held-out objects apart, for all
   camera views and for the views the prompts ask for: the prior's scores are only as good as this.
3. Samples from the prior (DDIM, 50 steps, classifier-free guidance at scale 5, the issue's settings) for
   - held-in prompts: every colour-kind pair the prior was trained on (11 kinds x 10 colours less the 10
     held-out pairs = 100 objects);
   - held-out prompts: the 10 HELD_OUT_OBJECTS.
   Each object gets --samples-per-prompt samples. A prompt is the canonical phrase with a view word, as the
   training captions have one: "a red cube, front view". The prompts take the views of --views in turn.
   The default leaves out "overhead": seen from above, a sphere, a cylinder and a mug are the same disc, so
   neither the judge nor a person can name their kind.
4. The samples are classified; the script prints Markdown tables (judge, prior by split, prior by kind) and
   writes OUT/acceptance.json and PNG grids OUT/held_in.png and OUT/held_out.png (objects in the order of
   the JSON's `samples`, each object's samples side by side).

    .venv/bin/python benchmarks/prior_acceptance.py runs/prior/model --out benchmarks/results/prior_acceptance

Cost on one CPU thread: training the judge (once) takes about 6.5 minutes of CPU time, testing it on 2 x 2,000
fresh renders about 15 s, and each sample about a second (50 DDIM steps, each a conditioned and an
unconditioned U-Net pass), so 2 samples per prompt take about 4 minutes and the default 4 about 8.

The judge is not perfect (at 32 px, a mug with its handle hidden is a cylinder, and a cube seen face-on in
flat albedo is a square like a cylinder's side), so read the prior's scores beside the judge's own on
renders: a prior that drew exactly like the renderer would score about what the judge scores there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dreamfusion.config import to_dict
from dreamfusion.device import machine_facts
from dreamfusion.evaluation.classifier import (
    HELD_IN_OBJECTS,
    Accuracy,
    ClassifierConfig,
    Labels,
    WorldClassifier,
    accuracy,
    labels_of,
    load_classifier,
    predict,
    render_labelled,
    save_classifier,
    train_classifier,
)
from dreamfusion.evaluation.judge import WorldJudge, load_packaged_judge
from dreamfusion.prior.sample import sample, save_grid
from dreamfusion.prompts import VIEW_WORDS, with_view
from dreamfusion.world import COLOUR_NAMES, HELD_OUT_OBJECTS, KIND_NAMES, WorldObject

KIND_THRESHOLD = 0.85  # issue #3, held-in prompts
COLOUR_THRESHOLD = 0.90
JUDGE_TEST_SEED = 20_251_122  # neither the prior's (0, 1, 2) nor the judge's training seeds
DEFAULT_OUT = Path(__file__).parent / "results" / "prior_acceptance"


def get_judge(path: Path, progress: bool) -> tuple[WorldClassifier, bool]:
    """The cached judge at `path`, or a freshly trained one saved there; and whether it was trained now."""
    if path.is_file():
        return load_classifier(path), False
    model = train_classifier(ClassifierConfig(), progress=progress)
    save_classifier(model, path)
    return model, True


def judge_accuracy(
    model: WorldClassifier, n: int, views: tuple[str, ...], progress: bool
) -> dict[str, Accuracy]:
    """The judge on fresh renders of held-in and of held-out objects, all views and the prompts' views."""
    generator = torch.Generator().manual_seed(JUDGE_TEST_SEED)
    out = {}
    for split, objects in (("held-in", HELD_IN_OBJECTS), ("held-out", HELD_OUT_OBJECTS)):
        renders = render_labelled(n, model.config, generator, objects, progress=progress)
        out[f"{split}, all views"] = accuracy(predict(model, renders.images), renders.labels)
        keep = torch.tensor([v in views for v in renders.views])
        true = Labels(renders.labels.kind[keep], renders.labels.colour[keep])
        out[f"{split}, {'/'.join(views)}"] = accuracy(predict(model, renders.images[keep]), true)
    return out


def prompts(objects: tuple[WorldObject, ...], per_object: int, views: tuple[str, ...]) -> list[str]:
    """per_object captions of each object, in order; the n-th caption of the list takes the view views[n mod
    len(views)], so the views are spread evenly over the objects whatever per_object is."""
    phrases = [o.phrase() for o in objects for _ in range(per_object)]
    return [with_view(p, views[n % len(views)]) for n, p in enumerate(phrases)]


def sample_prior(
    folder: Path, captions: list[str], args: argparse.Namespace, seed: int, progress: bool
) -> torch.Tensor:
    """(N, H, W, 3) samples, args.batch captions at a time; chunk c uses noise seed `seed + c`."""
    chunks = [captions[i : i + args.batch] for i in range(0, len(captions), args.batch)]
    images = [
        sample(
            folder,
            chunk,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            seed=seed + c,
            clip_x0=args.clip_x0,
        )
        for c, chunk in enumerate(tqdm(chunks, desc="sample", unit="batch", disable=not progress))
    ]
    return torch.cat(images)


@dataclass(frozen=True)
class SplitResult:
    captions: list[str]
    images: torch.Tensor  # (N, H, W, 3) samples
    true: Labels  # what each caption asked for
    predicted: Labels  # what the judge saw
    accuracy: Accuracy


def judge_prior(
    judge: WorldClassifier,
    objects: tuple[WorldObject, ...],
    args: argparse.Namespace,
    views: tuple[str, ...],
    seed: int,
    progress: bool,
) -> SplitResult:
    """Sample the prior for each object (args.samples_per_prompt times) and classify the samples."""
    captions = prompts(objects, args.samples_per_prompt, views)
    images = sample_prior(args.prior, captions, args, seed, progress)
    true = labels_of([o for o in objects for _ in range(args.samples_per_prompt)])
    predicted = predict(judge, images)
    return SplitResult(captions, images, true, predicted, accuracy(predicted, true))


def confusion(true: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts: row = true class, column = predicted class."""
    return torch.bincount(true * classes + predicted, minlength=classes * classes).view(classes, classes)


@dataclass(frozen=True)
class KindResult:
    kind: str
    n: int
    kind_accuracy: float
    colour_accuracy: float
    most_taken_for: str | None  # the commonest wrong kind, None when the kind was never wrong


def per_kind(true: Labels, predicted: Labels) -> list[KindResult]:
    """Kind and colour accuracy for each true kind, and what a wrong kind was most often taken for."""
    matrix = confusion(true.kind, predicted.kind, len(KIND_NAMES))
    rows = []
    for k, name in enumerate(KIND_NAMES):
        mine = true.kind == k
        if not mine.any():
            continue
        wrong = matrix[k].clone()
        wrong[k] = 0
        rows.append(
            KindResult(
                kind=name,
                n=int(mine.sum()),
                kind_accuracy=float((predicted.kind[mine] == k).float().mean()),
                colour_accuracy=float((predicted.colour[mine] == true.colour[mine]).float().mean()),
                most_taken_for=KIND_NAMES[int(wrong.argmax())] if wrong.sum() > 0 else None,
            )
        )
    return rows


def world_judge_labels(judge: WorldJudge, images: torch.Tensor) -> Labels:
    """Kind and colour as the world judge reads them, zero-shot: the single-object caption it ranks first
    among all 110 colour-kind pairs."""
    objects = [WorldObject(k, c) for k in KIND_NAMES for c in COLOUR_NAMES]
    with torch.no_grad():
        best = (judge.embed_images(images) @ judge.embed_texts([o.phrase() for o in objects]).T).argmax(1)
    return labels_of([objects[i] for i in best.tolist()])


def world_judge_on_renders(judge: WorldJudge, model: WorldClassifier, n: int) -> dict[str, Accuracy]:
    """The world judge on the same kind of fresh renders the classifier is tested on (its own seed)."""
    generator = torch.Generator().manual_seed(JUDGE_TEST_SEED + 1)
    out = {}
    for split, objects in (("held-in", HELD_IN_OBJECTS), ("held-out", HELD_OUT_OBJECTS)):
        renders = render_labelled(n, model.config, generator, objects, progress=False)
        out[f"{split}, all views"] = accuracy(world_judge_labels(judge, renders.images), renders.labels)
    return out


def accuracy_table(title: str, results: dict[str, Accuracy]) -> str:
    lines = [f"| {title} | n | kind acc | colour acc | both |", "|---|---:|---:|---:|---:|"]
    for name, a in results.items():
        lines.append(f"| {name} | {a.n} | {a.kind:.3f} | {a.colour:.3f} | {a.both:.3f} |")
    return "\n".join(lines)


def kind_table(rows: list[KindResult]) -> str:
    lines = [
        "| held-in kind | n | kind acc | colour acc | wrong kind most often |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.kind} | {r.n} | {r.kind_accuracy:.3f} | {r.colour_accuracy:.3f} "
            f"| {r.most_taken_for or '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prior", type=Path, help="an exported prior folder (a training run's model/)")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--classifier",
        type=Path,
        help="the judge's file: loaded if it exists, else trained and saved there "
        "(default OUT/classifier.safetensors)",
    )
    parser.add_argument(
        "--views", default="front,side,back", help=f"view words to cycle through, of {VIEW_WORDS}"
    )
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument(
        "--clip-x0",
        action="store_true",
        help="clip DDIM's clean-image estimate to [-1, 1] each step (off by default; the model card's "
        "version-2 figures were measured with it on)",
    )
    parser.add_argument("--cfg-scale", type=float, default=5.0, help="s = 1 + omega (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the prior's samples")
    parser.add_argument("--batch", type=int, default=50, help="captions sampled together")
    parser.add_argument("--judge-images", type=int, default=2000, help="renders per split to test the judge")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads; 0 keeps torch's default"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    if not views or any(v not in VIEW_WORDS for v in views):
        parser.error(f"--views must list some of {', '.join(VIEW_WORDS)}")
    if args.samples_per_prompt < 1 or args.batch < 1:
        parser.error("--samples-per-prompt and --batch must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)
    classifier_path = args.classifier or args.out / "classifier.safetensors"
    machine_info = machine_facts()  # before the run, so that its load average is the machine's, not ours
    seconds: dict[str, float] = {}
    start = time.monotonic()

    tic = time.monotonic()
    judge, trained = get_judge(classifier_path, progress)
    seconds["judge_train" if trained else "judge_load"] = time.monotonic() - tic

    tic = time.monotonic()
    judge_results = judge_accuracy(judge, args.judge_images, views, progress)
    seconds["judge_test"] = time.monotonic() - tic

    tic = time.monotonic()
    # Each split has its own noise seeds, so adding prompts to one never changes the other's samples.
    results = {
        "held-in": judge_prior(judge, HELD_IN_OBJECTS, args, views, args.seed, progress),
        "held-out": judge_prior(judge, HELD_OUT_OBJECTS, args, views, args.seed + 1000, progress),
    }
    seconds["prior_sample_and_classify"] = time.monotonic() - tic

    # A second reader: the project's world judge (dreamfusion.evaluation.judge), zero-shot.
    tic = time.monotonic()
    world_judge = load_packaged_judge()
    world_on_renders = world_judge_on_renders(world_judge, judge, args.judge_images)
    world_on_samples = {
        split: accuracy(world_judge_labels(world_judge, r.images), r.true) for split, r in results.items()
    }
    seconds["world_judge"] = time.monotonic() - tic
    seconds["total"] = time.monotonic() - start
    prior_results = {split: r.accuracy for split, r in results.items()}
    kind_rows = per_kind(results["held-in"].true, results["held-in"].predicted)
    columns = args.samples_per_prompt * max(1, 20 // args.samples_per_prompt)  # whole objects per row
    for split, r in results.items():
        save_grid(r.images, args.out / f"{split.replace('-', '_')}.png", columns=columns, scale=2)

    held_in = prior_results["held-in"]
    passed = held_in.kind >= KIND_THRESHOLD and held_in.colour >= COLOUR_THRESHOLD
    print()
    print(accuracy_table("judge on fresh renders", judge_results))
    print()
    print(accuracy_table(f"prior samples ({args.steps} DDIM steps, CFG {args.cfg_scale})", prior_results))
    print()
    print(kind_table(kind_rows))
    print()
    print(accuracy_table("world judge (zero-shot over 110 captions) on fresh renders", world_on_renders))
    print()
    print(accuracy_table("prior samples, read by the world judge", world_on_samples))
    print()
    print(
        f"acceptance (held-in kind >= {KIND_THRESHOLD:.2f}, colour >= {COLOUR_THRESHOLD:.2f}): "
        f"{'PASS' if passed else 'FAIL'}"
    )
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))

    report = {
        "what": "kind and colour accuracy of the built-in prior's samples, judged by a classifier trained on "
        "the world's renders (issue #3)",
        "prior": str(args.prior.resolve()),
        "settings": {
            "samples_per_prompt": args.samples_per_prompt,
            "views": list(views),
            "ddim_steps": args.steps,
            "cfg_scale": args.cfg_scale,
            "seed": args.seed,
            "judge_test_images_per_split": args.judge_images,
        },
        "thresholds": {"held_in_kind": KIND_THRESHOLD, "held_in_colour": COLOUR_THRESHOLD},
        "passed": passed,
        "judge": {
            "file": str(classifier_path.resolve()),
            "config": to_dict(judge.config),
            "accuracy_on_renders": {k: dataclasses.asdict(v) for k, v in judge_results.items()},
        },
        "prior_accuracy": {k: dataclasses.asdict(v) for k, v in prior_results.items()},
        "world_judge": {
            "name": world_judge.name,
            "accuracy_on_renders": {k: dataclasses.asdict(v) for k, v in world_on_renders.items()},
            "prior_accuracy": {k: dataclasses.asdict(v) for k, v in world_on_samples.items()},
        },
        "held_in_per_kind": [dataclasses.asdict(r) for r in kind_rows],
        "kind_confusion": {
            "classes": list(KIND_NAMES),
            "rows_true_columns_predicted": {
                split: confusion(r.true.kind, r.predicted.kind, len(KIND_NAMES)).tolist()
                for split, r in results.items()
            },
        },
        "samples": {
            split: [
                {"caption": c, "judged_kind": KIND_NAMES[k], "judged_colour": COLOUR_NAMES[col]}
                for c, k, col in zip(
                    r.captions, r.predicted.kind.tolist(), r.predicted.colour.tolist(), strict=True
                )
            ]
            for split, r in results.items()
        },
        "seconds": seconds,
        "machine": machine_info,
    }
    path = args.out / "acceptance.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}, {args.out / 'held_in.png'}, {args.out / 'held_out.png'}")


if __name__ == "__main__":
    main()
