"""The Janus measure (issue #20): does a run show its object's front only from the front?

The world knows every kind's front (objects.py: +X, seen by an azimuth-0 camera), so a run of a world prompt
whose kind has one (mug, chair, house, car, arrow) can be checked view by view. A small CNN, the view
classifier, reads a shaded render and says whether it shows the object's front, a side or its back. It is
trained here on exact renders of the world's fronted objects from random cameras (its own seed), labelled by
the camera that took them, never by anything a run produced.

A run is rendered from `JANUS_VIEWS` azimuths at 30 deg elevation, offset by 22.5 deg so that no view sits on
a front/side/back boundary (22.5 and 337.5 deg are front views, 157.5 and 202.5 back views, the other four
side views), lit from the camera on white, as eval's other renders. Reported:

- `view_accuracy`: the share of views whose label is the camera's;
- `janus_rate`: the share of side and back views read as front (a front on every side scores 1);
- `back_as_front`: the share of back views read as front.

The classifier is an instrument, not ground truth: `janus_check` scores it on exact renders of every fronted
object (it must be near perfect there) and on a deliberately two-faced mug (`TwoFacedField`: a handle on both
sides and a badge front and back, so its back is a front), which must score as Janus.

    dreamfusion judge train-views --out FOLDER      # what the packaged classifier was trained with
    dreamfusion judge check-views [FILE]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from dreamfusion.config import from_dict, to_dict
from dreamfusion.errors import UserError
from dreamfusion.evaluation.classifier import conv_stages, warmup_cosine
from dreamfusion.fields.analytic import SceneField, ShapeGeometry
from dreamfusion.fields.base import Field
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import Cameras, look_at, orbit_cameras, spherical_to_position
from dreamfusion.render.lights import LightConfig, headlights, sample_point_lights
from dreamfusion.render.renderer import RenderSettings, render
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.shading import ShadingMode
from dreamfusion.world import COLOUR_NAMES, KINDS, Scene, WorldObject, render_scene

FORMAT_MARKER = "dreamfusion-view-classifier"
VIEW_CLASSES = ("front", "side", "back")
FRONTED_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS if k.has_front)
FRONTED_OBJECTS: tuple[WorldObject, ...] = tuple(
    WorldObject(k, c) for k in FRONTED_KINDS for c in COLOUR_NAMES
)
JANUS_VIEWS = 8
JANUS_START_AZIMUTH_DEG = 22.5  # half a view's spacing: every view is 22.5 deg from a class boundary
JANUS_ELEVATION_DEG = 30.0
JANUS_RENDER_PX = 64  # rendered at this size, then averaged down to the classifier's resolution
PACKAGED = Path(__file__).parent / "views" / "view_classifier.safetensors"


def camera_view(azimuth_deg: float, front_half_width_deg: float = 45.0) -> int:
    """The class (index into VIEW_CLASSES) of a camera at this azimuth: front within 45 deg of azimuth 0,
    back within 45 deg of 180, side otherwise (the prompts' view words, prompts.view_word)."""
    az = azimuth_deg % 360.0
    from_front = min(az, 360.0 - az)
    if from_front < front_half_width_deg:
        return 0
    if from_front > 180.0 - front_half_width_deg:
        return 2
    return 1


@dataclass(frozen=True)
class ViewClassifierConfig:
    resolution: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 96)
    convs_per_stage: int = 2
    train_images: int = 16000  # rendered once at render_px, each seen steps * batch_size / train_images times
    render_px: int = JANUS_RENDER_PX
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 3e-3  # AdamW; 10 % linear warm-up, then cosine to 0
    weight_decay: float = 1e-4
    shift_px: int = 2  # random shifts (edges repeated)
    # Random left-right mirroring: a mirrored front view is still a front view, so the classifier must find
    # the front by what it shows (a badge, a door, headlights, an arrow's head), not by which side a mug's
    # handle is on; otherwise a two-handled mug reads as "back" from both ends instead of as Janus.
    mirror: bool = True
    elevation_deg: tuple[float, float] = (5.0, 55.0)  # uniform; eval looks from 30 deg
    distance: tuple[float, float] = (1.35, 1.7)  # uniform; eval's orbit cameras stand at 1.5
    headlight_fraction: float = 0.5  # lit from the camera as eval renders, else a random light (App. A.2)
    seed: int = 2020

    def __post_init__(self) -> None:
        for name in ("resolution", "convs_per_stage", "train_images", "steps", "batch_size", "render_px"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.render_px % self.resolution:
            raise ValueError("render_px must be a multiple of resolution")


class ViewClassifier(nn.Module):
    def __init__(self, config: ViewClassifierConfig):
        super().__init__()
        self.config = config
        self.features = nn.Sequential(*conv_stages(3, config.channels, config.convs_per_stage))
        self.head = nn.Linear(config.channels[-1], len(VIEW_CLASSES))

    def forward(self, images: Tensor) -> Tensor:
        """images (B, H, W, 3) in [0, 1] at config.resolution; returns (B, 3) logits over VIEW_CLASSES."""
        return self.head(self.features(images.permute(0, 3, 1, 2) * 2.0 - 1.0).mean(dim=(2, 3)))


def to_resolution(images: Tensor, size: int) -> Tensor:
    """(N, H, W, 3) averaged down (area) to size x size."""
    if images.shape[1:3] == (size, size):
        return images
    return F.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="area").permute(0, 2, 3, 1)


# ---- training data: exact renders of the fronted objects from random cameras ----


def random_cameras(n: int, config: ViewClassifierConfig, generator: torch.Generator) -> Cameras:
    azimuth = torch.rand(n, generator=generator) * 360.0
    lo, hi = config.elevation_deg
    elevation = lo + (hi - lo) * torch.rand(n, generator=generator)
    lo, hi = config.distance
    distance = lo + (hi - lo) * torch.rand(n, generator=generator)
    position = spherical_to_position(elevation, azimuth, distance)
    c2w = look_at(position, torch.zeros_like(position), torch.tensor([0.0, 0.0, 1.0]).expand(n, 3))
    size = config.render_px
    focal = torch.full((n,), 0.85 * size)  # eval's orbit cameras' focal length
    return Cameras(c2w, focal, size, size, elevation, azimuth, distance)


def render_training_views(
    n: int, config: ViewClassifierConfig, generator: torch.Generator, chunk: int = 128, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """(images (n, res, res, 3), labels (n,)): lambertian renders on white of objects drawn uniformly from
    FRONTED_OBJECTS, labelled by their camera's azimuth."""
    images, labels = [], []
    for start in tqdm(range(0, n, chunk), disable=not progress, desc="render", unit="chunk", leave=False):
        count = min(chunk, n - start)
        picks = torch.randint(len(FRONTED_OBJECTS), (count,), generator=generator).tolist()
        cameras = random_cameras(count, config, generator)
        random_light = sample_point_lights(cameras.position, LightConfig(), generator)
        use_head = torch.rand(count, generator=generator) < config.headlight_fraction
        lights = torch.where(use_head[:, None], headlights(cameras.position), random_light)
        modes = torch.full((count,), int(ShadingMode.LAMBERTIAN))
        white = torch.ones(count, config.render_px, config.render_px, 3)
        scenes = [Scene(FRONTED_OBJECTS[i]) for i in picks]
        render = render_scene(scenes, cameras, lights, modes, white)
        images.append(to_resolution(render.image.clamp(0, 1), config.resolution))
        labels.append(torch.tensor([camera_view(float(a)) for a in cameras.azimuth_deg]))
    return torch.cat(images), torch.cat(labels)


def shift(images: Tensor, shift_px: int, generator: torch.Generator) -> Tensor:
    """Each image shifted by whole pixels in [-shift_px, shift_px] along each axis, edges repeated."""
    if shift_px == 0:
        return images
    batch, height, width, _ = images.shape
    offsets = torch.randint(-shift_px, shift_px + 1, (batch, 2), generator=generator)
    rows = (torch.arange(height) + offsets[:, :1]).clamp(0, height - 1)
    columns = (torch.arange(width) + offsets[:, 1:]).clamp(0, width - 1)
    return images[torch.arange(batch)[:, None, None], rows[:, :, None], columns[:, None, :]]


def train_view_classifier(
    config: ViewClassifierConfig = ViewClassifierConfig(), progress: bool = False
) -> ViewClassifier:
    data_generator = torch.Generator().manual_seed(config.seed)
    batch_generator = torch.Generator().manual_seed(config.seed + 1)
    images, labels = render_training_views(config.train_images, config, data_generator, progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ViewClassifier(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    bar = tqdm(range(config.steps), disable=not progress, desc="train view classifier", unit="step")
    model.train()
    for step in bar:
        rows = torch.randint(config.train_images, (config.batch_size,), generator=batch_generator)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(config.learning_rate, step, config.steps)
        batch = shift(images[rows], config.shift_px, batch_generator)
        if config.mirror:
            flip = torch.rand(config.batch_size, generator=batch_generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(2), batch)
        loss = F.cross_entropy(model(batch), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    return model.eval()


# ---- one safetensors file: the weights, and the config as JSON in its header ----


def save_view_classifier(model: ViewClassifier, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(
        tensors, str(path), metadata={"format": FORMAT_MARKER, "config": json.dumps(to_dict(model.config))}
    )
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_view_classifier(path: Path | None = None) -> ViewClassifier:
    """The classifier in `path`, or the packaged one (checked against the sha256 in its SHA256SUMS)."""
    path = Path(path) if path is not None else PACKAGED
    if not path.is_file():
        raise UserError(f"no view classifier at {path}")
    sums = path.parent / "SHA256SUMS"
    if path == PACKAGED and sums.is_file():
        expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())
        if expected.get(path.name) != file_sha256(path):
            raise UserError(f"{path} does not match its sha256 in {sums}: reinstall dreamfusion")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {k: file.get_tensor(k) for k in file.keys()}
    except Exception as exc:  # not a safetensors file at all
        raise UserError(f"{path} is not a view classifier: {exc}") from None
    if metadata.get("format") != FORMAT_MARKER:
        raise UserError(f"{path} is not a view classifier (its header has no {FORMAT_MARKER!r} marker)")
    model = ViewClassifier(from_dict(ViewClassifierConfig, json.loads(metadata["config"])))
    model.load_state_dict(state)
    return model.eval()


# ---- the measure ----


def janus_cameras(resolution: int = JANUS_RENDER_PX) -> Cameras:
    return orbit_cameras(
        JANUS_VIEWS, resolution, JANUS_ELEVATION_DEG, start_azimuth_deg=JANUS_START_AZIMUTH_DEG
    )


@torch.no_grad()
def render_janus_views(field: Field) -> tuple[Tensor, Tensor]:
    """(shaded renders (V, H, W, 3), azimuths (V,)) of a field, as `janus_scores` reads them: lambertian, lit
    from the camera, on white, like eval's shaded row (render/views.py), without its other rows."""
    cameras = janus_cameras()
    settings = RenderSettings.of(SamplingConfig(), LightConfig(), with_normals=True)
    out = render(
        field,
        cameras,
        settings,
        background=lambda d: SolidBackground()(d, None),
        lights=headlights(cameras.position),
        modes=torch.full((cameras.batch_size,), int(ShadingMode.LAMBERTIAN)),
    )
    return out.image.clamp(0, 1).cpu(), cameras.azimuth_deg


@torch.no_grad()
def janus_scores(
    model: ViewClassifier, shaded: Tensor, azimuth_deg: Sequence[float] | Tensor
) -> dict[str, object]:
    """Read each view (V, H, W, 3) and compare with its camera (module docstring)."""
    azimuths = [float(a) for a in azimuth_deg]
    probabilities = model(to_resolution(shaded.float(), model.config.resolution)).softmax(-1)
    read = probabilities.argmax(-1).tolist()
    truth = [camera_view(a) for a in azimuths]
    not_front = [i for i, t in enumerate(truth) if t != 0]
    back = [i for i, t in enumerate(truth) if t == 2]

    def share(rows: list[int], label: int) -> float | None:
        return None if not rows else sum(read[i] == label for i in rows) / len(rows)

    return {
        "view_accuracy": sum(r == t for r, t in zip(read, truth, strict=True)) / len(truth),
        "janus_rate": share(not_front, 0),
        "back_as_front": share(back, 0),
        "front_probability_off_front": None
        if not not_front
        else float(probabilities[not_front, 0].mean()),  # the soft Janus rate: less noisy over few runs
        "views": [
            {"azimuth_deg": a, "camera": VIEW_CLASSES[t], "read_as": VIEW_CLASSES[r]}
            for a, t, r in zip(azimuths, truth, read, strict=True)
        ],
        "elevation_deg": JANUS_ELEVATION_DEG,
        "note": "shaded renders read by the view classifier (evaluation/janus.py)",
    }


def has_front(scene: Scene | None) -> bool:
    """Janus is measured for single objects whose kind has a front."""
    return scene is not None and scene.second is None and scene.first.kind in FRONTED_KINDS


class TwoFacedField(SceneField):
    """A deliberately Janus object: the scene mirrored front to back and left to right, p -> (|x|, |y|, z). A
    mug gets a handle on both sides and its badge front and back, so its back view is its front view."""

    def geometry(self, points: Tensor) -> ShapeGeometry:
        return super().geometry(torch.stack([points[:, 0].abs(), points[:, 1].abs(), points[:, 2]], -1))


@dataclass(frozen=True)
class JanusCheck:
    exact: dict[str, float]  # mean view_accuracy, janus_rate, back_as_front over exact renders
    two_faced: dict[str, float]  # the same for two-faced objects
    objects: int

    def report(self) -> str:
        def row(name: str, scores: dict[str, float]) -> str:
            return (
                f"| {name} | {100 * scores['view_accuracy']:.1f} % | {100 * scores['janus_rate']:.1f} % | "
                f"{100 * scores['back_as_front']:.1f} % |"
            )

        return "\n".join(
            [
                f"view classifier on {self.objects} fronted objects, {JANUS_VIEWS} views each",
                "| renders | view accuracy | Janus rate | back read as front |",
                "|---|---:|---:|---:|",
                row("exact", self.exact),
                row("two-faced (mirrored front to back)", self.two_faced),
            ]
        )


def janus_check(
    model: ViewClassifier, objects: Sequence[WorldObject] = FRONTED_OBJECTS, progress: bool = False
) -> JanusCheck:
    """The measure on exact renders of `objects` (through the NeRF renderer, as runs are rendered) and on
    their two-faced versions."""
    totals: dict[str, dict[str, float]] = {"exact": {}, "two_faced": {}}
    for obj in tqdm(objects, disable=not progress, desc="janus check", unit="object"):
        for name, field in (("exact", SceneField(Scene(obj))), ("two_faced", TwoFacedField(Scene(obj)))):
            scores = janus_scores(model, *render_janus_views(field))
            for key in ("view_accuracy", "janus_rate", "back_as_front"):
                totals[name][key] = totals[name].get(key, 0.0) + float(scores[key]) / len(objects)  # type: ignore[arg-type]
    return JanusCheck(exact=totals["exact"], two_faced=totals["two_faced"], objects=len(objects))
