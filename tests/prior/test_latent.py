"""The latent prior (issue #15): the fixed training set, each stage's known answers and resumability, and a
tiny latent prior in the built-in layout run through `generate` by the Stable Diffusion code path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dreamfusion.config import from_dict, load_yaml_overrides
from dreamfusion.errors import UserError
from dreamfusion.prior.autoencoder import (
    AutoencoderConfig,
    AutoencoderStage,
    AutoencoderTrainConfig,
    encode_means,
)
from dreamfusion.prior.dataset import DatasetConfig, load_dataset, render_dataset, shard_path
from dreamfusion.prior.latent import LatentRun, encode_latents, export_latent_prior, model_index
from dreamfusion.prior.latent_unet import (
    LatentUNetConfig,
    LatentUNetStage,
    LatentUNetTrainConfig,
    build_latent_scheduler,
    lognormal_timesteps,
)
from dreamfusion.prior.stage import LoopConfig, resume_stage, run_stage
from dreamfusion.prior.text_pretrain import (
    TextEncoderConfig,
    TextPretrainConfig,
    TextPretrainStage,
    contrastive_loss,
    pair_keys,
)

TINY_SET = DatasetConfig(images=10, resolution=16, shard_size=4, seed=3)
TINY_VAE = AutoencoderConfig(channels=(8, 16), latent_channels=4, norm_groups=8, resolution=16)
TINY_TEXT = TextEncoderConfig(width=16, layers=1, heads=2, max_tokens=24)
TINY_UNET = LatentUNetConfig(
    sample_size=8,
    channels=(32, 32),
    attention=(False, True),
    attention_heads=2,
    norm_groups=8,
    text_width=16,
    pooled_text=True,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> LatentRun:
    run = LatentRun(tmp_path_factory.mktemp("latent"))
    render_dataset(run.dataset, TINY_SET, workers=1, progress=False)
    import shutil

    shutil.copytree(tiny_tokenizer, run.tokenizer)
    return run


def test_a_shard_renders_the_same_whoever_renders_it(tiny_run: LatentRun, tmp_path: Path):
    whole = load_dataset(tiny_run.dataset)
    assert whole.images.shape == (10, 16, 16, 3) and whole.images.dtype == np.uint8
    assert len(whole.captions) == 10 and all(c for c in whole.captions)
    # A second folder with one shard missing, as a killed renderer leaves it, is completed to the same set.
    again = tmp_path / "again"
    render_dataset(again, TINY_SET, workers=1, progress=False)
    shard_path(again, 1).unlink()
    with pytest.raises(UserError, match="missing 1 of 3 shards"):
        load_dataset(again)
    render_dataset(again, TINY_SET, workers=2, progress=False)
    completed = load_dataset(again)
    assert np.array_equal(completed.images, whole.images)
    assert list(completed.captions) == list(whole.captions)


def test_a_set_with_other_settings_is_refused(tiny_run: LatentRun):
    with pytest.raises(UserError, match="other settings"):
        render_dataset(tiny_run.dataset, DatasetConfig(images=12, resolution=16, shard_size=4), 1, False)


def test_contrastive_loss_is_small_for_matched_pairs_and_counts_every_positive():
    keys = torch.tensor([0, 1, 2, 3])
    aligned = torch.eye(4)
    scale = torch.tensor(math.log(100.0))
    assert contrastive_loss(aligned, aligned, keys, scale) < 1e-3
    assert contrastive_loss(aligned, aligned.roll(1, 0), keys, scale) > 10.0
    # Two images of the same key: either caption fits either image, so the best loss is log 2 per row.
    keys = torch.tensor([0, 0, 1, 2])
    same = torch.stack([torch.eye(3)[0], torch.eye(3)[0], torch.eye(3)[1], torch.eye(3)[2]])
    loss = contrastive_loss(same, same, keys, scale)
    assert loss == pytest.approx(0.5 * math.log(2.0), abs=1e-3)


def test_pair_keys_tell_view_words_and_scenes_apart():
    captions = np.array(["a red cube, front view", "a red cube, back view", "a cube, front view", "a mug"])
    keys = pair_keys(captions, np.array([5, 5, 5, 6]))
    assert keys[0] != keys[1] and keys[0] == keys[2] and len(set(keys.tolist())) == 3


def test_lognormal_timesteps_follow_edm_noise_levels():
    abar = build_latent_scheduler().alphas_cumprod.float()
    t = lognormal_timesteps(abar, 4000, torch.Generator().manual_seed(0))
    assert 0 <= int(t.min()) and int(t.max()) < 1000
    sigma = ((1 - abar[t]) / abar[t]).sqrt()
    assert float(sigma.log().median()) == pytest.approx(-1.2, abs=0.1)


def train_tiny_vae(run: LatentRun, steps: int, max_minutes: float | None = None) -> AutoencoderStage:
    config = AutoencoderTrainConfig(
        model=TINY_VAE, loop=LoopConfig(steps=steps, checkpoint_every=2), batch_size=4
    )
    stage = resume_stage(AutoencoderStage(config, load_dataset(run.dataset)), run.vae)
    run_stage(stage, run.vae, config.loop, max_minutes, False, run.vae / "model", config.batch_size)
    return stage


def test_autoencoder_resumed_matches_uninterrupted_and_scales_latents_to_unit_std(
    tiny_run: LatentRun, tmp_path: Path
):
    data = load_dataset(tiny_run.dataset)
    one = LatentRun(tmp_path / "one")
    one.root.mkdir()
    config = AutoencoderTrainConfig(
        model=TINY_VAE, loop=LoopConfig(steps=4, checkpoint_every=2), batch_size=4
    )
    uninterrupted = AutoencoderStage(config, data)
    run_stage(uninterrupted, one.root, config.loop, None, False, one.root / "model", 4)
    two = tmp_path / "two"
    two.mkdir()
    first = AutoencoderStage(config, data)
    first_loop = LoopConfig(steps=2, checkpoint_every=2)
    run_stage(first, two, first_loop, None, False, two / "unused", 4)
    resumed = resume_stage(AutoencoderStage(config, data), two)
    assert resumed.step == 2
    run_stage(resumed, two, config.loop, None, False, two / "model", 4)
    for a, b in zip(uninterrupted.ema.average.parameters(), resumed.ema.average.parameters(), strict=True):
        assert torch.equal(a, b)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(one.root / "model")
    scaled = encode_means(vae, data, np.arange(len(data))) * vae.config.scaling_factor
    assert float(scaled.std()) == pytest.approx(1.0, rel=1e-3)
    assert vae.config.scaling_factor != 1.0


@pytest.fixture(scope="module")
def tiny_latent_prior(tiny_run: LatentRun) -> Path:
    """Every stage of a tiny latent prior, a few steps each, exported in Stable Diffusion's layout."""
    from transformers import AutoTokenizer

    data = load_dataset(tiny_run.dataset)
    tokenizer = AutoTokenizer.from_pretrained(tiny_run.tokenizer)
    train_tiny_vae(tiny_run, steps=2)
    text_config = TextPretrainConfig(
        text=TINY_TEXT, loop=LoopConfig(steps=2), batch_size=4, image_channels=(8, 16)
    )
    text = TextPretrainStage(text_config, data, tokenizer)
    run_stage(text, tiny_run.text, text_config.loop, None, False, tiny_run.text / "model", 4)
    encode_latents(tiny_run)
    with np.load(tiny_run.latents) as stored:
        latents, captions = torch.from_numpy(stored["latents"].astype(np.float32)), stored["captions"]
    assert latents.shape == (10, 4, 8, 8)
    unet_config = LatentUNetTrainConfig(unet=TINY_UNET, loop=LoopConfig(steps=2), batch_size=4)
    unet = LatentUNetStage(unet_config, latents, captions, text.text_encoder, tokenizer, TINY_TEXT.max_tokens)
    run_stage(unet, tiny_run.unet, unet_config.loop, None, False, tiny_run.unet / "model", 4)
    return export_latent_prior(tiny_run)


def test_the_export_is_a_stable_diffusion_folder(tiny_latent_prior: Path):
    index = json.loads((tiny_latent_prior / "model_index.json").read_text())
    assert index == json.loads(json.dumps(model_index()))
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_latent_prior / name).is_dir()
    weights = (tiny_latent_prior / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert b'"F16"' in weights[:4096]  # fp16, as shipped


def test_sampling_a_latent_prior_decodes_images(tiny_latent_prior: Path):
    from dreamfusion.prior.sample import sample

    images = sample(tiny_latent_prior, ["a red cube, front view", "a blue mug"], steps=2, seed=1)
    assert images.shape == (2, 16, 16, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.slow
def test_generate_runs_a_latent_builtin_through_the_stable_diffusion_path(
    tiny_latent_prior: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from dreamfusion.commands import main
    from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance
    from dreamfusion.prior.builtin import ship

    package = tmp_path / "package"
    ship(tiny_latent_prior, package)
    assert (package / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (package / "tokenizer").exists()  # built from the wheel where the prior is assembled
    monkeypatch.setattr("dreamfusion.prior.builtin.package_folder", lambda: package)
    # The assembled folder's tokenizer is the test's tiny one, not CLIP's (no wheel download in tests).
    from dreamfusion.prior.latent import set_tokenizer_context
    from dreamfusion.testing.tiny_models import save_clip_tokenizer

    def tiny_tokenizer(folder: Path, cache: Path, max_tokens: int) -> None:
        save_clip_tokenizer(folder)
        set_tokenizer_context(folder, max_tokens)

    monkeypatch.setattr("dreamfusion.prior.builtin.build_clip_tokenizer", tiny_tokenizer)
    built: list[type] = []
    original_init = StableDiffusionGuidance.__init__

    def spy(self, *args, **kwargs):
        built.append(type(self))
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionGuidance, "__init__", spy)
    run = tmp_path / "run"
    argv = ["generate", "a red cube", "--steps", "2", "--out", str(run), "--set", "train.validation_every=2"]
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert built == [StableDiffusionGuidance]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["guidance"]["kind"] == "builtin"
    assert config["train"]["resolution"] == 16  # the tiny prior's 8x8 latents times its VAE's factor 2


def test_the_unet_refuses_latents_of_another_shape(tiny_tokenizer: Path):
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=24,
            vocab_size=tokenizer.vocab_size,
        )
    )
    config = LatentUNetTrainConfig(unet=TINY_UNET, loop=LoopConfig(steps=1), batch_size=2)
    captions = np.array(["a red cube"] * 3)
    with pytest.raises(ValueError, match=r"latents are 4x16x16 but the U-Net expects 4x8x8"):
        LatentUNetStage(config, torch.zeros(3, 4, 16, 16), captions, text, tokenizer, 24)


def test_a_finished_stage_trained_further_restarts_its_schedule_and_keeps_the_old_model(
    tiny_run: LatentRun, tmp_path: Path
):
    from dreamfusion.commands import main

    root = tmp_path / "prior"
    root.mkdir()
    (root / "dataset").symlink_to(tiny_run.dataset)
    settings = ["model.channels=[8,16]", "model.norm_groups=8", "model.resolution=16", "loop.steps=2"]
    settings += ["batch_size=4", "scale_sample=8"]
    argv = ["prior", "latent", "vae", "--out", str(root), "--no-progress"]
    assert main([*argv, *[a for s in settings for a in ("--set", s)]]) == 0
    assert main([*argv, "--extend-to", "4"]) == 0
    config = from_dict(AutoencoderTrainConfig, load_yaml_overrides(root / "vae" / "config.yaml"))
    assert (config.loop.steps, config.loop.restarts) == (4, (2,))
    assert (root / "vae" / "model-step2" / "config.json").is_file()
    assert (root / "vae" / "model" / "config.json").is_file()
    steps = [json.loads(line)["step"] for line in (root / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    assert main([*argv, "--extend-to", "3"]) == 2  # not longer than it is: one-line error
