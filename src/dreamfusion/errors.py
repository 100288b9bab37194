"""The exceptions that mean "the user asked for something we cannot do".

The CLI turns a `UserError` into a one-line message on stderr and exit code 2, with no traceback; the
Python API (`dreamfusion.generate`, ...) raises the same exceptions with the same messages, typed by what
went wrong, so a caller can catch one kind:

- `SettingsError`: an empty prompt, an unknown or mistyped setting, a preset that does not exist, a device
  this machine lacks;
- `ModelError`: weights that are missing, incomplete or of a kind the backend cannot use;
- `RunFolderError`: a run folder that does not exist, cannot be written, is in use by another process, or
  whose checkpoints are missing, damaged or do not fit its config.yaml;
- `ExportError`: a scene with no surface to export, or an export folder that cannot be written;
- `DivergedError` (dreamfusion.training.trainer): training that kept producing non-finite steps.

Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, missing weights, unwritable folders, foreign checkpoints: anything the user can fix."""


class SettingsError(UserError, ValueError):
    """The prompt, a setting, a preset or the device asked for."""


class ModelError(UserError):
    """The prior's weights: missing, incomplete, or not what the backend needs."""


class RunFolderError(UserError):
    """A run folder or one of its checkpoints."""


class ExportError(UserError):
    """Exporting a field: no surface, or nowhere to write."""
