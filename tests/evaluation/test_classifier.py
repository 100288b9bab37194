"""The world classifier at tiny scale: labels come from the rendered objects (held-out ones included), a few
steps on one batch lower the loss, a saved file predicts exactly what the model did, and accuracies match
hand-counted answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dreamfusion.errors import UserError
from dreamfusion.evaluation.classifier import (
    ALL_OBJECTS,
    HELD_IN_OBJECTS,
    ClassifierConfig,
    Labels,
    accuracy,
    augment,
    build_classifier,
    classifier_loss,
    evaluate,
    load_classifier,
    predict,
    render_objects,
    save_classifier,
    train_classifier,
    training_step,
)
from dreamfusion.world import COLOUR_NAMES, HELD_OUT_OBJECTS, KIND_NAMES, WorldBatchConfig

# 16 px renders and two narrow conv stages: a forward pass costs well under a millisecond per image.
TINY = ClassifierConfig(
    resolution=16, channels=(8, 16), convs_per_stage=1, train_images=32, steps=4, batch_size=8, seed=3
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_object_lists_cover_the_world_and_keep_held_out_pairs_apart():
    assert len(ALL_OBJECTS) == len(KIND_NAMES) * len(COLOUR_NAMES)
    assert set(HELD_OUT_OBJECTS) <= set(ALL_OBJECTS)
    assert set(HELD_IN_OBJECTS) == set(ALL_OBJECTS) - set(HELD_OUT_OBJECTS)


def test_renders_are_labelled_by_their_objects_held_out_ones_included():
    renders = render_objects(HELD_OUT_OBJECTS, TINY.resolution, torch.Generator().manual_seed(0), TINY.world)
    n = len(HELD_OUT_OBJECTS)
    assert renders.images.shape == (n, 16, 16, 3)
    assert 0.0 <= float(renders.images.min()) and float(renders.images.max()) <= 1.0
    assert renders.labels.kind.tolist() == [KIND_NAMES.index(o.kind) for o in HELD_OUT_OBJECTS]
    assert renders.labels.colour.tolist() == [COLOUR_NAMES.index(o.colour) for o in HELD_OUT_OBJECTS]
    assert len(renders.views) == n and set(renders.views) <= {"front", "side", "back", "overhead"}


def test_renders_are_reproduced_by_their_seed():
    objects = HELD_IN_OBJECTS[:4]
    a = render_objects(objects, 16, torch.Generator().manual_seed(5), TINY.world)
    b = render_objects(objects, 16, torch.Generator().manual_seed(5), TINY.world)
    assert torch.equal(a.images, b.images)


def test_config_refuses_two_object_scenes():
    with pytest.raises(ValueError, match="composition_probability"):
        ClassifierConfig(world=WorldBatchConfig(composition_probability=0.5))


def test_a_few_steps_on_one_batch_lower_the_loss():
    objects = ALL_OBJECTS[::7]
    renders = render_objects(objects, TINY.resolution, torch.Generator().manual_seed(1), TINY.world)
    model = build_classifier(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [training_step(model, optimizer, renders.images, renders.labels) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_augment_mirrors_and_shifts_whole_images():
    images = torch.rand(4, 6, 6, 3)
    out = augment(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2), mode="replicate")
    for image, result in zip(padded, out, strict=True):
        windows = [
            candidate[:, dy : dy + 6, dx : dx + 6].permute(1, 2, 0)
            for candidate in (image, image.flip(2))
            for dy in range(5)
            for dx in range(5)
        ]
        assert any(torch.equal(result, w) for w in windows)
    unshifted = augment(images, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(r, i) or torch.equal(r, i.flip(1)) for r, i in zip(unshifted, images, strict=True))


def test_loss_is_the_sum_of_the_two_cross_entropies():
    logits = build_classifier(TINY)(torch.rand(3, 16, 16, 3))
    labels = Labels(torch.tensor([0, 4, 10]), torch.tensor([9, 0, 2]))
    expected = torch.nn.functional.cross_entropy(
        logits.kind, labels.kind
    ) + torch.nn.functional.cross_entropy(logits.colour, labels.colour)
    assert torch.allclose(classifier_loss(logits, labels), expected)


def test_trained_model_predicts_indices_and_round_trips_through_its_file(tmp_path: Path):
    model = train_classifier(TINY)
    assert not model.training
    images = torch.rand(5, 16, 16, 3)
    predicted = predict(model, images)
    assert predicted.kind.shape == predicted.colour.shape == (5,)
    assert predicted.kind.dtype == predicted.colour.dtype == torch.long
    assert 0 <= int(predicted.kind.min()) and int(predicted.kind.max()) < len(KIND_NAMES)
    assert 0 <= int(predicted.colour.min()) and int(predicted.colour.max()) < len(COLOUR_NAMES)

    path = save_classifier(model, tmp_path / "judge.safetensors")
    loaded = load_classifier(path)
    assert loaded.config == TINY
    reloaded = predict(loaded, images)
    assert torch.equal(reloaded.kind, predicted.kind) and torch.equal(reloaded.colour, predicted.colour)
    assert torch.equal(loaded(images).kind, model(images).kind)


def test_same_config_trains_the_same_weights():
    a, b = train_classifier(TINY), train_classifier(TINY)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_load_refuses_a_file_that_is_not_a_classifier(tmp_path: Path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="not a world classifier"):
        load_classifier(path)
    with pytest.raises(UserError, match="no classifier"):
        load_classifier(tmp_path / "missing.safetensors")


def test_predict_refuses_images_of_the_wrong_size():
    with pytest.raises(ValueError, match="16x16"):
        predict(build_classifier(TINY), torch.rand(2, 32, 32, 3))


def test_accuracy_counts_hand_made_labels():
    true = Labels(torch.tensor([0, 1, 2, 3]), torch.tensor([5, 5, 5, 5]))
    predicted = Labels(torch.tensor([0, 1, 2, 0]), torch.tensor([5, 4, 5, 4]))
    result = accuracy(predicted, true)
    assert result.n == 4
    assert result.kind == pytest.approx(0.75)
    assert result.colour == pytest.approx(0.5)
    assert result.both == pytest.approx(0.5)  # the first and the third are right in both


def test_evaluate_scores_the_models_own_predictions_as_perfect():
    model = build_classifier(TINY)
    images = torch.rand(6, 16, 16, 3)
    predicted = predict(model, images)
    result = evaluate(model, images, predicted.kind, predicted.colour)
    assert (result.n, result.kind, result.colour, result.both) == (6, 1.0, 1.0, 1.0)
    wrong_colour = (predicted.colour + 1) % len(COLOUR_NAMES)
    assert evaluate(model, images, predicted.kind, wrong_colour).colour == 0.0
