"""The one exception type for user errors: its message is one sentence saying what is wrong and what to do."""


class METError(Exception):
    """A user-facing error (bad path, bad file, bad option). The CLI prints it as one line, no traceback."""


def user_message(e: BaseException) -> str:
    """The one sentence of a METError, also when a DataLoader worker raised it: torch re-raises it in the main
    process with the worker's traceback folded into the message, and the user must never see that."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(("METError", "met_core.errors.METError")) else last
    return " ".join(text.split())
