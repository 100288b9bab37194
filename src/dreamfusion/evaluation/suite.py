"""The evaluation prompt suite (issue #5): world captions that DreamFusion runs are scored on, 2 seeds each.

The paper scores R-Precision on 153 captions of the object-centric COCO subset, 2 seeds per caption (App.
A.3). The suite plays that role for the procedural world, whose every caption has known geometry. It holds
28 canonical captions (no template, no view word):

- 11 single objects, one of each kind, held in (seen by the built-in prior): the symmetric kinds, and the
  asymmetric ones whose front differs from their back (mug, chair, house, car, arrow), where multi-faced
  ("Janus") results show;
- 4 held-out single objects (world.HELD_OUT_OBJECTS): known kind and known colour, never seen together;
- 7 held-in compositions, "on top of" and "next to";
- 6 held-out compositions, one per held-out relation (world.HELD_OUT_RELATIONS), coloured with held-in objects
  so that only the relation is new (the first colouring of each in world.held_out_scenes).

Each run is also a retrieval query among all suite captions, so no two captions differ in one word only
where a render could not tell them apart. `shape_caption` removes the colours from a caption, for the
Geo score: a textureless render shows no colour (paper sec. 4). Captions whose shapes are equal ("a red car"
and "a blue car" are both "a car") share one shape caption: `shape_captions` lists each once, and a render of
either counts as retrieved when that shared caption ranks first.

`ground_truth_rprecision` scores an image-text model on exact renders of the suite's own scenes: the row of
Table 1 that says how far the model itself can be trusted ("ground-truth COCO images").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from dreamfusion.evaluation.image_text import ImageTextModel
from dreamfusion.evaluation.rprecision import r_precision, view_ranks
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import headlights
from dreamfusion.render.shading import ShadingMode
from dreamfusion.world import COLOUR_NAMES, Scene, caption_text, is_held_out, render_scene, scene_from_caption

SEEDS: tuple[int, ...] = (0, 1)  # two runs per caption, as the paper (App. A.3)

SUITE_CAPTIONS: tuple[str, ...] = (
    # held-in single objects: every kind once
    "a red cube",
    "a blue sphere",
    "a green cylinder",
    "a yellow cone",
    "an orange torus",
    "a purple pyramid",
    "a white mug",
    "a brown chair",
    "a pink house",
    "a blue car",
    "a green arrow",
    # held-out single objects
    "a red car",
    "a blue mug",
    "a yellow house",
    "an orange sphere",
    # held-in compositions
    "a red cube on top of a blue cylinder",
    "a green cone on top of a purple cube",
    "a yellow torus on top of a red cylinder",
    "a white mug on top of a brown cube",
    "a pink sphere next to a blue cone",
    "a brown chair next to a green house",
    "a gray car next to a yellow cube",
    # held-out compositions: only the relation is new
    "a red sphere on top of a green cube",
    "an orange cone on top of a blue cylinder",
    "a yellow mug on top of a purple chair",
    "a green car next to a pink house",
    "a blue arrow next to a brown sphere",
    "a purple pyramid next to a white chair",
)


@dataclass(frozen=True)
class SuitePrompt:
    caption: str  # canonical: what a run is prompted with and what retrieval ranks
    scene: Scene
    held_out: bool  # never shown to the built-in prior (world.is_held_out)


def evaluation_suite() -> tuple[SuitePrompt, ...]:
    """The suite's prompts, in the order of SUITE_CAPTIONS."""
    prompts = []
    for caption in SUITE_CAPTIONS:
        scene = scene_from_caption(caption)
        prompts.append(SuitePrompt(caption, scene, is_held_out(scene)))
    return tuple(prompts)


_COLOURED = re.compile(rf"\b(?:a|an) (?:{'|'.join(COLOUR_NAMES)}) (\w)")


def shape_caption(
    scene: Scene,
    template: str = "{}",
    nouns: tuple[str | None, str | None] = (None, None),
    relation_phrase: str | None = None,
) -> str:
    """The caption of `scene` (world.caption_text, same arguments) with its colour words removed and the
    articles fixed: 'a cube on top of a cylinder', 'an arrow next to a sphere'."""

    def uncoloured(match: re.Match[str]) -> str:
        first = match[1]
        return f"{'an' if first in 'aeiou' else 'a'} {first}"

    return _COLOURED.sub(uncoloured, caption_text(scene, template, nouns, relation_phrase))


def shape_captions(prompts: Sequence[SuitePrompt]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The distinct shape captions of `prompts` (in order of first appearance), and for each prompt the index
    of its own among them: the candidates and true answers of Geo retrieval."""
    shapes = [shape_caption(p.scene) for p in prompts]
    distinct = tuple(dict.fromkeys(shapes))
    return distinct, tuple(distinct.index(s) for s in shapes)


# ---- the ground-truth row: exact renders of the suite's scenes ----

RENDERED_VIEWS = 8  # azimuths 0, 45, ..., 315 deg
ELEVATION_DEG = 30.0  # the paper's evaluation renders (App. A.3)


def render_ground_truth(
    scene: Scene,
    mode: ShadingMode,
    resolution: int = 64,
    views: int = RENDERED_VIEWS,
    elevation_deg: float = ELEVATION_DEG,
) -> Tensor:
    """(views, H, W, 3): the exact scene from evenly spaced azimuths (cameras.orbit_cameras, as validation
    renders a run), lit from the camera (lights.headlights), on white."""
    cameras = orbit_cameras(views, resolution, elevation_deg)
    modes = torch.full((views,), int(mode), dtype=torch.long)
    white = torch.ones(views, resolution, resolution, 3)
    return render_scene(scene, cameras, headlights(cameras.position), modes, white).image


@dataclass(frozen=True)
class GroundTruthScores:
    model: str
    prompts: tuple[SuitePrompt, ...]
    color_ranks: Tensor  # (P, V): rank of the true caption among all P captions, lambertian renders
    geo_ranks: Tensor  # (P, V): rank of the true shape caption among the distinct ones, textureless renders
    geo_candidates: int  # how many distinct shape captions Geo ranks

    def score(self, ranks: Tensor, held_out: bool | None = None) -> float:
        """R-Precision over the prompts that are held out (True), held in (False) or all (None)."""
        rows = [i for i, p in enumerate(self.prompts) if held_out is None or p.held_out == held_out]
        return r_precision(ranks[rows])

    def _cell(self, ranks: Tensor, held_out: bool | None) -> str:
        if not any(held_out is None or p.held_out == held_out for p in self.prompts):
            return "-"
        return f"{100 * self.score(ranks, held_out):.1f} %"

    def report(self) -> str:
        n_out = sum(p.held_out for p in self.prompts)
        n_in = len(self.prompts) - n_out
        views = self.color_ranks.shape[1]
        lines = [
            f"R-Precision of {self.model} on ground-truth renders of the suite: {len(self.prompts)} prompts, "
            f"{views} azimuths at {ELEVATION_DEG:g} deg elevation, white background, light at the camera",
            f"{'':8}{f'held-in ({n_in})':>16}{f'held-out ({n_out})':>16}{f'all ({len(self.prompts)})':>12}",
        ]
        for label, ranks in (("Color", self.color_ranks), ("Geo", self.geo_ranks)):
            cells = [self._cell(ranks, h) for h in (False, True, None)]
            lines.append(f"{label:8}{cells[0]:>16}{cells[1]:>16}{cells[2]:>12}")
        lines += [
            f"Color: lambertian renders ranked against the {len(self.prompts)} full captions.",
            f"Geo: textureless renders ranked against the {self.geo_candidates} distinct shape-only captions "
            "(colour cannot be seen without texture); prompts that share a shape caption share it as answer.",
        ]
        for label, ranks in (("Color", self.color_ranks), ("Geo", self.geo_ranks)):
            misses = [
                f"{p.caption!r} {int((r > 0).sum())}/{views}"
                for p, r in zip(self.prompts, ranks, strict=True)
                if (r > 0).any()
            ]
            lines.append(f"{label} misses (views not ranked first): {', '.join(misses) or 'none'}")
        return "\n".join(lines)


def ground_truth_rprecision(
    model: ImageTextModel,
    prompts: Sequence[SuitePrompt] | None = None,
    resolution: int = 64,
    views: int = RENDERED_VIEWS,
    progress: bool = False,
) -> GroundTruthScores:
    """Rank each prompt's true caption for every view of its exact scene: Color on lambertian renders
    against all full captions, Geo on textureless renders against the distinct shape captions."""
    prompts = tuple(prompts or evaluation_suite())
    shaded, textureless = [], []
    for p in tqdm(prompts, disable=not progress, desc="render suite", unit="prompt", leave=False):
        shaded.append(render_ground_truth(p.scene, ShadingMode.LAMBERTIAN, resolution, views))
        textureless.append(render_ground_truth(p.scene, ShadingMode.TEXTURELESS, resolution, views))
    shapes, shape_index = shape_captions(prompts)

    def ranks(renders: list[Tensor], texts: Sequence[str], true: Sequence[int]) -> Tensor:
        images = model.embed_images(torch.cat(renders))
        per_view = images.view(len(prompts), views, -1)
        return view_ranks(per_view, model.embed_texts(texts), torch.tensor(true))

    return GroundTruthScores(
        model=model.name,
        prompts=prompts,
        color_ranks=ranks(shaded, [p.caption for p in prompts], range(len(prompts))),
        geo_ranks=ranks(textureless, shapes, shape_index),
        geo_candidates=len(shapes),
    )
