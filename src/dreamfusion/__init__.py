"""dreamfusion: text-to-3D by Score Distillation Sampling (Poole et al. 2022), on any machine.

    import dreamfusion
    run = dreamfusion.generate("a red cube")

The API (generate, resume, export, evaluate, batch, Run) lives in dreamfusion.api and is imported on first
use, so that `import dreamfusion` and `dreamfusion --help` stay quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Progress",
    "Run",
    "RunAborted",
    "__version__",
    "batch",
    "evaluate",
    "export",
    "generate",
    "resume",
]

if TYPE_CHECKING:
    from dreamfusion.api import Progress, Run, RunAborted, batch, evaluate, export, generate, resume


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dreamfusion import api

        return getattr(api, name)
    raise AttributeError(f"module 'dreamfusion' has no attribute {name!r}")
