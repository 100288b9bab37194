"""The world judge (issue #5): a small contrastive image-text model (CLIP's recipe, Radford et al. 2021),
trained by the project on renders of the procedural world, to score R-Precision without a pretrained CLIP.

The judge is not the player: it learns from its own renders (its own seed, never the built-in prior's 0),
of every scene of the world, the held-out ones included, since it must recognise what the prior never saw.
Its renders are those DreamFusion's will be compared with: the paper's cameras (App. A.2) and random point
lights, albedo, lambertian and textureless shading (sec. 3.1), on white, muted solid (the NeRF's solid
backgrounds) or the world's gradient and solid backgrounds of any colour.

A shaded render is captioned with its scene's caption, a textureless one with its shape caption
(suite.shape_caption): a textureless render shows no colour, so Geo R-Precision ranks shape-only captions.
Most captions are canonical, as the evaluation queries with; the rest use the world's templates and synonyms.

- image tower: a 2x2 space-to-depth (64 px -> 32 px of 12 channels, which keeps every pixel and costs a
  fifth of convolving at 64 px), the world classifier's conv stages, global average pooling, a linear map;
- text tower: CLIP's BPE tokenizer and a small transformers `CLIPTextModel`, pooled at the end token as in
  CLIP, then a linear map. Its token table holds only the tokens of world captions (row 0 stands for every
  other token), so the weights stay a few megabytes instead of CLIP's 49,408 rows;
- loss: CLIP's symmetric InfoNCE with a learned temperature, where every pair of the batch that means the
  same (equal canonical captions) counts as a positive, not as a negative.

A judge folder holds judge.safetensors, config.json, SHA256SUMS and, unless left out, tokenizer/. The packaged
judge (`judge/` beside this file) leaves the tokenizer out, as the built-in prior does (prior/builtin.py):
`load_judge` rebuilds CLIP's vocabulary in the cache and checks it is the one the judge was trained with.

    python -m dreamfusion.evaluation.judge train --out FOLDER [--steps N] [--seed S]
    python -m dreamfusion.evaluation.judge check [FOLDER]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dreamfusion.config import from_dict, to_dict
from dreamfusion.errors import UserError
from dreamfusion.evaluation.classifier import (
    BackgroundSampler,
    augment,
    conv_stages,
    render_random_views,
    warmup_cosine,
)
from dreamfusion.evaluation.suite import ground_truth_rprecision, shape_caption
from dreamfusion.files import build_folder_once, dreamfusion_cache
from dreamfusion.prior.model import load_tokenizer, small_clip_text_config
from dreamfusion.prior.tokenizer import build_clip_tokenizer, wheel_folder
from dreamfusion.prior.train import PRIOR_BACKGROUND_COLOURFULNESS
from dreamfusion.render.background import random_colours
from dreamfusion.render.shading import ShadingMode
from dreamfusion.world import (
    COLOUR_NAMES,
    KIND_NAMES,
    RELATION_PHRASES,
    RELATIONS,
    TEMPLATES,
    Scene,
    WorldBatchConfig,
    WorldObject,
    caption_text,
    sample_backgrounds,
    vocabulary,
)
from dreamfusion.world.objects import kind

FORMAT_MARKER = "dreamfusion-world-judge"
WEIGHTS = "judge.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
CHECKSUMS = "SHA256SUMS"
DEFAULT_SEED = 7  # the prior trains with seed 0, the world classifier with 1234
# With the default config: about 3 minutes of rendering and 15 of training on one CPU thread (model card).
DEFAULT_STEPS = 2000


@dataclass(frozen=True)
class JudgeConfig:
    resolution: int = 64  # the NeRF's render size on a CPU; other sizes are resized to this
    # Image tower, after the 2x2 space-to-depth: 32 -> 16 -> 8 -> 4 -> 2 px.
    channels: tuple[int, ...] = (32, 64, 128, 128)
    convs_per_stage: int = 2
    embed_dim: int = 128
    # Text tower: world captions are short and regular (under 20 CLIP tokens), as for the prior's encoder.
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 32
    initial_temperature: float = 0.07  # CLIP's
    # Training: renders are made once (about 9 ms each at 64 px on one CPU thread), then each is seen
    # steps * batch_size / train_images times (about 13 with the defaults).
    train_images: int = 20000
    batch_size: int = 128
    learning_rate: float = 2e-3  # AdamW; warm-up over the first 10 % of steps, then cosine to 0
    weight_decay: float = 0.05  # on weight matrices and conv kernels only
    shift_px: int = 4  # random shifts and mirroring (classifier.augment): neither changes a caption
    canonical_fraction: float = 0.75  # captions without template or synonym, as the evaluation asks
    # Relative weights of white, muted solid (the NeRF's "solid" backgrounds, as the builtin preset colours
    # them) and the world's backgrounds (solid or gradient, any colour).
    background_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    muted_colourfulness: float = PRIOR_BACKGROUND_COLOURFULNESS
    # Cameras, lights, tracer and shading mix (albedo, lambertian, textureless: the paper's after warm-up).
    world: WorldBatchConfig = field(default_factory=WorldBatchConfig)

    def __post_init__(self) -> None:
        for name in ("resolution", "convs_per_stage", "embed_dim", "train_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.resolution % 2 ** (len(self.channels) + 1):
            raise ValueError(f"resolution {self.resolution} does not halve {len(self.channels) + 1} times")
        if not self.channels or min(self.channels) < 1:
            raise ValueError("channels must list at least one positive width")
        if self.text_width % self.text_heads:
            raise ValueError("text_width must be a multiple of text_heads")
        if not 0.0 < self.initial_temperature <= 1.0:
            raise ValueError("initial_temperature must be in (0, 1]")
        if not 0.0 <= self.canonical_fraction <= 1.0:
            raise ValueError("canonical_fraction must be in [0, 1]")
        if len(self.background_weights) != 3 or min(self.background_weights) < 0:
            raise ValueError("background_weights are three non-negative weights: white, muted, world")
        if sum(self.background_weights) <= 0:
            raise ValueError("background_weights must not all be zero")


@dataclass(frozen=True)
class JudgeTraining:
    """How a judge was trained: what its model card reports."""

    steps: int
    seed: int
    render_s: float  # wall-clock time of rendering the training images
    train_s: float  # wall-clock time of the optimisation steps
    final_loss: float  # mean loss of the last 10 % of steps


# ---- the model ----


def world_token_ids(tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """The tokenizer ids of every word world captions use (colours, nouns, relations, templates, views,
    punctuation) and the special tokens, sorted, with the end token last: the rows of the text tower."""
    vocab = vocabulary()
    words = {"a", "an", ",", ".", "view", *vocab.colours, *vocab.views}
    words |= {w for nouns in vocab.kinds.values() for noun in nouns for w in noun.split()}
    words |= {w for phrases in vocab.relations.values() for phrase in phrases for w in phrase.split()}
    words |= {w for template in vocab.templates for w in template.replace("{}", " ").split()}
    ids = {i for row in tokenizer(sorted(words))["input_ids"] for i in row}
    ids |= {tokenizer.bos_token_id, tokenizer.pad_token_id}
    # Last, so that its row is the largest: CLIPTextModel pools at the end token either by its id or, for
    # configs whose eos_token_id is 2, at the largest id of each sequence.
    end = tokenizer.eos_token_id
    return torch.tensor([*sorted(ids - {end}), end], dtype=torch.long)


class WorldJudge(nn.Module):
    """Both towers; embeddings are unit vectors of config.embed_dim. Follows evaluation.image_text's
    `ImageTextModel` protocol (name, embed_images, embed_texts)."""

    def __init__(
        self,
        config: JudgeConfig,
        tokenizer: PreTrainedTokenizerBase,
        token_ids: Tensor,
        name: str = "world judge",
    ):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.name = name
        self.training_record: JudgeTraining | None = None
        self.image_features = nn.Sequential(
            nn.PixelUnshuffle(2), *conv_stages(12, config.channels, config.convs_per_stage)
        )
        self.image_projection = nn.Linear(config.channels[-1], config.embed_dim)
        # Tokenizer id -> row of the text tower's token table; row 0 is every token no world caption has.
        self.register_buffer("token_ids", token_ids.clone())
        rows = torch.zeros(len(tokenizer), dtype=torch.long)
        rows[token_ids] = torch.arange(1, len(token_ids) + 1)
        self.register_buffer("token_rows", rows, persistent=False)

        def row(token_id: int) -> int:
            return int(rows[token_id])

        text_config = small_clip_text_config(
            len(token_ids) + 1,
            config.text_width,
            config.text_layers,
            config.text_heads,
            config.max_tokens,
            row(tokenizer.bos_token_id),
            row(tokenizer.eos_token_id),
            row(tokenizer.pad_token_id),
        )
        self.text_encoder = CLIPTextModel(text_config)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.initial_temperature)))

    def image_embeddings(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] at config.resolution -> (B, D) unit vectors."""
        x = self.image_features(images.permute(0, 3, 1, 2) * 2.0 - 1.0).mean(dim=(2, 3))
        return F.normalize(self.image_projection(x), dim=-1)

    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """B texts -> (B, D) unit vectors."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        )
        rows = self.token_rows[tokens["input_ids"]]
        pooled = self.text_encoder(input_ids=rows, attention_mask=tokens["attention_mask"]).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)

    def logits(self, image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """(B, B) similarities scaled by the learned inverse temperature, capped at 100 as CLIP caps it."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * image_embeddings @ text_embeddings.T

    @torch.no_grad()
    def embed_images(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """(N, H, W, 3) RGB in [0, 1] -> (N, D) unit vectors; other sizes are resized to config.resolution."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"need (N, H, W, 3) images, got {tuple(images.shape)}")
        self.eval()
        size = self.config.resolution
        out = []
        for batch in images.float().cpu().split(batch_size):
            if batch.shape[1:3] != (size, size):
                x = F.interpolate(batch.permute(0, 3, 1, 2), (size, size), mode="bilinear", antialias=True)
                batch = x.clamp(0, 1).permute(0, 2, 3, 1)
            out.append(self.image_embeddings(batch))
        return torch.cat(out) if out else torch.zeros(0, self.config.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """N texts -> (N, D) unit vectors."""
        self.eval()
        texts = list(texts)
        out = [self.text_embeddings(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.config.embed_dim)


def build_judge(config: JudgeConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> WorldJudge:
    """Freshly initialised; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WorldJudge(config, tokenizer, world_token_ids(tokenizer))


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


# ---- a judge folder ----


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the vocabulary: which tokenizer a judge's token rows belong to."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def save_judge(judge: WorldJudge, folder: Path, with_tokenizer: bool = True) -> Path:
    """Write judge.safetensors, config.json, tokenizer/ (unless with_tokenizer is False) and SHA256SUMS."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in judge.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT_MARKER})
    record = judge.training_record
    meta = {
        "format": FORMAT_MARKER,
        "config": to_dict(judge.config),
        "training": None if record is None else dataclasses.asdict(record),
        "tokenizer_sha256": tokenizer_digest(judge.tokenizer),
    }
    (folder / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder / TOKENIZER, ignore_errors=True)
    if with_tokenizer:
        judge.tokenizer.save_pretrained(str(folder / TOKENIZER))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS and p.suffix != ".md")
    sums = "".join(f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    (folder / CHECKSUMS).write_text(sums, encoding="utf-8")
    return folder


def load_judge(folder: Path, cache: Path | None = None) -> WorldJudge:
    """A judge folder written by save_judge. Without tokenizer/, CLIP's tokenizer is assembled under
    `cache` (default the dreamfusion cache) and must be the one the judge was trained with."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        config = from_dict(JudgeConfig, meta["config"])
        if (folder / TOKENIZER).is_dir():
            tokenizer = load_tokenizer(folder / TOKENIZER)
        else:
            tokenizer = load_tokenizer(clip_tokenizer_folder(cache or dreamfusion_cache(), config.max_tokens))
        if tokenizer_digest(tokenizer) != meta.get("tokenizer_sha256"):
            raise UserError(f"the judge at {folder} was trained with another tokenizer than the one found")
        state = load_file(str(folder / WEIGHTS))
        judge = WorldJudge(config, tokenizer, state["token_ids"], name=f"world judge ({folder})")
        judge.load_state_dict(state)
        if meta.get("training"):
            judge.training_record = JudgeTraining(**meta["training"])
    except (KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the judge at {folder} cannot be loaded: {first}") from None
    return judge.eval()


def judge_config(folder: Path) -> JudgeConfig:
    """The config of the judge in `folder`, after checking its files against SHA256SUMS."""
    return from_dict(JudgeConfig, _read_meta(Path(folder))["config"])


def _read_meta(folder: Path) -> dict:
    """config.json of a judge folder, after checking every file listed in its SHA256SUMS."""
    if not (folder / CHECKSUMS).is_file() or not (folder / CONFIG).is_file():
        raise UserError(
            f"no world judge at {folder}: it needs {CONFIG} and {CHECKSUMS} (written by save_judge)"
        )
    for line in (folder / CHECKSUMS).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = folder / name.strip()
        if not path.is_file():
            raise UserError(f"the judge at {folder} is incomplete: {name.strip()} is missing")
        if _sha256(path) != digest:
            raise UserError(f"the judge at {folder} is damaged: {name.strip()} does not match {CHECKSUMS}")
    try:
        meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"the judge's {folder / CONFIG} is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_MARKER:
        raise UserError(f"{folder} is not a world judge: its {CONFIG} has no {FORMAT_MARKER!r} marker")
    return meta


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip_tokenizer_folder(cache: Path, max_tokens: int) -> Path:
    """CLIP's tokenizer folder under `cache`, built once from the pinned open-clip-torch wheel."""
    return build_folder_once(
        cache / "clip-tokenizer" / str(max_tokens),
        lambda staging: build_clip_tokenizer(staging, wheel_folder(cache), max_tokens),
        "tokenizer_config.json",
    )


def package_folder() -> Path:
    """Where the packaged judge is installed."""
    return Path(str(resources.files("dreamfusion.evaluation").joinpath("judge")))


def load_packaged_judge(cache: Path | None = None) -> WorldJudge:
    judge = load_judge(package_folder(), cache)
    judge.name = "world judge v1 (packaged)"  # reports name the model, not this machine's paths
    return judge


# ---- the command line ----


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dreamfusion.evaluation.judge", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a judge on fresh world renders")
    train.add_argument("--out", type=Path, required=True, help="the judge folder to write")
    train.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    train.add_argument("--seed", type=int, default=DEFAULT_SEED)
    train.add_argument("--images", type=int, default=JudgeConfig.train_images, help="training renders")
    train.add_argument(
        "--no-tokenizer", action="store_true", help="leave CLIP's vocabulary out of the folder"
    )
    check = commands.add_parser("check", help="R-Precision of ground-truth renders of the suite")
    check.add_argument("folder", type=Path, nargs="?", help="a judge folder (default: the packaged judge)")
    for command in (train, check):
        command.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            config = JudgeConfig(train_images=args.images)
            tokenizer = load_tokenizer(clip_tokenizer_folder(dreamfusion_cache(), config.max_tokens))
            judge = train_judge(config, tokenizer, args.steps, args.seed, progress=True)
            save_judge(judge, args.out, with_tokenizer=not args.no_tokenizer)
            record = judge.training_record
            print(
                f"wrote {args.out}: {args.steps} steps, seed {args.seed}, rendering {record.render_s:.0f} s, "
                f"training {record.train_s:.0f} s, final loss {record.final_loss:.3f}"
            )
        else:
            judge = load_judge(args.folder) if args.folder else load_packaged_judge()
            print(ground_truth_rprecision(judge, progress=True).report())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
