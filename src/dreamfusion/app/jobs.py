"""One API call (generate, resume, export, evaluate) in a worker thread, watched from a Gradio handler.

The handler starts a `Job`, then iterates `job.batches()`: lists of the call's progress events, at most a
few a second, until the call returns. `job.stop` is the API's stop flag, which the Cancel button sets; the
run then saves a checkpoint and can be resumed. Jobs are kept by id (`JOBS`) for the Cancel button, which
runs outside the queue, while the job itself holds its place in it.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from dreamfusion.api import Progress, ProgressCallback, StopFlag

JOBS: dict[str, Job] = {}
_JOBS_LOCK = threading.Lock()
_DONE = object()


class Job:
    def __init__(self, call: Callable[[ProgressCallback, StopFlag], Any]):
        self.id = uuid.uuid4().hex
        self.stop = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._events: queue.Queue[object] = queue.Queue()
        self._call = call
        self._thread = threading.Thread(target=self._work, name=f"dreamfusion-job-{self.id[:8]}", daemon=True)

    def start(self) -> Job:
        with _JOBS_LOCK:
            JOBS[self.id] = self
        self._thread.start()
        return self

    def _work(self) -> None:
        try:
            self.result = self._call(self._events.put, self.stop)
        except BaseException as exc:  # handed to the page; a bug keeps its traceback in the server's log
            self.error = exc
        finally:
            self._events.put(_DONE)
            with _JOBS_LOCK:
                JOBS.pop(self.id, None)

    def batches(self, interval_s: float = 0.4) -> Iterator[list[Progress]]:
        """The events so far, in lists at most every `interval_s` (a new validation grid or a change of
        stage is sent at once); ends when the call has returned."""
        pending: list[Progress] = []
        last = 0.0
        while True:
            try:
                item = self._events.get(timeout=interval_s)
            except queue.Empty:
                item = None
            if item is _DONE:
                if pending:
                    yield pending
                return
            if isinstance(item, Progress):
                pending.append(item)
            urgent = bool(pending) and (pending[-1].stage != "train" or pending[-1].grid is not None)
            if pending and (urgent or time.monotonic() - last >= interval_s):
                yield pending
                pending, last = [], time.monotonic()


def cancel(job_id: str | None) -> bool:
    """Ask the job to stop after its current step (it saves a checkpoint). False if it is not running."""
    with _JOBS_LOCK:
        job = JOBS.get(job_id or "")
    if job is None:
        return False
    job.stop.set()
    return True
