"""User-facing errors: one clear message, no traceback."""


class HarnessError(Exception):
    """A problem with the user's input or environment (bad path, malformed row, bad option)."""


class TrainingFailed(Exception):
    """The run itself failed (e.g. a non-finite loss): it is recorded as failed."""
