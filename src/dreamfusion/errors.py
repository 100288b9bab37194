"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a `UserError` into a one-line message on stderr and exit code 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, missing weights, unwritable folders, foreign checkpoints: anything the user can fix."""
