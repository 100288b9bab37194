"""The world judge and the evaluation suite at tiny scale: targets of hand-made batches, a loss that falls,
unit embeddings, a folder that loads back to the same embeddings (or refuses with one line), and a suite of
canonical, parseable captions with held-out ones among them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.commands import main
from dreamfusion.errors import UserError
from dreamfusion.evaluation.judge import (
    JudgeConfig,
    build_judge,
    judge_config,
    load_judge,
    package_folder,
    save_judge,
    train_judge,
)
from dreamfusion.evaluation.judge.folder import CHECKSUMS, WEIGHTS
from dreamfusion.evaluation.judge.model import world_token_ids
from dreamfusion.evaluation.judge.training import (
    contrastive_loss,
    judge_backgrounds,
    meaning,
    positive_targets,
    render_training_data,
    sample_scenes,
    training_caption,
    training_step,
)
from dreamfusion.evaluation.suite import (
    SUITE_CAPTIONS,
    GroundTruthScores,
    evaluation_suite,
    ground_truth_rprecision,
    shape_caption,
    shape_captions,
)
from dreamfusion.prior.model import load_tokenizer
from dreamfusion.testing.tiny_models import save_clip_tokenizer
from dreamfusion.world import (
    COLOUR_NAMES,
    RELATIONS,
    Scene,
    WorldObject,
    held_out_scenes,
    scene_from_caption,
)

TINY = JudgeConfig(
    resolution=16,
    channels=(8, 16),
    convs_per_stage=1,
    embed_dim=16,
    text_width=32,
    text_layers=1,
    text_heads=2,
    max_tokens=24,
    train_images=16,
    batch_size=8,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tokenizer")
    save_clip_tokenizer(folder)
    return load_tokenizer(folder)


# ---- the loss ----


def test_repeated_captions_are_positives_of_each_other():
    targets = positive_targets(["a red cube", "a cube", "a red cube", "a blue mug"])
    expected = torch.tensor(
        [
            [0.5, 0.0, 0.5, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.5, 0.0, 0.5, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert torch.equal(targets, expected)
    assert torch.equal(positive_targets(["a", "b", "c"]), torch.eye(3))


def test_loss_with_distinct_captions_is_clips():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(5)
    clip = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert torch.allclose(contrastive_loss(logits, positive_targets(list("abcde"))), clip)


def test_a_duplicate_ranked_like_its_twin_is_not_pushed_down():
    # Images 0 and 1 show the same caption x and match both texts x equally; y is apart.
    logits = torch.tensor([[10.0, 10.0, 0.0], [10.0, 10.0, 0.0], [0.0, 0.0, 10.0]], requires_grad=True)
    contrastive_loss(logits, positive_targets(["x", "x", "y"])).backward()
    assert float(logits.grad[:2, :2].abs().max()) < 1e-4  # nothing to change: twins are positives
    identity = logits.detach().clone().requires_grad_()
    contrastive_loss(identity, torch.eye(3)).backward()
    assert float(identity.grad[0, 1]) > 0.1  # as negatives, the twin's similarity would be pushed down


# ---- the model ----


def test_token_table_holds_world_words_with_the_end_token_last(tokenizer):
    ids = world_token_ids(tokenizer)
    assert int(ids[-1]) == tokenizer.eos_token_id
    assert len(set(ids.tolist())) == len(ids)
    for word in ("a red cube on top of a blue cylinder", "a photo of an orange toy car, front view"):
        assert set(tokenizer(word)["input_ids"]) <= set(ids.tolist())


def test_embeddings_are_unit_vectors_and_images_of_any_size_are_resized(tokenizer):
    judge = build_judge(TINY, tokenizer, seed=0)
    images = judge.embed_images(torch.rand(3, 16, 16, 3))
    larger = judge.embed_images(torch.rand(2, 40, 40, 3))
    texts = judge.embed_texts(["a red cube", "a cube", "a photo of a blue mug on top of a brown chair"])
    assert images.shape == (3, 16) and larger.shape == (2, 16) and texts.shape == (3, 16)
    for e in (images, larger, texts):
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)
    # A word no world caption has falls on the shared unknown row instead of failing.
    assert judge.embed_texts(["a red dog"]).shape == (1, 16)


def test_a_few_steps_on_one_batch_lower_the_loss(tokenizer):
    config = TINY
    data = render_training_data(8, config, torch.Generator().manual_seed(1))
    texts = [meaning(s, bool(t)) for s, t in zip(data.scenes, data.textureless, strict=True)]
    judge = build_judge(config, tokenizer, seed=0)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=1e-2)
    losses = [training_step(judge, optimizer, data.images, texts, texts) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0]


def test_trained_judge_round_trips_through_its_folder(tokenizer, tmp_path: Path):
    judge = train_judge(TINY, tokenizer, steps=3, seed=2)
    assert not judge.training and judge.training_record.steps == 3
    images, texts = torch.rand(4, 16, 16, 3), ["a red cube", "a cube next to a cone"]
    folder = save_judge(judge, tmp_path / "judge")
    loaded = load_judge(folder)
    assert loaded.config == TINY and loaded.training_record == judge.training_record
    assert torch.equal(loaded.embed_images(images), judge.embed_images(images))
    assert torch.equal(loaded.embed_texts(texts), judge.embed_texts(texts))


def test_a_folder_without_tokenizer_takes_the_cached_one_if_it_is_the_same(tokenizer, tmp_path: Path):
    judge = build_judge(TINY, tokenizer, seed=0)
    folder = save_judge(judge, tmp_path / "judge", with_tokenizer=False)
    assert not (folder / "tokenizer").exists()
    cache = tmp_path / "cache"
    save_clip_tokenizer(cache / "clip-tokenizer" / str(TINY.max_tokens))
    loaded = load_judge(folder, cache)
    assert torch.equal(loaded.embed_texts(["a red cube"]), judge.embed_texts(["a red cube"]))
    save_clip_tokenizer(cache / "clip-tokenizer" / str(TINY.max_tokens), words=("a", "cube"))
    with pytest.raises(UserError, match="another tokenizer"):
        load_judge(folder, cache)


def test_missing_or_damaged_folders_are_one_line_user_errors(tokenizer, tmp_path: Path):
    with pytest.raises(UserError, match="no world judge"):
        load_judge(tmp_path / "missing")
    folder = save_judge(build_judge(TINY, tokenizer, seed=0), tmp_path / "judge")
    weights = folder / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged") as error:
        load_judge(folder)
    assert "\n" not in str(error.value)
    (folder / CHECKSUMS).unlink()
    assert main(["judge", "check", str(folder)]) == 2


def test_the_packaged_judge_is_intact():
    # Its weights need CLIP's vocabulary, which tests never download; its files and config are checked here.
    config = judge_config(package_folder())
    assert config.resolution == 64 and config.world.shading_probabilities[2] > 0  # trained on textureless too


# ---- training data ----


def test_scenes_cover_pairs_of_different_colours_and_held_out_ones():
    scenes = sample_scenes(400, torch.Generator().manual_seed(0), composition_probability=0.5)
    pairs = [s for s in scenes if s.second is not None]
    assert 150 < len(pairs) < 250
    assert all(s.first.colour != s.second.colour for s in pairs)
    assert {s.relation for s in pairs} == set(RELATIONS)
    assert {s.second.colour for s in pairs} == set(COLOUR_NAMES)
    assert any(o.kind == "car" and o.colour == "red" for s in scenes for o in s.objects)  # held out


def test_captions_are_shape_only_for_textureless_renders():
    scene = Scene(WorldObject("car", "red"), "next to", WorldObject("house", "yellow"))
    canonical = [0.0, 0.9, 0.9, 0.9, 0.9]
    varied = [0.99, 0.5, 0.9, 0.9, 0.9]
    assert training_caption(scene, False, canonical, 0.75) == "a red car next to a yellow house"
    assert training_caption(scene, True, canonical, 0.75) == "a car next to a house"
    assert scene_from_caption(training_caption(scene, False, varied, 0.75)) == scene
    assert "red" not in training_caption(scene, True, varied, 0.75)
    assert meaning(scene, True) == "a car next to a house"


def test_backgrounds_follow_their_weights():
    generator = torch.Generator().manual_seed(0)
    white = judge_backgrounds(JudgeConfig(background_weights=(1.0, 0.0, 0.0)))(3, 8, generator)
    assert torch.equal(white, torch.ones(3, 8, 8, 3))
    muted = judge_backgrounds(JudgeConfig(background_weights=(0.0, 1.0, 0.0)))(3, 8, generator)
    assert torch.equal(muted, muted[:, :1, :1].expand_as(muted))  # one colour per image
    assert float(muted.min()) >= 0.5 * (1 - JudgeConfig().muted_colourfulness)


# ---- the suite ----


def test_suite_has_parseable_canonical_captions_and_held_out_ones():
    suite = evaluation_suite()
    assert len(suite) >= 24 and len(set(SUITE_CAPTIONS)) == len(SUITE_CAPTIONS)
    for prompt in suite:
        assert scene_from_caption(prompt.caption) == prompt.scene
        assert prompt.scene.caption() == prompt.caption
    held_out = [p for p in suite if p.held_out]
    assert len(held_out) >= 6
    assert {p.scene for p in held_out} <= set(held_out_scenes())
    kinds = {o.kind for p in suite for o in p.scene.objects}
    assert {"mug", "chair", "house", "car", "arrow"} <= kinds
    assert {p.scene.relation for p in suite} == {None, *RELATIONS}


def test_shape_caption_drops_colours_and_fixes_articles():
    scene = scene_from_caption("an orange arrow on top of a red cube")
    assert shape_caption(scene) == "an arrow on top of a cube"
    assert shape_caption(scene_from_caption("a purple car")) == "a car"
    assert (
        shape_caption(scene, "a photo of {}", (None, "box"), "sitting on")
        == "a photo of an arrow sitting on a box"
    )
    for prompt in evaluation_suite():
        assert not set(shape_caption(prompt.scene).split()) & set(COLOUR_NAMES)


def test_shared_shape_captions_are_one_candidate():
    suite = evaluation_suite()
    shapes, index = shape_captions(suite)
    assert len(set(shapes)) == len(shapes) < len(suite)
    assert all(shapes[i] == shape_caption(p.scene) for p, i in zip(suite, index, strict=True))


def test_ground_truth_scores_count_views_ranked_first(tokenizer):
    prompts = evaluation_suite()[:3]
    scores = ground_truth_rprecision(build_judge(TINY, tokenizer, seed=0), prompts, resolution=16, views=2)
    assert scores.color_ranks.shape == scores.geo_ranks.shape == (3, 2)
    hand = GroundTruthScores("m", prompts, torch.tensor([[0, 1], [0, 0], [2, 0]]), scores.geo_ranks, 3)
    assert hand.score(hand.color_ranks) == pytest.approx(4 / 6)
    report = hand.report()
    assert "Geo" in report and "shape-only" in report and "held-out" in report
