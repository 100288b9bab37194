"""Many runs at once on Ray: `dreamfusion batch FILE` and `dreamfusion.batch(...)`.

Each run (one prompt and seed, `plan.RunSpec`) is one Ray task in its own folder under the batch's output
folder. With no address, Ray starts embedded on this machine with one worker per core (or `workers`);
with one, the tasks go to that cluster, whose nodes must see the output folder at the same path (a shared
file system) and have dreamfusion installed. A task asks for one CPU, or one GPU when the cluster has any.

Nothing is run twice and nothing is lost:
- A run that finished (its record is in OUT/.batch/NAME.json) is skipped, so a second invocation of the
  same batch does nothing.
- A task continues whatever its folder holds: a run with a config but no record is resumed from its last
  checkpoint (`dreamfusion.resume`), with its metrics cut back to that step.
- When a task's process dies (kill -9, a node leaving the cluster), Ray runs the task again, up to
  `retries` times, and the new attempt resumes the same folder. The folder's OS lock was released with the
  dead process, so the new attempt takes it over; a second live process on one folder is refused.
- An error in a run's own settings or prior fails that run only; the table says why.

Every attempt is logged to OUT/.batch/NAME.attempts.jsonl (process, node, the step it started from), and
the batch ends with a results table, OUT/batch.json and OUT/batch.md: each run's status, attempts, wall
and optimisation seconds and, for prompts of the procedural world, its eval scores.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamfusion.batching.plan import RunSpec
from dreamfusion.errors import UserError
from dreamfusion.files import write_text_atomic

log = logging.getLogger("dreamfusion")

RECORDS = ".batch"
TABLE_STEM = "batch"
EMBEDDED_OBJECT_STORE_BYTES = 100 * 1024**2  # tasks pass only small records: keep Ray's shared memory small


class RayMissingError(UserError):
    """Ray is not installed."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissingError(
            'dreamfusion batch needs Ray: pip install -e ".[cluster]" (or pip install "dreamfusion[cluster]")'
        ) from None
    return ray


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch did: the table of every run in it, and how many ran now, were already done, failed."""

    rows: list[dict[str, Any]]
    ran: int
    skipped: int
    failed: int
    table_json: Path | None
    table_markdown: Path | None
    wall_seconds: float


def record_path(root: Path, spec: RunSpec) -> Path:
    return root / RECORDS / f"{spec.name.replace('/', '__')}.json"


def attempts_path(root: Path, spec: RunSpec) -> Path:
    return root / RECORDS / f"{spec.name.replace('/', '__')}.attempts.jsonl"


def read_record(root: Path, spec: RunSpec) -> dict[str, Any] | None:
    path = record_path(root, spec)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ---- one task


def run_task(
    spec: RunSpec, root: str, evaluate: bool, threads: int, device: str | None, model: str = "judge"
) -> dict[str, Any]:
    """One run, start to finish, in whatever process Ray gives it (also callable without Ray)."""
    from dreamfusion import api
    from dreamfusion.evaluation.runs import world_scene

    root_dir = Path(root)
    run_dir = root_dir / spec.name
    started = time.perf_counter()
    resumed_from: list[int] = []

    def note_start(event: api.Progress) -> None:
        if event.stage in ("start", "finished"):
            resumed_from.append(event.step)
            _append_attempt(root_dir, spec, {"event": "start", "step": event.step})

    _append_attempt(root_dir, spec, {"event": "attempt", "pid": os.getpid(), "node": socket.gethostname()})
    if (run_dir / "config.yaml").is_file():
        _check_same_run(run_dir, spec)
        run = api.resume(run_dir, device=device, threads=threads, on_progress=note_start)
    else:
        _clear_unwritten(run_dir)
        run = api.generate_config(spec.config(), run_dir, device, threads, note_start)
        if run.folder != run_dir:  # generate never writes into a folder that holds something
            raise UserError(f"{run_dir} held files that are not a run; the run went to {run.folder}")
    asset_seconds = time.perf_counter() - started
    scores = None
    if evaluate and run.finished and world_scene(spec.prompt) is not None:
        scores = run.evaluation or api.evaluate(run_dir, model=model)
    attempts = _read_attempts(root_dir, spec)
    record = {
        "run": spec.name,
        "prompt": spec.prompt,
        "seed": spec.seed,
        "status": "done" if run.finished else "stopped",
        "steps": run.step,
        "attempts": sum(1 for a in attempts if a["event"] == "attempt"),
        "resumed_from": resumed_from[-1] if resumed_from else 0,
        "seconds": time.perf_counter() - started,  # this attempt's wall time, export and eval included
        "asset_seconds": asset_seconds,  # the same up to the end of the export (no eval)
        "train_seconds": sum(float(m.get("seconds") or 0.0) for m in run.metrics),
        "mesh": str(run.mesh["glb"].relative_to(root_dir)) if "glb" in run.mesh else None,
        "scores": _scores(scores),
    }
    write_text_atomic(record_path(root_dir, spec), json.dumps(record, indent=2) + "\n")
    return record


def _check_same_run(run_dir: Path, spec: RunSpec) -> None:
    """A folder of the batch's name that holds another run (other prompt, seed or steps) is not adopted."""
    from dreamfusion.run.config import read_run_config

    have, want = read_run_config(run_dir), spec.config()
    for label, a, b in (
        ("prompt", have.prompt.text, want.prompt.text),
        ("seed", have.train.seed, want.train.seed),
        ("steps", have.train.steps, want.train.steps),
    ):
        if a != b:
            raise UserError(f"{run_dir} holds a run with {label} {a!r}, not this batch's {b!r}; move it away")


def _clear_unwritten(run_dir: Path) -> None:
    """A folder claimed by an attempt that died before writing anything holds only its lock file."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".lock"}:
        (run_dir / ".lock").unlink(missing_ok=True)
        run_dir.rmdir()


def _append_attempt(root: Path, spec: RunSpec, event: dict[str, Any]) -> None:
    path = attempts_path(root, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:  # one short line per write: appends do not interleave
        f.write(json.dumps({**event, "time": time.time()}) + "\n")


def _read_attempts(root: Path, spec: RunSpec) -> list[dict[str, Any]]:
    path = attempts_path(root, spec)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _scores(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    truth = result.get("ground_truth") or {}
    return {
        "color": result["r_precision"]["color"],
        "geo": result["r_precision"]["geo"],
        "iou": truth.get("iou"),
        "iou_mesh_level": truth.get("iou_mesh_level"),
        "chamfer": truth.get("chamfer"),
        "delta_e": truth.get("delta_e"),
    }


# ---- the batch


def run_batch(
    specs: Sequence[RunSpec],
    out: Path | str,
    *,
    address: str | None = None,
    workers: int | None = None,
    evaluate: bool = True,
    threads: int = 1,
    device: str | None = None,
    retries: int = 3,
    progress: bool = False,
    on_run: Callable[[dict[str, Any]], None] | None = None,
    model: str = "judge",
) -> BatchOutcome:
    """Run every spec not yet finished under `out` as a Ray task; returns the table of all of them."""
    root = Path(out).absolute()
    began = time.perf_counter()
    pending = [s for s in specs if read_record(root, s) is None]
    skipped = len(specs) - len(pending)
    failures: dict[str, str] = {}
    if pending:
        root.mkdir(parents=True, exist_ok=True)
        failures = _run_on_ray(
            pending, root, address, workers, evaluate, threads, device, retries, progress, on_run, model
        )
    rows = [_row(root, s, failures) for s in specs]
    table_json = table_md = None
    if pending or not (root / f"{TABLE_STEM}.json").is_file():
        table_json, table_md = write_table(root, rows)
    return BatchOutcome(
        rows=rows,
        ran=len(pending) - len(failures),
        skipped=skipped,
        failed=len(failures),
        table_json=table_json,
        table_markdown=table_md,
        wall_seconds=time.perf_counter() - began,
    )


def _run_on_ray(
    pending: Sequence[RunSpec],
    root: Path,
    address: str | None,
    workers: int | None,
    evaluate: bool,
    threads: int,
    device: str | None,
    retries: int,
    progress: bool,
    on_run: Callable[[dict[str, Any]], None] | None,
    model: str,
) -> dict[str, str]:
    from tqdm import tqdm

    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, address, workers)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"num_gpus": 1, "num_cpus": 1} if gpus > 0 else {"num_cpus": 1}
        task = ray.remote(max_retries=retries, retry_exceptions=False, **resources)(run_task)
        refs = {task.remote(s, str(root), evaluate, threads, device, model): s for s in pending}
        failures: dict[str, str] = {}
        bar = tqdm(total=len(refs), disable=not progress, unit="run", dynamic_ncols=True)
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            spec = refs[ready[0]]
            try:
                record = ray.get(ready[0])
            except Exception as exc:  # the run's own error, or its worker died more than `retries` times
                failures[spec.name] = _one_line(exc)
                record = {"run": spec.name, "status": "failed", "error": failures[spec.name]}
            bar.update(1)
            bar.set_postfix_str(f"{spec.name}: {record['status']}", refresh=True)
            if on_run is not None:
                on_run(record)
        bar.close()
        return failures
    finally:
        if started_here:
            ray.shutdown()


def _init_ray(ray: Any, address: str | None, workers: int | None) -> None:
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    if address is not None:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: {_one_line(exc)}") from None
        return
    ray.init(
        num_cpus=workers or os.cpu_count() or 1,
        num_gpus=None,
        object_store_memory=EMBEDDED_OBJECT_STORE_BYTES,
        **quiet,
    )


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the task's own exception
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, UserError):
        return first
    name = type(exc).__name__
    return f"{name}: {first}" if not first.startswith(name) else first


def _row(root: Path, spec: RunSpec, failures: dict[str, str]) -> dict[str, Any]:
    record = read_record(root, spec)
    if record is not None:
        return record
    status = "failed" if spec.name in failures else "not run"
    return {
        "run": spec.name,
        "prompt": spec.prompt,
        "seed": spec.seed,
        "status": status,
        "error": failures.get(spec.name),
    }


# ---- the results table


def write_table(root: Path, rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    json_path, md_path = root / f"{TABLE_STEM}.json", root / f"{TABLE_STEM}.md"
    done = [r for r in rows if r.get("status") == "done"]
    summary = {
        "runs": len(rows),
        "done": len(done),
        "failed": sum(1 for r in rows if r.get("status") == "failed"),
        "median_seconds": statistics.median([r["seconds"] for r in done]) if done else None,
    }
    report = {"summary": summary, "runs": list(rows), "python": sys.version.split()[0]}
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(md_path, markdown_table(rows) + "\n")
    return json_path, md_path


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    def pct(x: Any) -> str:
        return "—" if x is None else f"{100 * x:.0f}"

    def num(x: Any, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    lines = [
        "| run | status | attempts | steps | s (last attempt) | s (training) | Color % | Geo % | IoU "
        "| Chamfer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r.get("scores") or {}
        status = r["status"] if not r.get("error") else f"{r['status']}: {r['error']}"
        lines.append(
            f"| {r['run']} | {status} | {r.get('attempts', '—')} | {r.get('steps', '—')} "
            f"| {num(r.get('seconds'), '.1f')} | {num(r.get('train_seconds'), '.1f')} "
            f"| {pct(s.get('color'))} | {pct(s.get('geo'))} | {num(s.get('iou'), '.3f')} "
            f"| {num(s.get('chamfer'), '.4f')} |"
        )
    return "\n".join(lines)
