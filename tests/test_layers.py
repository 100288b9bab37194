"""The package's layers (issue #16): imports flow one way, from the world and fields up to the commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_the_world_imports_nothing_from_guidance():
    """world/ sits below guidance/: the procedural scenes must load without any diffusion backend code."""
    code = (
        "import sys, dreamfusion.world; "
        "print(sorted(m for m in sys.modules if m.startswith('dreamfusion.guidance')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def loaded_by(module: str, prefix: str) -> list[str]:
    names = f"sorted(m for m in sys.modules if m.startswith({prefix!r}))"
    code = f"import json, sys, {module}; print(json.dumps({names}))"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_export_and_evaluation_read_runs_without_the_trainer_or_each_other():
    assert loaded_by("dreamfusion.exporter.pipeline", "dreamfusion.evaluation") == []
    assert loaded_by("dreamfusion.exporter.pipeline", "dreamfusion.training.trainer") == []
    assert loaded_by("dreamfusion.evaluation.runs", "dreamfusion.training.trainer") == []
    # Both measure or write one surface, fields.mesh, which sits below them.
    assert loaded_by("dreamfusion.evaluation.runs", "dreamfusion.exporter") == []
    # The mesh stage's renderer sits below the trainer, export and evaluation, which all use it.
    assert loaded_by("dreamfusion.refine.render", "dreamfusion.exporter") == []
    assert loaded_by("dreamfusion.run.config", "dreamfusion.training.trainer") == []


def test_evaluation_does_not_read_the_prior_trainer():
    """The classifier and the judge learn from the prior's renders (world.prior_world), not from its loop."""
    assert loaded_by("dreamfusion.evaluation.judge", "dreamfusion.prior.train") == []
    assert loaded_by("dreamfusion.evaluation.classifier", "dreamfusion.prior.train") == []


def test_help_loads_no_backend_exporter_or_judge():
    """Each command imports its heavy parts when it runs, so `dreamfusion --help` stays quick."""
    for prefix in ("dreamfusion.exporter", "dreamfusion.evaluation", "dreamfusion.prior", "diffusers"):
        assert loaded_by("dreamfusion.commands", prefix) == [], prefix
