"""Training captions of the world, and the held-out compositions the prior never sees.

Held out, so the evaluation can ask whether a prior (and DreamFusion through it) composes what it knows:
- HELD_OUT_OBJECTS: ten colour-kind pairs, each colour once and each kind at most once, so every colour and
  every kind still appears in training, only never together. They are held out everywhere: alone and as
  either member of a pair.
- HELD_OUT_RELATIONS: six (kind, relation, kind) triples, whatever the colours. "on top of" is held out in
  the order given (a cube on a sphere is still trained); "next to" in both orders, since the phrase is
  symmetric.

The training sampler never produces a held-out scene; `held_out_scenes` lists the evaluation's scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamfusion.world.objects import COLOUR_NAMES, KIND_NAMES, kind
from dreamfusion.world.scenes import (
    RELATION_PHRASES,
    RELATIONS,
    TEMPLATES,
    Scene,
    WorldObject,
    caption_text,
)

HELD_OUT_OBJECTS: tuple[WorldObject, ...] = (
    WorldObject("car", "red"),
    WorldObject("mug", "blue"),
    WorldObject("chair", "green"),
    WorldObject("house", "yellow"),
    WorldObject("arrow", "purple"),
    WorldObject("sphere", "orange"),
    WorldObject("cube", "pink"),
    WorldObject("cylinder", "white"),
    WorldObject("cone", "brown"),
    WorldObject("torus", "gray"),
)

HELD_OUT_RELATIONS: tuple[tuple[str, str, str], ...] = (
    ("sphere", "on top of", "cube"),
    ("cone", "on top of", "cylinder"),
    ("mug", "on top of", "chair"),
    ("car", "next to", "house"),
    ("arrow", "next to", "sphere"),
    ("pyramid", "next to", "chair"),
)

# Colour pairs per held-out relation in `held_out_scenes`.
COLOURINGS_PER_HELD_OUT_RELATION = 3


def _relation_is_held_out(first: str, relation: str, second: str) -> bool:
    if (first, relation, second) in HELD_OUT_RELATIONS:
        return True
    return relation == "next to" and (second, relation, first) in HELD_OUT_RELATIONS


def is_held_out(scene: Scene) -> bool:
    """True for every scene the prior must never be trained on."""
    if any(o in HELD_OUT_OBJECTS for o in scene.objects):
        return True
    if scene.second is None:
        return False
    return _relation_is_held_out(scene.first.kind, scene.relation, scene.second.kind)


def held_out_scenes() -> tuple[Scene, ...]:
    """The evaluation's held-out scenes: each held-out colour-kind pair alone, then each held-out relation
    with COLOURINGS_PER_HELD_OUT_RELATION colourings whose objects are themselves trained, so only the
    relation is new."""
    scenes = [Scene(o) for o in HELD_OUT_OBJECTS]
    n = len(COLOUR_NAMES)
    for i, (first, relation, second) in enumerate(HELD_OUT_RELATIONS):
        found = 0
        for j in range(n):
            a = WorldObject(first, COLOUR_NAMES[(i + j) % n])
            b = WorldObject(second, COLOUR_NAMES[(i + j + 3) % n])
            if a.colour == b.colour or a in HELD_OUT_OBJECTS or b in HELD_OUT_OBJECTS:
                continue
            scenes.append(Scene(a, relation, b))
            found += 1
            if found == COLOURINGS_PER_HELD_OUT_RELATION:
                break
    return tuple(scenes)


def held_out_captions() -> tuple[str, ...]:
    """Canonical captions (no template, no view word) of `held_out_scenes`."""
    return tuple(s.caption() for s in held_out_scenes())


@dataclass(frozen=True)
class CaptionedScene:
    scene: Scene
    text: str  # without a view word: the renderer adds the one its camera calls for


def sample_training_captions(
    n: int, generator: torch.Generator, composition_probability: float = 0.5
) -> tuple[CaptionedScene, ...]:
    """n random (scene, caption) pairs for prior training, never a held-out scene.

    Objects, colours, relations, templates and synonyms are uniform; the two objects of a pair have
    different colours, so a caption's colour words always tell the objects apart. Rejected draws are
    redrawn from `generator`, so a seed reproduces the whole list.
    """
    if not 0.0 <= composition_probability <= 1.0:
        raise ValueError("composition_probability must be in [0, 1]")
    out: list[CaptionedScene | None] = [None] * n
    pending = list(range(n))
    while pending:
        draws = torch.rand(len(pending), 10, generator=generator).tolist()
        retry = []
        for row, u in zip(pending, draws, strict=True):
            sample = _captioned_scene(u, composition_probability)
            if sample is None:
                retry.append(row)
            else:
                out[row] = sample
        pending = retry
    return tuple(s for s in out if s is not None)


def _pick(options: tuple, u: float):
    return options[min(int(u * len(options)), len(options) - 1)]


def _captioned_scene(u: list[float], composition_probability: float) -> CaptionedScene | None:
    """One draw from ten uniforms, or None when the draw must be rejected."""
    first = WorldObject(_pick(KIND_NAMES, u[1]), _pick(COLOUR_NAMES, u[2]))
    nouns = (_pick(kind(first.kind).nouns, u[7]), None)
    if u[0] < composition_probability:
        second = WorldObject(_pick(KIND_NAMES, u[3]), _pick(COLOUR_NAMES, u[4]))
        if second.colour == first.colour:
            return None
        relation = _pick(RELATIONS, u[5])
        scene = Scene(first, relation, second)
        nouns = (nouns[0], _pick(kind(second.kind).nouns, u[8]))
        phrase = _pick(RELATION_PHRASES[relation], u[9])
    else:
        scene, phrase = Scene(first), None
    if is_held_out(scene):
        return None
    return CaptionedScene(scene, caption_text(scene, _pick(TEMPLATES, u[6]), nouns, phrase))
