import json

import pytest
import torch

from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.run.config import load_latest
from helpers import make_trainer, silhouette_iou, silhouettes, target_config


def _stop_at(trainer, step):
    """Wrap the guidance so that the trainer is asked to stop during step `step` (as Ctrl-C would)."""
    guidance = trainer.guidance

    def guided(images, text, current, views):
        if current == step:
            trainer.request_stop()
        return guidance(images, text, current, views)

    trainer.guidance = guided
    trainer.guidance.rng_state = guidance.rng_state  # type: ignore[attr-defined]
    trainer.guidance.set_rng_state = guidance.set_rng_state  # type: ignore[attr-defined]


def test_resume_equals_uninterrupted(tmp_path):
    config = target_config("mug", 16, 16, "train.checkpoint_every=4", "sampling.occupancy_update_every=3")
    straight = make_trainer(config, tmp_path / "straight")
    assert straight.train(progress=False, handle_sigint=False)

    first = make_trainer(config, tmp_path / "split")
    _stop_at(first, 6)  # stops after completing step index 6, i.e. 7 steps done: not a checkpoint multiple
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
