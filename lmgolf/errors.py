"""The one exception type that reaches the user as a one-line message and exit code 2."""


class LmgolfError(Exception):
    """Bad input from the user: a file, a field or a value. The message names it."""
