"""The optimisation loop of a `generate` run (trainer.py), its regularisers (losses.py), and the learning-
rate schedules every training loop in the package uses (schedules.py)."""
