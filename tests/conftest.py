"""Test-wide settings: never touch the network or the user's caches; one CPU thread."""

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "dreamfusion-cache"
    monkeypatch.setenv("DREAMFUSION_CACHE", str(cache))


# The tests' tensors are small: one thread is far faster for them, and two threads on a shared 2-core machine
# spin and wait on each other (the surface sampler took 12 s instead of 0.1 s). Set at import, before any
# fixture of any scope runs.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Back to one thread and IEEE denormals after each test: commands under test set their own
    (dreamfusion.device.use_cpu_threads)."""
    yield
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
