"""Training the built-in prior on renders of the procedural world (issue #3): one screen of loop, read top
to bottom in `PriorTrainer.update`.

Each step renders a fresh batch of training scenes (world.sample_training_batch, never a held-out caption),
drops 10 % of the captions to the empty string so that one network gives both halves of classifier-free
guidance (Ho & Salimans 2022), noises the images at uniform random timesteps and regresses the noise
(DDPM's L_simple, Ho et al. 2020). AdamW with a linear warm-up and a cosine decay; an EMA of the weights is
what gets exported.

A run folder holds config.yaml, tokenizer/, checkpoints/ (atomic, weights-only), metrics.jsonl and, once
finished, model/ (the exported prior). Every random draw goes through two seeded generators whose states are
checkpointed, so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dreamfusion.checkpoint import (
    Checkpoint,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dreamfusion.config import dump_yaml, from_dict, load_yaml_overrides
from dreamfusion.errors import UserError
from dreamfusion.files import write_text_atomic
from dreamfusion.prior.ema import EMA
from dreamfusion.prior.export import export_prior
from dreamfusion.prior.model import PriorConfig, build_prior
from dreamfusion.run.log import append_record, prune_checkpoints, truncate_records
from dreamfusion.training.schedules import WarmupCosine
from dreamfusion.world import WorldBatchConfig, prior_world, sample_training_batch

CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
MODEL = "model"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


@dataclass(frozen=True)
class PriorTrainConfig:
    model: PriorConfig = field(default_factory=PriorConfig)
    world: WorldBatchConfig = field(default_factory=prior_world)
    steps: int = 6000
    batch_size: int = 32
    learning_rate: float = 3e-4
    warmup_steps: int = 250  # linear warm-up from 0, then cosine decay to final_lr_fraction
    final_lr_fraction: float = 0.1
    # Steps where the schedule starts over: warm-up, then cosine down to the next restart or to `steps`
    # (SGDR, Loshchilov & Hutter 2017). `prior train --resume --steps N` adds one at the old end, so that a
    # finished run can be trained further without a jump in its learning rate's history.
    restarts: tuple[int, ...] = ()
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # a memory of about 1000 steps
    caption_dropout: float = 0.1  # share of empty captions: the unconditional half of CFG
    # Min-SNR loss weighting (Hang et al. 2023), in the "+1" form suited to v-prediction: an error in the
    # predicted image x0 weighs min(SNR, gamma) + 1 instead of v's SNR + 1. Plain v-MSE lets the nearly clean
    # timesteps, whose SNR runs to 10^4, outweigh the noisy ones where the sampler (and SDS) decides the
    # object's kind and shape; the cap moves the loss to those. None keeps the plain loss.
    min_snr_gamma: float | None = None
    checkpoint_every: int = 250
    keep_checkpoints: int = 2  # older ones are deleted: each holds weights, EMA and optimizer state
    log_every: int = 10
    seed: int = 0
    threads: int = 1  # on a shared 2-core machine, two threads wait on each other (see the model card)
    # Render the batches in a second process, a few steps ahead, while this one trains: a second core takes
    # the world's sphere tracing off the training step. The batches and the checkpoints are the same as
    # with inline rendering, so a run may switch between the two when it resumes.
    render_ahead: bool = False
    export_fp16: bool = True  # halves the shipped file; loading casts back to the compute dtype

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")
        if self.learning_rate <= 0 or not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError("learning_rate must be > 0 and final_lr_fraction in [0, 1]")
        if self.min_snr_gamma is not None and (
            self.min_snr_gamma <= 0 or self.model.prediction_type != "v_prediction"
        ):
            raise ValueError("min_snr_gamma must be > 0 and needs model.prediction_type v_prediction")
        if list(self.restarts) != sorted(set(self.restarts)) or any(
            not 0 < r < self.steps for r in self.restarts
        ):
            raise ValueError("restarts must be increasing steps between 0 and steps")


@dataclass(frozen=True)
class StepResult:
    loss: float
    learning_rate: float


def learning_rate(config: PriorTrainConfig, step: int) -> float:
    """Linear warm-up over warmup_steps, then a half cosine down to final_lr_fraction of the peak; the same
    again from each restart."""
    schedule = WarmupCosine(
        config.steps,
        start=0.0,
        end=config.final_lr_fraction,
        restarts=config.restarts,
        peak=config.learning_rate,
        warmup_steps=config.warmup_steps,
        warmup_offset=1,
    )
    return schedule(step)


def loss_weights(config: PriorTrainConfig, alphas_cumprod: Tensor) -> Tensor:
    """Per-sample weights of the MSE at these noise levels: ones, or min-SNR's (min(SNR, gamma) + 1) /
    (SNR + 1) on v, where SNR = abar / (1 - abar)."""
    if config.min_snr_gamma is None:
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    return (snr.clamp(max=config.min_snr_gamma) + 1.0) / (snr + 1.0)


class PriorTrainer:
    def __init__(self, config: PriorTrainConfig, tokenizer_folder: Path):
        self.config = config
        self.tokenizer_folder = tokenizer_folder
        modules = build_prior(config.model, config.seed, tokenizer_folder)
        self.text_encoder = modules.text_encoder.train()
        self.unet = modules.unet.train()
        self.scheduler = modules.scheduler
        self.tokenizer = modules.tokenizer
        self.alphas_cumprod = modules.scheduler.alphas_cumprod.float()
        self.ema_text = EMA(self.text_encoder, config.ema_decay)
        self.ema_unet = EMA(self.unet, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            [*self.text_encoder.parameters(), *self.unet.parameters()],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            # One fused kernel instead of a dozen foreach passes: 17 ms instead of 91 ms per step for the
            # default prior on one CPU core, most of it the 49,408-row embedding table.
            fused=True,
        )
        # Renders and the diffusion's own draws (dropout, t, noise) come from separate generators, so that
        # changing one never shifts the other's stream.
        self.data_generator = torch.Generator().manual_seed(config.seed + 1)
        self.noise_generator = torch.Generator().manual_seed(config.seed + 2)
        self.step = 0
        # Wall-clock time of training steps and checkpoint saves over all sittings (start-up excluded): the
        # model card's "time taken".
        self.elapsed_s = 0.0

    def tokenize(self, captions: list[str]) -> Tensor:
        # Padded to the text encoder's context exactly as the guidance backend pads prompts.
        return self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.config.model.max_tokens,
            truncation=True,
            return_tensors="pt",
        )["input_ids"]

    def next_batch(self) -> tuple[Tensor, list[str]]:
        """(B, 3, H, W) images in [-1, 1] and their captions, fresh renders of training scenes."""
        return render_batch(self.config, self.data_generator)

    def batches(self) -> Iterator[tuple[Tensor, list[str]]]:
        """next_batch() forever, rendered in this process or, with config.render_ahead, in another one.
        Either way the data generator is left where next_batch() would leave it after each batch handed
        out, which is what a checkpoint saves."""
        if not self.config.render_ahead:
            while True:
                yield self.next_batch()
        with RenderAhead(self.config, self.data_generator.get_state()) as ahead:
            while True:
                images, captions, state = ahead.next()
                self.data_generator.set_state(state)
                yield images, captions

    def update(self, images: Tensor, captions: list[str]) -> StepResult:
        """One optimisation step on one batch."""
        n = images.shape[0]
        g = self.noise_generator
        dropped = torch.rand(n, generator=g) < self.config.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, dropped.tolist(), strict=True)]
        t = torch.randint(0, len(self.alphas_cumprod), (n,), generator=g)
        noise = torch.randn(images.shape, generator=g)
        abar = self.alphas_cumprod[t].view(n, 1, 1, 1)
        z_t = abar.sqrt() * images + (1.0 - abar).sqrt() * noise  # q(z_t | x), DDPM eq. 4
        text = self.text_encoder(self.tokenize(captions)).last_hidden_state
        predicted = self.unet(z_t, t, encoder_hidden_states=text).sample
        if self.config.model.prediction_type == "v_prediction":
            target = abar.sqrt() * noise - (1.0 - abar).sqrt() * images  # v, Salimans & Ho 2022
        else:
            target = noise  # L_simple, DDPM eq. 14
        loss = (
            loss_weights(self.config, abar.flatten()) * (predicted - target).square().mean((1, 2, 3))
        ).mean()

        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.ema_text.update(self.text_encoder, self.step)
        self.ema_unet.update(self.unet, self.step)
        self.step += 1
        return StepResult(loss=float(loss.detach()), learning_rate=lr)

    # ---------------------------------------------------------------------------------------------------
    # Checkpoints

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            step=self.step,
            modules={
                "text_encoder": self.text_encoder.state_dict(),
                "unet": self.unet.state_dict(),
                "ema_text_encoder": self.ema_text.average.state_dict(),
                "ema_unet": self.ema_unet.average.state_dict(),
            },
            optimizer=self.optimizer.state_dict(),
            rng={"data": self.data_generator.get_state(), "noise": self.noise_generator.get_state()},
            meta={"config": dump_yaml(self.config), "elapsed_s": repr(self.elapsed_s)},
        )

    def restore(self, ckpt: Checkpoint) -> None:
        self.text_encoder.load_state_dict(ckpt.modules["text_encoder"])
        self.unet.load_state_dict(ckpt.modules["unet"])
        self.ema_text.average.load_state_dict(ckpt.modules["ema_text_encoder"])
        self.ema_unet.average.load_state_dict(ckpt.modules["ema_unet"])
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.data_generator.set_state(ckpt.rng["data"])
        self.noise_generator.set_state(ckpt.rng["noise"])
        self.step = ckpt.step
        self.elapsed_s = float(ckpt.meta.get("elapsed_s", "0"))

    def export(self, folder: Path) -> dict[str, str]:
        """The EMA weights as a prior folder the pixel guidance backend loads; returns weight sha256s."""
        dtype = torch.float16 if self.config.export_fp16 else torch.float32
        return export_prior(
            folder,
            self.ema_text.average,
            self.ema_unet.average,
            self.scheduler,
            self.tokenizer_folder,
            self.config.model.max_tokens,
            dtype,
        )


# -------------------------------------------------------------------------------------------------------
# The run folder


def read_run_config(run_dir: Path) -> PriorTrainConfig:
    path = run_dir / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a prior training folder: it has no {CONFIG}")
    return from_dict(PriorTrainConfig, load_yaml_overrides(path))


def start_run(
    run_dir: Path, config: PriorTrainConfig, make_tokenizer: Callable[[Path, int], Path]
) -> PriorTrainer:
    """A new run folder with config.yaml and tokenizer/ (written by `make_tokenizer(folder, max_tokens)`)."""
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    make_tokenizer(run_dir / TOKENIZER, config.model.max_tokens)
    write_text_atomic(run_dir / CONFIG, dump_yaml(config))
    return PriorTrainer(config, run_dir / TOKENIZER)


def check_new_run_dir(run_dir: Path) -> None:
    """A run is never started over another: its checkpoints would be mixed with the new run's."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(
            f"{run_dir} already exists and is not empty: continue it with --resume, or choose --out"
        )


def resume_run(run_dir: Path) -> PriorTrainer:
    """The trainer of an existing run folder at its latest checkpoint (or at step 0 if it has none)."""
    config = read_run_config(run_dir)
    trainer = PriorTrainer(config, run_dir / TOKENIZER)
    latest = latest_checkpoint(run_dir / CHECKPOINTS)
    if latest is not None:
        trainer.restore(load_checkpoint(latest))
    truncate_records(run_dir / METRICS, trainer.step)
    return trainer


def extend_run(run_dir: Path, steps: int) -> PriorTrainer:
    """Resume a run with its step count raised to `steps`, restarting the learning-rate schedule at the
    old end. A model/ exported at the old end is kept, renamed model-step{old}/."""
    config = read_run_config(run_dir)
    if steps <= config.steps:
        raise UserError(f"--steps {steps} does not extend {run_dir}: it already has {config.steps} steps")
    old_model = run_dir / MODEL
    if old_model.exists():
        kept = run_dir / f"{MODEL}-step{config.steps}"
        if kept.exists():
            raise UserError(f"{kept} already exists: move it away before extending {run_dir}")
        old_model.rename(kept)
    extended = replace(config, steps=steps, restarts=(*config.restarts, config.steps))
    write_text_atomic(run_dir / CONFIG, dump_yaml(extended))
    return resume_run(run_dir)


def train(trainer: PriorTrainer, run_dir: Path, max_minutes: float | None, progress: bool) -> bool:
    """Train to config.steps, or until max_minutes of this sitting have passed; either way the last state
    is checkpointed. Returns True when all steps are done (and model/ has been exported)."""
    config = trainer.config
    torch.set_num_threads(config.threads)
    start = time.monotonic()
    bar = tqdm(
        total=config.steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True
    )
    window_start, window_images = time.monotonic(), 0
    batches = trainer.batches()
    try:
        while trainer.step < config.steps:
            step_start = time.monotonic()
            images, captions = next(batches)
            result = trainer.update(images, captions)
            trainer.elapsed_s += time.monotonic() - step_start
            window_images += images.shape[0]
            bar.update(1)
            if trainer.step % config.log_every == 0 or trainer.step == config.steps:
                rate = window_images / max(time.monotonic() - window_start, 1e-9)
                window_start, window_images = time.monotonic(), 0
                bar.set_postfix(loss=f"{result.loss:.4f}", img_s=f"{rate:.1f}")
                _append_metrics(run_dir / METRICS, trainer, result, rate)
            over_time = max_minutes is not None and time.monotonic() - start >= 60.0 * max_minutes
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps or over_time:
                save_start = time.monotonic()
                save_run_checkpoint(trainer, run_dir)
                # A checkpoint's own record misses only its own save, about a second.
                trainer.elapsed_s += time.monotonic() - save_start
            if over_time and trainer.step < config.steps:
                return False
    finally:
        batches.close()  # stops a render-ahead process
        bar.close()
    trainer.export(run_dir / MODEL)
    return True


def render_batch(config: PriorTrainConfig, generator: torch.Generator) -> tuple[Tensor, list[str]]:
    res = config.model.resolution
    batch = sample_training_batch(config.batch_size, res, generator, config.world)
    # Contiguous NCHW whichever process rendered it: the renderer's layout (channels-last strides) does not
    # survive the trip between processes, and the U-Net's convolutions round differently on the two.
    return (batch.images.permute(0, 3, 1, 2) * 2.0 - 1.0).contiguous(), list(batch.captions)


RENDER_AHEAD_DEPTH = 4  # batches rendered ahead: enough to ride out a slow batch, about 2 MB at 32 px


class RenderAhead:
    """A second process that renders batches from a copy of the data generator, in order, a few ahead.
    Each batch comes with the generator's state after it, so the trainer's own generator can follow."""

    def __init__(self, config: PriorTrainConfig, state: Tensor):
        # A fresh interpreter: forking a process whose torch threads are running can hang the child.
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue(maxsize=RENDER_AHEAD_DEPTH)
        self._stop = context.Event()
        self._process = context.Process(
            target=_render_ahead, args=(config, state.numpy(), self._queue, self._stop), daemon=True
        )
        self._process.start()

    def next(self) -> tuple[Tensor, list[str], Tensor]:
        while True:
            try:
                images, captions, state = self._queue.get(timeout=1.0)
                return torch.from_numpy(images), captions, torch.from_numpy(state)
            except queue.Empty:
                if not self._process.is_alive():
                    raise RuntimeError(
                        f"the render-ahead process died (exit code {self._process.exitcode})"
                    ) from None

    def close(self) -> None:
        self._stop.set()
        while self._process.is_alive():
            try:  # free a put() that waits on a full queue
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._process.join()

    def __enter__(self) -> RenderAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _render_ahead(
    config: PriorTrainConfig,
    state: np.ndarray,
    out: multiprocessing.queues.Queue,
    stop: multiprocessing.synchronize.Event,
) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator()
    generator.set_state(torch.from_numpy(state))
    while not stop.is_set():
        images, captions = render_batch(config, generator)
        # Plain arrays, pickled whole: a torch tensor would travel as shared memory owned by this process,
        # which the trainer could not open once this process has exited.
        item = (images.numpy(), captions, generator.get_state().numpy())
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                break
            except queue.Full:
                pass


def save_run_checkpoint(trainer: PriorTrainer, run_dir: Path) -> Path:
    folder = run_dir / CHECKPOINTS
    path = checkpoint_path(folder, trainer.step)
    if not path.exists():
        save_checkpoint(path, trainer.checkpoint())
    prune_checkpoints(folder, trainer.config.keep_checkpoints)
    return path


def _append_metrics(path: Path, trainer: PriorTrainer, result: StepResult, images_per_s: float) -> None:
    record = {
        "step": trainer.step,
        "loss": result.loss,
        "lr": result.learning_rate,
        "images_per_s": round(images_per_s, 2),
        "elapsed_s": round(trainer.elapsed_s, 1),
    }
    append_record(path, record)
