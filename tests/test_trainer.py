import dataclasses
import json
import math

import pytest
import torch

from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.run.config import load_latest
from helpers import make_trainer, silhouette_iou, silhouettes, stop_at, target_config


def test_resume_equals_uninterrupted(tmp_path):
    config = target_config("mug", 16, 16, "train.checkpoint_every=4", "sampling.occupancy_update_every=3")
    straight = make_trainer(config, tmp_path / "straight")
    assert straight.train(progress=False, handle_sigint=False)

    first = make_trainer(config, tmp_path / "split")
    stop_at(first, 6)  # stops after completing step index 6, i.e. 7 steps done: not a checkpoint multiple
    assert not first.train(progress=False, handle_sigint=False)
    assert first.step == 7

    second = make_trainer(config, tmp_path / "split")
    second.restore(load_latest(tmp_path / "split"))
    assert second.step == 7
    assert second.train(progress=False, handle_sigint=False)

    for (name, a), b in zip(
        straight.field.state_dict().items(), second.field.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(straight.occupancy.max_density, second.occupancy.max_density)
    assert torch.equal(straight.scene_rng.get_state(), second.scene_rng.get_state())
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 17))  # each step logged once across the two sittings


def test_run_folder_contents(tmp_path):
    config = target_config("sphere", 6, 16, "train.validation_every=3", "train.keep_checkpoints=2")
    trainer = make_trainer(config, tmp_path / "run")
    trainer.train(progress=False, handle_sigint=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_0000006.safetensors"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"loss", "sds_grad_norm", "lr_scale", "opacity"} <= json.loads(lines[0]).keys()


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["sphere", "mug"])
def test_optimiser_reconstructs_a_known_object(tmp_path, shape):
    """Before any learned prior: pulled toward true renders, the field converges to the object.

    Silhouette IoU >= 0.9 from 8 azimuths proves cameras, renderer, gradients and optimiser together.
    """
    config = target_config(shape, 200, 32, "optim.lr_grid=0.03", "optim.lr_mlp=0.003")
    trainer = make_trainer(config, tmp_path / shape)
    trainer.train(progress=False, handle_sigint=False)
    iou = silhouette_iou(silhouettes(trainer.field), silhouettes(AnalyticField(shape)))
    assert iou >= 0.9, f"{shape}: silhouette IoU {iou:.3f}"


def _poison(trainer, bad_steps):
    """Wrap the guidance so that its image gradient is NaN at the steps in `bad_steps`."""
    guidance = trainer.guidance

    def guided(images, text, current, views):
        result = guidance(images, text, current, views)
        if current in bad_steps:
            result = dataclasses.replace(result, image_grad=torch.full_like(result.image_grad, float("nan")))
        return result

    trainer.guidance = guided
    trainer.guidance.rng_state = guidance.rng_state  # type: ignore[attr-defined]
    trainer.guidance.set_rng_state = guidance.set_rng_state  # type: ignore[attr-defined]


def test_a_nan_gradient_is_skipped_and_counted_and_the_run_goes_on_from_the_last_good_state(tmp_path):
    config = target_config("sphere", 8, 16)
    trainer = make_trainer(config, tmp_path / "run")
    for _ in range(3):
        trainer._log(trainer.train_step())
    before = {k: v.clone() for k, v in trainer.field.state_dict().items()}
    adam_before = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
    _poison(trainer, {3})
    trainer._log(trainer.train_step())  # step index 3: NaN gradient
    for name, value in trainer.field.state_dict().items():
        assert torch.equal(value, before[name]), name
    for state, old in zip(trainer.optimizer.state.values(), adam_before, strict=True):
        assert torch.equal(state["exp_avg"], old)
    assert trainer.train(progress=False, handle_sigint=False)
    for value in trainer.field.state_dict().values():
        assert torch.isfinite(value).all()
    assert any(not torch.equal(v, before[k]) for k, v in trainer.field.state_dict().items())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert records[3]["loss"] is None  # NaN is written as null, so the log stays JSON


def test_a_run_that_keeps_diverging_stops_with_one_line_and_keeps_its_last_checkpoint(tmp_path):
    from dreamfusion.training.trainer import DivergedError

    config = target_config("sphere", 40, 16, "train.checkpoint_every=5", "train.max_skipped_steps=4")
    trainer = make_trainer(config, tmp_path / "run")
    _poison(trainer, set(range(7, 40)))
    with pytest.raises(DivergedError) as caught:
        trainer.train(progress=False, handle_sigint=False)
    assert trainer.step == 11  # steps 8..11 were the 4 bad ones in a row
    message = str(caught.value)
    assert "\n" not in message and "step_0000010.safetensors" in message
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step_0000005.safetensors", "step_0000010.safetensors"]
    # The checkpoint written during the bad streak holds the last good step's weights, all finite.
    saved = load_latest(tmp_path / "run").modules["field"]
    for name, value in trainer.field.state_dict().items():
        assert torch.isfinite(saved[name]).all() and torch.equal(saved[name], value), name


def test_the_trainer_anneals_the_sdf_beta_cap_and_the_checkpoint_keeps_it(tmp_path):
    config = target_config("sphere", 8, 16, "field.kind=sdf", "field.sdf.beta_max_end=0.008")
    trainer = make_trainer(config, tmp_path / "run")
    assert trainer.train(progress=False, handle_sigint=False)
    beta_max = config.field.sdf.beta_max
    # the last step trained with 7/8 of the schedule done
    expected = beta_max * (0.008 / beta_max) ** (7 / 8)
    assert trainer.field.beta_cap.item() == pytest.approx(expected, rel=1e-5)
    again = make_trainer(config, tmp_path / "run")
    again.restore(load_latest(tmp_path / "run"))
    assert again.field.beta_cap.item() == pytest.approx(expected, rel=1e-5)


def _one_view(trainer):
    from dreamfusion.render.cameras import orbit_cameras
    from dreamfusion.render.renderer import RenderSettings, render
    from dreamfusion.render.shading import ShadingMode

    cameras = orbit_cameras(1, 24)
    settings = RenderSettings.of(trainer.config.sampling, trainer.config.light, True)
    modes = torch.full((1,), int(ShadingMode.TEXTURELESS))
    out = render(
        trainer.field,
        cameras,
        settings,
        background=lambda d: torch.ones_like(d),
        lights=cameras.position,
        modes=modes,
    )
    return out, cameras


def test_normal_smoothness_is_small_on_a_sphere_and_training_on_it_smooths_a_rough_field(tmp_path):
    config = target_config(
        "sphere", 8, 16, "field.kind=sdf", "field.sdf.init_std=0.5", "loss.normal_smoothness_weight=1"
    )
    trainer = make_trainer(config, tmp_path / "run")
    rng = torch.Generator().manual_seed(0)
    out, cameras = _one_view(trainer)
    rough = trainer.normal_smoothness(out, cameras, rng)
    sphere = make_trainer(config, tmp_path / "sphere")
    sphere.field = AnalyticField("sphere")
    out_sphere, _ = _one_view(sphere)
    # a unit sphere's normals turn by 0.02 / radius over the offset
    assert float(sphere.normal_smoothness(out_sphere, cameras, rng).detach()) < 0.01 < float(rough.detach())

    optimizer = torch.optim.Adam(trainer.field.parameters(), lr=3e-2)
    for _ in range(30):
        out, _ = _one_view(trainer)
        optimizer.zero_grad()
        trainer.normal_smoothness(out, cameras, rng).backward()
        optimizer.step()
    out, _ = _one_view(trainer)
    assert float(trainer.normal_smoothness(out, cameras, rng).detach()) < 0.5 * float(rough.detach())
    # and the term trains with the rest
    assert trainer.train(progress=False, handle_sigint=False)


def test_an_sdf_run_with_numerical_shading_normals_trains(tmp_path):
    config = target_config("sphere", 6, 16, "field.kind=sdf", "field.sdf.normal_texels=1")
    trainer = make_trainer(config, tmp_path / "run")
    assert trainer.train(progress=False, handle_sigint=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(math.isfinite(json.loads(line)["loss"]) for line in lines)
