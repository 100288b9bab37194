"""The Python API: what the `dreamfusion` command line and the web app (`dreamfusion serve`) call.

    import dreamfusion
    run = dreamfusion.generate("a red cube", seed=0)
    run.mesh["glb"], run.video, run.grids[-1], run.metrics[-1]["loss"]
    dreamfusion.evaluate(run.folder)["ground_truth"]["iou"]

Each function does what its command does, with the same checks: bad input raises one of the typed
`dreamfusion.errors` exceptions (a `UserError`) with the message the CLI prints, and nothing is written
before the prior has loaded. Nothing here prints; warnings go to the `dreamfusion` logger, progress to
`on_progress`, and a tqdm bar to stderr with `progress=True`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dreamfusion.checkpoint import latest_checkpoint
from dreamfusion.config import dump_yaml
from dreamfusion.device import pick_device, use_cpu_threads
from dreamfusion.errors import RunFolderError, SettingsError
from dreamfusion.run.config import Config, load_latest, read_run_config, resolve_config
from dreamfusion.run.folder import (
    RunLock,
    check_can_create,
    claim_run_dir,
    free_run_dir,
    slug,
    write_run_config,
)
from dreamfusion.run.log import truncate_records

if TYPE_CHECKING:
    from dreamfusion.batching import BatchOutcome, RunSpec
    from dreamfusion.exporter.pipeline import ExportConfig, ExportResult
    from dreamfusion.training.trainer import StepMetrics, Trainer

log = logging.getLogger("dreamfusion")

MESH_FORMATS = ("glb", "obj", "ply")


class StopFlag(Protocol):
    """Anything with `is_set()`, e.g. a threading.Event: when it is set, training finishes its step, saves a
    checkpoint and returns (what Ctrl-C does on the command line)."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Progress:
    """What `on_progress` receives: once when training starts (stage "start"; "finished" instead when a
    resumed run had already finished), after every step ("train"), before the export ("export") and at
    the end ("done", or "stopped" when the stop flag was set)."""

    stage: str
    run_dir: Path
    step: int
    total: int
    loss: float | None = None
    it_per_s: float | None = None  # over the last 20 steps
    eta_s: float | None = None
    grid: Path | None = None  # the validation grid this step wrote, if it wrote one
    metrics: dict[str, Any] | None = None  # the step's record, as in metrics.jsonl


ProgressCallback = Callable[[Progress], None]


class RunAborted(KeyboardInterrupt):
    """A second Ctrl-C during a step: training stopped at once, without a new checkpoint."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"aborted at step {step}")
        self.run_dir, self.step = run_dir, step


@dataclass(frozen=True)
class Run:
    """A run folder, read from disk: its config, metrics, validation grids and latest complete export."""

    folder: Path

    @classmethod
    def open(cls, folder: Path | str) -> Run:
        """The run in `folder`; a folder that is not a run raises RunFolderError."""
        folder = Path(folder)
        read_run_config(folder)
        return cls(folder)

    @cached_property
    def config(self) -> Config:
        return read_run_config(self.folder)

    @property
    def prompt(self) -> str:
        return self.config.prompt.text

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every step's record from metrics.jsonl (loss, timestep, opacity, seconds, ...)."""
        path = self.folder / "metrics.jsonl"
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written by a run still training
                break
        return records

    @property
    def step(self) -> int:
        metrics = self.metrics
        return int(metrics[-1]["step"]) if metrics else 0

    @property
    def finished(self) -> bool:
        return self.step >= self.config.total_steps

    @property
    def grids(self) -> list[Path]:
        """The validation grids (shaded, albedo, textureless and normals from four azimuths), oldest first."""
        return sorted((self.folder / "validation").glob("step_*.png"))

    @property
    def export_folder(self) -> Path | None:
        """The newest complete export (export, export-2, ...), or None."""
        return latest_export(self.folder)

    def _exported(self, name: str) -> Path | None:
        folder = self.export_folder
        path = None if folder is None else folder / name
        return path if path is not None and path.is_file() else None

    @property
    def mesh(self) -> dict[str, Path]:
        """The exported mesh files by format: glb, obj (with its .mtl and .png beside it), ply."""
        found = {fmt: self._exported(f"model.{fmt}") for fmt in MESH_FORMATS}
        return {fmt: path for fmt, path in found.items() if path is not None}

    @property
    def video(self) -> Path | None:
        return self._exported("turntable.mp4")

    @property
    def gif(self) -> Path | None:
        return self._exported("turntable.gif")

    @property
    def contact_sheet(self) -> Path | None:
        return self._exported("turntable.png")

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """The newest eval.json (eval-2.json, ...) written by `evaluate`, or None."""
        paths = sorted(self.folder.glob("eval*.json"), key=_suffix_number)
        return json.loads(paths[-1].read_text(encoding="utf-8")) if paths else None


def _suffix_number(path: Path) -> int:
    """export -> 1, export-2 -> 2, eval-3.json -> 3."""
    match = re.search(r"-(\d+)$", path.stem)
    return int(match.group(1)) if match else 1


def latest_export(run_dir: Path) -> Path | None:
    """An export folder appears only complete (it is renamed into place at the end); one killed midway left
    only a hidden staging folder, which this ignores."""
    folders = [p for p in Path(run_dir).glob("export*") if (p / "export.json").is_file()]
    return max(folders, key=_suffix_number) if folders else None


# ---- generate and resume


def generate(
    prompt: str,
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: str | None = None,
    model: str | None = None,
    negative: str | None = None,
    preset: str | None = None,
    out: Path | str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    threads: int | None = None,
    video: bool | None = None,
    on_progress: ProgressCallback | None = None,
    stop: StopFlag | None = None,
    progress: bool = False,
) -> Run:
    """Optimise a field for `prompt` into a new run folder, then export its meshes and turntable.

    `guidance` is the prior's kind (builtin, pixel, stable-diffusion, target) and `model` its hub id or
    folder; `overrides` are "section.key=value" settings as --set takes them; `video=False` skips the
    turntable. `out` defaults to runs/<prompt>-seed<S>; an existing folder is never written into (a new
    one gets -2, -3, ...). Returns the Run, unfinished if `stop` was set; `resume` continues it.
    """
    flags = {
        "prompt.text": prompt,
        "prompt.negative": negative,
        "guidance.kind": guidance,
        "guidance.model": model,
        "train.steps": steps,
        "train.seed": seed,
        "export.video": video,
    }
    config = resolve_config(flags, preset, overrides)
    return generate_config(config, out, device, threads, on_progress, stop, progress)


def generate_config(
    config: Config,
    out: Path | str | None = None,
    device: str | None = None,
    threads: int | None = None,
    on_progress: ProgressCallback | None = None,
    stop: StopFlag | None = None,
    progress: bool = False,
) -> Run:
    """`generate` for a Config already resolved (the CLI's path). Under torchrun, every process calls it:
    rank 0 creates the run folder and exports, the others train their share (dreamfusion.distributed)."""
    from dreamfusion import distributed
    from dreamfusion.guidance.embeddings import default_cache_dir
    from dreamfusion.training.trainer import Trainer

    torch_device = pick_device(device)
    use_cpu_threads(threads)
    shard = distributed.start(torch_device, config.train.batch_size)
    if shard is not None and not shard.is_main:
        prior = load_guidance(config, torch_device)
        run_dir = shard.broadcast()  # rank 0's folder, once it has claimed one
        trainer = Trainer(config, run_dir, prior, torch_device, None, shard)
        trainer.train(progress=False, handle_sigint=True)
        return Run(run_dir)
    requested = (
        Path(out) if out is not None else Path("runs") / f"{slug(config.prompt.text)}-seed{config.train.seed}"
    )
    check_can_create(free_run_dir(requested))
    # Everything that can fail (loading the prior, encoding the prompt) happens before the run folder is
    # created, so a mistake leaves nothing behind.
    prior = load_guidance(config, torch_device)
    run_dir = claim_run_dir(requested)  # atomic: a second generate with the same `out` gets another folder
    if shard is not None:
        shard.broadcast(run_dir)
    with RunLock(run_dir) as lock:
        try:
            trainer = Trainer(config, run_dir, prior, torch_device, default_cache_dir(), shard)
        except BaseException:
            lock.abandon()  # nothing was written: leave nothing behind
            raise
        write_run_config(run_dir, dump_yaml(trainer.config))  # with what the prior decided, e.g. the size
        if run_dir != requested:
            log.warning("%s already exists and is not empty; writing to %s", requested, run_dir)
        for warning in prior.warnings:
            log.warning("%s", warning)
        return _train_and_export(trainer, on_progress, stop, progress)


def resume(
    run_dir: Path | str,
    *,
    device: str | None = None,
    threads: int | None = None,
    on_progress: ProgressCallback | None = None,
    stop: StopFlag | None = None,
    progress: bool = False,
) -> Run:
    """Continue a stopped run from its latest checkpoint with its config.yaml. A finished run whose export
    never completed (killed while exporting) is exported; a finished, exported run is returned as it is.
    Under torchrun rank 0 reads the folder and hands the config and checkpoint to the other processes."""
    from dreamfusion import distributed
    from dreamfusion.training.trainer import Trainer

    run_dir = Path(run_dir)
    shard = None
    if distributed.launched():  # rank 0 goes on below; the others wait for what it read
        torch_device = pick_device(device)
        use_cpu_threads(threads)
        shard = distributed.start(torch_device)
        if not shard.is_main:
            config, checkpoint = shard.broadcast()
            if config is None:  # nothing to train: the run is finished (rank 0 exports it if need be)
                return Run(run_dir)
            distributed.check_split(config.train.batch_size, shard.world)
            trainer = Trainer(config, run_dir, load_guidance(config, torch_device), torch_device, None, shard)
            if checkpoint is not None:
                trainer.restore(checkpoint)
            trainer.train(progress=False, handle_sigint=True)
            return Run(run_dir)
    read_run_config(run_dir)  # a missing or foreign folder is reported before anything is locked
    with RunLock(run_dir):
        config = read_run_config(run_dir)  # again, under the lock: the one that counts
        # The checkpoint is read before the prior loads: a damaged one should not cost a model load first.
        # A run stopped before its first checkpoint starts again from step 0 (the same seeded run).
        checkpoint = load_latest(run_dir) if latest_checkpoint(run_dir / "checkpoints") else None
        run = Run(run_dir)
        finished = checkpoint is not None and checkpoint.step >= config.total_steps
        if shard is not None:
            shard.broadcast((None, None) if finished else (config, checkpoint))
        if finished:
            _notify(on_progress, Progress("finished", run_dir, checkpoint.step, config.total_steps))
            if latest_export(run_dir) is None:
                _notify(on_progress, Progress("export", run_dir, checkpoint.step, config.total_steps))
                export_finished_run(run_dir, config, progress)
            _notify(on_progress, Progress("done", run_dir, checkpoint.step, config.total_steps))
            return run
        from dreamfusion.guidance.embeddings import default_cache_dir

        if shard is None:
            torch_device = pick_device(device)
            use_cpu_threads(threads)
        else:
            distributed.check_split(config.train.batch_size, shard.world)
        trainer = Trainer(
            config, run_dir, load_guidance(config, torch_device), torch_device, default_cache_dir(), shard
        )
        if checkpoint is not None:
            trainer.restore(checkpoint)
        else:
            log.warning("%s has no checkpoint yet: starting it again from step 0", run_dir)
            truncate_records(run_dir / "metrics.jsonl", 0)
        return _train_and_export(trainer, on_progress, stop, progress)


def load_guidance(config: Config, device: Any):
    from dreamfusion.guidance import build_guidance

    return build_guidance(
        config.guidance,
        device,
        config.train.seed + 2,
        config.sampling,
        config.light,
        config.train.resolution,
        prompt=config.prompt.text,
    )


class _Reporter:
    """Turns the trainer's steps into Progress events (with it/s and ETA) and checks the stop flag."""

    def __init__(self, trainer: Trainer, on_progress: ProgressCallback | None, stop: StopFlag | None):
        self.trainer, self.on_progress, self.stop = trainer, on_progress, stop
        self.total = trainer.config.total_steps
        self.times: deque[float] = deque(maxlen=21)
        self.times.append(time.perf_counter())

    def __call__(self, metrics: StepMetrics, grid: Path | None) -> None:
        if self.stop is not None and self.stop.is_set():
            self.trainer.request_stop()
        if self.on_progress is None:
            return
        self.times.append(time.perf_counter())
        rate = (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)
        record = dataclasses.asdict(metrics)
        self.on_progress(
            Progress(
                "train",
                self.trainer.run_dir,
                metrics.step,
                self.total,
                loss=metrics.loss,
                it_per_s=rate,
                eta_s=(self.total - metrics.step) / rate,
                grid=grid,
                metrics=record,
            )
        )


def _notify(on_progress: ProgressCallback | None, event: Progress) -> None:
    if on_progress is not None:
        on_progress(event)


def _train_and_export(
    trainer: Trainer, on_progress: ProgressCallback | None, stop: StopFlag | None, progress: bool
) -> Run:
    run_dir, total = trainer.run_dir, trainer.config.total_steps
    _notify(on_progress, Progress("start", run_dir, trainer.step, total))
    # Ctrl-C asks for a checkpoint only where Python delivers signals: the main thread (not a web worker).
    in_main_thread = threading.current_thread() is threading.main_thread()
    try:
        finished = trainer.train(progress, in_main_thread, _Reporter(trainer, on_progress, stop))
    except KeyboardInterrupt:
        raise RunAborted(run_dir, trainer.step) from None
    if not finished:
        _notify(on_progress, Progress("stopped", run_dir, trainer.step, total))
        return Run(run_dir)
    _notify(on_progress, Progress("export", run_dir, trainer.step, total))
    export_finished_run(run_dir, trainer.config, progress)
    _notify(on_progress, Progress("done", run_dir, trainer.step, total))
    return Run(run_dir)


def export_finished_run(run_dir: Path, config: Config, progress: bool) -> ExportResult | None:
    """The meshes (and, unless export.video is false, the turntable) of a finished run. A field with no
    surface is a warning here, not a failure: the run itself finished and its checkpoints are kept."""
    from dreamfusion.errors import ExportError
    from dreamfusion.exporter.pipeline import export_run, finished_run_export

    try:
        return export_run(run_dir, finished_run_export(config.export), progress)
    except ExportError as exc:
        log.warning("nothing exported: %s", exc)
        return None


# ---- export and evaluate


def export(
    run_dir: Path | str,
    config: ExportConfig | None = None,
    *,
    checkpoint: Path | str | None = None,
    progress: bool = False,
) -> ExportResult:
    """Export a run's field (its latest checkpoint, or `checkpoint`) into RUN_DIR/export (export-2, ... if
    one exists) with `config` (dreamfusion.exporter.pipeline.ExportConfig; default: every mesh format, no
    video). Returns what was written, with the surface's threshold and the timings."""
    from dreamfusion.exporter.pipeline import ExportConfig, export_run

    if not (Path(run_dir) / "config.yaml").is_file():
        read_run_config(Path(run_dir))  # the one-line error for a missing or foreign folder
    path = None if checkpoint is None else Path(checkpoint)
    return export_run(Path(run_dir), config or ExportConfig(), progress, path)


_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def evaluate(
    run_dir: Path | str,
    *,
    model: str = "judge",
    views: int = 8,
    resolution: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Score a run folder as `dreamfusion eval` does and write RUN_DIR/eval.json (eval-2.json, ...):
    R-Precision (Color and Geo), and for prompts of the procedural world IoU, Chamfer and colour error.
    Returns what eval.json holds. The image-text model is loaded once per process."""
    from dreamfusion.evaluation.runs import EvalConfig, evaluate_run, load_image_text_model, write_eval

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunFolderError(f"not a run folder (no config.yaml): {run_dir}")
    torch_device = pick_device(device)
    with _MODELS_LOCK:
        key = (model, str(torch_device))
        if key not in _MODELS:
            _MODELS[key] = load_image_text_model(model, torch_device)
        image_text = _MODELS[key]
    result = evaluate_run(run_dir, image_text, EvalConfig(views=views, resolution=resolution))
    write_eval(run_dir, result)
    return result


# ---- many runs


def batch(
    prompts: Path | str | Sequence[str | RunSpec],
    *,
    out: Path | str | None = None,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    overrides: Sequence[str] = (),
    address: str | None = None,
    workers: int | None = None,
    evaluate: bool = True,
    device: str | None = None,
    retries: int = 3,
    progress: bool = False,
) -> BatchOutcome:
    """Run many prompts x seeds as Ray tasks (`dreamfusion batch`): `prompts` is a prompts file (text, one
    per line, or YAML; see dreamfusion.batching.plan) or a list of prompts or RunSpecs. Without `address`, Ray
    starts on this machine with one worker per core (or `workers`); with one, it joins that cluster.
    Finished runs are skipped and half-done ones resumed, so calling it again continues the batch. Every
    run's settings are checked before any starts. Returns the table of all runs (also written to
    OUT/batch.json and OUT/batch.md); `out` defaults to runs/batch-<file name> (runs/batch for a list)."""
    from dreamfusion.batching import RunSpec, check_specs, read_prompts_file, run_batch

    if retries < 0:
        raise SettingsError(f"retries must be >= 0, got {retries}")
    if isinstance(prompts, (str, Path)):
        specs = read_prompts_file(Path(prompts), seeds, steps, overrides)
        default_out = Path("runs") / f"batch-{slug(Path(prompts).stem)}"
    else:
        specs = []
        for p in prompts:
            if isinstance(p, RunSpec):
                specs.append(p)
            else:
                specs += [RunSpec(p, s, f"{slug(p)}-seed{s}", steps, tuple(overrides)) for s in seeds]
        check_specs(specs)
        default_out = Path("runs") / "batch"
    return run_batch(
        specs,
        Path(out) if out is not None else default_out,
        address=address,
        workers=workers,
        evaluate=evaluate,
        device=device,
        retries=retries,
        progress=progress,
    )
