"""The one exception type the CLI turns into a one-line message instead of a traceback, and the
helpers that shorten a library's multi-line error into that one line."""


class UserError(Exception):
    """A problem with what the user asked for (file, target, shape...), worded for the user."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error (Python and torch put the message first), else its type."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def last_line(err: BaseException) -> str:
    """The last non-empty line of an error (TVM puts its message after a C++ or remote traceback)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
