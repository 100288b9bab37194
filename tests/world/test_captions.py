"""The training sampler: never a held-out scene, every caption readable back to its exact scene."""

import torch

from dreamfusion.world.captions import (
    COLOURINGS_PER_HELD_OUT_RELATION,
    HELD_OUT_OBJECTS,
    HELD_OUT_RELATIONS,
    held_out_captions,
    held_out_scenes,
    is_held_out,
    sample_training_captions,
)
from dreamfusion.world.objects import COLOUR_NAMES, KIND_NAMES, KINDS
from dreamfusion.world.scenes import RELATION_PHRASES, TEMPLATES, Scene, WorldObject, scene_from_caption

SAMPLES = 4000


def _samples(seed: int = 0):
    return sample_training_captions(SAMPLES, torch.Generator().manual_seed(seed))


def test_held_out_scenes_never_come_out_of_the_training_sampler():
    held_out = set(held_out_scenes())
    for sample in _samples():
        assert not is_held_out(sample.scene)
        assert sample.scene not in held_out
        assert not set(sample.scene.objects) & set(HELD_OUT_OBJECTS)


def test_every_sampled_caption_reads_back_to_the_same_scene_and_geometry():
    samples = _samples()
    for sample in samples:
        assert scene_from_caption(sample.text) == sample.scene
    points = torch.rand(256, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    for sample in samples[:20]:
        again = scene_from_caption(sample.text)
        assert torch.equal(again.sdf(points), sample.scene.sdf(points))
        assert torch.equal(again.albedo(points), sample.scene.albedo(points))


def test_training_covers_every_colour_kind_relation_template_and_synonym():
    samples = _samples()
    scenes = [s.scene for s in samples]
    texts = " | ".join(s.text for s in samples)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOUR_NAMES)
    assert {o.kind for s in scenes for o in s.objects} == set(KIND_NAMES)
    assert {s.relation for s in scenes} == {None, "on top of", "next to"}
    for phrase in [p for phrases in RELATION_PHRASES.values() for p in phrases]:
        assert f" {phrase} " in texts
    for template in TEMPLATES[1:]:
        assert template.format("") in texts
    for noun in [n for k in KINDS for n in k.nouns]:
        assert f" {noun}" in texts
    pairs = [s for s in scenes if s.second is not None]
    assert 0.4 < len(pairs) / len(scenes) < 0.6
    assert all(s.first.colour != s.second.colour for s in pairs)


def test_the_sampler_is_reproducible_from_its_generator():
    assert _samples(3)[:50] == _samples(3)[:50]
    assert _samples(3)[:50] != _samples(4)[:50]


def test_held_out_objects_keep_every_colour_and_kind_in_training():
    assert sorted(o.colour for o in HELD_OUT_OBJECTS) == sorted(COLOUR_NAMES)
    kinds = [o.kind for o in HELD_OUT_OBJECTS]
    assert len(kinds) == len(set(kinds))


def test_held_out_scenes_cover_the_lists_and_read_back():
    scenes = held_out_scenes()
    assert len(scenes) == len(HELD_OUT_OBJECTS) + COLOURINGS_PER_HELD_OUT_RELATION * len(HELD_OUT_RELATIONS)
    assert all(is_held_out(s) for s in scenes)
    assert {s.first for s in scenes if s.second is None} == set(HELD_OUT_OBJECTS)
    triples = {(s.first.kind, s.relation, s.second.kind) for s in scenes if s.second is not None}
    assert triples == set(HELD_OUT_RELATIONS)
    for scene in scenes:
        if scene.second is not None:  # only the relation is new: both objects are trained
            assert not set(scene.objects) & set(HELD_OUT_OBJECTS)
    assert [scene_from_caption(c) for c in held_out_captions()] == list(scenes)


def test_next_to_is_held_out_in_both_orders_on_top_of_only_as_listed():
    assert is_held_out(Scene(WorldObject("house", "red"), "next to", WorldObject("car", "blue")))
    assert is_held_out(Scene(WorldObject("car", "blue"), "next to", WorldObject("house", "red")))
    assert is_held_out(Scene(WorldObject("sphere", "red"), "on top of", WorldObject("cube", "blue")))
    assert not is_held_out(Scene(WorldObject("cube", "blue"), "on top of", WorldObject("sphere", "red")))
