"""The 3D representations: the `Field` interface (base.py), the learned fields (triplane.py, hashgrid.py),
analytic shapes (analytic.py), density grids (grid.py) and the surface mesh of a field (mesh.py), which
export writes and evaluation measures. Depends on nothing above it.

`FieldConfig` is also the table of learned fields: each kind is a section named after it, whose settings
class (beside the field in its own file) builds the field. Adding a field is one file with a settings class
that has `build(config, generator)`, plus its section line below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dreamfusion.fields.base import Field
from dreamfusion.fields.hashgrid import HashGridConfig
from dreamfusion.fields.sdf import SdfConfig
from dreamfusion.fields.triplane import TriplaneConfig


@dataclass(frozen=True)
class FieldConfig:
    # The name of one section below: "triplane" (CPU default), "hashgrid" or "sdf" (signed distance)
    kind: str = "triplane"
    bound: float = 1.4  # radius of the bounding sphere (App. A.2)
    # "Blob" initialisation (App. A.2): tau_init(x) = lambda (1 - ||x|| / sigma) added to the pre-activation.
    blob_strength: float = 5.0  # lambda
    blob_radius: float = 0.2  # sigma
    hidden_width: int = 64  # the one hidden layer of the field's MLP
    # One section per kind of field.
    triplane: TriplaneConfig = dataclasses.field(default_factory=TriplaneConfig)
    hashgrid: HashGridConfig = dataclasses.field(default_factory=HashGridConfig)
    sdf: SdfConfig = dataclasses.field(default_factory=SdfConfig)

    def __post_init__(self) -> None:
        if self.kind not in field_kinds():
            raise ValueError(f"kind must be one of {', '.join(map(repr, field_kinds()))}, got {self.kind!r}")
        for name in ("bound", "blob_radius", "hidden_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def field_kinds() -> tuple[str, ...]:
    """The sections of FieldConfig that build a field, in order."""
    return tuple(f.name for f in dataclasses.fields(FieldConfig) if hasattr(f.default_factory, "build"))


def build_field(config: FieldConfig, generator: torch.Generator | None = None) -> Field:
    return getattr(config, config.kind).build(config, generator)
