"""The page of `dreamfusion serve` and its handlers.

Left: a form for a new run (prompt, negative prompt, seed, steps, preset, prior and model) and a gallery of
the runs in the runs folder, each of which can be opened, resumed, re-exported (with a turntable) or
evaluated. Right: what the run in hand is doing (step, it/s, ETA, the loss curve, the latest validation
grid) and, when it is done, its GLB in a 3D viewer, its turntable and its files.

Every long action (generate, resume, re-export, evaluate) shares one queue slot (`concurrency_id`
"optimise"), so a CPU machine trains one run at a time and Gradio shows waiting users their place. Cancel
runs outside the queue: it sets the job's stop flag, and the run saves a checkpoint at its next step.
"""

# No `from __future__ import annotations`: Gradio reads the gr.SelectData annotation of a handler at run
# time to know it wants the event.
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dreamfusion import api
from dreamfusion.app.jobs import Job, cancel
from dreamfusion.errors import UserError
from dreamfusion.guidance import BACKENDS
from dreamfusion.run.folder import slug

log = logging.getLogger("dreamfusion")

PRESETS = ("auto", "builtin", "paper", "cpu", "target")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TITLE = "dreamfusion"


def one_line(exc: BaseException) -> str:
    """The CLI's message for a user error; a bug's type and first line otherwise."""
    if isinstance(exc, UserError):
        return " ".join(str(exc).split())
    return f"internal error ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''})"


def list_runs(root: Path) -> list[api.Run]:
    """The run folders directly under `root`, newest first."""
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    return [api.Run(p) for p in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)]


def gallery_items(runs: list[api.Run]) -> list[tuple[str, str]]:
    """(picture, caption) per run: the turntable's contact sheet, else the latest validation grid, else a
    blank tile (a run cancelled before its first grid is still listed, so it can be resumed). The caption
    starts with the folder's name, which is how a click finds its run (`run_of_caption`)."""
    items = []
    for run in runs:
        try:
            state = "done" if run.finished else f"step {run.step} of {run.config.total_steps}"
        except UserError:  # a folder whose config.yaml cannot be read: not listed
            continue
        picture = run.contact_sheet or (run.grids[-1] if run.grids else None) or blank_tile()
        items.append((str(picture), f"{run.folder.name}: {run.prompt} ({state})"))
    return items


def run_of_caption(root: Path, caption: str | None) -> api.Run | None:
    """The run a gallery caption names, if its folder is still there (the list may have changed since the
    page drew it, so a position in it is not enough)."""
    name = (caption or "").split(":", 1)[0].strip()
    folder = root / name
    if not name or folder.parent != root or not (folder / "config.yaml").is_file():
        return None
    return api.Run(folder)


def blank_tile() -> Path:
    """A plain grey square for a run that has no picture yet, made once per process."""
    target = Path(tempfile.gettempdir()) / "dreamfusion-app" / "no-picture-yet.png"
    if not target.is_file():
        from PIL import Image

        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (256, 256), (200, 200, 200)).save(target)
    return target


def obj_zip(run: api.Run) -> Path | None:
    """The OBJ with its material and texture as one zip, in a temporary folder (the run is not touched)."""
    folder = run.export_folder
    if folder is None or not (folder / "model.obj").is_file():
        return None
    target = Path(tempfile.mkdtemp(prefix="dreamfusion-obj-")) / f"{run.folder.name}-obj.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("model.obj", "model.mtl", "model.png"):
            if (folder / name).is_file():
                archive.write(folder / name, name)
    return target


def loss_frame(records: list[dict[str, Any]]) -> Any:
    """The loss curve as the LinePlot's table: each step's loss and a running mean over 20 steps."""
    import pandas as pd

    frame = pd.DataFrame({"step": [r["step"] for r in records], "loss": [r.get("loss") for r in records]})
    frame["loss"] = frame["loss"].astype(float).rolling(20, min_periods=1).mean()
    return frame


def status_line(event: api.Progress) -> str:
    where = f"`{event.run_dir}`"
    if event.stage == "train":
        rate = f"{event.it_per_s:.1f} it/s" if event.it_per_s else "-"
        eta = f"ETA {event.eta_s:.0f} s" if event.eta_s is not None else ""
        return f"**training** step {event.step} / {event.total} · {rate} · {eta} · {where}"
    words = {
        "start": "starting",
        "finished": "already trained",
        "export": "exporting the mesh and turntable",
        "done": "done",
        "stopped": "cancelled: checkpoint saved, resume it from the gallery",
    }
    return f"**{words.get(event.stage, event.stage)}** at step {event.step} / {event.total} · {where}"


def build_app(runs_root: Path | str = "runs", threads: int | None = None) -> Any:
    """The Gradio Blocks of the app, writing runs under `runs_root`."""
    import gradio as gr

    root = Path(runs_root).absolute()

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(
            "# dreamfusion\nText to 3D by Score Distillation Sampling. One run trains at a time; "
            "others wait in the queue."
        )
        job_id = gr.State(None)
        selected = gr.State(None)  # the run folder opened from the gallery
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("New run"):
                    prompt = gr.Textbox(label="prompt", placeholder="a red cube", elem_id="prompt")
                    negative = gr.Textbox(label="negative prompt", elem_id="negative")
                    with gr.Row():
                        seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                        steps = gr.Number(
                            label="steps (0 or empty: the preset's)", value=None, precision=0, elem_id="steps"
                        )
                    with gr.Row():
                        preset = gr.Dropdown(list(PRESETS), value="auto", label="preset", elem_id="preset")
                        guidance = gr.Dropdown(
                            list(BACKENDS), value="builtin", label="prior", elem_id="guidance"
                        )
                    model = gr.Textbox(
                        label="model (hub id or folder; empty: the prior's default)", elem_id="model"
                    )
                    with gr.Row():
                        start = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
                with gr.Tab("Runs"):
                    gallery = gr.Gallery(
                        gallery_items(list_runs(root)), label=f"runs in {root}", columns=2, elem_id="gallery"
                    )
                    opened = gr.Markdown("select a run", elem_id="opened")
                    with gr.Row():
                        refresh = gr.Button("Refresh", elem_id="refresh")
                        resume = gr.Button("Resume", elem_id="resume")
                        reexport = gr.Button("Re-export", elem_id="reexport")
                        evaluate = gr.Button("Evaluate", elem_id="evaluate")
            with gr.Column(scale=2):
                status = gr.Markdown("enter a prompt and press Generate", elem_id="status")
                with gr.Row():
                    grid = gr.Image(label="latest validation grid", type="filepath", elem_id="grid")
                    plot = gr.LinePlot(
                        loss_frame([]), x="step", y="loss", label="loss (running mean)", elem_id="loss"
                    )
                viewer = gr.Model3D(label="mesh (GLB)", elem_id="viewer")
                video = gr.Video(label="turntable", autoplay=True, loop=True, elem_id="video")
                files = gr.File(label="downloads", file_count="multiple", elem_id="downloads")
                scores = gr.Markdown("", elem_id="scores")

        def finished_outputs(run: api.Run, message: str) -> dict[Any, Any]:
            downloads = [p for p in (run.mesh.get("glb"), obj_zip(run), run.mesh.get("ply")) if p]
            return {
                status: message,
                grid: str(run.grids[-1]) if run.grids else None,
                plot: loss_frame(run.metrics),
                viewer: str(run.mesh["glb"]) if "glb" in run.mesh else None,
                video: str(run.video) if run.video else None,
                files: [str(p) for p in downloads] or None,
                gallery: gallery_items(list_runs(root)),
            }

        def watch(job: Job) -> Iterator[dict[Any, Any]]:
            """Page updates while `job` runs, then its outcome."""
            yield {job_id: job.id, status: "**waiting for the prior to load**"}
            records: list[dict[str, Any]] = []
            for batch in job.batches():
                update: dict[Any, Any] = {status: status_line(batch[-1])}
                records += [e.metrics for e in batch if e.metrics is not None]
                if records:
                    update[plot] = loss_frame(records)
                grids = [e.grid for e in batch if e.grid is not None]
                if grids:
                    update[grid] = str(grids[-1])
                yield update
            if job.error is not None:
                yield {job_id: None, status: f"**error:** {one_line(job.error)}"}
                if not isinstance(job.error, UserError):
                    log.error("job failed", exc_info=job.error)
                return
            run: api.Run = job.result
            outcome = "done" if run.finished else "cancelled: checkpoint saved, resume it from the gallery"
            message = f"**{outcome}** · step {run.step} · `{run.folder}`"
            yield {job_id: None, **finished_outputs(run, message)}
            # Gradio sends the last update twice (as progress and as the result). Its 3D viewer drops a model
            # set twice before its renderer has loaded, so the last update carries the status alone.
            yield {status: message}

        def on_generate(text, negative_text, seed_value, steps_value, preset_name, kind, model_name):
            seed_int = 0 if seed_value is None else int(seed_value)

            def call(on_progress, stop_flag):
                return api.generate(
                    text,
                    seed=seed_int,
                    steps=int(steps_value) if steps_value else None,  # 0 or empty: the preset's
                    guidance=kind,
                    model=model_name.strip() or None,
                    negative=negative_text.strip() or None,
                    preset=None if preset_name == "auto" else preset_name,
                    out=root / f"{slug(text)}-seed{seed_int}",
                    threads=threads,
                    on_progress=on_progress,
                    stop=stop_flag,
                )

            yield from watch(Job(call).start())

        def on_cancel(current: str | None) -> str:
            if cancel(current):
                return "**cancelling**: the run stops after this step and saves a checkpoint"
            return "nothing is running in this page"

        def on_select(event: gr.SelectData) -> tuple[Any, ...]:
            value = event.value if isinstance(event.value, dict) else {}
            run = run_of_caption(root, value.get("caption"))
            if run is None:
                return None, "that run is gone; press Refresh"
            message = f"**{run.folder.name}**: {run.prompt} (step {run.step} of {run.config.total_steps})"
            return str(run.folder), message

        def needs_run(folder: str | None) -> api.Run:
            if not folder:
                raise UserError("select a run in the gallery first")
            return api.Run.open(folder)

        def on_open(folder: str | None) -> dict[Any, Any]:
            try:
                run = needs_run(folder)
            except UserError as exc:
                return {status: f"**error:** {one_line(exc)}"}
            state = "done" if run.finished else f"stopped at step {run.step}"
            found = run.evaluation
            return {
                **finished_outputs(run, f"**{state}** · `{run.folder}`"),
                scores: score_text(found) if found else "",
            }

        def on_resume(folder: str | None) -> Iterator[dict[Any, Any]]:
            def call(on_progress, stop_flag):
                return api.resume(
                    needs_run(folder).folder, threads=threads, on_progress=on_progress, stop=stop_flag
                )

            yield from watch(Job(call).start())

        def on_reexport(folder: str | None) -> Iterator[dict[Any, Any]]:
            from dreamfusion.exporter.pipeline import finished_run_export

            def call(on_progress, stop_flag):
                run = needs_run(folder)
                api.export(run.folder, finished_run_export(run.config.export))
                return run

            yield from watch(Job(call).start())

        def on_evaluate(folder: str | None) -> Iterator[dict[Any, Any]]:
            job = Job(lambda on_progress, stop_flag: api.evaluate(needs_run(folder).folder)).start()
            yield {status: "**evaluating**"}
            for _ in job.batches():
                pass
            if job.error is not None:
                yield {status: f"**error:** {one_line(job.error)}"}
                return
            yield {status: "**evaluated**", scores: score_text(job.result)}

        outputs = [job_id, status, grid, plot, viewer, video, files, gallery, scores]
        slot = {"concurrency_limit": 1, "concurrency_id": "optimise"}
        form = [prompt, negative, seed, steps, preset, guidance, model]
        start.click(on_generate, form, outputs, **slot)
        prompt.submit(on_generate, form, outputs, **slot)
        stop.click(on_cancel, [job_id], [status], queue=False)
        gallery.select(on_select, None, [selected, opened]).then(on_open, [selected], outputs)
        refresh.click(lambda: gallery_items(list_runs(root)), None, [gallery])
        resume.click(on_resume, [selected], outputs, **slot)
        reexport.click(on_reexport, [selected], outputs, **slot)
        evaluate.click(on_evaluate, [selected], outputs, **slot)
    return app


def score_text(result: dict[str, Any]) -> str:
    from dreamfusion.evaluation.runs import summary_line

    return f"**evaluation**: {summary_line(result)}"


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    runs_root: Path | str = "runs",
    threads: int | None = None,
    block: bool = True,
) -> Any:
    """Start the app; returns the Gradio app (already serving when `block` is False)."""
    if host not in LOCAL_HOSTS:
        log.warning(
            "serving on %s: anyone who can reach this machine on port %d can start runs and download every "
            "run in the runs folder",
            host,
            port,
        )
    root = Path(runs_root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    app = build_app(root, threads)
    app.queue(default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(root)],
        prevent_thread_lock=not block,
        ssr_mode=False,
        quiet=True,
        show_error=True,
    )
    return app
