"""dreamfusion: text-to-3D by Score Distillation Sampling (Poole et al. 2022), on any machine."""

__version__ = "0.1.0"
