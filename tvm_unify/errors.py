"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """A problem with what the user asked for (file, target, shape...), worded for the user."""
