"""Scenes: placement of pairs, exact colour and geometry queries, scene ids and the caption grammar."""

import itertools
import math

import pytest
import torch

from dreamfusion.world.objects import COLOUR_NAMES, COLOURS, KIND_NAMES, kind
from dreamfusion.world.scenes import (
    FIT_RADIUS,
    NUM_OBJECTS,
    NUM_SCENES,
    RELATIONS,
    CaptionError,
    Scene,
    WorldObject,
    caption_text,
    parse_caption,
    scene_from_caption,
    scene_from_id,
    scene_id,
    vocabulary,
)


def _grid(n: int = 61, half: float = 0.8) -> torch.Tensor:
    axis = torch.linspace(-half, half, n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def _occupied_by(scene: Scene, slot: int, points: torch.Tensor) -> torch.Tensor:
    return points[scene.placements[slot].sdf(points)[0] <= 0]


def test_a_single_object_is_its_kind_in_the_canonical_frame():
    scene = Scene(WorldObject("sphere", "red"))
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.6]])
    assert torch.allclose(scene.sdf(points), torch.tensor([-0.6, 0.4, 0.0]))
    assert scene.occupancy(points).tolist() == [True, False, True]
    assert torch.allclose(scene.albedo(points), torch.tensor(COLOURS["red"]).expand(3, 3))


def test_on_top_of_stacks_the_first_object_on_the_second():
    scene = scene_from_caption("a red cube on top of a blue cylinder")
    points = _grid()
    top, bottom = _occupied_by(scene, 0, points), _occupied_by(scene, 1, points)
    step = 1.6 / 60
    assert float(top[:, 2].min()) >= float(bottom[:, 2].max()) - 1e-6
    assert float(top[:, 2].min()) - float(bottom[:, 2].max()) < 2 * step  # resting, not floating
    assert abs(float(top[:, :2].mean()) - 0.0) < step and abs(float(bottom[:, :2].mean())) < step
    both = torch.cat([top, bottom])
    assert abs(float(both[:, 2].min() + both[:, 2].max())) < 2 * step  # the pair is centred
    colours = scene.albedo(torch.cat([top[:1], bottom[:1]]))
    assert torch.allclose(colours, torch.tensor([COLOURS["red"], COLOURS["blue"]]))


def test_next_to_puts_the_first_object_on_the_left_of_the_front_view():
    scene = scene_from_caption("a green cone next to a pink sphere")
    points = _grid()
    left, right = _occupied_by(scene, 0, points), _occupied_by(scene, 1, points)
    assert float(left[:, 1].max()) < float(right[:, 1].min())  # -Y is the image's left seen from +X
    assert abs(float(left[:, 2].min()) - float(right[:, 2].min())) < 1.6 / 60  # same floor


@pytest.mark.parametrize("relation", RELATIONS)
def test_every_pair_fits_inside_the_fit_radius(relation):
    for a, b in itertools.product(KIND_NAMES, repeat=2):
        scene = Scene(WorldObject(a, "red"), relation, WorldObject(b, "blue"))
        reach = max(math.hypot(*p.offset) + p.scale * kind(p.object.kind).radius for p in scene.placements)
        assert reach <= FIT_RADIUS + 1e-9
    tallest = Scene(WorldObject("chair", "red"), relation, WorldObject("house", "blue"))
    inside = _grid(81, 1.0)[tallest.occupancy(_grid(81, 1.0))]
    assert float(inside.norm(dim=-1).max()) <= FIT_RADIUS


def test_scene_ids_enumerate_every_scene_once():
    assert NUM_SCENES == NUM_OBJECTS * (1 + len(RELATIONS) * NUM_OBJECTS)
    for index in range(0, NUM_SCENES, 7):
        assert scene_id(scene_from_id(index)) == index
    with pytest.raises(ValueError):
        scene_from_id(NUM_SCENES)


def test_canonical_captions_round_trip():
    for index in [*range(NUM_OBJECTS), *range(NUM_OBJECTS, NUM_SCENES, 97)]:
        scene = scene_from_id(index)
        assert scene_from_caption(scene.caption()) == scene


def test_parse_templates_synonyms_articles_case_and_view_words():
    parsed = parse_caption("A 3D Render of an  orange block sitting on a white coffee mug, overhead view.")
    assert parsed.view == "overhead"
    assert parsed.scene == Scene(WorldObject("cube", "orange"), "on top of", WorldObject("mug", "white"))
    assert parse_caption("a toy model of a gray toy car").view is None
    assert scene_from_caption("a toy model of a gray toy car").first == WorldObject("car", "gray")
    assert scene_from_caption("a brown donut beside a purple hut").relation == "next to"


def test_caption_text_uses_articles_and_rejects_phrases_of_another_relation():
    scene = Scene(WorldObject("arrow", "orange"), "next to", WorldObject("house", "white"))
    assert caption_text(scene) == "an orange arrow next to a white house"
    assert caption_text(scene, "a photo of {}", ("arrow", "cottage"), "beside") == (
        "a photo of an orange arrow beside a white cottage"
    )
    with pytest.raises(ValueError):
        caption_text(scene, relation_phrase="on top of")


@pytest.mark.parametrize(
    "caption, named",
    [
        ("a red teapot", "'teapot'"),
        ("a crimson cube", "'crimson'"),
        ("a red cube under a blue sphere", "'under'"),
        ("a red cube, top view", "'top'"),
    ],
)
def test_unknown_words_are_named_in_the_error(caption, named):
    with pytest.raises(ValueError, match=named):
        scene_from_caption(caption)


@pytest.mark.parametrize(
    "caption", ["red cube", "a cube red", "a red", "a red cube on top of", "a red cube view"]
)
def test_known_words_out_of_grammar_are_a_clear_error(caption):
    with pytest.raises(CaptionError, match="expected"):
        scene_from_caption(caption)


def test_vocabulary_lists_the_grammar():
    vocab = vocabulary()
    assert vocab.colours == COLOUR_NAMES
    assert set(vocab.kinds) == set(KIND_NAMES)
    assert set(vocab.relations) == {"on top of", "next to"}
    assert "{}" in vocab.templates and vocab.views == ("front", "side", "back", "overhead")


def test_scene_rejects_half_a_composition():
    with pytest.raises(ValueError):
        Scene(WorldObject("cube", "red"), "on top of")
    with pytest.raises(ValueError):
        WorldObject("cube", "crimson")
