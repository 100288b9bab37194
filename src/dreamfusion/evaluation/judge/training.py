"""Training a judge: random renders of the whole world, captions for them, CLIP's contrastive loss."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from dreamfusion.evaluation.classifier import BackgroundSampler, augment, render_random_views, warmup_cosine
from dreamfusion.evaluation.judge.model import JudgeConfig, JudgeTraining, WorldJudge, build_judge
from dreamfusion.evaluation.suite import shape_caption
from dreamfusion.render.background import random_colours
from dreamfusion.render.shading import ShadingMode
from dreamfusion.world import (
    COLOUR_NAMES,
    KIND_NAMES,
    RELATION_PHRASES,
    RELATIONS,
    TEMPLATES,
    Scene,
    WorldObject,
    caption_text,
    sample_backgrounds,
)
from dreamfusion.world.objects import kind

DEFAULT_SEED = 7  # the prior trains with seed 0, the world classifier with 1234
# With the default config: about 3 minutes of rendering and 15 of training on one CPU thread (model card).
DEFAULT_STEPS = 2000


# ---- training data ----


@dataclass(frozen=True)
class JudgeRenders:
    images: Tensor  # (N, H, W, 3) in [0, 1]
    scenes: tuple[Scene, ...]
    textureless: Tensor  # (N,) bool: captioned by shape only


def _pick(options: Sequence, u: float):
    return options[min(int(u * len(options)), len(options) - 1)]


def sample_scenes(n: int, generator: torch.Generator, composition_probability: float) -> tuple[Scene, ...]:
    """n scenes drawn uniformly from the whole world, held-out objects and relations included: kinds,
    colours and relations uniform; the two objects of a pair have different colours, as in training
    captions (world.sample_training_captions), so colour words tell them apart."""
    scenes = []
    for u in torch.rand(n, 6, generator=generator).tolist():
        first = WorldObject(_pick(KIND_NAMES, u[1]), _pick(COLOUR_NAMES, u[2]))
        if u[0] >= composition_probability:
            scenes.append(Scene(first))
            continue
        # Any colour but the first object's, uniformly.
        shift = 1 + min(int(u[4] * (len(COLOUR_NAMES) - 1)), len(COLOUR_NAMES) - 2)
        colour = COLOUR_NAMES[(COLOUR_NAMES.index(first.colour) + shift) % len(COLOUR_NAMES)]
        scenes.append(Scene(first, _pick(RELATIONS, u[5]), WorldObject(_pick(KIND_NAMES, u[3]), colour)))
    return tuple(scenes)


def judge_backgrounds(config: JudgeConfig) -> BackgroundSampler:
    """Per image, by config.background_weights: white, a muted solid colour, or a world background."""
    weights = torch.tensor(config.background_weights)

    def sample(n: int, size: int, generator: torch.Generator) -> Tensor:
        choice = torch.multinomial(weights, n, replacement=True, generator=generator).view(n, 1, 1, 1)
        muted = random_colours(n, generator, config.muted_colourfulness).view(n, 1, 1, 3)
        world = sample_backgrounds(
            n,
            size,
            size,
            generator,
            config.world.gradient_background_fraction,
            config.world.background_colourfulness,
        )
        white = torch.ones_like(world)
        return torch.where(choice == 0, white, torch.where(choice == 1, muted.expand_as(world), world))

    return sample


def render_training_data(
    n: int, config: JudgeConfig, generator: torch.Generator, chunk: int = 256, progress: bool = False
) -> JudgeRenders:
    """n random renders of random scenes, `chunk` at a time."""
    images, scenes, modes = [], [], []
    backgrounds = judge_backgrounds(config)
    for start in tqdm(range(0, n, chunk), disable=not progress, desc="render", unit="chunk", leave=False):
        drawn = sample_scenes(min(chunk, n - start), generator, config.world.composition_probability)
        renders = render_random_views(drawn, config.resolution, generator, config.world, backgrounds)
        images.append(renders.images)
        scenes.extend(drawn)
        modes.append(renders.modes)
    return JudgeRenders(torch.cat(images), tuple(scenes), torch.cat(modes) == ShadingMode.TEXTURELESS)


def meaning(scene: Scene, textureless: bool) -> str:
    """What a render shows, as a canonical caption: the key by which captions of a batch are equal."""
    return shape_caption(scene) if textureless else scene.caption()


def training_caption(scene: Scene, textureless: bool, u: Sequence[float], canonical_fraction: float) -> str:
    """The caption of one render from five uniforms: canonical with probability canonical_fraction, else
    with a random template, nouns and relation phrase; shape-only for a textureless render."""
    write = shape_caption if textureless else caption_text
    if u[0] < canonical_fraction:
        return write(scene)
    first = _pick(kind(scene.first.kind).nouns, u[2])
    if scene.second is None:
        return write(scene, _pick(TEMPLATES, u[1]), (first, None))
    second = _pick(kind(scene.second.kind).nouns, u[3])
    phrase = _pick(RELATION_PHRASES[scene.relation], u[4])
    return write(scene, _pick(TEMPLATES, u[1]), (first, second), phrase)


# ---- training ----


def positive_targets(keys: Sequence[str]) -> Tensor:
    """(B, B) target distribution of each row of the batch's logits: uniform over the columns whose key
    equals the row's. A caption repeated in the batch is a positive of every image showing it, never a
    negative; with distinct keys this is CLIP's identity."""
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([index[k] for k in keys])
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE with soft targets: the mean of the image->text and text->image cross
    entropies. `targets` must be symmetric in which pairs are positive, as positive_targets' are."""
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def judge_loss(judge: WorldJudge, images: Tensor, texts: Sequence[str], keys: Sequence[str]) -> Tensor:
    logits = judge.logits(judge.image_embeddings(images), judge.text_embeddings(texts))
    return contrastive_loss(logits, positive_targets(keys))


def make_optimizer(judge: WorldJudge, config: JudgeConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and kernels only, not on biases, norms or the temperature."""
    decay = [p for p in judge.parameters() if p.ndim >= 2]
    rest = [p for p in judge.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def training_step(
    judge: WorldJudge,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    texts: Sequence[str],
    keys: Sequence[str],
) -> float:
    """One optimiser step on one batch; returns the loss before the step."""
    judge.train()
    loss = judge_loss(judge, images, texts, keys)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_judge(
    config: JudgeConfig,
    tokenizer: PreTrainedTokenizerBase,
    steps: int = DEFAULT_STEPS,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> WorldJudge:
    """Render config.train_images images once (seed), then train for `steps` minibatches drawn from them
    with replacement (seed + 1), each augmented and freshly captioned."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    start = time.monotonic()
    data = render_training_data(
        config.train_images, config, torch.Generator().manual_seed(seed), progress=progress
    )
    render_s = time.monotonic() - start
    batch_generator = torch.Generator().manual_seed(seed + 1)
    judge = build_judge(config, tokenizer, seed)
    optimizer = make_optimizer(judge, config)
    losses = []
    start = time.monotonic()
    bar = tqdm(range(steps), disable=not progress, desc="train judge", unit="step")
    for step in bar:
        rows = torch.randint(config.train_images, (config.batch_size,), generator=batch_generator)
        images = augment(data.images[rows], config.shift_px, batch_generator)
        draws = torch.rand(config.batch_size, 5, generator=batch_generator).tolist()
        picked = [(data.scenes[r], bool(data.textureless[r])) for r in rows.tolist()]
        texts = [
            training_caption(s, t, u, config.canonical_fraction)
            for (s, t), u in zip(picked, draws, strict=True)
        ]
        keys = [meaning(s, t) for s, t in picked]
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(config.learning_rate, step, steps)
        losses.append(training_step(judge, optimizer, images, texts, keys))
        if step % 20 == 0:
            bar.set_postfix(
                loss=f"{losses[-1]:.3f}", T=f"{1.0 / float(judge.logit_scale.detach().exp()):.3f}"
            )
    tail = losses[-max(1, steps // 10) :]
    judge.training_record = JudgeTraining(
        steps, seed, render_s, time.monotonic() - start, sum(tail) / len(tail)
    )
    return judge.eval()
