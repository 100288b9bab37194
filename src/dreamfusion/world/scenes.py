"""Scenes of the world: one coloured object, or two related by "on top of" or "next to", with exact geometry.

A `Scene` is what a caption means. Its geometry (`sdf`, `occupancy`) and colour (`albedo`) are exact functions
of 3D points, which is what the evaluation measures generated objects against.

A single object sits in its canonical frame, unscaled. Placement of a pair (deterministic, so a caption
names exactly one geometry):
- both objects keep the canonical orientation (front = +X), shrunk to COMPOSITION_SCALE;
- "A on top of B": B's bounding box is centred on the Z axis, A rests on B's top face, also centred;
- "A next to B": A is on the -Y side (the left of the image in the front view), B on +Y, a small gap between
  their bounding boxes, both standing on the same floor;
- the pair's bounding box is then centred on the origin and, if some point could lie further than FIT_RADIUS
  from it, the pair shrinks uniformly until none can.

The caption grammar, which `scene_from_caption` reads and `caption_text` writes:
    [template prefix] a <colour> <noun> [<relation phrase> a <colour> <noun>][, <view> view]
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.errors import UserError
from dreamfusion.prompts import VIEW_WORDS
from dreamfusion.world.objects import (
    COLOUR_NAMES,
    KIND_NAMES,
    KINDS,
    Kind,
    colour_rgb,
    kind,
    kind_geometry,
    part_albedo,
)

# Canonical relation -> the phrases a caption may use for it (the first is canonical).
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "on top of": ("on top of", "sitting on", "resting on", "stacked on"),
    "next to": ("next to", "beside", "alongside"),
}
RELATIONS: tuple[str, ...] = tuple(RELATION_PHRASES)

# Ways a caption frames its subject; "{}" is the object phrase. Matched case-insensitively when parsing.
TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "a 3D render of {}",
    "a render of {}",
    "a picture of {}",
    "a toy model of {}",
)

COMPOSITION_SCALE = 0.6  # each object of a pair, before fitting
NEXT_TO_GAP = 0.06  # between the bounding boxes of a "next to" pair, in world units
FIT_RADIUS = 0.8  # every scene lies inside this sphere around the origin


class CaptionError(UserError, ValueError):
    """A caption outside the world's grammar or vocabulary."""


@dataclass(frozen=True)
class WorldObject:
    kind: str
    colour: str

    def __post_init__(self) -> None:
        kind(self.kind)
        colour_rgb(self.colour)

    def phrase(self, noun: str | None = None) -> str:
        """'a red cube', 'an orange box' (with a synonym)."""
        words = f"{self.colour} {noun or kind(self.kind).nouns[0]}"
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


@dataclass(frozen=True)
class Placement:
    """An object in the world: world point x maps to canonical point (x - offset) / scale."""

    object: WorldObject
    scale: float
    offset: tuple[float, float, float]

    def sdf(self, points: Tensor, with_parts: bool = False) -> tuple[Tensor, Tensor | None]:
        """World points (N, 3) -> signed distance (N,) in world units, and parts (N,) when asked for."""
        sample = kind_geometry(
            self.object.kind, (points - points.new_tensor(self.offset)) / self.scale, with_parts
        )
        return sample.sdf * self.scale, sample.part


@dataclass(frozen=True)
class Scene:
    first: WorldObject
    relation: str | None = None  # None: a single object
    second: WorldObject | None = None

    def __post_init__(self) -> None:
        if (self.relation is None) != (self.second is None):
            raise ValueError("a scene has either one object, or two objects and a relation")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; the world knows {', '.join(RELATIONS)}")

    @property
    def objects(self) -> tuple[WorldObject, ...]:
        return (self.first,) if self.second is None else (self.first, self.second)

    @property
    def has_front(self) -> bool:
        return any(kind(o.kind).has_front for o in self.objects)

    @property
    def placements(self) -> tuple[Placement, ...]:
        return place(self)

    def caption(self) -> str:
        """The canonical caption: no template, canonical nouns and relation phrase, no view word."""
        return caption_text(self)

    def sdf(self, points: Tensor) -> Tensor:
        """(N, 3) world points -> (N,) signed distance (negative inside), never above the true distance."""
        return torch.stack([p.sdf(points)[0] for p in self.placements]).min(0).values

    def occupancy(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) bool: inside the scene (surface included)."""
        return self.sdf(points) <= 0.0

    def albedo(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N, 3) albedo of the nearest object's part (meaningful on and near the surface)."""
        samples = [p.sdf(points, with_parts=True) for p in self.placements]
        nearest = torch.stack([s[0] for s in samples]).argmin(0)
        albedo = torch.empty(points.shape[0], 3, dtype=points.dtype, device=points.device)
        for i, (placement, (_, part)) in enumerate(zip(self.placements, samples, strict=True)):
            rows = nearest == i
            main = points.new_tensor(colour_rgb(placement.object.colour))
            albedo[rows] = part_albedo(part[rows], main)
        return albedo


@functools.lru_cache(maxsize=4096)
def place(scene: Scene) -> tuple[Placement, ...]:
    """Where each object of `scene` sits (see the module docstring)."""
    if scene.second is None:
        return (Placement(scene.first, 1.0, (0.0, 0.0, 0.0)),)
    a, b = kind(scene.first.kind), kind(scene.second.kind)
    s = COMPOSITION_SCALE

    def centre(k: Kind, axis: int) -> float:
        return 0.5 * (k.lower[axis] + k.upper[axis]) * s

    match scene.relation:
        case "on top of":
            offset_b = [-centre(b, 0), -centre(b, 1), 0.0]
            offset_a = [-centre(a, 0), -centre(a, 1), s * (b.upper[2] - a.lower[2])]
        case "next to":
            offset_a = [-centre(a, 0), -0.5 * NEXT_TO_GAP - s * a.upper[1], -s * a.lower[2]]
            offset_b = [-centre(b, 0), 0.5 * NEXT_TO_GAP - s * b.lower[1], -s * b.lower[2]]
        case _:
            raise ValueError(f"unknown relation {scene.relation!r}")
    lower = [min(o[i] + s * k.lower[i] for o, k in ((offset_a, a), (offset_b, b))) for i in range(3)]
    upper = [max(o[i] + s * k.upper[i] for o, k in ((offset_a, a), (offset_b, b))) for i in range(3)]
    shift = [-0.5 * (lo + hi) for lo, hi in zip(lower, upper, strict=True)]
    offset_a = [o + d for o, d in zip(offset_a, shift, strict=True)]
    offset_b = [o + d for o, d in zip(offset_b, shift, strict=True)]
    reach = max(math.hypot(*o) + s * k.radius for o, k in ((offset_a, a), (offset_b, b)))
    fit = min(1.0, FIT_RADIUS / reach)
    return (
        Placement(scene.first, s * fit, tuple(o * fit for o in offset_a)),
        Placement(scene.second, s * fit, tuple(o * fit for o in offset_b)),
    )


# ---- scene ids: a fixed enumeration, so datasets and evaluations can name scenes by integer ----

NUM_OBJECTS = len(KIND_NAMES) * len(COLOUR_NAMES)
NUM_SCENES = NUM_OBJECTS + len(RELATIONS) * NUM_OBJECTS * NUM_OBJECTS


def _object_id(o: WorldObject) -> int:
    return KIND_NAMES.index(o.kind) * len(COLOUR_NAMES) + COLOUR_NAMES.index(o.colour)


def _object_from_id(i: int) -> WorldObject:
    return WorldObject(KIND_NAMES[i // len(COLOUR_NAMES)], COLOUR_NAMES[i % len(COLOUR_NAMES)])


def scene_id(scene: Scene) -> int:
    """Single objects first (kind-major, colour-minor), then pairs by relation, first object, second."""
    if scene.second is None:
        return _object_id(scene.first)
    pair = (RELATIONS.index(scene.relation) * NUM_OBJECTS + _object_id(scene.first)) * NUM_OBJECTS
    return NUM_OBJECTS + pair + _object_id(scene.second)


def scene_from_id(index: int) -> Scene:
    if not 0 <= index < NUM_SCENES:
        raise ValueError(f"scene id {index} out of range [0, {NUM_SCENES})")
    if index < NUM_OBJECTS:
        return Scene(_object_from_id(index))
    rest = index - NUM_OBJECTS
    rest, second = divmod(rest, NUM_OBJECTS)
    relation, first = divmod(rest, NUM_OBJECTS)
    return Scene(_object_from_id(first), RELATIONS[relation], _object_from_id(second))


# ---- captions: writing and reading ----


def caption_text(
    scene: Scene,
    template: str = "{}",
    nouns: tuple[str | None, str | None] = (None, None),
    relation_phrase: str | None = None,
) -> str:
    """A caption of `scene` without a view word (prompts.with_view adds one). Defaults: the canonical one."""
    subject = scene.first.phrase(nouns[0])
    if scene.second is not None:
        phrase = relation_phrase or RELATION_PHRASES[scene.relation][0]
        if phrase not in RELATION_PHRASES[scene.relation]:
            raise ValueError(f"{phrase!r} is not a phrase for the relation {scene.relation!r}")
        subject = f"{subject} {phrase} {scene.second.phrase(nouns[1])}"
    return template.format(subject)


@dataclass(frozen=True)
class Vocabulary:
    colours: tuple[str, ...]
    kinds: dict[str, tuple[str, ...]]  # kind -> nouns (synonyms)
    relations: dict[str, tuple[str, ...]]  # relation -> phrases (synonyms)
    templates: tuple[str, ...]
    views: tuple[str, ...]


def vocabulary() -> Vocabulary:
    return Vocabulary(
        colours=COLOUR_NAMES,
        kinds={k.name: k.nouns for k in KINDS},
        relations=dict(RELATION_PHRASES),
        templates=TEMPLATES,
        views=VIEW_WORDS,
    )


_NOUN_TO_KIND = {noun: k.name for k in KINDS for noun in k.nouns}
_PHRASE_TO_RELATION = {p: r for r, phrases in RELATION_PHRASES.items() for p in phrases}
_PREFIXES = sorted((t.split("{}")[0].lower() for t in TEMPLATES), key=len, reverse=True)
_KNOWN_WORDS = frozenset(
    {"a", "an", "view", *COLOUR_NAMES, *VIEW_WORDS}
    | {w for noun in _NOUN_TO_KIND for w in noun.split()}
    | {w for p in _PHRASE_TO_RELATION for w in p.split()}
    | {w for prefix in _PREFIXES for w in prefix.split()}
)
_VIEW_SUFFIX = re.compile(r"^(?P<body>.*), (?P<view>\w+) view$")


def unknown_words(text: str) -> list[str]:
    """The words of `text` that no caption of the world uses, in order of appearance, each once."""
    words = re.split(r"[\s,.;:!?]+", text.lower())
    return list(dict.fromkeys(w for w in words if w and w not in _KNOWN_WORDS))


@dataclass(frozen=True)
class ParsedCaption:
    scene: Scene
    view: str | None  # "front", "side", "back", "overhead", or None without a view word


def parse_caption(text: str) -> ParsedCaption:
    """Read a caption of the world's grammar (case and spacing do not matter)."""
    cleaned = " ".join(text.lower().split()).rstrip(".")
    unknown = sorted(unknown_words(cleaned))
    if unknown:
        raise CaptionError(
            f"unknown word{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in caption {text!r}. "
            f"The world knows colours {', '.join(COLOUR_NAMES)}; kinds {', '.join(_NOUN_TO_KIND)}; "
            f"relations {', '.join(_PHRASE_TO_RELATION)}; views {', '.join(VIEW_WORDS)}"
        )
    view = None
    if match := _VIEW_SUFFIX.match(cleaned):
        cleaned, view = match["body"], match["view"]
        if view not in VIEW_WORDS:
            raise CaptionError(
                f"unknown view {view!r} in caption {text!r}; views are {', '.join(VIEW_WORDS)}"
            )
    body = next(cleaned[len(p) :] for p in _PREFIXES if cleaned.startswith(p))
    for phrase in sorted(_PHRASE_TO_RELATION, key=len, reverse=True):
        first, sep, second = body.partition(f" {phrase} ")
        if sep:
            relation = _PHRASE_TO_RELATION[phrase]
            return ParsedCaption(Scene(_read_object(first, text), relation, _read_object(second, text)), view)
    return ParsedCaption(Scene(_read_object(body, text)), view)


def scene_from_caption(text: str) -> Scene:
    """The scene a caption of the world's grammar names; a view word, if any, is ignored."""
    return parse_caption(text).scene


def _read_object(phrase: str, text: str) -> WorldObject:
    words = phrase.split()
    if len(words) < 3 or words[0] not in ("a", "an") or words[1] not in COLOUR_NAMES:
        raise _grammar_error(text)
    noun = " ".join(words[2:])
    if noun not in _NOUN_TO_KIND:
        raise _grammar_error(text)
    return WorldObject(_NOUN_TO_KIND[noun], words[1])


def _grammar_error(text: str) -> CaptionError:
    return CaptionError(
        f"cannot read {text!r} as a caption of the world; expected "
        "'[a photo of] a <colour> <kind> [<relation> a <colour> <kind>][, <view> view]', "
        "e.g. 'a photo of a red cube on top of a blue cylinder, front view'"
    )
