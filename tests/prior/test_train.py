"""Training the built-in prior at tiny scale: it learns, a resumed run equals an uninterrupted one, the
export loads in the pixel guidance backend, and the sampler runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from dreamfusion.checkpoint import latest_checkpoint
from dreamfusion.errors import UserError
from dreamfusion.guidance.base import SDSConfig, TextEmbeddings
from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance
from dreamfusion.prior.model import PriorConfig, build_scheduler
from dreamfusion.prior.sample import ddim, sample, save_grid
from dreamfusion.prior.train import (
    PriorTrainConfig,
    PriorTrainer,
    learning_rate,
    loss_weights,
    resume_run,
    start_run,
    train,
)

MakeConfig = Callable[..., PriorTrainConfig]
MakeTokenizer = Callable[[Path, int], Path]


def _state(trainer: PriorTrainer) -> dict[str, torch.Tensor]:
    modules = {
        "unet": trainer.unet,
        "text": trainer.text_encoder,
        "ema_unet": trainer.ema_unet.average,
        "ema_text": trainer.ema_text.average,
    }
    return {f"{m}.{k}": v.clone() for m, mod in modules.items() for k, v in mod.state_dict().items()}


def test_learning_rate_warms_up_then_decays_to_the_floor(make_config: MakeConfig):
    config = make_config(steps=100, warmup_steps=10, learning_rate=1e-3, final_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 9) == pytest.approx(1e-3)
    assert learning_rate(config, 10) == pytest.approx(1e-3)
    assert learning_rate(config, 100) == pytest.approx(1e-4)
    assert learning_rate(config, 55) < learning_rate(config, 20)


def test_learning_rate_starts_over_at_each_restart(make_config: MakeConfig):
    config = make_config(
        steps=150, restarts=(100,), warmup_steps=10, learning_rate=1e-3, final_lr_fraction=0.1
    )
    plain = make_config(steps=100, warmup_steps=10, learning_rate=1e-3, final_lr_fraction=0.1)
    assert [learning_rate(config, s) for s in range(100)] == [learning_rate(plain, s) for s in range(100)]
    assert learning_rate(config, 100) == pytest.approx(1e-4) and learning_rate(config, 109) == pytest.approx(
        1e-3
    )
    assert learning_rate(config, 150) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="restarts"):
        make_config(steps=100, restarts=(100,))


def test_min_snr_weights_cap_the_clean_timesteps(make_config: MakeConfig):
    abar = torch.tensor([0.999, 5.0 / 6.0, 0.5, 0.001])  # SNR 999, 5, 1, about 0.001
    assert torch.equal(loss_weights(make_config(), abar), torch.ones(4))
    weights = loss_weights(make_config(min_snr_gamma=5.0), abar)
    # x0 weight min(SNR, 5) + 1 over v's SNR + 1: 6/1000 when clean, 1 up to the cap, 1 when pure noise.
    assert weights.tolist() == pytest.approx([0.006, 1.0, 1.0, 1.0], abs=1e-4)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        make_config(min_snr_gamma=5.0, model=PriorConfig(prediction_type="epsilon"))


def test_steps_on_a_fixed_batch_lower_its_loss(make_config: MakeConfig, tiny_tokenizer: Path):
    config = make_config(caption_dropout=0.0, warmup_steps=1, learning_rate=3e-3)
    trainer = PriorTrainer(config, tiny_tokenizer)
    images, captions = trainer.next_batch()
    assert images.shape == (4, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    losses = []
    for _ in range(25):
        # The same timesteps and noise every step, so only the weights change the loss.
        trainer.noise_generator.manual_seed(0)
        losses.append(trainer.update(images, captions).loss)
    assert losses[-1] < 0.7 * losses[0]


def test_resumed_run_equals_uninterrupted_run(
    make_config: MakeConfig, make_tokenizer: MakeTokenizer, tmp_path: Path
):
    config = make_config()
    straight = start_run(tmp_path / "straight", config, make_tokenizer)
    assert train(straight, tmp_path / "straight", max_minutes=None, progress=False)

    split_dir = tmp_path / "split"
    first = start_run(split_dir, config, make_tokenizer)
    # A budget of zero minutes stops after one step, with a checkpoint.
    assert not train(first, split_dir, max_minutes=0.0, progress=False)
    assert first.step == 1 and latest_checkpoint(split_dir / "checkpoints").name == "step_0000001.safetensors"
    second = resume_run(split_dir)
    assert second.step == 1
    assert train(second, split_dir, max_minutes=None, progress=False)

    a, b = _state(straight), _state(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Only the last keep_checkpoints files stay; the metrics have one record per step, none repeated.
    assert [p.name for p in sorted((split_dir / "checkpoints").iterdir())] == [
        "step_0000003.safetensors",
        "step_0000006.safetensors",
    ]
    steps = [json.loads(line)["step"] for line in (split_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert (split_dir / "model" / "model_index.json").is_file()


def test_rendering_ahead_in_a_second_process_trains_the_same_weights(
    make_config: MakeConfig, make_tokenizer: MakeTokenizer, tmp_path: Path
):
    inline = start_run(tmp_path / "inline", make_config(), make_tokenizer)
    assert train(inline, tmp_path / "inline", max_minutes=None, progress=False)
    ahead = start_run(tmp_path / "ahead", make_config(render_ahead=True), make_tokenizer)
    assert train(ahead, tmp_path / "ahead", max_minutes=None, progress=False)
    a, b = _state(inline), _state(ahead)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The trainer's generator follows the batches it was handed, not the ones rendered beyond them, so a
    # checkpoint resumes with the next batch.
    assert torch.equal(inline.data_generator.get_state(), ahead.data_generator.get_state())


def test_new_run_refuses_a_used_folder(
    make_config: MakeConfig, make_tokenizer: MakeTokenizer, tmp_path: Path
):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(UserError, match="--resume"):
        start_run(tmp_path / "run", make_config(), make_tokenizer)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, make_config: MakeConfig, tiny_tokenizer: Path) -> Path:
    trainer = PriorTrainer(make_config(), tiny_tokenizer)
    images, captions = trainer.next_batch()
    trainer.update(images, captions)
    folder = tmp_path_factory.mktemp("export") / "model"
    digests = trainer.export(folder)
    assert set(digests) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"}
    return folder


def test_export_loads_in_the_pixel_guidance_backend(exported: Path):
    guidance = PixelDiffusionGuidance(
        str(exported), SDSConfig(guidance_scale=20.0), torch.device("cpu"), torch.float32, seed=0
    )
    assert guidance.image_size == 16 and guidance.text.max_length == 24
    cond, uncond = guidance.encode_text(["a red mug, front view", ""]).split(1)
    text = TextEmbeddings(cond=cond.expand(2, -1, -1), uncond=uncond.expand(2, -1, -1))
    renders = torch.rand(2, 3, 32, 32)
    out = guidance(renders, text, step=0)
    assert out.image_grad.shape == renders.shape
    assert torch.isfinite(out.image_grad).all() and out.image_grad.abs().sum() > 0


def test_sampler_is_deterministic_and_writes_a_grid(exported: Path, tmp_path: Path):
    captions = ["a red mug, front view", "a blue cube, side view", "a green cone on top of a cube"]
    images = sample(exported, captions, steps=4, cfg_scale=3.0, seed=1)
    assert images.shape == (3, 16, 16, 3) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, sample(exported, captions, steps=4, cfg_scale=3.0, seed=1))
    path = save_grid(images, tmp_path / "grid.png", columns=2, scale=2)
    assert Image.open(path).size == (64, 64)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_with_the_true_prediction_returns_the_image(prediction_type: str):
    """With the exact output for a known image x (eps = (z_t - a x) / s, v = a eps - s x, where a^2 = abar
    and s^2 = 1 - abar), every DDIM step lands on the forward process of x, so 10 steps from pure noise end
    on x: a check of the sampler and of the prior's scheduler for either parameterisation."""
    model = PriorConfig(prediction_type=prediction_type)  # type: ignore[arg-type]
    scheduler = DDIMScheduler.from_config(build_scheduler(model).config)
    abar = scheduler.alphas_cumprod
    target = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8

    def true_output(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        eps = (z - a * target) / s
        return eps if prediction_type == "epsilon" else a * eps - s * target

    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ddim(true_output, noise, scheduler, steps=10), target, atol=1e-4)


def test_export_records_the_prediction_type_the_guidance_reads(exported: Path):
    """The default prior predicts v; the guidance backend must convert it, not take it for epsilon."""
    guidance = PixelDiffusionGuidance(str(exported), SDSConfig(), torch.device("cpu"), torch.float32, seed=0)
    assert guidance.prediction_type == "v_prediction" == PriorConfig().prediction_type
