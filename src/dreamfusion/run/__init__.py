"""A `generate` run: its settings and how a run folder is read back (config.py), its folder's name, atomic
creation and lock (folder.py), and its metrics log and checkpoint window (log.py)."""
