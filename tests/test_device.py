"""Device, dtype and CPU threads are chosen in one place (dreamfusion.device)."""

from __future__ import annotations

import os

import pytest
import torch

from dreamfusion.device import cpu_threads, machine_facts, pick_device, prior_dtype, use_cpu_threads
from dreamfusion.errors import UserError


def test_auto_device_is_the_cpu_without_cuda():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert prior_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_missing_cuda_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA device"):
        pick_device("cuda")


@pytest.mark.parametrize(("cores", "load", "expected"), [(2, 0.0, 2), (2, 0.9, 1), (2, 1.6, 1), (8, 2.2, 6)])
def test_default_threads_are_the_idle_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, load: float, expected: int
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert cpu_threads() == expected


def test_requested_threads_are_used_and_checked():
    before = torch.get_num_threads()
    try:
        assert use_cpu_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)  # use_cpu_threads turned it on for the process
    with pytest.raises(UserError, match="at least 1"):
        cpu_threads(0)


def test_machine_facts_have_the_keys_benchmarks_record():
    facts = machine_facts()
    assert set(facts) == {
        "platform",
        "processor",
        "cpu_count",
        "load_average",
        "python",
        "torch",
        "torch_threads",
        "cuda",
    }
    assert isinstance(facts["platform"], str) and facts["platform"]
    assert isinstance(facts["processor"], str)
    assert isinstance(facts["cpu_count"], int) and facts["cpu_count"] >= 1
    assert facts["torch"] == torch.__version__
    assert isinstance(facts["torch_threads"], int) and facts["torch_threads"] >= 1
    load = facts["load_average"]
    assert isinstance(load, list) and len(load) == 3 and all(isinstance(x, float) for x in load)
    assert facts["cuda"] is None or isinstance(facts["cuda"], str)


def test_cpu_setup_flushes_denormals_to_zero():
    torch.set_flush_denormal(False)
    denormal = torch.tensor([1e-39])  # below float32's smallest normal number, 1.18e-38
    assert float(denormal * 1.0) != 0.0
    try:
        use_cpu_threads(torch.get_num_threads())
        assert float(denormal * 1.0) == 0.0
    finally:
        torch.set_flush_denormal(False)
