"""The one exception type for user errors: its message is one sentence saying what is wrong and what to do."""


class METError(Exception):
    """A user-facing error (bad path, bad file, bad option). The CLI prints it as one line, no traceback."""
